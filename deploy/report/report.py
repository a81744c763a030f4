"""The side-by-side precision report: run the comparison (accuracy, calibration sweep, speed), then write
report.json (stable keys, documented in the README), report.md and PNG plots, and render a console summary.

Everything rendered (Markdown, console, plots) is made from the JSON data, so they never disagree.
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from deploy.cache import atomic_write_bytes, atomic_write_json, atomic_write_text
from deploy.errors import DataError
from deploy.report.runs import Run, RunSpec, check_same_preprocess, load_runs
from deploy.table import format_markdown_table, format_table

if TYPE_CHECKING:  # the heavy modules load only when a report runs
    from deploy.report.benchmark import BenchOptions
    from deploy.report.evaluate import EvalOptions

log = logging.getLogger(__name__)
REPORT_FORMAT = 1
JSON_NAME, MARKDOWN_NAME = "report.json", "report.md"
PLOT_NAMES = {"accuracy": "accuracy.png", "calibration_sweep": "calib_sweep.png",
              "throughput": "throughput.png", "latency_cdf": "latency_cdf.png"}


@dataclass
class Report:
    """The report data (what report.json holds) and the files written."""

    data: dict
    files: list[Path] = field(default_factory=list)

    def console(self) -> str:
        """Compact tables for the terminal."""
        return console_text(self.data)


def precision_report(*, runs: Sequence[RunSpec], evaluation: Optional["EvalOptions"] = None,
                     benchmark: Optional["BenchOptions"] = None, output_dir: Optional[Path] = None,
                     quiet: bool = False) -> Report:
    """Compare ``runs`` (the first is the reference): accuracy and/or speed; write the report to ``output_dir``."""
    from deploy.report.benchmark import benchmark as run_benchmark
    from deploy.report.evaluate import evaluate

    if output_dir is not None:
        _check_writable(output_dir)
    loaded = load_runs(runs, quiet=quiet)
    check_same_preprocess(loaded)
    accuracy = evaluate(loaded, evaluation, quiet=quiet) if evaluation is not None else None
    speed = run_benchmark(loaded, benchmark, quiet=quiet) if benchmark is not None else None
    data = report_data(loaded, accuracy, speed)
    files = write_report(output_dir, data) if output_dir is not None else []
    return Report(data, files)


def _check_writable(output_dir: Path) -> None:
    """Fail before minutes of work, not after."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the report directory {output_dir}: {e.strerror or e}") from e


def environment_info() -> dict:
    """Versions and hardware the numbers were measured on."""
    from deploy.env import probe

    env = probe()
    return {"python": env.python, "paddle": env.paddle_version, "paddleslim": env.paddleslim_version,
            "tensorrt": ".".join(map(str, env.trt_runtime_version)) if env.trt_compiled else None,
            "onednn": env.onednn, "cpu": env.cpu_model, "cpu_count": env.cpu_count, "gpus": env.gpus}


def run_info(run: Run) -> dict:
    """What one run is: config, precision and the resolved predictor plan."""
    plan = run.plan
    return {"label": run.label, "config": str(run.cfg.source or run.spec.config), "precision": plan.precision,
            "device": plan.device, "backend": plan.backend, "int8_mode": plan.int8_mode,
            "model": str(plan.model.program), "plan": plan.describe()}


def report_data(runs: Sequence[Run], accuracy: Any = None, speed: Any = None) -> dict:
    """The report as JSON-ready data (keys documented in the README, 'format' bumps on breaking changes)."""
    return {
        "format": REPORT_FORMAT,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "environment": environment_info(),
        "reference": runs[0].label,
        "runs": [run_info(r) for r in runs],
        "accuracy": accuracy.to_json() if accuracy is not None else None,
        "calibration_sweep": accuracy.sweep if accuracy is not None else None,
        "benchmark": speed.to_json() if speed is not None else None,
        "files": {},
    }


