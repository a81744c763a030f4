"""Object detection in PaddleDetection's export format: inputs image, im_shape, scale_factor; outputs boxes
[K, 6] (class, score, x1, y1, x2, y2 in original pixels, all images concatenated) and the box count per image.
COCO mAP@[.5:.95] and mAP@.5 with pycocotools; agreement = F1 of a run's confident boxes against the reference
run's (same class, IoU >= 0.5)."""
from __future__ import annotations

import contextlib
import functools
import io
import json
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from deploy.config.loader import DeployConfig
from deploy.data.sources import Batch, load_label_names
from deploy.errors import DataError
from deploy.tasks.base import MetricColumn, Metrics, Task, known

MATCH_IOU = 0.5


@dataclass
class Detections:
    """One image's boxes ([K, 4] x1, y1, x2, y2 in original pixels), class ids and scores, every box kept."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray

    def confident(self, threshold: float) -> "Detections":
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.classes[keep], self.scores[keep])


def split_outputs(outputs: dict[str, np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [K, 6], counts [N]) from the outputs, whatever their names: PaddleDetection's NMS names vary."""
    boxes = [a for a in outputs.values() if a.ndim == 2 and a.shape[1] == 6]
    counts = [a for a in outputs.values() if a.ndim == 1 and a.shape[0] == batch_size
              and np.issubdtype(a.dtype, np.integer)]
    if len(boxes) != 1 or len(counts) != 1:
        shapes = {name: list(a.shape) for name, a in outputs.items()}
        raise DataError(f"a PaddleDetection export outputs boxes [K, 6] and an integer box count [N]; this model "
                        f"gives {shapes}; export it with PaddleDetection's tools/export_model.py (NMS included)")
    if int(counts[0].sum()) != boxes[0].shape[0]:
        raise DataError(f"the box counts add up to {int(counts[0].sum())} but the model returned "
                        f"{boxes[0].shape[0]} boxes")
    return boxes[0], counts[0]


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of [K, 4] x1, y1, x2, y2 boxes (0 for inverted ones)."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of [A, 4] and [B, 4] x1, y1, x2, y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def matched_count(found: Detections, truth: Detections) -> int:
    """Greedy one-to-one matches, highest score first, same class and IoU >= 0.5."""
    iou = box_iou(found.boxes, truth.boxes) if len(found.boxes) and len(truth.boxes) else np.zeros((0, 0))
    used, matched = set(), 0
    for i in np.argsort(-found.scores, kind="stable"):
        candidates = [j for j in np.argsort(-iou[i]) if j not in used and iou[i, j] >= MATCH_IOU
                      and truth.classes[j] == found.classes[i]] if iou.size else []
        if candidates:
            used.add(candidates[0])
            matched += 1
    return matched


