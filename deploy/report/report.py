"""The side-by-side precision report: run the comparison (accuracy, calibration sweep, speed), then write
report.json (stable keys, documented in the README), report.md and PNG plots, and render a console summary.

Everything rendered (Markdown, console, plots) is made from the JSON data, so they never disagree.
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from deploy.cache import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_dir
from deploy.env import probe
from deploy.errors import DataError
from deploy.report import int8_provenance as provenance, plots
from deploy.report.benchmark import BenchOptions, benchmark as run_benchmark
from deploy.report.budget import budget_lines, within_budget
from deploy.report.calib_sweep import calibration_sweep, check_sweepable
from deploy.report.evaluate import EvalOptions, evaluate
from deploy.report.runs import Run, RunSpec, check_same_preprocess, load_runs
from deploy.table import format_markdown_table, format_table

log = logging.getLogger(__name__)
REPORT_FORMAT = 1
JSON_NAME, MARKDOWN_NAME = "report.json", "report.md"
PLOT_NAMES = {"accuracy": "accuracy.png", "calibration_sweep": "calib_sweep.png",
              "throughput": "throughput.png", "latency_cdf": "latency_cdf.png",
              "int8_sensitivity": "int8_sensitivity.png"}


@dataclass
class Report:
    """The report data (what report.json holds) and the files written."""

    data: dict
    files: list[Path] = field(default_factory=list)

    def console(self) -> str:
        """Compact tables for the terminal."""
        return console_text(self.data)


def precision_report(*, runs: Sequence[RunSpec], evaluation: Optional[EvalOptions] = None,
                     benchmark: Optional[BenchOptions] = None, budget: Optional[float] = None,
                     output_dir: Optional[Path] = None, quiet: bool = False) -> Report:
    """Compare ``runs`` (the first is the reference): accuracy and/or speed; write the report to ``output_dir``.
    With ``budget`` (points of the task's metric; needs both) it names the fastest run within it per batch size."""
    if budget is not None and (evaluation is None or benchmark is None):
        raise DataError("--budget picks the fastest run within an accuracy loss, so it needs both the accuracy "
                        "evaluation and the benchmark: add --benchmark")
    if budget is not None and budget < 0:
        raise DataError(f"--budget is the accuracy loss allowed in points and must be >= 0, got {budget}")
    if output_dir is not None:
        check_output_dir(output_dir, "--output-dir")  # before minutes of work, not after
    loaded = load_runs(runs, quiet=quiet)
    check_same_preprocess(loaded)
    sweep_sizes = evaluation.calib_sweep if evaluation is not None else []
    if sweep_sizes:
        check_sweepable(loaded[0])
    accuracy = evaluate(loaded, evaluation, quiet=quiet) if evaluation is not None else None
    sweep = (calibration_sweep(loaded[0], accuracy.eval_set, accuracy.reference_results, sweep_sizes, quiet=quiet)
             if accuracy is not None and sweep_sizes else None)
    speed = run_benchmark(loaded, benchmark, quiet=quiet) if benchmark is not None else None
    data = report_data(loaded, accuracy, speed, sweep)
    if budget is not None:
        data["budget"] = within_budget(data["accuracy"], data["benchmark"], budget)
    files = write_report(output_dir, data) if output_dir is not None else []
    return Report(data, files)


def environment_info() -> dict:
    """Versions and hardware the numbers were measured on."""
    env = probe()
    return {"python": env.python, "paddle": env.paddle_version, "paddleslim": env.paddleslim_version,
            "tensorrt": ".".join(map(str, env.trt_runtime_version)) if env.trt_compiled else None,
            "onednn": env.onednn, "cpu": env.cpu_model, "cpu_count": env.cpu_count, "gpus": env.gpus,
            "gpu_capabilities": [f"{major}.{minor}" for major, minor in env.gpu_capabilities]}


def run_info(run: Run) -> dict:
    """What one run is: config, precision and the resolved predictor plan."""
    plan = run.plan
    return {"label": run.label, "config": str(run.cfg.source or run.spec.config), "precision": plan.precision,
            "device": plan.device, "backend": plan.backend, "int8_mode": plan.int8_mode,
            "explicit_quantization": plan.explicit_quantization,
            "model": str(plan.model.program), "plan": plan.describe()}


def report_header(task: str) -> dict:
    """The keys every report starts with: format, when, on what, which task."""
    return {"format": REPORT_FORMAT, "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "environment": environment_info(), "task": task}


def report_data(runs: Sequence[Run], accuracy: Any = None, speed: Any = None, sweep: Optional[dict] = None) -> dict:
    """The report as JSON-ready data (keys documented in the README, 'format' bumps on breaking changes)."""
    return {
        **report_header(runs[0].task.name),
        "reference": runs[0].label,
        "runs": [run_info(r) for r in runs],
        "accuracy": accuracy.to_json() if accuracy is not None else None,
        "calibration_sweep": sweep,
        "benchmark": speed.to_json() if speed is not None else None,
        "budget": None,
        "int8_provenance": provenance.int8_provenance(runs),
        "files": {},
    }


def render_plots(data: dict) -> dict[str, bytes]:
    """PNG bytes per plot name, for the sections the report has."""
    colors = plots.run_colors([r["label"] for r in data["runs"]])
    out = {}
    if data["accuracy"]:
        out["accuracy"] = plots.accuracy_plot(data["accuracy"], colors)
    if data["calibration_sweep"]:
        out["calibration_sweep"] = plots.calib_sweep_plot(data["calibration_sweep"], data["accuracy"])
    if data["benchmark"]:
        out["throughput"] = plots.throughput_plot(data["benchmark"], colors)
        out["latency_cdf"] = plots.latency_cdf_plot(data["benchmark"], colors)
    ranked = provenance.sensitivity_runs(data.get("int8_provenance"))
    if ranked:
        out["int8_sensitivity"] = plots.sensitivity_plot(ranked)
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


def _cell(value: Optional[float], kind: str) -> str:
    """A metric as the task's column spec says: a fraction as a percentage, a number, or a small difference."""
    if value is None or kind == "pct":
        return _pct(value)
    return f"{value:.6f}" if kind == "num" else f"{value:.3g}"


def _columns(data: dict) -> list[dict]:
    """The task's metric columns, then its agreement columns (accuracy.columns in report.json)."""
    columns = data["accuracy"]["columns"]
    return columns["metrics"] + columns["agreement"]


def accuracy_headers(data: dict) -> list[str]:
    """run, then the task's metrics and agreement columns."""
    return ["run"] + [c["header"] for c in _columns(data)]


def accuracy_rows(data: dict) -> list[list[str]]:
    """One row per run: the task's metrics, then its agreement with the reference."""
    return [[r["label"]] + [_cell(r[c["key"]], c["kind"]) for c in _columns(data)]
            for r in data["accuracy"]["results"]]


def sweep_headers(data: dict) -> list[str]:
    """calib images, the task's metric and agreement columns, calibration seconds."""
    return ["calib images"] + [c["header"] for c in _columns(data)] + ["calib s"]


def sweep_rows(data: dict) -> list[list[str]]:
    """One row per calibration-set size."""
    return [[str(p["num_images"])] + [_cell(p[c["key"]], c["kind"]) for c in _columns(data)]
            + [f"{p['calibration_seconds']:.1f}"] for p in data["calibration_sweep"]["results"]]


SPEED_HEADERS = ["run", "batch", "p50 ms", "p99 ms", "img/s", "vs ref", "e2e img/s", "e2e vs ref", "first run ms",
                 "+RSS MB"]


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
        parts.append(f"{acc['task']} metrics on {acc['images']} images ({acc['labelled']} labelled) from "
                     f"{acc['source']}; agreement vs {data['reference']}")
        parts.append(format_table(accuracy_headers(data), accuracy_rows(data)))
    if data["calibration_sweep"]:
        parts.append(f"\nINT8 by calibration-set size ({data['calibration_sweep']['algo']}, scratch copies)")
        parts.append(format_table(sweep_headers(data), sweep_rows(data)))
    if data["benchmark"]:
        bench = data["benchmark"]
        parts.append(f"\nspeed: {bench['warmup']} warm-up + {bench['iters']} timed iterations, runs interleaved; "
                     f"img/s from median latency; 'vs ref' = throughput / {bench['reference']}")
        parts.append(format_table(SPEED_HEADERS, speed_rows(data)))
    if data.get("budget"):
        parts += ["", *budget_lines(data["budget"])]
    if data.get("int8_provenance"):
        parts += ["", *provenance.console_lines(data["int8_provenance"])]
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
             f"Task `{acc['task']}`: the metric columns score each run against the labels; the agreement columns "
             f"compare each run's results with `{acc['reference']}`'s on the same images.", "",
             format_markdown_table(accuracy_headers(data), accuracy_rows(data)), ""]
    if data["files"].get("plots", {}).get("accuracy"):
        lines += [f"![accuracy and agreement]({PLOT_NAMES['accuracy']})", ""]
    if data["calibration_sweep"]:
        sweep = data["calibration_sweep"]
        lines += ["## Calibration-set size", "",
                  f"The model of `{sweep['config']}` recalibrated ({sweep['algo']}, seed {sweep['seed']}) in a "
                  f"scratch copy with N images of `{sweep['calibration_images']}` (the first N of one seeded shuffle, "
                  "so each set contains the smaller ones), then evaluated in INT8 on the same images as above.", "",
                  format_markdown_table(sweep_headers(data), sweep_rows(data)), ""]
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
             f"= build + first batch), warmed up {bench['warmup']} times, then its {bench['iters']} timed samples "
             "per pass are taken in blocks of 10, each after one untimed run, the runs taking turns so background "
             "load hits all runs alike. Predictor-only latency times runs of batches decoded before the block; "
             "end-to-end (e2e) takes each batch from the run's image "
             "pipeline (on engines that release the GIL, decode and preprocess overlap the previous run) and adds "
             "the task's post-processing. Throughput = batch / median latency; 'vs ref' divides by "
             f"`{bench['reference']}`. "
             "+RSS is the peak resident memory added while building, first-running and warming up that predictor.",
             "", format_markdown_table(SPEED_HEADERS, speed_rows(data)), "",
             "Latency per batch (ms):", "",
             format_markdown_table(["run", "batch", "mean", "p50", "p90", "p99", "min", "max", "build ms",
                                    "peak RSS MB", "GPU MB"], latency_rows), ""]
    plots = data["files"].get("plots", {})
    lines += [f"![{name}]({PLOT_NAMES[name]})" for name in ("throughput", "latency_cdf") if plots.get(name)]
    if data.get("budget"):
        lines += ["", "## Fastest within the accuracy budget", "", *budget_lines(data["budget"])]
    return lines + [""]


def markdown_text(data: dict) -> str:
    """report.md: runs, accuracy (and sweep), the INT8 runs' calibration, speed, with the plots."""
    lines = ["# Precision report", ""] + _runs_section(data)
    if data["accuracy"]:
        lines += _accuracy_section(data)
    lines += provenance.markdown_lines(data.get("int8_provenance"),
                                       data["files"].get("plots", {}).get("int8_sensitivity"))
    if data["benchmark"]:
        lines += _speed_section(data)
    return "\n".join(lines).rstrip() + "\n"
