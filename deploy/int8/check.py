"""The INT8 check: an INT8 model scored against the FP32 one on images that did not calibrate it.

The score is the task's own: its headline metric when the check images are labelled, else its agreement with the
FP32 run on the same images (no labels needed: the user's own images). The drop is in points (FP32 minus INT8,
x100). The default check images are the calibration source's images that the seeded sample did not take, so a
check never reuses a calibration image.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

from deploy import cache
from deploy.config.loader import DeployConfig
from deploy.data.sources import ImageItem, list_images, seeded_order
from deploy.engines.model import ModelFiles
from deploy.engines.plan import PredictorPlan, resolve_plan
from deploy.errors import DataError
from deploy.evalset import EvalSet, predict_set, preprocess_set, spaced_subset
from deploy.tasks.base import Task

log = logging.getLogger(__name__)
WARN_POINTS = 1.0  # without --max-drop, a drop over this many points is warned about


@dataclass
class CheckSet:
    """The preprocessed check images and where they came from."""

    source: str  # what the report says: a path, or "N images of SRC not sampled for calibration"
    eval_set: EvalSet
    held_out: bool

    @property
    def count(self) -> int:
        return len(self.eval_set.items)

    @property
    def labelled(self) -> bool:
        return self.eval_set.labelled == len(self.eval_set.items)

    def fingerprint(self) -> str:
        """sha256 of the sorted image paths."""
        return cache.sha256_text("\n".join(sorted(str(i.path) for i in self.eval_set.items)))

    def to_json(self) -> dict:
        return {"source": self.source, "images": self.count, "images_sha256": self.fingerprint(),
                "held_out": self.held_out, "labelled": self.labelled}


def held_out_items(cfg: DeployConfig, task: Task, source: str, used: Sequence[ImageItem]) -> list[ImageItem]:
    """The calibration source's images the sample did not take, in the same seeded order (labels read)."""
    taken = {str(i.path) for i in used}
    return [item for item in seeded_order(list_images(source, task), cfg.calibration.seed)
            if str(item.path) not in taken]


def load_check_set(cfg: DeployConfig, task: Task, calib_source: str, calib_items: Sequence[ImageItem], *,
                   quiet: bool = False) -> Optional[CheckSet]:
    """calibration.check_images (check_num of them, evenly spaced), else check_num held-out calibration images;
    None when check_num is 0, or when no calibration image was left over (logged, with what to set)."""
    settings = cfg.calibration
    if settings.check_num == 0:
        return None
    if settings.check_images is not None:
        items = spaced_subset(list_images(settings.check_images, task), settings.check_num)
        return CheckSet(str(settings.check_images), preprocess_set(cfg, items, str(settings.check_images),
                                                                   quiet=quiet), held_out=False)
    items = held_out_items(cfg, task, calib_source, calib_items)[:settings.check_num]
    if not items:
        if settings.max_drop is not None:
            raise DataError(f"--max-drop needs check images, and all {len(calib_items)} images of {calib_source} "
                            "calibrated the model; pass --check-images DIR (labelled or not), or add images to "
                            "the calibration source")
        log.warning("INT8 not checked: all %d images of %s calibrated the model; pass --check-images DIR (or set "
                    "calibration.check_images) to score INT8 against FP32", len(calib_items), calib_source)
        return None
    source = f"{len(items)} images of {calib_source} not sampled for calibration"
    return CheckSet(source, preprocess_set(cfg, items, calib_source, quiet=quiet), held_out=True)


def fp32_plan(cfg: DeployConfig) -> PredictorPlan:
    """The FP32 run the check compares with: the same device and backend."""
    return resolve_plan(replace(cfg, runtime=replace(cfg.runtime, precision="fp32")), quiet=True)


def candidate_plan(reference: PredictorPlan, model: ModelFiles, *, simulated: bool = False) -> PredictorPlan:
    """An INT8 run of a quantized model that is not installed yet (a staged or trial artifact). ``simulated``: the
    model's Q/DQ ops run in FP32 (each rounds to its INT8 grid, as TensorRT's explicit quantization does) instead of
    the engine's own INT8 kernels."""
    if simulated:
        return replace(reference, model=model)
    runtime = replace(reference.runtime, precision="int8")
    return replace(reference, precision="int8", runtime=runtime, model=model, int8_mode="quantized")


@dataclass
class Scorer:
    """Scores results on the check set: the task's headline metric (labelled) or agreement with FP32."""

    task: Task
    check: CheckSet
    reference: list[Any]  # the FP32 results
    key: str
    header: str
    fp32: float
    simulated: bool = False  # candidates run their Q/DQ ops in FP32 (candidate_plan)

    def value(self, results: Sequence[Any]) -> float:
        """The score of results for the whole check set."""
        return self.value_on(results, range(len(results)))

    def value_on(self, results: Sequence[Any], indices: Sequence[int]) -> float:
        """The score of results for the check images at ``indices`` (in that order)."""
        if self.check.labelled:
            labels = self.check.eval_set.labels
            value = self.task.score(results, [labels[i] for i in indices])[self.key]
        else:
            value = self.task.agreement(results, [self.reference[i] for i in indices])[self.key]
        return float(value if value is not None else 0.0)

    def drop(self, value: float) -> float:
        """FP32 minus ``value``, in points."""
        return round(100 * (self.fp32 - value), 4)

    def run(self, plan: PredictorPlan, *, quiet: bool = True, desc: str = "check") -> tuple[float, list[Any]]:
        """A plan's value on the check set, and its results."""
        results, _ = predict_set(plan, self.task, self.check.eval_set, quiet=quiet, desc=desc)
        return self.value(results), results

    def to_json(self) -> dict:
        return {"metric": self.key, "header": self.header, "fp32": round(self.fp32, 6)}


def reference_scorer(task: Task, check: CheckSet, reference: PredictorPlan, *, quiet: bool = False,
                     simulated: bool = False) -> Scorer:
    """Run FP32 on the check set once; its results are what agreement compares with."""
    results, _ = predict_set(reference, task, check.eval_set, quiet=quiet, desc="check fp32")
    column = task.metrics[0] if check.labelled else task.agreements[0]
    scorer = Scorer(task, check, results, column.key, column.header, 1.0, simulated)
    scorer.fp32 = scorer.value(results)
    return scorer


def check_line(scorer: Scorer, results: Sequence[Any]) -> str:
    """'INT8 agrees with FP32 on N held-out images: X (metric Y)' for the INT8 ``results``."""
    where = "held-out images" if scorer.check.held_out else f"images of {scorer.check.source}"
    column = scorer.task.agreements[0]
    agreement = scorer.task.agreement(results, scorer.reference)[column.key]
    line = f"INT8 agrees with FP32 on {scorer.check.count} {where}: {_pct(agreement)} ({column.header})"
    if scorer.check.labelled:
        value = scorer.value(results)
        line += (f"; {scorer.header} {_pct(value)} vs FP32 {_pct(scorer.fp32)}, "
                 f"{scorer.drop(value):+.2f} pt")
    return line


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
