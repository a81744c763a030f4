"""The GPU acceptance matrix of one config: every engine and precision a GPU user would deploy it with, run through
the same evaluation and benchmark as tools/eval.py and tools/benchmark.py, plus TensorRT's engine cache reused after a
restart. What runs depends on the machine: the TensorRT version decides the INT8 paths (implicit calibration before
11, explicit Q/DQ from 8.5.1) and FP16 on TensorRT (not on 11); the model's inputs decide the shape modes (static when
only the batch varies; tuned shape ranges always).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from deploy import cache
from deploy.config.loader import load_config
from deploy.engines.model import ensure_model, inspect_model
from deploy.env import Environment, default_device, format_env, capability_rows, support_reason, trt_int8_reasons
from deploy.errors import UnsupportedError
from deploy.report.benchmark import BenchOptions
from deploy.report.evaluate import EvalOptions
from deploy.report.report import precision_report
from deploy.report.runs import RunSpec
from deploy.table import format_table

TOOLS = Path(__file__).resolve().parents[2] / "tools"
ENGINE_DIR = "runtime.trt.cache_dir="
SHAPES = {"static": "runtime.trt.dynamic_shape.mode=off", "tuned": "runtime.trt.dynamic_shape.mode=tuned"}


@dataclass
class Step:
    """One row of the matrix: a preparation command, or a run of the report (skipped with a reason)."""

    label: str
    what: str
    overrides: tuple[str, ...] = ()
    config: Optional[Path] = None
    precision: str = "fp32"
    skip: Optional[str] = None

    def spec(self) -> RunSpec:
        return RunSpec(self.label, self.config, self.precision, self.overrides)


@dataclass
class Matrix:
    """What gpu_acceptance runs for a config on this machine."""

    config: Path
    prepare: list[list[str]] = field(default_factory=list)  # tool argv lists, run in order
    runs: list[Step] = field(default_factory=list)
    restart: list[Step] = field(default_factory=list)  # TensorRT runs built again in a fresh process, from their cache
    common: tuple[str, ...] = ()  # the overrides every (TensorRT) run has, printed once

    def text(self) -> str:
        lines = [f"GPU acceptance matrix of {self.config}", "", "prepare (in order):"]
        lines += [f"  python {' '.join(map(str, argv))}" for argv in self.prepare] or ["  nothing"]
        rows = [(s.label, s.what, s.skip and f"skipped: {s.skip}" or "runs",
                 " ".join(o for o in s.overrides if o not in self.common and not o.startswith(ENGINE_DIR)))
                for s in self.runs]
        lines += ["", "runs (accuracy and agreement vs native:fp32, latency p50/p90/p99, memory):",
                  format_table(("label", "what", "status", "overrides"), rows),
                  f"every run: {' '.join(self.common[:1])}; every TensorRT run: {' '.join(self.common[1:])}, its "
                  "engines in <output dir>/engines/<label>", "",
                  "engine cache after a restart (each run again in a fresh process, loading its engines): "
                  + (", ".join(s.label for s in self.restart) or "none")]
        return "\n".join(lines)


def _shape_modes(cfg_path: Path, overrides: Sequence[str], quiet: bool) -> list[str]:
    """static when the model's inputs vary only in batch (TensorRT needs no ranges), tuned always."""
    cfg = load_config(cfg_path, list(overrides))
    info = inspect_model(ensure_model(cfg.model, quiet=quiet))  # a shipped model builds itself on first use
    static = all(all(d > 0 for d in feed.shape[1:]) for feed in info.inputs)
    return (["static"] if static else []) + ["tuned"]


