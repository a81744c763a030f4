"""Where each INT8 run of a comparison came from: the calibration that made its artifact, read from the model's
manifest (``<model dir>/_opt_cache/calibration.json``, written by tools/calibrate.py), with the INT8 check (INT8
vs FP32 on held-out check images) and, after ``--max-drop``, the accuracy budget: which layers stayed FP32 and
the per-layer sensitivity the search measured.

Runs of an already quantized model (QAT, PaddleSlim) have no calibration of ours and are left out.
"""
from __future__ import annotations

from typing import Optional, Sequence

from deploy import cache
from deploy.engines.model import find_model_files
from deploy.engines.plan import int8_target
from deploy.report.runs import Run

# The entry keys the report carries (what exists of them); the rest of the entry is cache bookkeeping.
ENTRY_KEYS = ("created", "algo", "num_images", "check", "budget")
NAMES_SHOWN = 8  # kept-FP32 layer names listed in a line before "+K more"
METHODS = {"none": "no search", "paddle-layer-search": "Paddle layer search",
           "nncf-accuracy-control": "NNCF accuracy control"}
# What a sensitivity entry's loss_points measured (its "mode")
MODE_TEXT = {"alone_int8": "the metric loss when that layer alone is INT8",
             "alone_fp32": "the metric loss when that layer alone is FP32"}


def run_provenance(run: Run) -> Optional[dict]:
    """The calibration entry behind one INT8 run; None for other precisions and for models quantized already."""
    plan = run.plan
    if plan.precision != "int8" or plan.int8_mode not in ("quantized", "table"):
        return None
    source = find_model_files(run.cfg.model)  # the FP32 model, whose manifest has the calibrations
    if source is None:
        return None
    if plan.int8_mode == "quantized" and plan.model.program == source.program:
        return None  # a QAT / PaddleSlim model that is INT8 by itself: no calibration of ours
    target = int8_target(plan)
    entry = cache.read_manifest(source)["targets"].get(target)
    if entry is None:
        return None
    return {"target": target, **{key: entry[key] for key in ENTRY_KEYS if key in entry}}


def int8_provenance(runs: Sequence[Run]) -> Optional[dict]:
    """``{label: {target, created, algo, num_images, check, budget}}`` for each calibrated INT8 run (only the keys
    its entry has); None when no run is one."""
    found = {}
    for run in runs:
        entry = run_provenance(run)
        if entry is not None:
            found[run.label] = entry
    return found or None


def sensitivity_runs(provenance: Optional[dict]) -> dict[str, dict]:
    """The runs whose budget search measured per-layer sensitivity (what the sensitivity plot draws)."""
    return {label: entry for label, entry in (provenance or {}).items()
            if (entry.get("budget") or {}).get("sensitivity")}


# ---------------------------------------------------------------- text


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _points(value: float) -> str:
    return f"{value:.2f}"


def _names(names: Sequence[str], shown: int = NAMES_SHOWN) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f", +{more} more" if more > 0 else "")


def check_text(check: dict) -> str:
    """'check 200 held-out images, top-1 99.00% vs FP32 99.50% (-0.50 pt)'."""
    kind = "held-out " if check.get("held_out") else ""
    labels = "" if check.get("labelled") else " (unlabelled: agreement with FP32)"
    change = -check["drop_points"] + 0.0  # + 0.0: no '-0.00'
    return (f"check {check['images']} {kind}images{labels}, {check['header']} {_pct(check['int8'])} vs FP32 "
            f"{_pct(check['fp32'])} ({change:+.2f} pt)")


def budget_text(budget: dict) -> str:
    """'kept FP32: 1 of 4 layers (linear_3.w_0), budget 1 pt, drop 4.00 -> 0.00 pt, 8 trials, 4 s'."""
    if budget.get("method") == "none":
        return (f"budget {budget['max_drop']:g} pt: INT8 within it as calibrated (drop "
                f"{_points(budget['drop_before'])} pt), no layer kept FP32, no search")
    kept = budget.get("kept_fp32") or []
    layers = f"{len(kept)} of {budget['layers']} layers" + (f" ({_names(kept)})" if kept else "")
    text = (f"kept FP32: {layers}, budget {budget['max_drop']:g} pt, drop {_points(budget['drop_before'])} -> "
            f"{_points(budget['drop_points'])} pt, {budget['trials']} trials, {budget['seconds']:.0f} s "
            f"({METHODS.get(budget['method'], budget['method'])})")
    if budget.get("accepted_over_budget"):
        text += ", over budget: installed with --accept-best"
    return text


def run_text(entry: dict) -> str:
    """An INT8 run's check result and, after --max-drop, what the budget kept FP32."""
    parts = [check_text(entry["check"]) if entry.get("check") else
             "no INT8 check recorded (calibrated before the check existed, or with --check-num 0)"]
    if entry.get("budget"):
        parts.append(budget_text(entry["budget"]))
    return "; ".join(parts)


def run_line(label: str, entry: dict) -> str:
    """One line per INT8 run: '<label>: check ...; kept FP32: ...'."""
    return f"{label}: {run_text(entry)}"


def console_lines(provenance: Optional[dict]) -> list[str]:
    """The console block: a heading and one line per calibrated INT8 run."""
    if not provenance:
        return []
    return ["INT8 calibration (from each model's _opt_cache/calibration.json):",
            *(f"  {run_line(label, entry)}" for label, entry in provenance.items())]


def _nncf_note(budget: dict) -> Optional[str]:
    if budget.get("method") != "nncf-accuracy-control":
        return None
    kept = budget.get("kept_fp32") or []
    return "NNCF does not report per-layer scores; reverted: " + (_names(kept) if kept else "none")


def markdown_lines(provenance: Optional[dict], plot: Optional[str]) -> list[str]:
    """The report.md section: per calibrated INT8 run its calibration, check and budget, and the sensitivity plot
    (``plot``: its file name, when drawn)."""
    if not provenance:
        return []
    lines = ["## INT8 calibration", "",
             "Each INT8 run's calibration as recorded in its model's `_opt_cache/calibration.json`: the INT8 check "
             "scores the installed INT8 model against FP32 on check images that did not calibrate it; after "
             "`tools/calibrate.py --max-drop POINTS` the budget line says which layers were kept FP32 to stay "
             "within POINTS, the drop before and after, and what the search cost.", ""]
    for label, entry in provenance.items():
        count = entry.get("num_images")
        calibrated = ", ".join(x for x in (f"calibrated {entry['created']}" if entry.get("created") else "",
                                           entry.get("algo") or "",
                                           f"{count} calibration image{'' if count == 1 else 's'}" if count else "")
                               if x)
        lines.append(f"- `{label}` ({entry['target']}{'; ' + calibrated if calibrated else ''}): "
                     + run_text(entry))
        budget = entry.get("budget") or {}
        if budget.get("config_line") and budget.get("kept_fp32"):
            lines.append(f"  - reproduce: `{budget['config_line']}`")
        note = _nncf_note(budget)
        if note:
            lines.append(f"  - {note}")
    lines.append("")
    if plot:
        modes = {s.get("mode") for e in sensitivity_runs(provenance).values() for s in e["budget"]["sensitivity"]}
        what = " or ".join(MODE_TEXT.get(m, str(m)) for m in sorted(modes, key=str))
        lines += [f"Per-layer sensitivity measured by the search ({what}, on the first check images), the "
                  "layers kept FP32 highlighted; beside it, the drop with each op type in FP32 when the search "
                  "tried that.", "", f"![INT8 per-layer sensitivity]({plot})", ""]
    return lines

