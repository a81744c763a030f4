"""Batched inference over images for any task: one result per image (console and JSON, in input order) and a
one-line summary with the task's metric when labels are known."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from deploy.cache import atomic_write_json, check_output_file
from deploy.config.loader import DeployConfig
from deploy.data.pipeline import ImagePipeline
from deploy.data.sources import ImageItem, Loading, iter_batches, list_images, nothing_read
from deploy.engines.factory import create_predictor
from deploy.engines.plan import resolve_plan
from deploy.errors import DataError
from deploy.tasks.base import Metrics, Task
from deploy.tasks.registry import build_task

log = logging.getLogger(__name__)
CONSOLE_LIMIT = 20  # print every result up to this many images, then only the summary


@dataclass
class InferenceSummary:
    """Counts, speed, and the task's metrics over the labelled images."""

    task: Task
    images: int
    failures: int
    seconds: float
    metrics: Optional[Metrics] = None  # None when no image has a label
    labelled: int = 0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        score = (f", {self.task.headline(self.metrics)} over {self.labelled} labelled"
                 if self.metrics is not None else "")
        return f"summary: {self.images} images, {self.failures} failures, {self.images_per_s:.1f} images/s{score}"

    def to_json(self) -> dict:
        return {"task": self.task.name, "images": self.images, "failures": self.failures, "seconds": self.seconds,
                "images_per_s": self.images_per_s, "labelled": self.labelled, **(self.metrics or {})}


def result_record(task: Task, path: Path, result: Any, label: Any = None) -> dict:
    """One image's record (tools/infer.py --output and tools/batch_infer.py): path, the task's result keys, and
    the label as JSON when known."""
    return {"path": str(path), **task.record(result), **({"label": label} if label is not None else {})}


def failure_record(path: Path, error: str) -> dict:
    """The record of an image that could not be read (tools/batch_infer.py writes it in place of a result)."""
    return {"path": str(path), "error": error}


def run_inference(cfg: DeployConfig, *, images: Optional[str] = None, output: Optional[Path] = None,
                  quiet: bool = False) -> InferenceSummary:
    """Run the configured predictor over ``images`` (default: data.images) and post-process with the task."""
    source = images or cfg.data.images
    if source is None:
        raise DataError("no images to run: pass --image FILE|DIR|LIST or set data.images in the config")
    if output is not None:
        check_output_file(output, "--output")  # before the run, not after all the work
    plan = resolve_plan(cfg, quiet=quiet)
    task = build_task(cfg)
    items = list_images(source, task)
    single = len(items) == 1 and items[0].path == Path(str(source))  # an image, not a folder or list of one
    log.info("running %s (%s)", plan.describe(), task.name)
    failures: list[str] = []
    errors: list[DataError] = []

    def skip(item: ImageItem, err: DataError) -> None:
        failures.append(str(item.path))
        errors.append(err)
        log.warning("skipped %s", err)

    done: list[tuple[ImageItem, Any]] = []
    with create_predictor(plan) as predictor, \
            tqdm(total=len(items), disable=quiet, unit="img", desc="infer") as bar:
        start = time.perf_counter()
        for batch in iter_batches(items, ImagePipeline(cfg.preprocess), cfg.runtime.batch_size,
                                  None if single else skip, bar.update,
                                  Loading.of(cfg.runtime, predictor.releases_gil)):
            done.extend(zip(batch.items, task.predict(predictor, batch)))
        seconds = time.perf_counter() - start
    if not done:
        raise nothing_read(len(items), "images", errors[0], source)
    done.sort(key=lambda pair: pair[0].index)  # batches group equal shapes: back to input order
    labelled = [(item, result) for item, result in done if item.label is not None]
    metrics = task.score([r for _, r in labelled], [i.label for i, _ in labelled]) if labelled else None
    summary = InferenceSummary(task, len(done), len(failures), seconds, metrics, len(labelled))
    if not quiet:
        _print_results(task, done)
    if output is not None:
        records = [result_record(task, item.path, result,
                                 task.label_json(item.label) if item.label is not None else None)
                   for item, result in done]
        atomic_write_json(output, {"plan": plan.describe(), "task": task.name, "results": records,
                                   "failures": failures, "summary": summary.to_json()})
        log.info("wrote %s", output)
    return summary


def _print_results(task: Task, done: list[tuple[ImageItem, Any]]) -> None:
    for item, result in done[:CONSOLE_LIMIT]:
        print(f"{item.path}: {task.describe(result)}")
    if len(done) > CONSOLE_LIMIT:
        print(f"... {len(done) - CONSOLE_LIMIT} more (use --output FILE for all results)")
