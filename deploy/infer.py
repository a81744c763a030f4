"""Batched inference over images: top-k per image, a JSON with every result, and a one-line summary."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from deploy.cache import atomic_write_json
from deploy.config.loader import DeployConfig
from deploy.data.sources import IMAGE_SUFFIXES, ImageItem, iter_batches, list_images, load_label_names
from deploy.errors import DataError
from deploy.tasks.classification import Prediction, topk
from deploy.engines.paddle import Predictor
from deploy.engines.plan import resolve_plan
from deploy.data.pipeline import ImagePipeline

log = logging.getLogger(__name__)
CONSOLE_LIMIT = 20  # print every prediction up to this many images, then only the summary


@dataclass
class InferenceSummary:
    """Counts and speed of one run."""

    images: int
    failures: int
    seconds: float
    top1: Optional[float] = None  # over images with a known label
    labelled: int = 0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        acc = f", top-1 {100 * self.top1:.2f}% over {self.labelled} labelled" if self.top1 is not None else ""
        return (f"summary: {self.images} images, {self.failures} failures, {self.images_per_s:.1f} images/s"
                f"{acc}")


def _result_record(item: ImageItem, pred: Prediction) -> dict:
    record = {"path": str(item.path), "topk_ids": pred.ids, "labels": pred.labels, "scores": pred.scores}
    if item.label is not None:
        record["label"] = item.label
    return record


def run_inference(cfg: DeployConfig, *, images: Optional[str] = None, output: Optional[Path] = None,
                  quiet: bool = False) -> InferenceSummary:
    """Run the configured predictor over ``images`` (default: data.images) and report top-k."""
    source = images or cfg.data.images
    if source is None:
        raise DataError("no images to run: pass --image FILE|DIR|LIST or set data.images in the config")
    plan = resolve_plan(cfg, quiet=quiet)
    label_names = load_label_names(cfg.postprocess.label_list)
    items = list_images(source, label_names)
    single = Path(str(source)).is_file() and Path(str(source)).suffix.lower() in IMAGE_SUFFIXES
    log.info("running %s", plan.describe())
    pipeline = ImagePipeline(cfg.preprocess)
    failures: list[str] = []

    def skip(item: ImageItem, err: DataError) -> None:
        failures.append(str(item.path))
        log.warning("skipped %s", err)

    records, correct, labelled = [], 0, 0
    with Predictor(plan) as predictor, tqdm(total=len(items), disable=quiet, unit="img", desc="infer") as bar:
        start = time.perf_counter()
        for batch in iter_batches(items, pipeline, cfg.runtime.batch_size, None if single else skip, bar.update):
            preds = topk(predictor.run(batch.array), cfg.postprocess.topk, label_names, cfg.postprocess.softmax)
            for item, pred in zip(batch.items, preds):
                records.append(_result_record(item, pred))
                if item.label is not None:
                    labelled += 1
                    correct += int(pred.ids[0] == item.label)
        seconds = time.perf_counter() - start
    summary = InferenceSummary(len(records), len(failures), seconds, correct / labelled if labelled else None,
                               labelled)
    if not quiet:
        _print_predictions(records)
    if output is not None:
        atomic_write_json(output, {"plan": plan.describe(), "results": records, "failures": failures,
                                   "summary": {**asdict(summary), "images_per_s": summary.images_per_s}})
        log.info("wrote %s", output)
    return summary


def _print_predictions(records: list[dict]) -> None:
    for record in records[:CONSOLE_LIMIT]:
        top = ", ".join(f"{name} {score:.3f}" for name, score in zip(record["labels"], record["scores"]))
        print(f"{record['path']}: {top}")
    if len(records) > CONSOLE_LIMIT:
        print(f"... {len(records) - CONSOLE_LIMIT} more (use --output FILE for all results)")
