"""Issue 15, user data: odd files (an image over OpenCV's pixel limit, a FIFO in a list, a byte order mark),
counts that read nothing, labels the model cannot have, outputs that cannot be written and the OCR system on a
fresh clone, each through the real tools on real files."""
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from conftest import ROOT, error_line, run_tool, write_config
from deploy.data.pipeline import ImagePipeline, parse_ops
from deploy.errors import DataError


def summary_line(result):
    return result.stdout.strip().splitlines()[-1]


def run_tool_within(seconds, tool, *args):
    """run_tool with a short timeout: a tool that blocks fails the test instead of hanging it."""
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{tool}.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=seconds)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_huge_png(path):
    """A valid, tiny PNG whose header claims 100000 x 100000 grey pixels (10^10, over OpenCV's 2^30)."""
    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0"))
                     + png_chunk(b"IEND", b""))
    return path


def digits(lenet, folder, count=2, digit="7"):
    """``count`` real MNIST test digits copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((lenet / "data" / "test" / digit).glob("*.png"))[:count]
    return [shutil.copy(src, folder / src.name) for src in sources]


@pytest.fixture(scope="module")
def ocr_system(tmp_path_factory):
    """Small PP-OCR det and rec builds (the published models, two rendered documents) and a system config."""
    root = tmp_path_factory.mktemp("ocr_faults")
    for name in ("ppocr_det", "ppocr_rec"):
        subprocess.run([sys.executable, str(ROOT / "models" / name / "build.py"), "--out", str(root / name),
                        "--test", "2", "--calib", "2", "--quiet"], check=True, capture_output=True, timeout=300)
    system = write_stage_configs(root, {"det": "ppocr_det", "rec": "ppocr_rec"}, build=False)
    return {"root": root, "system": system, "docs": root / "ppocr_det" / "data" / "test"}


def write_stage_configs(root, stages, build):
    """Stage configs inheriting the shipped ones, their models (and data) under ``root``/<model>; with ``build``
    each names a build script that builds them there on first use, as a fresh clone's shipped configs do."""
    lines = []
    for stage, name in stages.items():
        out = root / name
        script = "null"
        if build:
            command = [str(ROOT / "models" / name / "build.py"), "--out", str(out), "--test", "2", "--calib", "2"]
            script = write_config(root / f"build_{name}.py", "import subprocess, sys\n"
                                  f"sys.exit(subprocess.call([sys.executable, *{command!r}, *sys.argv[1:]]))\n")
        extra = {"ppocr_rec": f"postprocess: {{character_dict: {out / 'inference' / 'ppocr_keys_v1.txt'}}}\n",
                 "ppocr_cls": f"postprocess: {{label_list: {out / 'data' / 'labels.txt'}}}\n"}.get(name, "")
        cfg = write_config(root / f"{name}.yml", f"_base_: {ROOT / 'configs' / (name + '.yml')}\n"
                                                 f"model: {{dir: {out / 'inference'}, build: {script}}}\n{extra}")
        lines.append(f"{stage}: {{config: {cfg}}}")
    lines.append(f"data: {{images: {root / 'ppocr_det' / 'data' / 'test' / 'labels.txt'}}}")
    return write_config(root / "system.yml", "\n".join(lines) + "\n")


# ---------------------------------------------------------------- item 7: over OpenCV's pixel limit


