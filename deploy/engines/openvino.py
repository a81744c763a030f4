"""The OpenVINO engine (CPU): the ONE place that calls OpenVINO's API. It reads the Paddle program directly (the
Paddle frontend of ``ov.Core().read_model``), compiles it for the CPU, and runs it with the same interface as the
Paddle predictor: named input arrays in, named output arrays out. OpenVINO is imported only when this engine is
used, so the Paddle paths do not pay for it."""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from deploy.engines.plan import PredictorPlan, check_feeds
from deploy.errors import ModelError

log = logging.getLogger(__name__)
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
# An NNCF-quantized IR runs INT8 where its FakeQuantize ops say so; the rest of it runs at this precision.
PRECISION_HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


def performance_hint(plan: PredictorPlan) -> str:
    """LATENCY or THROUGHPUT; auto is LATENCY at every batch size, because the tools run one synchronous request
    at a time: THROUGHPUT splits the cores into streams that one request cannot use (measured on PP-OCR cls at
    batch 64, 2 cores: 0.76x Paddle FP32 throughput with THROUGHPUT, 1.18x with LATENCY)."""
    hint = plan.runtime.openvino.performance_hint
    return HINTS["latency" if hint == "auto" else hint]


def compile_properties(plan: PredictorPlan) -> dict[str, Any]:
    """The CPU plugin properties of a plan: threads, performance hint, inference precision."""
    return {"INFERENCE_NUM_THREADS": plan.runtime.cpu_threads or os.cpu_count() or 1,
            "PERFORMANCE_HINT": performance_hint(plan),
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[plan.precision]}


class OpenVinoPredictor:
    """A compiled OpenVINO model with one infer request; a context manager like the Paddle predictor."""

    def __init__(self, plan: PredictorPlan):
        import openvino as ov

        self.plan = plan
        core = ov.Core()
        try:
            model = core.read_model(str(plan.model.program))
            self._compiled = core.compile_model(model, "CPU", compile_properties(plan))
        except RuntimeError as e:
            lines = [line for line in str(e).strip().splitlines() if line.strip()]
            raise ModelError(f"OpenVINO could not load {plan.model.program} for {plan.describe()}: "
                             f"{lines[-1] if lines else type(e).__name__}") from e
        self.input_names = [port.get_any_name() for port in self._compiled.inputs]
        self.output_names = [port.get_any_name() for port in self._compiled.outputs]
        self._dims = {port.get_any_name(): [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
                      for port in self._compiled.inputs}
        self._request = self._compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch fed by input name; returns every output by name."""
        check_feeds(self.plan, self._dims, feeds)
        results = self._request.infer({name: np.ascontiguousarray(feeds[name]) for name in self.input_names})
        # copies: the request reuses its output buffers on the next run
        return {port.get_any_name(): np.array(results[port]) for port in self._compiled.outputs}

    def close(self) -> None:
        """Release the request and the compiled model."""
        self._request = None
        self._compiled = None

    def __enter__(self) -> "OpenVinoPredictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
