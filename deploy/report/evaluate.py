"""Accuracy of each run on a labelled image set, and how closely each run's outputs follow the FP32 reference.

The images are decoded and preprocessed once; every run (and every calibration-sweep model) is fed exactly the
same arrays, so a difference between runs comes from the model and precision, never from the input.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from deploy.data.sources import ImageItem, iter_batches, list_images, load_label_names
from deploy.errors import DataError
from deploy.engines.paddle import Predictor
from deploy.data.pipeline import ImagePipeline
from deploy.report.runs import Run

log = logging.getLogger(__name__)
TOPK = 5


@dataclass
class EvalOptions:
    """What ``evaluate`` runs on: an image source (default data.images), an optional subset, a sweep."""

    images: Optional[str] = None
    limit: Optional[int] = None  # evaluate this many images, evenly spaced over the sorted set
    calib_sweep: list[int] = field(default_factory=list)  # calibration-set sizes to try (INT8 of -c)


@dataclass
class EvalSet:
    """The preprocessed images, in batches, with their labels (-1 where unknown)."""

    source: str
    items: list[ImageItem]
    batches: list[np.ndarray]
    labels: np.ndarray
    skipped: int = 0

    @property
    def labelled(self) -> int:
        return int((self.labels >= 0).sum())


@dataclass
class OutputMetrics:
    """Accuracy against the labels and agreement with the reference outputs, for one set of outputs."""

    top1: Optional[float]
    top5: Optional[float]
    top1_agreement: float
    cosine_mean: float
    cosine_min: float
    max_abs_diff: float
    mean_abs_diff: float


@dataclass
class RunAccuracy:
    """One run's metrics over the evaluation set."""

    label: str
    metrics: OutputMetrics
    seconds: float

    def to_json(self) -> dict:
        return {"label": self.label, **asdict(self.metrics), "seconds": round(self.seconds, 4)}


@dataclass
class EvalResult:
    """Every run's metrics, plus the calibration sweep when one was asked for."""

    source: str
    images: int
    labelled: int
    skipped: int
    batch_size: int
    reference: str
    results: list[RunAccuracy]
    sweep: Optional[dict] = None

    def to_json(self) -> dict:
        return {"source": self.source, "images": self.images, "labelled": self.labelled, "skipped": self.skipped,
                "batch_size": self.batch_size, "reference": self.reference,
                "results": [r.to_json() for r in self.results]}


def spaced_subset(items: list[ImageItem], limit: Optional[int]) -> list[ImageItem]:
    """``limit`` items evenly spaced over ``items`` (every class of a sorted folder stays represented)."""
    if limit is None or limit >= len(items):
        return items
    if limit < 1:
        raise DataError(f"--limit must be >= 1, got {limit}")
    return [items[i * len(items) // limit] for i in range(limit)]


def load_eval_set(run: Run, *, images: Optional[str] = None, limit: Optional[int] = None,
                  quiet: bool = False) -> EvalSet:
    """Decode and preprocess the evaluation images once, with the reference run's pipeline and batch size."""
    cfg = run.cfg
    source = images or cfg.data.images
    if source is None:
        raise DataError("no images to evaluate: pass --image DIR|LIST or set data.images in the config")
    items = spaced_subset(list_images(source, load_label_names(cfg.postprocess.label_list)), limit)
    skipped: list[ImageItem] = []

    def skip(item: ImageItem, err: DataError) -> None:
        skipped.append(item)
        log.warning("skipped %s", err)

    kept, batches = [], []
    with tqdm(total=len(items), disable=quiet, unit="img", desc="preprocess") as bar:
        for batch in iter_batches(items, ImagePipeline(cfg.preprocess), cfg.runtime.batch_size, skip, bar.update):
            kept.extend(batch.items)
            batches.append(batch.array)
    if not kept:
        raise DataError(f"no readable images in {source} ({len(skipped)} unreadable)")
    labels = np.array([-1 if i.label is None else i.label for i in kept], dtype=np.int64)
    if not (labels >= 0).any():
        log.warning("no image in %s has a label (folder per class or list file 'path label'): top-1/top-5 "
                    "are not computed, agreement with %s is", source, run.label)
    return EvalSet(str(source), kept, batches, labels, len(skipped))


def run_outputs(run: Run, eval_set: EvalSet, *, quiet: bool = False) -> tuple[np.ndarray, float]:
    """All outputs of one run over the set, as [images, values] float32, and the seconds it took."""
    with Predictor(run.plan) as predictor:
        start = time.perf_counter()
        outputs = [predictor.run(b) for b in tqdm(eval_set.batches, disable=quiet, unit="batch", desc=run.label)]
        seconds = time.perf_counter() - start
    flat = np.concatenate([o.reshape(o.shape[0], -1) for o in outputs]).astype(np.float32)
    return flat, seconds


def topk_accuracy(outputs: np.ndarray, labels: np.ndarray, k: int) -> Optional[float]:
    """Share of labelled rows whose label is among the k highest outputs (ties: lower class id first)."""
    known = labels >= 0
    if not known.any():
        return None
    order = np.argsort(-outputs[known], axis=1, kind="stable")[:, :k]
    return float((order == labels[known, None]).any(axis=1).mean())


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity (1 when both rows are zero, 0 when only one is)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    dots = (a64 * b64).sum(axis=1)
    both_zero = (np.linalg.norm(a64, axis=1) == 0) & (np.linalg.norm(b64, axis=1) == 0)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))


def output_metrics(outputs: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> OutputMetrics:
    """Top-1/top-5 against ``labels`` and agreement with ``reference`` (same images, same order)."""
    if outputs.shape != reference.shape:
        raise DataError(f"outputs have shape {list(outputs.shape)} but the reference outputs {list(reference.shape)}; "
                        "compared runs must produce outputs of the same size")
    cosine = cosine_rows(outputs, reference)
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    return OutputMetrics(
        top1=topk_accuracy(outputs, labels, 1),
        top5=topk_accuracy(outputs, labels, min(TOPK, outputs.shape[1])),
        top1_agreement=float((outputs.argmax(axis=1) == reference.argmax(axis=1)).mean()),
        cosine_mean=float(cosine.mean()),
        cosine_min=float(cosine.min()),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
    )


def evaluate(runs: Sequence[Run], options: EvalOptions, *, quiet: bool = False) -> EvalResult:
    """Run every run over the same preprocessed images; the first run is the reference."""
    reference = runs[0]
    if options.calib_sweep:
        from deploy.report.calib_sweep import check_sweepable

        check_sweepable(reference)
    eval_set = load_eval_set(reference, images=options.images, limit=options.limit, quiet=quiet)
    log.info("evaluating %d images from %s (%d labelled)", len(eval_set.items), eval_set.source, eval_set.labelled)
    outputs: dict[str, np.ndarray] = {}
    results = []
    for run in runs:
        outputs[run.label], seconds = run_outputs(run.with_batch_size(reference.cfg.runtime.batch_size), eval_set,
                                                  quiet=quiet)
        metrics = output_metrics(outputs[run.label], eval_set.labels, outputs[reference.label])
        results.append(RunAccuracy(run.label, metrics, seconds))
    result = EvalResult(eval_set.source, len(eval_set.items), eval_set.labelled, eval_set.skipped,
                        reference.cfg.runtime.batch_size, reference.label, results)
    if options.calib_sweep:
        from deploy.report.calib_sweep import calibration_sweep

        result.sweep = calibration_sweep(reference, eval_set, outputs[reference.label], options.calib_sweep,
                                         quiet=quiet)
    return result

