"""Classification: top-k over one [N, classes] output; top-1/top-5 accuracy; agreement = same top-1 class, plus
how close the raw score vectors are (cosine, absolute differences)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from deploy.data.sources import Batch, load_label_names
from deploy.errors import DataError
from deploy.tasks.base import MetricColumn, Metrics, Task

TOPK_METRIC = 5


@dataclass
class Prediction:
    """One image's full score vector, and its top-k class ids, names and scores."""

    row: np.ndarray
    ids: list[int]
    scores: list[float]
    labels: list[str]


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def topk(output: np.ndarray, k: int, label_names: Optional[list[str]] = None,
         apply_softmax: bool = False) -> list[Prediction]:
    """Top-k per row of a [N, classes] output (extra dims are flattened)."""
    scores = output.reshape(output.shape[0], -1).astype(np.float32)
    if apply_softmax:
        scores = softmax(scores)
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    preds = []
    for row, ids in zip(scores, order):
        names = [label_names[i] if label_names and i < len(label_names) else str(i) for i in ids]
        preds.append(Prediction(row, [int(i) for i in ids], [float(row[i]) for i in ids], names))
    return preds


def topk_accuracy(outputs: np.ndarray, labels: np.ndarray, k: int) -> Optional[float]:
    """Share of labelled rows whose label is among the k highest outputs (ties: lower class id first)."""
    known_rows = labels >= 0
    if not known_rows.any():
        return None
    order = np.argsort(-outputs[known_rows], axis=1, kind="stable")[:, :k]
    return float((order == labels[known_rows, None]).any(axis=1).mean())


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity (1 when both rows are zero, 0 when only one is)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norm_a, norm_b = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    norms = norm_a * norm_b
    dots = (a64 * b64).sum(axis=1)
    both_zero = (norm_a == 0) & (norm_b == 0)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))


def check_labels(batch: Batch, classes: int) -> None:
    """Every known label is one of the model's ``classes`` ids (a label the output cannot have would silently
    count as a miss); the number of classes is known for sure only from the output."""
    for item in batch.items:
        if item.label is not None and not 0 <= item.label < classes:
            raise DataError(f"{item.path}: label {item.label} is not a class of the model, whose output has "
                            f"{classes} classes (ids 0-{classes - 1}); fix the label in the list file or the "
                            "sub-folder name")


class ClassificationTask(Task):
    """Top-k class ids and names per image (PaddleClas and any single-output classifier)."""

    name = "classification"
    metrics = (MetricColumn("top1", "top-1"), MetricColumn("top5", "top-5"))
    # agreement() also returns top1_agreement (= agreement), the key reports had before tasks existed
    agreements = (MetricColumn("agreement", "top-1 agree"), MetricColumn("cosine_mean", "cos mean", "num"),
                  MetricColumn("cosine_min", "cos min", "num"), MetricColumn("max_abs_diff", "max |diff|", "diff"),
                  MetricColumn("mean_abs_diff", "mean |diff|", "diff"))

    @functools.cached_property
    def label_names(self) -> Optional[list[str]]:
        """Read on first use: calibration and shape collection need no names."""
        return load_label_names(self.cfg.postprocess.label_list)

    def read_label(self, text: str) -> int:
        """A class id, or a class name from postprocess.label_list."""
        label = self.folder_label(text)
        if label is None:
            raise ValueError("expected a class id or a name from postprocess.label_list")
        names = self.label_names
        if names and label >= len(names):
            raise ValueError(f"class id {label} is out of range: postprocess.label_list has {len(names)} classes "
                             f"(ids 0-{len(names) - 1})")
        return label

    def folder_label(self, name: str) -> Optional[int]:
        if self.label_names and name in self.label_names:
            return self.label_names.index(name)
        return int(name) if name.isdigit() else None

    def label_json(self, label: int) -> int:
        return label

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[Prediction]:
        output = next(iter(outputs.values()))  # a classifier has one output: the class scores
        check_labels(batch, output.reshape(output.shape[0], -1).shape[1])
        pp = self.cfg.postprocess
        return topk(output, pp.topk, self.label_names, pp.softmax)

    def record(self, result: Prediction) -> dict:
        return {"topk_ids": result.ids, "labels": result.labels, "scores": result.scores}

    def describe(self, result: Prediction) -> str:
        return ", ".join(f"{name} {score:.3f}" for name, score in zip(result.labels, result.scores))

    def score(self, results: Sequence[Prediction], labels: Sequence[Optional[int]]) -> Metrics:
        rows = np.stack([r.row for r in results])
        ids = np.array([-1 if lab is None else lab for lab in labels], dtype=np.int64)
        return {"top1": topk_accuracy(rows, ids, 1), "top5": topk_accuracy(rows, ids, min(TOPK_METRIC, rows.shape[1]))}

    def agreement(self, results: Sequence[Prediction], reference: Sequence[Prediction]) -> Metrics:
        rows, ref = np.stack([r.row for r in results]), np.stack([r.row for r in reference])
        cosine = cosine_rows(rows, ref)
        diff = np.abs(rows.astype(np.float64) - ref.astype(np.float64))
        same = float((rows.argmax(axis=1) == ref.argmax(axis=1)).mean())
        return {"agreement": same, "top1_agreement": same, "cosine_mean": float(cosine.mean()),
                "cosine_min": float(cosine.min()), "max_abs_diff": float(diff.max()),
                "mean_abs_diff": float(diff.mean())}