def build_matrix(cfg_path: Path, env: Environment, *, overrides: Sequence[str] = (),
                 qat: Optional[Path] = None, output_dir: Path, quiet: bool = True) -> Matrix:
    """The matrix for ``cfg_path`` (its model, preprocessing and data; its runtime is replaced run by run)."""
    cfg_path = Path(cfg_path)
    base = ("runtime.device=gpu", *overrides)
    trt = (*base, "runtime.backend=trt", "runtime.trt.use_static=true")
    matrix = Matrix(cfg_path, common=("runtime.device=gpu", "runtime.backend=trt", "runtime.trt.use_static=true"))
    modes = _shape_modes(cfg_path, overrides, quiet)
    tuned = ("-o", SHAPES["tuned"])
    calibrate = [TOOLS / "calibrate.py", "-c", cfg_path, *(a for o in overrides for a in ("-o", o))]
    if "tuned" in modes:
        matrix.prepare.append([*calibrate, *tuned, "--collect-shapes"])
    reasons = trt_int8_reasons(env) if env.trt_compiled and env.trt_runtime_version[0] else {
        "implicit": None, "explicit": None}  # no TensorRT here: what a GPU machine would run
    own_mode = load_config(cfg_path, list(overrides)).runtime.trt.dynamic_shape.mode
    own = "tuned" if own_mode == "tuned" else "static"
    def engines(label: str) -> str:  # each TensorRT run's own engine cache (where Paddle-TRT also reads tables)
        return f"{ENGINE_DIR}{output_dir / 'engines' / label.replace(':', '_')}"

    if reasons["implicit"] is None:  # the table belongs to the config's own shape mode (its subgraphs)
        matrix.prepare.append([*calibrate, "-o", "runtime.backend=trt", "-o", "runtime.trt.int8_mode=implicit",
                               "-o", SHAPES[own], "-o", engines(f"trt:int8-implicit:{own}")])
    if reasons["explicit"] is None:
        matrix.prepare.append([*calibrate, "-o", "runtime.backend=trt", "-o", "runtime.trt.int8_mode=explicit",
                               *(tuned if "tuned" in modes else ())])
    if qat is not None and load_config(qat).qat.network_file is not None:
        matrix.prepare.append([TOOLS / "qat.py", "-c", qat])
    if qat is not None and "tuned" in modes:
        matrix.prepare.append([TOOLS / "calibrate.py", "-c", qat, *tuned, "--collect-shapes"])
    matrix.runs = [Step("native:fp32", "Paddle GPU FP32 (the reference)", (*base, "runtime.backend=paddle"), cfg_path),
                   Step("native:fp16", "Paddle GPU FP16", (*base, "runtime.backend=paddle"), cfg_path, "fp16")]
    fp16 = support_reason(env, "gpu", "trt", "fp16") if env.trt_compiled and env.trt_runtime_version[0] else None
    for mode in modes:
        shape = (*trt, SHAPES[mode])
        rows = [(f"trt:fp32:{mode}", "TensorRT FP32", shape, cfg_path, "fp32", None),
                (f"trt:fp16:{mode}", "TensorRT FP16", shape, cfg_path, "fp16", fp16),
                (f"trt:int8-implicit:{mode}", "TensorRT INT8, implicit (calibration table)",
                 (*shape, "runtime.trt.int8_mode=implicit"), cfg_path, "int8",
                 reasons["implicit"] or (None if mode == own else f"the table is calibrated for {own} shapes")),
                (f"trt:int8-explicit:{mode}", "TensorRT INT8, explicit (Q/DQ model)",
                 (*shape, "runtime.trt.int8_mode=explicit"), cfg_path, "int8", reasons["explicit"])]
        if qat is not None:
            rows.append((f"qat:int8:{mode}", f"TensorRT INT8 of {qat.name} (auto path)", shape, Path(qat), "int8",
                         None))
        for label, what, extra, config, precision, skip in rows:
            matrix.runs.append(Step(label, what, (*extra, engines(label)), config, precision, skip))
    matrix.restart = [s for s in matrix.runs if s.label.startswith(("trt:", "qat:")) and s.skip is None]
    return matrix


def gpu_reason(env: Environment) -> Optional[str]:
    """None when this machine can run the matrix, else why not."""
    if default_device(env) != "gpu":
        return support_reason(env, "gpu", "paddle", "fp32") or "no GPU"
    return None


def _tool(argv: Sequence, quiet: bool) -> subprocess.CompletedProcess:
    command = [sys.executable, *map(str, argv), *(["--quiet"] if quiet else [])]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UnsupportedError(f"{' '.join(command[1:3])} ... failed (exit {result.returncode}): {tail}")
    return result


def _restart_timing(step: Step, built: dict, output_dir: Path, batch_size: Optional[int], quiet: bool) -> dict:
    """Build the run's predictor and run one batch in a fresh process, which must load the engines the matrix run
    serialized (its cache dir), beside that run's own build + first batch (``built``: its benchmark entry)."""
    out = output_dir / "restart" / step.label.replace(":", "_")
    argv = [TOOLS / "benchmark.py", "-c", step.config, *(a for o in step.overrides for a in ("-o", o)),
            "--precisions", step.precision, "--warmup", "0", "--iters", "3", "--output-dir", out,
            *(["--batch-sizes", str(batch_size)] if batch_size else [])]
    _tool(argv, quiet)
    results = json.loads((out / "report.json").read_text())["benchmark"]["results"]
    restarted = next(e for e in results if e["label"] == step.precision)
    return {"label": step.label, "first_run_ms": built["first_run_ms"], "after_restart_ms": restarted["first_run_ms"]}


def run_matrix(matrix: Matrix, output_dir: Path, env: Environment, *, images: Optional[str] = None,
               limit: Optional[int] = None, batch_sizes: Sequence[int] = (), iters: int = 100,
               quiet: bool = False) -> dict:
    """Prepare, run every run through the report, time the engine cache after a restart; write it all."""
    start = time.perf_counter()
    for argv in matrix.prepare:
        _tool(argv, quiet)
    runs = [s.spec() for s in matrix.runs if s.skip is None]
    report = precision_report(runs=runs, evaluation=EvalOptions(images, limit),
                              benchmark=BenchOptions(list(batch_sizes), 10, iters, images), output_dir=output_dir,
                              quiet=quiet)
    built: dict[str, dict] = {}
    for entry in report.data["benchmark"]["results"]:  # each run's first batch size: its engines' first build
        built.setdefault(entry["label"], entry)
    first = batch_sizes[0] if batch_sizes else None
    restart = [_restart_timing(s, built[s.label], output_dir, first, quiet) for s in matrix.restart]
    summary = {"matrix": matrix.text(), "restart": restart, "seconds": round(time.perf_counter() - start, 1),
               "skipped": {s.label: s.skip for s in matrix.runs if s.skip}}
    cache.atomic_write_text(output_dir / "env.txt", format_env(env, capability_rows(env)) + "\n")
    cache.atomic_write_json(output_dir / "acceptance.json", summary)
    return {"report": report, **summary}


def restart_table(restart: Sequence[dict]) -> str:
    """Predictor build + first batch in the matrix run (TensorRT builds the engines) and in a fresh process after
    it (TensorRT loads them), per TensorRT run."""
    rows = [(r["label"], f"{r['first_run_ms']:.0f}", f"{r['after_restart_ms']:.0f}",
             f"{r['first_run_ms'] / r['after_restart_ms']:.1f}x") for r in restart]
    return format_table(("run", "engine build + first batch ms", "after a restart ms", "saved"), rows)
