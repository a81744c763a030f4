"""Calibration-set-size sweep: recalibrate the reference model with N images for each N, in a scratch copy, and
measure the INT8 accuracy of each on the evaluation set, so users can see whether their calibration set is big
enough. The user's own model directory and calibration artifacts are never written.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from deploy.int8.calibration import calibrate
from deploy.config.loader import DeployConfig
from deploy.errors import CalibrationError
from deploy.engines.model import ModelFiles, inspect_model
from deploy.engines.plan import resolve_plan
from deploy.evalset import EvalSet
from deploy.report.evaluate import run_results, score_run
from deploy.report.runs import Run, RunSpec

log = logging.getLogger(__name__)


def check_sweepable(reference: Run) -> None:
    """A quantized model carries its own scales: there is nothing to recalibrate."""
    if inspect_model(reference.plan.model).quantized:
        raise CalibrationError(f"--calib-sweep recalibrates the -c model, but {reference.plan.model.program} is "
                               "already quantized (it carries its own scales); sweep with the FP32 model's config")


def copy_model(files: ModelFiles, scratch: Path) -> Path:
    """Copy the program and params into ``scratch`` (same file names) and return the directory."""
    scratch.mkdir(parents=True, exist_ok=True)
    for path in (files.program, files.params):
        shutil.copy2(path, scratch / path.name)
    return scratch


def scratch_config(cfg: DeployConfig, model_dir: Path, num_images: int) -> DeployConfig:
    """A copy of ``cfg`` that calibrates and runs INT8 from ``model_dir`` and writes nothing anywhere else."""
    runtime = replace(cfg.runtime, precision="int8", trt=replace(cfg.runtime.trt, cache_dir=None))
    return replace(cfg, model=replace(cfg.model, dir=model_dir, file=None, params=None, build=None),
                   runtime=runtime, calibration=replace(cfg.calibration, num_images=num_images, output_dir=None))


def sweep_point(reference: Run, eval_set: EvalSet, reference_results: Sequence[Any], num_images: int,
                model_dir: Path, *, quiet: bool) -> dict:
    """Calibrate with ``num_images`` images in ``model_dir`` and evaluate the INT8 result."""
    cfg = scratch_config(reference.cfg, model_dir, num_images)
    calibrated = calibrate(cfg, num_images=num_images, allow_fewer=False, quiet=quiet,
                           check=False)  # the sweep scores each size on the evaluation set itself
    run = Run(RunSpec(f"int8@{num_images}", reference.spec.config, "int8"), cfg, resolve_plan(cfg, quiet=True),
              reference.task)
    results, _ = run_results(run, eval_set, quiet=quiet)
    metrics, agreement = score_run(reference.task, results, eval_set, reference_results)
    log.info("calibration with %d images: %s, agreement %.4f", calibrated.images, reference.task.headline(metrics),
             agreement["agreement"])
    return {"num_images": calibrated.images, **metrics, **agreement,
            "calibration_seconds": round(calibrated.seconds, 3)}


def calibration_sweep(reference: Run, eval_set: EvalSet, reference_results: Sequence[Any], sizes: Sequence[int], *,
                      quiet: bool = False) -> dict:
    """Recalibrate a scratch copy of the reference model at each size; INT8 metrics per size."""
    cfg = reference.cfg
    with tempfile.TemporaryDirectory(prefix="calib_sweep-") as tmp:
        model_dir = copy_model(reference.plan.model, Path(tmp) / "model")
        points = [sweep_point(reference, eval_set, reference_results, n, model_dir, quiet=quiet)
                  for n in sorted(set(sizes))]
    return {"config": str(cfg.source or reference.spec.config), "algo": cfg.calibration.algo,
            "calibration_images": str(cfg.calibration.images), "seed": cfg.calibration.seed, "results": points}
