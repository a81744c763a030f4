"""Text detection (DBNet): the probability map -> 4-point text boxes in original-image pixels (PaddleOCR's DB
post-processing, in ocr_det_post); precision / recall / hmean at polygon IoU > 0.5 (PaddleOCR's DetMetric);
agreement = hmean of a run's boxes against the reference run's boxes."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from deploy.config.loader import DeployConfig
from deploy.data.sources import Batch
from deploy.errors import DataError
from deploy.tasks.base import MetricColumn, Metrics, Task, known
from deploy.tasks.ocr_det_post import DBParams, DetCounts, db_boxes, match_detections, sum_counts

DONT_CARE = "###"  # PaddleOCR's transcription for regions that neither count nor penalise


@dataclass
class TextBoxes:
    """One image's text boxes ([K, 4, 2] x, y in original pixels, clockwise from top-left) and their scores."""

    boxes: np.ndarray
    scores: np.ndarray


@dataclass
class TextRegion:
    """A labelled text region: its polygon, its transcription, and whether it is don't-care (###)."""

    points: np.ndarray
    text: str

    @property
    def ignore(self) -> bool:
        return self.text == DONT_CARE


def parse_det_label(text: str) -> list[TextRegion]:
    """PaddleOCR's det label: a JSON list of {"transcription": str, "points": [[x, y], ...]}."""
    try:
        entries = json.loads(text)
        regions = [TextRegion(np.asarray(e["points"], dtype=np.float32).reshape(-1, 2), str(e["transcription"]))
                   for e in entries]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError('expected a JSON list of {"transcription": ..., "points": [[x, y], ...]}') from e
    if any(len(r.points) < 3 for r in regions):
        raise ValueError("every polygon needs at least 3 points")
    return regions


def det_counts(result: TextBoxes, regions: Sequence[TextRegion]) -> DetCounts:
    """One image's matched / gt / det counts."""
    return match_detections([r.points for r in regions], list(result.boxes), ignore=[r.ignore for r in regions])


class OcrDetTask(Task):
    """Text detection with a DB head (PP-OCR det models)."""

    name = "ocr_det"
    metrics = (MetricColumn("hmean", "hmean"), MetricColumn("precision", "precision"),
               MetricColumn("recall", "recall"))
    agreements = (MetricColumn("agreement", "hmean vs ref"),)

    def __init__(self, cfg: DeployConfig):
        super().__init__(cfg)
        pp = cfg.postprocess
        self.params = DBParams(pp.thresh, pp.box_thresh, pp.unclip_ratio, pp.max_candidates, pp.min_size,
                               pp.score_mode, pp.use_dilation)

    def read_label(self, text: str) -> list[TextRegion]:
        return parse_det_label(text)

    def label_json(self, label: list[TextRegion]) -> list[dict]:
        return [{"transcription": r.text, "points": r.points.tolist()} for r in label]

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[TextBoxes]:
        maps = next(iter(outputs.values()))
        if maps.ndim != 4 or maps.shape[1] != 1:
            raise DataError(f"a DB text detector outputs a [N, 1, H, W] probability map, this model gives "
                            f"{list(maps.shape)}; is 'task: ocr_det' the right task?")
        results = []
        for prob, record in zip(maps[:, 0], batch.records):
            height, width = record.resized_hw  # the map may be padded to the batch's largest image
            boxes, scores = db_boxes(prob[:height, :width], record.src_hw, self.params)
            results.append(TextBoxes(boxes, scores))
        return results

    def record(self, result: TextBoxes) -> dict:
        return {"boxes": result.boxes.astype(np.float64).round(1).tolist(),
                "scores": [round(float(s), 4) for s in result.scores]}

    def describe(self, result: TextBoxes) -> str:
        return f"{len(result.boxes)} text boxes"

    def score(self, results: Sequence[TextBoxes], labels: Sequence[Optional[list[TextRegion]]]) -> Metrics:
        found, truth = known(results, labels)
        if not truth:
            return {"hmean": None, "precision": None, "recall": None}
        total = sum_counts(det_counts(r, regions) for r, regions in zip(found, truth))
        return {"hmean": total.hmean, "precision": total.precision, "recall": total.recall}

    def agreement(self, results: Sequence[TextBoxes], reference: Sequence[TextBoxes]) -> Metrics:
        as_truth: list[Any] = [[TextRegion(box, "") for box in ref.boxes] for ref in reference]
        total = sum_counts(det_counts(r, regions) for r, regions in zip(results, as_truth))
        return {"agreement": total.hmean if total.gt or total.det else 1.0}