def test_an_image_over_opencvs_pixel_limit_is_a_data_error(lenet, lenet_config, ocr_system, tmp_path):
    folder = tmp_path / "imgs"
    digits(lenet, folder)
    huge = write_huge_png(folder / "huge.png")
    single = run_tool("infer", "-c", lenet_config, "--image", huge, "--quiet")
    line = error_line(single)
    assert single.returncode == 2
    assert line.startswith(f"error: cannot decode image {huge}: OpenCV refused it (") and "\n" not in line
    assert "OPENCV_IO_MAX_IMAGE_PIXELS" in line
    in_folder = run_tool("infer", "-c", lenet_config, "--image", folder, "--quiet", check=True)
    assert summary_line(in_folder).startswith("summary: 2 images, 1 failures") and "huge.png" in in_folder.stderr
    ocr = run_tool("ocr", "-c", ocr_system["system"], "--image", huge, "--quiet")
    assert ocr.returncode == 2 and error_line(ocr).startswith(f"error: cannot decode image {huge}: OpenCV refused")
    # an OpenCV failure in a preprocess op on a decoded image (a 1 x 100000 strip scaled to a short side of 30000
    # is 3 * 10^9 pixels wide: more than OpenCV's int sizes hold) is the same kind of error
    strip = tmp_path / "strip.png"
    cv2.imwrite(str(strip), np.zeros((1, 100000), np.uint8))
    pipeline = ImagePipeline(parse_ops([{"decode": {"mode": "GRAY"}}, {"resize": {"short_side": 30000}}],
                                       lambda key: key))
    with pytest.raises(DataError, match=rf"cannot preprocess image {strip}: OpenCV failed in resize on the "
                                        r"1x100000 image \("):
        pipeline.load(strip)