def render_plots(data: dict) -> dict[str, bytes]:
    """PNG bytes per plot name, for the sections the report has."""
    from deploy.report import plots

    colors = plots.run_colors([r["label"] for r in data["runs"]])
    out = {}
    if data["accuracy"]:
        out["accuracy"] = plots.accuracy_plot(data["accuracy"], colors)
    if data["calibration_sweep"]:
        ref = next((r for r in (data["accuracy"] or {}).get("results", []) if r["label"] == data["reference"]), {})
        out["calibration_sweep"] = plots.calib_sweep_plot(data["calibration_sweep"], ref.get("top1"))
    if data["benchmark"]:
        out["throughput"] = plots.throughput_plot(data["benchmark"], colors)
        out["latency_cdf"] = plots.latency_cdf_plot(data["benchmark"], colors)
    return out


def write_report(output_dir: Path, data: dict) -> list[Path]:
    """Write the plots, report.md and report.json (last, so a complete JSON means a complete report)."""
    output_dir = Path(output_dir)
    plots = render_plots(data)
    data["files"] = {"json": JSON_NAME, "markdown": MARKDOWN_NAME, "plots": {n: PLOT_NAMES[n] for n in plots}}
    written = []
    for name, png in plots.items():
        atomic_write_bytes(output_dir / PLOT_NAMES[name], png)
        written.append(output_dir / PLOT_NAMES[name])
    atomic_write_text(output_dir / MARKDOWN_NAME, markdown_text(data))
    atomic_write_json(output_dir / JSON_NAME, data)
    written += [output_dir / MARKDOWN_NAME, output_dir / JSON_NAME]
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written


# ---------------------------------------------------------------- text rendering


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"x{value:.2f}"


def accuracy_rows(data: dict) -> list[list[str]]:
    """run, top-1, top-5, top-1 agreement, cosine mean/min, max/mean |diff|."""
    return [[r["label"], _pct(r["top1"]), _pct(r["top5"]), _pct(r["top1_agreement"]), f"{r['cosine_mean']:.6f}",
             f"{r['cosine_min']:.6f}", f"{r['max_abs_diff']:.3g}", f"{r['mean_abs_diff']:.3g}"]
            for r in data["accuracy"]["results"]]


ACCURACY_HEADERS = ["run", "top-1", "top-5", "top-1 agree", "cos mean", "cos min", "max |diff|", "mean |diff|"]
SWEEP_HEADERS = ["calib images", "top-1", "top-5", "top-1 agree", "cos min", "calib s"]
SPEED_HEADERS = ["run", "batch", "p50 ms", "p99 ms", "img/s", "vs ref", "e2e img/s", "e2e vs ref", "first run ms",
                 "+RSS MB"]


def sweep_rows(data: dict) -> list[list[str]]:
    """One row per calibration-set size."""
    return [[str(p["num_images"]), _pct(p["top1"]), _pct(p["top5"]), _pct(p["top1_agreement"]),
             f"{p['cosine_min']:.6f}", f"{p['calibration_seconds']:.1f}"] for p in data["calibration_sweep"]["results"]]


def speed_rows(data: dict) -> list[list[str]]:
    """One row per run and batch size."""
    return [[e["label"], str(e["batch_size"]), f"{e['latency_ms']['p50']:.3f}", f"{e['latency_ms']['p99']:.3f}",
             f"{e['throughput_ips']:.0f}", _ratio(e["throughput_ratio"]), f"{e['e2e_throughput_ips']:.0f}",
             _ratio(e["e2e_throughput_ratio"]), f"{e['first_run_ms']:.1f}", f"{e['rss_added_mb']:.1f}"]
            for e in data["benchmark"]["results"]]


def console_text(data: dict) -> str:
    """The compact console summary."""
    parts = []
    if data["accuracy"]:
        acc = data["accuracy"]
        parts.append(f"accuracy on {acc['images']} images ({acc['labelled']} labelled) from {acc['source']}; "
                     f"agreement vs {data['reference']}")
        parts.append(format_table(ACCURACY_HEADERS, accuracy_rows(data)))
    if data["calibration_sweep"]:
        parts.append(f"\nINT8 by calibration-set size ({data['calibration_sweep']['algo']}, scratch copies)")
        parts.append(format_table(SWEEP_HEADERS, sweep_rows(data)))
    if data["benchmark"]:
        bench = data["benchmark"]
        parts.append(f"\nspeed: {bench['warmup']} warm-up + {bench['iters']} timed iterations, runs interleaved; "
                     f"img/s from median latency; 'vs ref' = throughput / {bench['reference']}")
        parts.append(format_table(SPEED_HEADERS, speed_rows(data)))
    return "\n".join(parts)


