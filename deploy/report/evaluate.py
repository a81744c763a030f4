"""Each run's task metric on a labelled image set, and how closely each run's results follow the FP32 reference's.

The images are decoded and preprocessed once; every run (and every calibration-sweep model) is fed exactly the
same batches, so a difference between runs comes from the model and precision, never from the input. What the
metric and the agreement are is the task's business (tasks/*.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from deploy.data.sources import list_images
from deploy.errors import DataError
from deploy.evalset import EvalSet, predict_set, preprocess_set, spaced_subset
from deploy.report.runs import Run
from deploy.tasks.base import Metrics, Task

log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """What ``evaluate`` runs on: an image source (default data.images), an optional subset, a sweep."""

    images: Optional[str] = None
    limit: Optional[int] = None  # evaluate this many images, evenly spaced over the sorted set
    calib_sweep: list[int] = field(default_factory=list)  # calibration-set sizes to try (INT8 of -c)


@dataclass
class RunAccuracy:
    """One run's task metrics and its agreement with the reference run."""

    label: str
    metrics: Metrics
    agreement: Metrics
    seconds: float

    def to_json(self) -> dict:
        return {"label": self.label, **self.metrics, **self.agreement, "seconds": round(self.seconds, 4)}


def metric_columns(task: Task) -> dict:
    """The report's column spec for a task (report.json accuracy.columns): metric keys, then agreement keys."""
    return {"metrics": [c.to_json() for c in task.metrics], "agreement": [c.to_json() for c in task.agreements]}


@dataclass
class EvalResult:
    """Every run's metrics; the evaluation set and the reference's results stay for the calibration sweep."""

    task: Task
    source: str
    images: int
    labelled: int
    skipped: int
    batch_size: int
    reference: str
    results: list[RunAccuracy]
    eval_set: EvalSet
    reference_results: list[Any]

    def to_json(self) -> dict:
        return {"task": self.task.name, "columns": metric_columns(self.task), "source": self.source,
                "images": self.images, "labelled": self.labelled, "skipped": self.skipped,
                "batch_size": self.batch_size, "reference": self.reference,
                "results": [r.to_json() for r in self.results]}


def load_eval_set(run: Run, *, images: Optional[str] = None, limit: Optional[int] = None,
                  quiet: bool = False) -> EvalSet:
    """Decode and preprocess the evaluation images once, with the reference run's pipeline and batch size."""
    cfg = run.cfg
    source = images or cfg.data.images
    if source is None:
        raise DataError("no images to evaluate: pass --image DIR|LIST or set data.images in the config")
    eval_set = preprocess_set(cfg, spaced_subset(list_images(source, run.task), limit), str(source), quiet=quiet)
    if not eval_set.labelled:
        log.warning("no image in %s has a label (a folder per class, or a list file of 'path<TAB>label' lines): "
                    "the %s metrics are not computed, agreement with %s is", source, run.task.name, run.label)
    return eval_set


def run_results(run: Run, eval_set: EvalSet, *, quiet: bool = False) -> tuple[list[Any], float]:
    """One run's results over the set (in the set's order), and the seconds it took (inference + post-processing)."""
    return predict_set(run.plan, run.task, eval_set, quiet=quiet, desc=run.label)


def score_run(task: Task, results: Sequence[Any], eval_set: EvalSet, reference: Sequence[Any]) -> tuple[Metrics,
                                                                                                        Metrics]:
    """(metrics against the labels, agreement with the reference results)."""
    labels = eval_set.labels
    metrics = task.score(results, labels) if eval_set.labelled else {c.key: None for c in task.metrics}
    return metrics, task.agreement(results, reference)


def evaluate(runs: Sequence[Run], options: EvalOptions, *, quiet: bool = False) -> EvalResult:
    """Run every run over the same preprocessed images; the first run is the reference."""
    reference = runs[0]
    eval_set = load_eval_set(reference, images=options.images, limit=options.limit, quiet=quiet)
    log.info("evaluating %d images from %s (%d labelled)", len(eval_set.items), eval_set.source, eval_set.labelled)
    by_label: dict[str, list[Any]] = {}
    accuracies = []
    for run in runs:
        by_label[run.label], seconds = run_results(run.with_batch_size(reference.cfg.runtime.batch_size), eval_set,
                                                   quiet=quiet)
        metrics, agreement = score_run(reference.task, by_label[run.label], eval_set, by_label[reference.label])
        accuracies.append(RunAccuracy(run.label, metrics, agreement, seconds))
    return EvalResult(reference.task, eval_set.source, len(eval_set.items), eval_set.labelled, eval_set.skipped,
                      reference.cfg.runtime.batch_size, reference.label, accuracies, eval_set,
                      by_label[reference.label])
