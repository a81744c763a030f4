"""TensorRT shape ranges for ``runtime.trt.dynamic_shape.mode: tuned``: collect them from real images, check them.

The collect run is a native predictor (GPU when there is one, else CPU: Paddle 3.3.1 collects on CPU too) with
``collect_shape_range_info``, fed the calibration images through the inference preprocessing, in full batches
and one image of each shape alone, so the ranges span batch 1 to runtime.batch_size. Paddle writes the file when the
predictor is destroyed; we collect into a staging dir and install the finished file atomically, with its
provenance in ``_opt_cache/calibration.json`` (target ``shapes``).
"""
from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from deploy import cache
from deploy.config.loader import DeployConfig
from deploy.data.sources import Batch
from deploy.engines.paddle import Predictor
from deploy.engines.plan import SHAPES_MANIFEST_TARGET, resolve_plan, shape_file
from deploy.errors import CalibrationError
from deploy.int8.calibration import load_calibration_set

log = logging.getLogger(__name__)

ShapeRange = dict[str, list[int]]  # {"min": [...], "opt": [...], "max": [...]}


@dataclass
class ShapeCollection:
    """What a collect run produced."""

    path: Path
    images: int
    batches: int
    seconds: float
    device: str
    inputs: dict[str, ShapeRange] = field(default_factory=dict)

    def line(self) -> str:
        ranges = "; ".join(f"{name}: min {r['min']} opt {r['opt']} max {r['max']}" for name, r in self.inputs.items())
        return (f"collected TensorRT shape ranges on {self.device} from {self.images} images ({self.batches} runs) "
                f"in {self.seconds:.1f} s: {self.path} ({ranges})")


_ENTRY = re.compile(r"shape_range_info\s*\{(.*?)\}", re.S)


def read_shape_ranges(path: Path) -> dict[str, ShapeRange]:
    """Parse Paddle's shape_range_info.pbtxt: {tensor name: {min, opt, max}} (text protobuf, one entry per tensor)."""
    ranges: dict[str, ShapeRange] = {}
    for body in _ENTRY.findall(Path(path).read_text()):
        name = re.search(r'name:\s*"([^"]*)"', body)
        if name is None:
            continue
        ranges[name.group(1)] = {key: [int(v) for v in re.findall(rf"\b{key}_shape:\s*(-?\d+)", body)]
                                 for key in ("min", "opt", "max")}
    return ranges


def collect_shapes(cfg: DeployConfig, *, images: Optional[str] = None, num_images: Optional[int] = None,
                   allow_fewer: Optional[bool] = None, quiet: bool = False) -> ShapeCollection:
    """Run the calibration images through a native predictor recording shape ranges; install the file."""
    native = replace(cfg, runtime=replace(cfg.runtime, backend="paddle", precision="fp32"))
    plan = resolve_plan(native, quiet=quiet)
    final = shape_file(plan)
    calib = load_calibration_set(native, source=images, num_images=num_images, allow_fewer=allow_fewer,
                                 quiet=quiet)
    singles = {batch.array.shape[1:]: Batch(batch.items[:1], batch.array[:1], batch.records[:1])
               for batch in calib.batches if batch.array.shape[0] > 1}
    runs = list(calib.batches) + list(singles.values())  # batch 1 of every image shape: the ranges start at 1
    cache.prepare_install(plan.model, final)
    scratch = cache.staging_dir(final)
    start = time.perf_counter()
    try:
        collected = scratch / final.name
        with Predictor(replace(plan, collect_shapes=collected)) as predictor:
            for batch in tqdm(runs, disable=quiet, unit="batch", desc="collect shapes"):
                predictor.run(calib.task.feeds(batch, predictor.input_names))
            input_names = predictor.input_names
        # Leaving the with-block destroyed the predictor: only now has Paddle written the file.
        if not collected.is_file() or collected.stat().st_size == 0:
            raise CalibrationError(f"Paddle wrote no shape range file after {len(runs)} runs on {plan.device}; "
                                   "run with a GPU build, or check the log for Paddle errors")
        ranges = read_shape_ranges(collected)
        entry = {"config": str(cfg.source), "model": cache.model_fingerprint(plan.model),
                 "images_sha256": calib.fingerprint(), "images_source": calib.source, "num_images": calib.count,
                 "batch_size": cfg.runtime.batch_size, "device": plan.device,
                 "artifacts": {"dir": str(final.parent), "files": cache.artifact_fingerprint([collected])}}
        staged = cache.stage_file(final, collected.read_bytes())
        cache.install(cache.manifest_path(plan.model), [(staged, final)],
                      (SHAPES_MANIFEST_TARGET, cache.new_entry(entry)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    inputs = {name: ranges[name] for name in input_names if name in ranges}
    result = ShapeCollection(final, calib.count, len(runs), time.perf_counter() - start, plan.device, inputs)
    log.info("wrote %s; its provenance is in %s", final, cache.opt_cache_dir(plan.model) / cache.MANIFEST_NAME)
    return result


