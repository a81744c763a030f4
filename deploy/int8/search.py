"""INT8 within an accuracy budget on Paddle (oneDNN): which layers must stay FP32, found by scoring.

Every trial is a copy of the calibrated model with a set of layers back in FP32 (``layers.QuantizedModel``, no
recalibration), run by the real INT8 engine on the check set and scored by the task (``check.Scorer``). The search
is bounded by ``max_trials`` and tries, in order:

1. op types: each quantized op type alone in FP32 (for PP-OCRv4 rec the convs, keeping the SVTR matmuls INT8),
   then the types most worth keeping FP32 together;
2. layer sensitivity, as PaddleSlim's ``Analysis.metric_error_analyse`` measures it: the task's loss when a layer
   alone is INT8 (ties broken by the output error), on the first images of the check set;
3. the fewest most-sensitive layers in FP32 that fit the budget: a bisection over that ranking, on the whole
   check set.

The answer is the fitting set with the fewest FP32 layers (the lowest drop among equals).
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from tqdm import tqdm

from deploy.engines.factory import create_predictor
from deploy.engines.model import ModelFiles
from deploy.engines.plan import PredictorPlan
from deploy.int8.check import CheckSet, Scorer, candidate_plan
from deploy.int8.layers import Layer, QuantizedModel
from deploy.evalset import EvalSet

log = logging.getLogger(__name__)
RANK_IMAGES = 32  # images the per-layer sensitivity is measured on (the first of the check set)


@dataclass
class Trial:
    """One scored set of FP32 layers on the whole check set."""

    fp32: frozenset[str]
    value: float
    drop: float

    def fits(self, budget: float) -> bool:
        return self.drop <= budget + 1e-9


@dataclass
class SearchResult:
    """What the search settled on (``best``: fitting with the fewest FP32 layers, else the lowest drop)."""

    best: Trial
    within: bool
    layers: list[Layer]
    trials: int
    seconds: float
    sensitivity: list[dict] = field(default_factory=list)  # per layer: loss when it alone is INT8
    op_types: list[dict] = field(default_factory=list)  # per op type: drop with that type in FP32

    def kept_fp32(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.name in self.best.fp32]


class _Recording:
    """An engine that keeps every raw output (to measure the output error of a trial)."""

    def __init__(self, engine: Any):
        self._engine = engine
        self.input_names, self.output_names = engine.input_names, engine.output_names
        self.outputs: list[dict[str, np.ndarray]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._engine.run(feeds)
        self.outputs.append(outputs)
        return outputs


def _run_raw(plan: PredictorPlan, scorer: Scorer, eval_set: EvalSet) -> tuple[list[Any], list[dict]]:
    results: list[Any] = []
    with create_predictor(plan) as predictor:
        engine = _Recording(predictor)
        for batch in eval_set.batches:
            results.extend(scorer.task.predict(engine, batch))
    return results, engine.outputs


def _output_error(outputs: Sequence[dict], reference: Sequence[dict]) -> float:
    """Mean relative L2 error of every output of every batch against the FP32 run's."""
    errors = [float(np.linalg.norm(out[k].astype(np.float64) - ref[k]) / (np.linalg.norm(ref[k]) + 1e-12))
              for out, ref in zip(outputs, reference) for k in ref if out[k].shape == ref[k].shape]
    return float(np.mean(errors)) if errors else 0.0


def _subset(scorer: Scorer, images: int) -> Scorer:
    """The scorer on the first batches of the check set holding at least ``images`` images."""
    batches, count = [], 0
    for batch in scorer.check.eval_set.batches:
        if count >= images:
            break
        batches.append(batch)
        count += len(batch.items)
    items = [item for batch in batches for item in batch.items]
    check = CheckSet(scorer.check.source, EvalSet(scorer.check.eval_set.source, items, batches),
                     scorer.check.held_out)
    sub = replace(scorer, check=check, reference=scorer.reference[:count])
    sub.fp32 = sub.value(sub.reference)
    return sub


