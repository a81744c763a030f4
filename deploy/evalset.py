"""The image set a comparison scores on, decoded and preprocessed once, and a plan's results over it: what the
precision report (report/) and the INT8 check (int8/) both run on, so both feed every run exactly the same
batches."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from tqdm import tqdm

from deploy.config.loader import DeployConfig
from deploy.data.pipeline import ImagePipeline
from deploy.data.sources import Batch, ImageItem, Loading, iter_batches
from deploy.engines.factory import create_predictor
from deploy.engines.plan import PredictorPlan
from deploy.errors import DataError
from deploy.tasks.base import Task

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """The preprocessed images, in batches, with their labels (None where unknown) in batch order."""

    source: str
    items: list[ImageItem]
    batches: list[Batch]
    skipped: int = 0

    @property
    def labels(self) -> list[Any]:
        return [item.label for item in self.items]

    @property
    def labelled(self) -> int:
        return sum(item.label is not None for item in self.items)


def spaced_subset(items: list[ImageItem], limit: Optional[int]) -> list[ImageItem]:
    """``limit`` items evenly spaced over ``items`` (every class of a sorted folder stays represented)."""
    if limit is None or limit >= len(items):
        return items
    if limit < 1:
        raise DataError(f"--limit must be >= 1, got {limit}")
    return [items[i * len(items) // limit] for i in range(limit)]


def preprocess_set(cfg: DeployConfig, items: Sequence[ImageItem], source: str, *, quiet: bool = False) -> EvalSet:
    """``items`` decoded and preprocessed once with the config's pipeline, in batches of runtime.batch_size
    (unreadable images are skipped with a warning; none readable is an error)."""
    skipped: list[ImageItem] = []

    def skip(item: ImageItem, err: DataError) -> None:
        skipped.append(item)
        log.warning("skipped %s", err)

    kept, batches = [], []
    with tqdm(total=len(items), disable=quiet, unit="img", desc="preprocess") as bar:
        for batch in iter_batches(list(items), ImagePipeline(cfg.preprocess), cfg.runtime.batch_size, skip,
                                  bar.update, Loading.of(cfg.runtime, overlaps=False)):  # no run to overlap yet
            kept.extend(batch.items)
            batches.append(batch)
    if not kept:
        raise DataError(f"no readable images in {source} ({len(skipped)} unreadable)")
    return EvalSet(source, kept, batches, len(skipped))


def predict_set(plan: PredictorPlan, task: Task, eval_set: EvalSet, *, quiet: bool = False,
                desc: str = "predict") -> tuple[list[Any], float]:
    """A plan's results over the set (in the set's order), and the seconds it took (inference + post-processing)."""
    results: list[Any] = []
    with create_predictor(plan) as predictor:
        start = time.perf_counter()
        for batch in tqdm(eval_set.batches, disable=quiet, unit="batch", desc=desc, leave=False):
            results.extend(task.predict(predictor, batch))
        seconds = time.perf_counter() - start
    return results, seconds