# ---------------------------------------------------------------- item 8: a FIFO in a list file


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_in_a_list_file_is_skipped_not_waited_for(lenet, lenet_config, tmp_path):
    images = digits(lenet, tmp_path / "imgs")
    fifo = tmp_path / "imgs" / "pipe.png"
    os.mkfifo(fifo)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images[0]}\n{fifo}\n{images[1]}\n")
    out = tmp_path / "r.json"
    result = run_tool_within(60, "infer", "-c", lenet_config, "--image", listing, "--output", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert summary_line(result).startswith("summary: 2 images, 1 failures")
    assert f"cannot read image {fifo}: not a regular file" in result.stderr
    assert json.loads(out.read_text())["failures"] == [str(fifo)]
    single = run_tool_within(60, "infer", "-c", lenet_config, "--image", fifo, "--quiet")
    assert single.returncode == 2 and error_line(single) == (
        f"error: cannot read image {fifo}: not a regular file (a FIFO, device, socket or folder); "
        "list only image files")


# ---------------------------------------------------------------- item 9: a list file with a byte order mark


def test_a_list_file_with_a_byte_order_mark_keeps_its_first_image(lenet, lenet_config, tmp_path):
    images = digits(lenet, tmp_path / "imgs", 3)
    listing = tmp_path / "imgs" / "list.txt"
    listing.write_text("".join(f"{p.name}\t7\n" for p in images), encoding="utf-8-sig")  # Notepad's UTF-8
    assert listing.read_bytes().startswith(b"\xef\xbb\xbf")
    out = tmp_path / "r.json"
    result = run_tool("infer", "-c", lenet_config, "--image", listing, "--output", out, "--quiet", check=True)
    assert summary_line(result).startswith("summary: 3 images, 0 failures")
    data = json.loads(out.read_text())
    assert [r["path"] for r in data["results"]] == [str(p) for p in images]
    assert [r["label"] for r in data["results"]] == [7, 7, 7]


# ---------------------------------------------------------------- item 12: counts, runs that read nothing, labels


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_ocr_limit_below_one_is_an_error(ocr_system, limit):
    result = run_tool("ocr", "-c", ocr_system["system"], "--limit", limit, "--quiet")
    assert result.returncode == 2 and result.stdout == ""
    assert error_line(result) == f"error: --limit must be >= 1 (the number of documents to read), got {limit}"


def test_runs_that_read_nothing_exit_2(lenet_config, ocr_system, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("gone/a.png\ngone/b.png\n")
    infer = run_tool("infer", "-c", lenet_config, "--image", listing, "--quiet")
    assert infer.returncode == 2 and error_line(infer) == (
        f"error: none of the 2 images in {listing} could be read (the first: cannot read image "
        f"{tmp_path / 'gone' / 'a.png'}: No such file or directory); fix the files or the paths")
    corrupt = tmp_path / "doc.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ocr = run_tool("ocr", "-c", ocr_system["system"], "--image", corrupt, "--quiet")
    assert ocr.returncode == 2 and error_line(ocr) == (
        f"error: cannot decode image {corrupt}: not an image OpenCV can read, or the file is corrupt")
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a.png", "b.png"):
        (docs / name).write_bytes(b"not a png")
    folder = run_tool("ocr", "-c", ocr_system["system"], "--image", docs, "--quiet")
    assert folder.returncode == 2 and error_line(folder).startswith(
        f"error: none of the 2 documents could be read (the first: cannot decode image {docs / 'a.png'}: ")


def test_a_class_id_the_model_does_not_have_is_an_error(lenet, lenet_config, tmp_path):
    image = digits(lenet, tmp_path, 1)[0]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# digits\n{image.name} 3\n{image.name} 12\n")
    named = run_tool("infer", "-c", lenet_config, "--image", listing, "--quiet")
    assert named.returncode == 2 and error_line(named) == (
        f"error: {listing}:3: bad label '12': class id 12 is out of range: postprocess.label_list has 10 classes "
        "(ids 0-9)")
    # without a label list only the model's output says how many classes there are
    unnamed = run_tool("infer", "-c", lenet_config, "-o", "postprocess.label_list=null", "--image", listing,
                       "--quiet")
    assert unnamed.returncode == 2 and error_line(unnamed) == (
        f"error: {image}: label 12 is not a class of the model, whose output has 10 classes (ids 0-9); fix the "
        "label in the list file or the sub-folder name")


def test_outputs_that_cannot_be_written_fail_before_the_run(lenet, lenet_config, ocr_system, tmp_path):
    tmp_path = tmp_path / "work"  # beside the config and model copy
    folder = tmp_path / "imgs"
    digits(lenet, folder)
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    cases = [("infer", ["-c", lenet_config, "--image", folder, "--output", tmp_path],
              f"error: --output {tmp_path} is a folder; give a file path"),
             ("infer", ["-c", lenet_config, "--image", folder, "--output", a_file / "r.json"],
              f"error: --output: cannot write {a_file / 'r.json'}: {a_file} is a file, not a folder"),
             ("ocr", ["-c", ocr_system["system"], "--output", tmp_path],
              f"error: --output {tmp_path} is a folder; give a file path"),
             ("ocr", ["-c", ocr_system["system"], "--visualize", a_file],
              f"error: --visualize {a_file} is a file, not a folder; give a folder path"),
             ("ocr", ["-c", ocr_system["system"], "--visualize", a_file / "vis"],
              f"error: --visualize: cannot write {a_file / 'vis'}: {a_file} is a file, not a folder")]
    for tool, args, expected in cases:
        result = run_tool(tool, *args)  # not --quiet: a run would show its progress bar and results
        assert result.returncode == 2 and error_line(result).startswith(expected), (tool, args, result.stderr)
        assert result.stdout == "" and "%|" not in result.stderr, result.stderr  # no results, no progress bar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "imgs"]


# ---------------------------------------------------------------- the OCR system on a fresh clone


def test_ocr_system_builds_its_stages_and_documents_on_first_use(tmp_path):
    system = write_stage_configs(tmp_path, {"det": "ppocr_det", "cls": "ppocr_cls", "rec": "ppocr_rec"},
                                 build=True)
    assert not (tmp_path / "ppocr_det" / "data").exists()  # data.images does not exist before the run
    result = run_tool("ocr", "-c", system, "--limit", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    assert summary_line(result).startswith("summary (det fp32, cls fp32, rec fp32): 1 images, 0 failures")
    for name in ("ppocr_det", "ppocr_cls", "ppocr_rec"):
        assert (tmp_path / name / "inference" / ".complete").is_file()
