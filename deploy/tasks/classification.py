"""Outputs -> top-k predictions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class Prediction:
    """Top-k class ids, names and scores for one image."""

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
        preds.append(Prediction([int(i) for i in ids], [float(row[i]) for i in ids], names))
    return preds