class LayerSearch:
    """The trials of one search: a quantized model, the FP32 run's plan, the scorer and a scratch dir."""

    def __init__(self, model: QuantizedModel, reference: PredictorPlan, scorer: Scorer, budget: float,
                 max_trials: int, scratch: Path, quiet: bool):
        self.model, self.reference, self.scorer, self.budget = model, reference, scorer, budget
        self.max_trials, self.scratch, self.quiet = max_trials, scratch, quiet
        self.trials: dict[frozenset[str], Trial] = {}
        self.count = 0
        self._bar: Optional[tqdm] = None

    def _plan(self, fp32: frozenset[str]) -> tuple[PredictorPlan, Path]:
        out = self.scratch / f"trial-{self.count}"
        return candidate_plan(self.reference, self.model.save(fp32, out), simulated=self.scorer.simulated), out

    def _tick(self, text: str) -> None:
        self.count += 1
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(1)

    @property
    def exhausted(self) -> bool:
        return self.count >= self.max_trials

    def full(self, fp32: frozenset[str]) -> Trial:
        """Score a set of FP32 layers on the whole check set (each set once)."""
        if fp32 not in self.trials:
            plan, out = self._plan(fp32)
            try:
                value, _ = self.scorer.run(plan)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            trial = self.trials[fp32] = Trial(fp32, value, self.scorer.drop(value))
            self._tick(f"{len(fp32)} fp32: {trial.drop:+.2f} pt")
        return self.trials[fp32]

    def sensitivity(self, layer: Layer, sub: Scorer, reference_outputs: Sequence[dict]) -> dict:
        """The loss (points, on the subset) and output error when ``layer`` alone is INT8."""
        others = frozenset(other.name for other in self.model.layers if other.name != layer.name)
        plan, out = self._plan(others)
        try:
            results, outputs = _run_raw(plan, sub, sub.check.eval_set)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        loss = sub.drop(sub.value(results))
        self._tick(f"{layer.name}: {loss:+.2f} pt")
        return {"layer": layer.name, "op_type": layer.op_type, "loss_points": loss,
                "output_error": round(_output_error(outputs, reference_outputs), 6), "mode": "alone_int8",
                "images": sub.check.count}

    def run(self, int8: Trial) -> SearchResult:
        """Search from the all-INT8 trial (already scored, over budget)."""
        start = time.perf_counter()
        layers = self.model.layers
        self.trials[int8.fp32] = int8
        types = Counter(layer.op_type for layer in layers)
        bisect = math.ceil(math.log2(len(layers) + 1)) + 1
        rank = len(layers) <= self.max_trials - len(types) - bisect
        planned = min(self.max_trials, (len(types) if len(types) > 1 else 0) + (len(layers) if rank else 0) + bisect)
        with tqdm(total=planned, disable=self.quiet, unit="trial", desc="fp32 layer search") as self._bar:
            op_types = self._by_type(layers, types, start)
            sensitivity = self._rank(layers) if rank and not self.exhausted else []
            order = ([layers_by_name(layers)[s["layer"]] for s in sensitivity] if sensitivity
                     else self._type_order(layers, op_types))
            self._bisect(order)
        self._bar = None
        fitting = [t for t in self.trials.values() if t.fits(self.budget)]
        best = (min(fitting, key=lambda t: (len(t.fp32), t.drop)) if fitting
                else min(self.trials.values(), key=lambda t: (t.drop, len(t.fp32))))
        return SearchResult(best, bool(fitting), layers, self.count, time.perf_counter() - start, sensitivity,
                            op_types)

    def _by_type(self, layers: list[Layer], types: Counter, start: float) -> list[dict]:
        """Each op type alone in FP32, then the most helpful types together until the budget fits."""
        if len(types) < 2:
            return []
        by_type = {t: frozenset(layer.name for layer in layers if layer.op_type == t) for t in types}
        found = []
        for op_type, names in by_type.items():
            if self.exhausted:
                break
            trial = self.full(names)
            found.append({"op_type": op_type, "layers": len(names), "drop_points": trial.drop, "mode": "type_fp32"})
            if self.count == 1:
                log.info("one trial took %.1f s; the search runs up to %d trials", time.perf_counter() - start,
                         self.max_trials)
        together: frozenset[str] = frozenset()
        for entry in sorted(found, key=lambda e: e["drop_points"]):
            together |= by_type[entry["op_type"]]
            if self.exhausted or any(t.fits(self.budget) for t in self.trials.values()):
                break
            self.full(together)
        return found

    def _rank(self, layers: list[Layer]) -> list[dict]:
        sub = _subset(self.scorer, RANK_IMAGES)
        _, reference_outputs = _run_raw(self.reference, sub, sub.check.eval_set)
        found = []
        for layer in layers:
            if self.exhausted:
                break
            found.append(self.sensitivity(layer, sub, reference_outputs))
        return sorted(found, key=lambda s: (-s["loss_points"], -s["output_error"]))

    def _type_order(self, layers: list[Layer], op_types: list[dict]) -> list[Layer]:
        """Without a per-layer ranking: the layers of the types whose FP32 helps most first."""
        rank = {e["op_type"]: e["drop_points"] for e in op_types}
        return sorted(layers, key=lambda layer: rank.get(layer.op_type, 0.0))

    def _bisect(self, order: list[Layer]) -> None:
        """The shortest prefix of ``order`` in FP32 that fits, assuming more FP32 never hurts."""
        names = [layer.name for layer in order]
        fits = lambda k: self.full(frozenset(names[:k])).fits(self.budget)  # noqa: E731
        lo, hi = 0, len(names)
        if self.exhausted or not fits(hi):
            return
        while hi - lo > 1 and not self.exhausted:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(mid) else (mid, hi)


def layers_by_name(layers: Sequence[Layer]) -> dict[str, Layer]:
    return {layer.name: layer for layer in layers}


def search_layers(quantized: ModelFiles, fp32: ModelFiles, reference: PredictorPlan, scorer: Scorer, int8: Trial,
                  budget: float, max_trials: int, scratch: Path, *, quiet: bool = False
                  ) -> tuple[SearchResult, QuantizedModel]:
    """Search the FP32 layers of ``quantized`` (scored ``int8`` as calibrated) that bring the drop within
    ``budget`` points."""
    model = QuantizedModel(quantized, fp32)
    log.info("%d quantized layers (%s); INT8 loses %.2f pt of %s, the budget is %.2f pt", len(model.layers),
             ", ".join(f"{t} x{n}" for t, n in Counter(layer.op_type for layer in model.layers).items()),
             int8.drop, scorer.header, budget)
    search = LayerSearch(model, reference, scorer, budget, max_trials, scratch, quiet)
    return search.run(int8), model
