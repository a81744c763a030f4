"""The OCR system over images: lines per image (console, JSON), visualisations, and the end-to-end metric when
the images carry PaddleOCR det labels (polygons with transcriptions)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from deploy.cache import atomic_write_bytes, atomic_write_json
from deploy.config.loader import OcrSystemConfig
from deploy.data.pipeline import read_image
from deploy.data.sources import ImageItem, list_images
from deploy.errors import DataError
from deploy.tasks.base import Metrics
from deploy.tasks.ocr_det import parse_det_label
from deploy.tasks.ocr_system import OcrLines, OcrSystem, end_to_end

log = logging.getLogger(__name__)
CONSOLE_LIMIT = 10


class DocumentLabels:
    """Labels of the OCR system: PaddleOCR's det label files (polygons and their transcriptions)."""

    def read_label(self, text: str) -> list:
        return parse_det_label(text)

    def folder_label(self, name: str) -> None:
        return None


@dataclass
class OcrSummary:
    """Counts, speed and, when labels are known, line-level precision / recall / F1."""

    stages: str
    images: int
    failures: int
    seconds: float
    lines: int
    metrics: Optional[Metrics] = None
    labelled: int = 0
    results: list[tuple[ImageItem, OcrLines]] = field(default_factory=list, repr=False)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        score = ""
        if self.metrics is not None:
            m = self.metrics
            score = (f", end-to-end F1 {100 * m['f1']:.2f}% (precision {100 * m['precision']:.2f}%, recall "
                     f"{100 * m['recall']:.2f}%) over {self.labelled} labelled")
        return (f"summary ({self.stages}): {self.images} images, {self.failures} failures, {self.lines} lines, "
                f"{self.images_per_s:.2f} images/s{score}")

    def to_json(self) -> dict:
        return {"stages": self.stages, "images": self.images, "failures": self.failures, "lines": self.lines,
                "seconds": self.seconds, "images_per_s": self.images_per_s, "labelled": self.labelled,
                **(self.metrics or {})}


def run_ocr(cfg: OcrSystemConfig, *, images: Optional[str] = None, output: Optional[Path] = None,
            visualize: Optional[Path] = None, limit: Optional[int] = None, quiet: bool = False) -> OcrSummary:
    """Run the OCR system over ``images`` (default: data.images)."""
    source = images or cfg.data.images
    if source is None:
        raise DataError("no images: pass --image FILE|DIR|LIST or set data.images in the OCR system config")
    items = list_images(source, DocumentLabels())[:limit]
    done: list[tuple[ImageItem, OcrLines]] = []
    failures: list[str] = []
    with OcrSystem(cfg, quiet=quiet) as system:
        start = time.perf_counter()
        for item in tqdm(items, disable=quiet, unit="img", desc="ocr"):
            try:
                done.append((item, system(item.path)))
            except DataError as e:
                failures.append(str(item.path))
                log.warning("skipped %s", e)
        seconds = time.perf_counter() - start
        stages = system.describe()
    labelled = [(item, lines) for item, lines in done if item.label is not None]
    metrics = end_to_end([lines for _, lines in labelled], [item.label for item, _ in labelled]) if labelled else None
    summary = OcrSummary(stages, len(done), len(failures), seconds, sum(len(r.texts) for _, r in done), metrics,
                         len(labelled), done)
    if not quiet:
        for item, lines in done[:CONSOLE_LIMIT]:
            print(f"{item.path}: " + " | ".join(lines.texts))
    if output is not None:
        atomic_write_json(output, {"stages": stages, "results": [{"path": str(i.path), **r.to_json()} for i, r in done],
                                   "failures": failures, "summary": summary.to_json()})
    if visualize is not None:
        for item, lines in done:
            write_visualization(visualize / f"{item.path.stem}_ocr.png", read_image(item.path, "BGR"), lines)
    return summary


def write_visualization(path: Path, image: np.ndarray, lines: OcrLines) -> None:
    """The document with its boxes (left) beside the recognised texts drawn where they were found (right)."""
    boxes_side = image.copy()
    text_side = np.full_like(image, 255)
    for box, text in zip(lines.boxes, lines.texts):
        points = box.astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(boxes_side, [points], True, (0, 160, 0), 2)
        cv2.polylines(text_side, [points], True, (200, 200, 200), 1)
        height = max(8, int(np.linalg.norm(box[0] - box[3])))
        scale = max(0.3, min(1.5, height / 30))
        cv2.putText(text_side, text, (int(box[3][0]), int(box[3][1]) - 3), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", np.hstack([boxes_side, text_side]))
    if not ok:
        raise DataError(f"cannot encode the visualisation of {path.name}")
    atomic_write_bytes(path, png.tobytes())