def coco_map(results: Sequence[Detections], truth: Sequence[Detections]) -> tuple[float, float]:
    """(mAP@[.5:.95], mAP@.5) with pycocotools over in-memory ground truth and detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box: np.ndarray) -> list[float]:
        return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]

    # 1-based ids: COCOeval marks a detection matched by storing the gt id, so an id of 0 would read as unmatched.
    annotations = []
    for i, t in enumerate(truth):
        for box, c in zip(t.boxes, t.classes):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(c),
                                "bbox": xywh(box), "area": xywh(box)[2] * xywh(box)[3], "iscrowd": 0})
    classes = sorted({int(c) for t in truth for c in t.classes} | {int(c) for r in results for c in r.classes})
    gt = {"images": [{"id": i + 1} for i in range(len(truth))], "categories": [{"id": c} for c in classes],
          "annotations": annotations}
    dets = [{"image_id": i + 1, "category_id": int(c), "bbox": xywh(b), "score": float(s)}
            for i, r in enumerate(results) for b, c, s in zip(r.boxes, r.classes, r.scores)]
    if not gt["annotations"] or not dets:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(max(evaluator.stats[0], 0.0)), float(max(evaluator.stats[1], 0.0))


class DetectionTask(Task):
    """PaddleDetection models (PP-YOLOE, PicoDet, ...) exported with NMS."""

    name = "detection"
    metrics = (MetricColumn("map", "mAP"), MetricColumn("map50", "mAP@.5"))
    agreements = (MetricColumn("agreement", "F1 vs ref"),)

    def __init__(self, cfg: DeployConfig):
        super().__init__(cfg)
        self.threshold = cfg.postprocess.score_threshold

    @functools.cached_property
    def label_names(self) -> list[str]:
        """Read on first use: calibration needs no names."""
        return load_label_names(self.cfg.postprocess.label_list) or []

    def read_label(self, text: str) -> Detections:
        """A JSON list of {"label": class name or id, "bbox": [x1, y1, x2, y2]} in original pixels."""
        try:
            entries = json.loads(text)
            boxes = np.asarray([e["bbox"] for e in entries], dtype=np.float32).reshape(-1, 4)
            classes = np.asarray([self._class_id(e["label"]) for e in entries], dtype=np.int64)
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError('expected a JSON list of {"label": ..., "bbox": [x1, y1, x2, y2]}') from e
        return Detections(boxes, classes, np.ones(len(classes), dtype=np.float32))

    def _class_id(self, label: object) -> int:
        if isinstance(label, int):
            return label
        if label in self.label_names:
            return self.label_names.index(label)
        raise ValueError(f"class {label!r} is not in postprocess.label_list")

    def label_json(self, label: Detections) -> dict:
        return {"boxes": label.boxes.tolist(), "classes": [self._name(c) for c in label.classes]}

    def feeds(self, batch: Batch, input_names: Sequence[str]) -> dict[str, np.ndarray]:
        """The image, plus im_shape (each image's resized [h, w]) and scale_factor (resized / original)."""
        extra = {"im_shape": np.array([r.resized_hw for r in batch.records], dtype=np.float32),
                 "scale_factor": np.array([r.scale_hw for r in batch.records], dtype=np.float32)}
        image = self.image_input([n for n in input_names if n not in extra])
        return {image: batch.array, **{name: value for name, value in extra.items() if name in input_names}}

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[Detections]:
        boxes, counts = split_outputs(outputs, len(batch.items))
        results, start = [], 0
        for count in counts.astype(int):
            rows = boxes[start:start + count]
            start += count
            rows = rows[rows[:, 0] >= 0]  # PaddleDetection pads an image without boxes with class -1
            results.append(Detections(rows[:, 2:6].copy(), rows[:, 0].astype(np.int64), rows[:, 1].copy()))
        return results

    def record(self, result: Detections) -> dict:
        kept = result.confident(self.threshold)
        return {"boxes": kept.boxes.astype(np.float64).round(2).tolist(),
                "classes": [self._name(c) for c in kept.classes],
                "scores": [round(float(s), 4) for s in kept.scores]}

    def _name(self, class_id: int) -> str:
        return self.label_names[class_id] if 0 <= class_id < len(self.label_names) else str(int(class_id))

    def describe(self, result: Detections) -> str:
        kept = result.confident(self.threshold)
        return f"{len(kept.boxes)} boxes >= {self.threshold}: " + ", ".join(
            f"{self._name(c)} {s:.2f}" for c, s in list(zip(kept.classes, kept.scores))[:5])

    def score(self, results: Sequence[Detections], labels: Sequence[Optional[Detections]]) -> Metrics:
        found, truth = known(results, labels)
        if not truth:
            return {"map": None, "map50": None}
        mean_ap, ap50 = coco_map(found, truth)
        return {"map": mean_ap, "map50": ap50}

    def agreement(self, results: Sequence[Detections], reference: Sequence[Detections]) -> Metrics:
        matched = found = expected = 0
        for result, ref in zip(results, reference):
            mine, theirs = result.confident(self.threshold), ref.confident(self.threshold)
            matched += matched_count(mine, theirs)
            found += len(mine.boxes)
            expected += len(theirs.boxes)
        return {"agreement": 1.0 if found + expected == 0 else 2 * matched / (found + expected)}