def _runs_section(data: dict) -> list[str]:
    env = data["environment"]
    rows = [[r["label"], r["config"], r["precision"], r["plan"]] for r in data["runs"]]
    return [f"Created {data['created']} with Paddle {env['paddle']} (PaddleSlim {env['paddleslim']}) on "
            f"{env['cpu']} ({env['cpu_count']} cores), GPUs: {', '.join(env['gpus']) or 'none'}, TensorRT: "
            f"{env['tensorrt'] or 'none'}. Reference run: `{data['reference']}`.", "",
            "## Runs", "", format_markdown_table(["run", "config", "precision", "plan"], rows), ""]


def _accuracy_section(data: dict) -> list[str]:
    acc = data["accuracy"]
    lines = ["## Accuracy and agreement", "",
             f"{acc['images']} images ({acc['labelled']} labelled, {acc['skipped']} unreadable skipped) from "
             f"`{acc['source']}`, preprocessed once and fed to every run in batches of {acc['batch_size']}. "
             f"Agreement, cosine and differences compare each run's raw outputs with `{acc['reference']}` "
             "on the same images.", "", format_markdown_table(ACCURACY_HEADERS, accuracy_rows(data)), ""]
    if data["files"].get("plots", {}).get("accuracy"):
        lines += [f"![accuracy and agreement]({PLOT_NAMES['accuracy']})", ""]
    if data["calibration_sweep"]:
        sweep = data["calibration_sweep"]
        lines += ["## Calibration-set size", "",
                  f"The model of `{sweep['config']}` recalibrated ({sweep['algo']}, seed {sweep['seed']}) in a "
                  f"scratch copy with N images of `{sweep['calibration_images']}` (the first N of one seeded shuffle, "
                  "so each set contains the smaller ones), then evaluated in INT8 on the same images as above.", "",
                  format_markdown_table(SWEEP_HEADERS, sweep_rows(data)), ""]
        if data["files"].get("plots", {}).get("calibration_sweep"):
            lines += [f"![accuracy vs calibration-set size]({PLOT_NAMES['calibration_sweep']})", ""]
    return lines


def _speed_section(data: dict) -> list[str]:
    bench = data["benchmark"]
    latency_rows = [[e["label"], e["batch_size"], *(f"{e['latency_ms'][k]:.3f}" for k in
                                                    ("mean", "p50", "p90", "p99", "min", "max")),
                     f"{e['build_ms']:.1f}", f"{e['peak_rss_mb']:.0f}",
                     "-" if e["gpu_memory_mb"] is None else f"{e['gpu_memory_mb']:.0f}"]
                    for e in bench["results"]]
    lines = ["## Speed", "",
             f"Images decoded from `{bench['images']}`. Per batch size, every run's predictor is built (first run "
             f"= build + first batch), warmed up {bench['warmup']} times, then {bench['iters']} timed iterations go "
             "round-robin over the runs, so background load hits all runs alike. Each iteration decodes and "
             "preprocesses a fresh batch: predictor-only latency times the run, end-to-end (e2e) adds decode and "
             f"preprocess. Throughput = batch / median latency; 'vs ref' divides by `{bench['reference']}`. "
             "+RSS is the peak resident memory added while building, first-running and warming up that predictor.",
             "", format_markdown_table(SPEED_HEADERS, speed_rows(data)), "",
             "Latency per batch (ms):", "",
             format_markdown_table(["run", "batch", "mean", "p50", "p90", "p99", "min", "max", "build ms",
                                    "peak RSS MB", "GPU MB"], latency_rows), ""]
    plots = data["files"].get("plots", {})
    lines += [f"![{name}]({PLOT_NAMES[name]})" for name in ("throughput", "latency_cdf") if plots.get(name)]
    return lines + [""]


def markdown_text(data: dict) -> str:
    """report.md: runs, accuracy (and sweep), speed, with the plots."""
    lines = ["# Precision report", ""] + _runs_section(data)
    if data["accuracy"]:
        lines += _accuracy_section(data)
    if data["benchmark"]:
        lines += _speed_section(data)
    return "\n".join(lines).rstrip() + "\n"
