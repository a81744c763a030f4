"""PNG plots of a precision report, rendered from the report JSON with matplotlib's Agg backend (no display,
no pyplot global state). Each function returns PNG bytes, so the caller writes them atomically.
"""
from __future__ import annotations

import io
import math
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

DPI = 110
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]


def run_colors(labels: Sequence[str]) -> dict[str, str]:
    """One fixed colour per run label, the same in every plot."""
    return {label: _PALETTE[i % len(_PALETTE)] for i, label in enumerate(labels)}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _zoomed_floor(values: Sequence[float]) -> float:
    """A y-axis floor (percent) that shows differences between values close to 100%."""
    low = min(values)
    return max(0.0, math.floor((low - max(2.0, (100 - low) * 0.5)) / 2) * 2)


def _label_bars(ax, bars, texts: Sequence[str], fontsize: int = 8) -> None:
    for bar, text in zip(bars, texts):
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=fontsize)


def _grouped_bars(ax, groups: Sequence[str], series: dict[str, list[float]], colors: dict[str, str],
                  texts: Optional[dict[str, list[str]]] = None) -> None:
    """Bars of each series side by side within each group."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name, color=colors[name])
        if texts is not None:
            _label_bars(ax, bars, texts[name])
    ax.set_xticks(x, groups)


def accuracy_plot(accuracy: dict, colors: dict[str, str]) -> bytes:
    """The task's percentage metrics per run (left) and agreement with the reference per run (right)."""
    results = accuracy["results"]
    labels = [r["label"] for r in results]
    fig = Figure(figsize=(max(7.5, 1.6 * len(labels) + 4), 4.0), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1.3]})
    metrics = [c for c in accuracy["columns"]["metrics"]
               if c["kind"] == "pct" and all(r[c["key"]] is not None for r in results)]
    if metrics:
        series = {r["label"]: [100 * r[c["key"]] for c in metrics] for r in results}
        _grouped_bars(left, [c["header"] for c in metrics], series, colors,
                      {k: [f"{v:.2f}" for v in vals] for k, vals in series.items()})
        left.set_ylim(_zoomed_floor([v for vals in series.values() for v in vals]), 100.8)
        left.legend(fontsize=8, loc="upper left")
    else:
        left.text(0.5, 0.5, "no labels: metrics not computed", ha="center", va="center", transform=left.transAxes)
    left.set_ylabel(f"{accuracy['task']} metric (%)")
    left.set_title(f"{accuracy['task']} on {accuracy['labelled']} labelled images", fontsize=10)
    agree = [100 * r["agreement"] for r in results]
    bars = right.bar(range(len(labels)), agree, color=[colors[x] for x in labels])
    notes = [f"{v:.2f}" + (f"\nmin cos {r['cosine_min']:.4f}" if "cosine_min" in r else "")
             for v, r in zip(agree, results)]
    _label_bars(right, bars, notes, 7)
    right.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0, fontsize=8)
    floor = _zoomed_floor(agree)
    right.set_ylim(floor, 100 + (100 - floor) * 0.22)
    right.set_yticks([t for t in right.get_yticks() if t <= 100])
    right.set_ylabel(f"{accuracy['columns']['agreement'][0]['header']} (%)")
    right.set_title(f"Agreement with {accuracy['reference']}", fontsize=10)
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def latency_cdf_plot(benchmark: dict, colors: dict[str, str]) -> bytes:
    """Empirical CDF of predictor-only latency per run, one panel per batch size."""
    sizes = benchmark["batch_sizes"]
    fig = Figure(figsize=(4.2 * len(sizes) + 0.6, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(sizes), squeeze=False)[0])
    for ax, bs in zip(axes, sizes):
        entries = [e for e in benchmark["results"] if e["batch_size"] == bs]
        for entry in entries:
            samples = np.sort(entry["samples_ms"])
            fraction = np.arange(1, len(samples) + 1) / len(samples)
            ax.step(samples, fraction, where="post", color=colors[entry["label"]],
                    label=f"{entry['label']} (p50 {entry['latency_ms']['p50']:.2f} ms)")
        # A few outliers would squeeze the body of every curve into a sliver: cut the axis past the worst p99.
        low = min(e["latency_ms"]["min"] for e in entries)
        high = max(e["latency_ms"]["p99"] for e in entries)
        if high > low:
            ax.set_xlim(low - 0.05 * (high - low), high + 0.15 * (high - low))
        ax.set_title(f"batch {bs}", fontsize=10)
        ax.set_xlabel("latency per batch (ms)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("fraction of iterations")
    fig.suptitle(f"Predictor latency CDF ({benchmark['iters']} interleaved iterations; x-axis cut past the "
                 "largest p99, max in report.md)", fontsize=11)
    return _png(fig)


def throughput_plot(benchmark: dict, colors: dict[str, str]) -> bytes:
    """Images/s per batch size, predictor-only (left) and end-to-end (right), bars labelled with the ratio."""
    sizes = benchmark["batch_sizes"]
    labels = list(dict.fromkeys(e["label"] for e in benchmark["results"]))
    by_key = {(e["label"], e["batch_size"]): e for e in benchmark["results"]}
    fig = Figure(figsize=(max(8.0, 1.2 * len(sizes) * len(labels) + 3), 4.0), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, prefix, title in ((axes[0], "", "predictor only"), (axes[1], "e2e_", "decode + preprocess + infer")):
        series = {lab: [by_key[(lab, bs)][f"{prefix}throughput_ips"] for bs in sizes] for lab in labels}
        ratios = {lab: [_ratio_text(by_key[(lab, bs)][f"{prefix}throughput_ratio"]) for bs in sizes]
                  for lab in labels}
        _grouped_bars(ax, [f"batch {bs}" for bs in sizes], series, colors, ratios)
        ax.set_ylabel("images/s (median latency)")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.15 * max(v for vals in series.values() for v in vals))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Throughput (bar label: x {benchmark['reference']})", fontsize=11)
    return _png(fig)


def _ratio_text(ratio: Optional[float]) -> str:
    return "" if ratio is None else f"x{ratio:.2f}"


def calib_sweep_plot(sweep: dict, accuracy: dict) -> bytes:
    """INT8 headline metric and agreement (left) and, for classifiers, output cosine (right) against the
    calibration-set size."""
    points = sweep["results"]
    sizes = [p["num_images"] for p in points]
    has_cosine = all("cosine_mean" in p for p in points)
    fig = Figure(figsize=(10.0 if has_cosine else 6.0, 4.0), layout="constrained")
    axes = list(fig.subplots(1, 2)) if has_cosine else [fig.subplots(1, 1)]
    left = axes[0]
    headline, agreement = accuracy["columns"]["metrics"][0], accuracy["columns"]["agreement"][0]
    reference = next((r for r in accuracy["results"] if r["label"] == accuracy["reference"]), {})
    values: list[float] = []
    if all(p[headline["key"]] is not None for p in points):
        _annotated_line(left, sizes, [100 * p[headline["key"]] for p in points], "o-", _PALETTE[1],
                        f"INT8 {headline['header']}", values)
    _annotated_line(left, sizes, [100 * p["agreement"] for p in points], "s--", _PALETTE[2],
                    f"{agreement['header']} (FP32)", values)
    if reference.get(headline["key"]) is not None:
        left.axhline(100 * reference[headline["key"]], color=_PALETTE[0], linestyle=":",
                     label=f"FP32 {headline['header']}")
        values.append(100 * reference[headline["key"]])
    left.set_ylim(_zoomed_floor(values), 100.8)
    left.set_ylabel("%")
    left.set_title("INT8 accuracy vs calibration-set size", fontsize=10)
    if has_cosine:
        right = axes[1]
        _annotated_line(right, sizes, [p["cosine_mean"] for p in points], "o-", _PALETTE[4], "mean", [], "{:.5f}")
        _annotated_line(right, sizes, [p["cosine_min"] for p in points], "s--", _PALETTE[3], "min", [], "{:.4f}")
        right.margins(y=0.15)
        right.set_ylabel("cosine similarity with FP32 outputs")
        right.set_title("Output cosine vs calibration-set size", fontsize=10)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.margins(x=0.1)
        ax.set_xlabel(f"calibration images ({sweep['algo']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _annotated_line(ax, xs: Sequence[float], ys: Sequence[float], style: str, color: str, label: str,
                    collect: list, fmt: str = "{:.2f}") -> None:
    ax.plot(xs, ys, style, color=color, label=label)
    for x, y in zip(xs, ys):
        ax.annotate(fmt.format(y), (x, y), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7,
                    color=color)
    collect.extend(ys)


SENSITIVITY_LAYERS = 30  # most sensitive layers drawn per run
_KEPT, _INT8 = _PALETTE[1], _PALETTE[0]
_SENSITIVITY_AXIS = {"alone_int8": "metric loss with this layer alone INT8 (pt)",
                     "alone_fp32": "metric loss with this layer alone FP32 (pt)"}


def sensitivity_plot(runs: dict[str, dict]) -> bytes:
    """Per INT8 run whose budget search ranked layers (``{label: int8_provenance entry}``): the metric loss per
    layer (most sensitive on top, layers kept FP32 in red), the output error the search broke ties with, and the
    drop with each op type in FP32 (when it tried that)."""
    rows = []
    for label, entry in runs.items():
        budget = entry["budget"]
        ranked = sorted(budget["sensitivity"], key=lambda s: (-s["loss_points"], -s.get("output_error", 0.0)))
        rows.append((label, budget, ranked[:SENSITIVITY_LAYERS], len(ranked)))
    height = sum(max(2.2, 0.26 * len(shown) + 1.2) for _, _, shown, _ in rows)
    fig = Figure(figsize=(13.0, height), layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False, gridspec_kw={"width_ratios": [2.2, 1.3, 1.5]},
                        height_ratios=[max(2.2, 0.26 * len(shown) + 1.2) for _, _, shown, _ in rows])
    for (label, budget, shown, total), (loss_ax, error_ax, type_ax) in zip(rows, axes):
        kept = set(budget.get("kept_fp32") or [])
        names = [s["layer"] for s in shown]
        colors = [_KEPT if n in kept else _INT8 for n in names]
        y = np.arange(len(shown))
        losses = [s["loss_points"] for s in shown]
        bars = loss_ax.barh(y, losses, color=colors)
        for bar, value in zip(bars, losses):
            loss_ax.annotate(f"{value:.2f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(3, 0),
                             textcoords="offset points", va="center", fontsize=7)
        loss_ax.set_yticks(y, [f"{s['layer']} ({s['op_type']})" for s in shown], fontsize=7)
        loss_ax.invert_yaxis()
        loss_ax.axvline(budget["max_drop"], color=_PALETTE[7], linestyle=":", label=f"budget {budget['max_drop']:g} pt")
        high = max([budget["max_drop"], *losses, 0.0])
        loss_ax.set_xlim(min(0.0, *losses) * 1.15, high * 1.2 + 0.5)
        mode = shown[0].get("mode", "alone_int8") if shown else "alone_int8"
        images = shown[0].get("images") if shown else None
        loss_ax.set_xlabel(_SENSITIVITY_AXIS.get(mode, f"metric loss ({mode}) (pt)")
                           + (f", {images} images" if images else ""), fontsize=8)
        cut = f", top {len(shown)} of {total}" if total > len(shown) else ""
        hidden = len(kept - set(names))
        cut += f" ({hidden} kept FP32 below)" if hidden and total > len(shown) else ""
        loss_ax.set_title(f"{label}: per-layer sensitivity{cut}", fontsize=10)
        loss_ax.legend(handles=[Patch(color=_KEPT, label="kept FP32"), Patch(color=_INT8, label="INT8"),
                                *loss_ax.get_legend_handles_labels()[0]], fontsize=7, loc="lower right")
        errors = [s.get("output_error") for s in shown]
        if all(e is not None for e in errors):
            error_ax.barh(y, errors, color=colors)
            error_ax.set_yticks(y, [])
            error_ax.invert_yaxis()
            error_ax.set_xlabel("relative L2 error of the outputs vs FP32", fontsize=8)
            error_ax.set_title("output error (tie-break)", fontsize=10)
        else:
            error_ax.axis("off")
        types = budget.get("op_types") or []
        if types:
            ty = np.arange(len(types))
            drops = [t["drop_points"] for t in types]
            tbars = type_ax.barh(ty, drops, color=_PALETTE[4])
            for bar, value in zip(tbars, drops):
                type_ax.annotate(f"{value:.2f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                                 xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
            type_ax.set_yticks(ty, [f"{t['op_type']} x{t['layers']}" for t in types], fontsize=8)
            type_ax.invert_yaxis()
            type_ax.axvline(budget["drop_before"], color=_PALETTE[1], linestyle="--",
                            label=f"all INT8 {budget['drop_before']:.2f} pt")
            type_ax.axvline(budget["max_drop"], color=_PALETTE[7], linestyle=":", label="budget")
            type_ax.set_xlim(min(0.0, *drops) * 1.15, max([budget["drop_before"], budget["max_drop"], *drops]) * 1.25
                             + 0.5)
            type_ax.set_xlabel("drop with this op type in FP32 (pt)", fontsize=8)
            type_ax.set_title("op types in FP32", fontsize=10)
            type_ax.legend(fontsize=7, loc="lower right")
        else:
            type_ax.axis("off")
        for ax in (loss_ax, error_ax, type_ax):
            ax.grid(axis="x", alpha=0.3)
    fig.suptitle("INT8 accuracy budget: what each layer costs (from calibration.json)", fontsize=11)
    return _png(fig)
