"""The fastest run within an accuracy budget: per batch size, among the runs whose task metric is at most
``points`` below the reference's, the one with the highest predictor throughput (ties: end-to-end)."""
from __future__ import annotations

from typing import Optional

from deploy.errors import DataError


def _scored_metric(accuracy: dict) -> tuple[str, str]:
    """(key, header) the budget is measured on: the task's headline metric, or its agreement with the
    reference when no image is labelled."""
    columns = accuracy["columns"]
    if accuracy["labelled"]:
        return columns["metrics"][0]["key"], columns["metrics"][0]["header"]
    return columns["agreement"][0]["key"], columns["agreement"][0]["header"]


def within_budget(accuracy: dict, benchmark: dict, points: float) -> dict:
    """report.json's ``budget`` section from its ``accuracy`` and ``benchmark`` sections (``points`` >= 0,
    checked by precision_report before any work)."""
    key, header = _scored_metric(accuracy)
    value = {r["label"]: r.get(key) for r in accuracy["results"]}
    reference = value.get(accuracy["reference"])
    if reference is None:
        raise DataError(f"the reference run {accuracy['reference']} has no {header}; --budget needs a metric "
                        "to measure the loss on")
    drop = {label: None if v is None else round(100 * (reference - v), 4) for label, v in value.items()}
    within = {label for label, d in drop.items() if d is not None and d <= points + 1e-9}
    choices = []
    for size in benchmark["batch_sizes"]:
        entries = [e for e in benchmark["results"] if e["batch_size"] == size and e["label"] in within]
        best: Optional[dict] = max(entries, key=lambda e: (e["throughput_ips"], e["e2e_throughput_ips"]),
                                   default=None)
        if best is not None:
            choices.append({"batch_size": size, "label": best["label"], "loss_points": drop[best["label"]],
                            "throughput_ratio": best["throughput_ratio"],
                            "e2e_throughput_ratio": best["e2e_throughput_ratio"]})
    return {"points": points, "metric": key, "header": header, "reference": accuracy["reference"],
            "loss_points": drop, "over_budget": sorted(set(drop) - within), "fastest": choices}


def budget_lines(budget: dict) -> list[str]:
    """One line per batch size naming the fastest run within the budget."""
    lines = [f"fastest within {budget['points']:g} pt of {budget['reference']} {budget['header']}"
             + (f" (over budget: {', '.join(budget['over_budget'])})" if budget["over_budget"] else "") + ":"]
    for c in budget["fastest"]:
        ratio = "-" if c["throughput_ratio"] is None else f"{c['throughput_ratio']:.2f}x"
        e2e = "-" if c["e2e_throughput_ratio"] is None else f"{c['e2e_throughput_ratio']:.2f}x"
        lines.append(f"  batch {c['batch_size']}: {c['label']} ({ratio} predictor-only, {e2e} end to end; "
                     f"{c['loss_points']:+.2f} pt loss)")
    return lines
