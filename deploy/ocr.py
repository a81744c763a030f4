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

from deploy.cache import atomic_write_bytes, atomic_write_json, check_output_dir, check_output_file
from deploy.config.loader import OcrSystemConfig, parse_labelled_overrides
from deploy.data.pipeline import read_image
from deploy.data.sources import ImageItem, list_images, nothing_read
from deploy.errors import ConfigError, DataError
from deploy.report.report import report_header, write_report
from deploy.tasks.base import Metrics
from deploy.tasks.ocr_det import parse_det_label
from deploy.tasks.ocr_system import OcrLines, OcrSystem, agreement, end_to_end, ensure_stage_models

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
    failures: list[str]
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
                     f"{100 * m['recall']:.2f}%; with spaces F1 {100 * m['f1_spaces']:.2f}%) over "
                     f"{self.labelled} labelled")
        return (f"summary ({self.stages}): {self.images} images, {len(self.failures)} failures, {self.lines} lines, "
                f"{self.images_per_s:.2f} images/s{score}")

    def to_json(self) -> dict:
        return {"stages": self.stages, "images": self.images, "failures": len(self.failures), "lines": self.lines,
                "seconds": self.seconds, "images_per_s": self.images_per_s, "labelled": self.labelled,
                **(self.metrics or {})}


def check_limit(limit: Optional[int]) -> None:
    """--limit counts documents: at least one (a slice would silently drop the last ones, or read none)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1 (the number of documents to read), got {limit}")


def documents(cfg: OcrSystemConfig, images: Optional[str], limit: Optional[int], *,
              quiet: bool = False) -> list[ImageItem]:
    """The documents to read (default: data.images), with their labels when the source has them. Each stage's
    model is built first when missing: its build also writes the demo documents data.images names."""
    check_limit(limit)
    source = images or cfg.data.images
    if source is None:
        raise DataError("no images: pass --image FILE|DIR|LIST or set data.images in the OCR system config")
    ensure_stage_models(cfg, quiet=quiet)
    return list_images(source, DocumentLabels())[:limit]


def read_documents(cfg: OcrSystemConfig, items: list[ImageItem], *, quiet: bool, desc: str = "ocr") -> OcrSummary:
    """Run the system over every document; an unreadable one is counted and skipped, unless it is the only one
    or none could be read (a run that read nothing is an error)."""
    done: list[tuple[ImageItem, OcrLines]] = []
    failures: list[str] = []
    errors: list[DataError] = []
    with OcrSystem(cfg, quiet=quiet) as system:
        start = time.perf_counter()
        for item in tqdm(items, disable=quiet, unit="img", desc=desc):
            try:
                done.append((item, system(item.path)))
            except DataError as e:
                if len(items) == 1:
                    raise
                failures.append(str(item.path))
                errors.append(e)
                log.warning("skipped %s", e)
        seconds = time.perf_counter() - start
        stages = system.describe()
    if not done:
        raise nothing_read(len(items), "documents", errors[0])
    labelled = [(item, lines) for item, lines in done if item.label is not None]
    metrics = end_to_end([lines for _, lines in labelled], [item.label for item, _ in labelled]) if labelled else None
    return OcrSummary(stages, len(done), failures, seconds, sum(len(r.texts) for _, r in done), metrics,
                      len(labelled), done)


def run_ocr(cfg: OcrSystemConfig, *, images: Optional[str] = None, output: Optional[Path] = None,
            visualize: Optional[Path] = None, limit: Optional[int] = None, quiet: bool = False) -> OcrSummary:
    """Run the OCR system over ``images`` (default: data.images)."""
    if output is not None:  # before the run, not after all the work
        check_output_file(output, "--output")
    if visualize is not None:
        check_output_dir(visualize, "--visualize")
    summary = read_documents(cfg, documents(cfg, images, limit, quiet=quiet), quiet=quiet)
    done, failures = summary.results, summary.failures
    if not quiet:
        for item, lines in done[:CONSOLE_LIMIT]:
            print(f"{item.path}: " + " | ".join(lines.texts))
    if output is not None:
        atomic_write_json(output, {"stages": summary.stages,
                                   "results": [{"path": str(i.path), **r.to_json()} for i, r in done],
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


# ---------------------------------------------------------------- side by side: the system at several precisions

SYSTEM_COLUMNS = {"metrics": [{"key": "f1", "header": "F1", "kind": "pct"},
                              {"key": "precision", "header": "precision", "kind": "pct"},
                              {"key": "recall", "header": "recall", "kind": "pct"},
                              {"key": "f1_spaces", "header": "F1 (spaces)", "kind": "pct"}],
                  "agreement": [{"key": "agreement", "header": "F1 vs ref", "kind": "pct"}]}
def parse_system_compare(text: str) -> tuple[str, list[str]]:
    """'int8=det.precision=int8,rec.precision=int8' -> ('int8', ['det.precision=int8', 'rec.precision=int8'])."""
    return parse_labelled_overrides(text, "--compare", "int8=det.precision=int8,rec.precision=int8")


def compare_systems(runs: list[tuple[str, OcrSystemConfig]], *, images: Optional[str] = None,
                    limit: Optional[int] = None, output_dir: Optional[Path] = None, quiet: bool = False) -> dict:
    """Run each labelled system config over the same documents; the first is the reference. Returns report
    data (report.json's keys, task ocr_system) and writes report.json / report.md / accuracy.png to output_dir."""
    check_limit(limit)
    if output_dir is not None:  # before the runs, not after all the work
        check_output_dir(output_dir, "--output-dir")
    for _, cfg in runs[1:]:  # documents() builds the reference's
        ensure_stage_models(cfg, quiet=quiet)
    items = documents(runs[0][1], images, limit, quiet=quiet)
    summaries = [(label, cfg, read_documents(cfg, items, quiet=quiet, desc=label)) for label, cfg in runs]
    reference = [lines for _, lines in summaries[0][2].results]
    results = []
    for label, _, summary in summaries:
        if summary.metrics is None:
            raise DataError(f"no labelled documents in {images or runs[0][1].data.images}: the OCR system's "
                            "comparison needs PaddleOCR det labels (path<TAB>[{\"transcription\", \"points\"}])")
        if len(summary.results) != len(reference):
            raise DataError(f"run '{label}' read {len(summary.results)} documents, the reference "
                            f"{len(reference)}; fix the unreadable ones first")
        results.append({"label": label, **summary.metrics,
                        "agreement": agreement([lines for _, lines in summary.results], reference),
                        "seconds": round(summary.seconds, 4)})
    data = {**report_header("ocr_system"), "reference": runs[0][0],
            "runs": [{"label": label, "config": str(cfg.source), "precision": summary.stages, "device": "cpu",
                      "backend": "paddle", "int8_mode": None, "model": str(cfg.det.config),
                      "plan": summary.stages} for label, cfg, summary in summaries],
            "accuracy": {"task": "ocr_system", "columns": SYSTEM_COLUMNS, "source": str(images or
                                                                                      runs[0][1].data.images),
                         "images": len(reference), "labelled": summaries[0][2].labelled,
                         "skipped": len(summaries[0][2].failures), "batch_size": 1, "reference": runs[0][0],
                         "results": results},
            "calibration_sweep": None, "benchmark": None, "files": {}}
    if output_dir is not None:
        write_report(output_dir, data)
    return data
