"""The OpenVINO engine (CPU): the ONE place that calls OpenVINO's API. It converts the Paddle program directly
(``ov.convert_model`` on the .pdmodel, no conversion step for the user), compiles it for the CPU, and runs it
with the same interface as the Paddle predictor: named input arrays in, named output arrays out. OpenVINO is
imported only when this engine is used, so the Paddle paths do not pay for it.

Two things make it fast on small models (measured on PP-OCR cls, README "CPU performance"):

* static shapes: a model whose image size is fixed (``model.input_shape``) is compiled for the exact input
  shapes it is fed (one compiled model per shape, a few at most); a dynamic-shape model costs OpenVINO shape
  inference and allocation on every request.
* streams: with the THROUGHPUT hint a batch is split over the compiled model's infer requests, which run in
  parallel, each on its own core, instead of one request sharing every core op by op.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from deploy.engines.plan import PredictorPlan, check_feeds
from deploy.errors import ModelError

log = logging.getLogger(__name__)
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
# An NNCF-quantized IR runs INT8 where its FakeQuantize ops say so; the rest of it runs at this precision.
PRECISION_HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}
# auto: from this batch size on, a batch is split over parallel streams (THROUGHPUT); below it one request
# uses every core (LATENCY). PP-OCR cls, 2 cores: batch 64 split over 2 streams ran 1.2x one request.
STREAMS_FROM_BATCH = 8
MAX_STATIC_SHAPES = 4  # compiled models kept per predictor for distinct input shapes


def performance_hint(plan: PredictorPlan) -> str:
    """LATENCY or THROUGHPUT: auto picks THROUGHPUT (a batch split over parallel streams) from batch
    STREAMS_FROM_BATCH on, LATENCY (one request on every core) below it."""
    hint = plan.runtime.openvino.performance_hint
    if hint == "auto":
        hint = "throughput" if plan.runtime.batch_size >= STREAMS_FROM_BATCH else "latency"
    return HINTS[hint]


def static_shapes(plan: PredictorPlan) -> bool:
    """Compile for the exact fed shapes? auto: when the config fixes the image size (model.input_shape)."""
    setting = plan.runtime.openvino.shapes
    return plan.fixed_image_shape if setting == "auto" else setting == "static"


def compile_properties(plan: PredictorPlan) -> dict[str, Any]:
    """The CPU plugin properties of a plan: threads, performance hint, inference precision."""
    return {"INFERENCE_NUM_THREADS": plan.runtime.cpu_threads or os.cpu_count() or 1,
            "PERFORMANCE_HINT": performance_hint(plan),
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[plan.precision]}


def read_program(program: Path) -> Any:
    """An ov.Model from a Paddle .pdmodel (``ov.convert_model``: its transformations fold batch norms and the
    weight reshapes of depthwise convs into constants, which NNCF needs to quantize them) or an IR .xml."""
    import openvino as ov

    try:
        if Path(program).suffix == ".xml":
            return ov.Core().read_model(str(program))
        return ov.convert_model(str(program))
    except Exception as e:  # the frontends raise their own error types; all mean "cannot read this program"
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        raise ModelError(f"OpenVINO could not read {program}: {lines[-1] if lines else type(e).__name__}") from e


def write_ir(model: Any, xml: Path) -> None:
    """Save an ov.Model as IR (xml + bin), weights kept in FP32 (OpenVINO would compress them to FP16)."""
    import openvino as ov

    ov.save_model(model, str(xml), compress_to_fp16=False)


class _Compiled:
    """One compiled model and its infer requests (one per stream)."""

    def __init__(self, model: Any, properties: dict[str, Any]):
        import openvino as ov

        self.model = ov.Core().compile_model(model, "CPU", properties)
        self.streams = 1
        if properties["PERFORMANCE_HINT"] == "THROUGHPUT":
            self.streams = max(1, int(self.model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests: list[Any] = []

    def request(self, i: int) -> Any:
        """The i-th infer request (created on first use)."""
        while len(self._requests) <= i:
            self._requests.append(self.model.create_infer_request())
        return self._requests[i]


class OpenVinoPredictor:
    """A compiled OpenVINO model; a context manager like the Paddle predictor."""

    releases_gil = True  # infer requests run without the GIL: the next batches decode meanwhile

    def __init__(self, plan: PredictorPlan):
        import openvino as ov

        self._ov = ov
        self.plan = plan
        self._properties = compile_properties(plan)
        self._static = static_shapes(plan)
        self._model = read_program(plan.model.program)
        try:
            self._dynamic = _Compiled(self._model, self._properties)
        except RuntimeError as e:
            lines = [line for line in str(e).strip().splitlines() if line.strip()]
            raise ModelError(f"OpenVINO could not compile {plan.model.program} for {plan.describe()}: "
                             f"{lines[-1] if lines else type(e).__name__}") from e
        self.input_names = [port.get_any_name() for port in self._model.inputs]
        self.output_names = [port.get_any_name() for port in self._model.outputs]
        self._dims = {port.get_any_name(): [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
                      for port in self._model.inputs}
        # A batch may be split over streams only when every output is per image along axis 0 (its first dim
        # follows the batch; PaddleDetection's boxes of all images, in image order, also qualify).
        self._splittable = all(port.get_partial_shape().rank.is_static and port.get_partial_shape().rank.get_length()
                               and port.get_partial_shape()[0].is_dynamic for port in self._model.outputs)
        self._by_shape: dict[tuple, _Compiled] = {}

    def _compiled_for(self, chunk: dict[str, np.ndarray]) -> _Compiled:
        if not self._static:
            return self._dynamic
        key = tuple(chunk[name].shape for name in self.input_names)
        compiled = self._by_shape.get(key)
        if compiled is None:
            if len(self._by_shape) >= MAX_STATIC_SHAPES:
                return self._dynamic
            model = self._model.clone()
            model.reshape({name: self._ov.PartialShape(list(shape)) for name, shape in zip(self.input_names, key)})
            compiled = self._by_shape[key] = _Compiled(model, self._properties)
            log.debug("compiled %s for input shapes %s", self.plan.model.program, key)
        return compiled

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch fed by input name; returns every output by name."""
        check_feeds(self.plan, self._dims, feeds)
        inputs = {name: np.ascontiguousarray(feeds[name]) for name in self.input_names}
        batch = len(next(iter(inputs.values()))) if inputs else 1
        parts = min(self._dynamic.streams, batch) if self._splittable else 1
        bounds = np.linspace(0, batch, parts + 1).astype(int)
        chunks = [{name: a[lo:hi] for name, a in inputs.items()} for lo, hi in zip(bounds[:-1], bounds[1:])]
        requests = []
        for i, chunk in enumerate(chunks):  # equal chunks share a compiled model, one request each
            request = self._compiled_for(chunk).request(i)
            request.start_async(chunk, share_inputs=True)
            requests.append(request)
        for request in requests:
            request.wait()
        # copies: a request reuses its output buffers on the next run
        outputs = [[np.array(r.get_output_tensor(i).data) for r in requests] for i in range(len(self.output_names))]
        return {name: parts_[0] if len(parts_) == 1 else np.concatenate(parts_)
                for name, parts_ in zip(self.output_names, outputs)}

    def close(self) -> None:
        """Release the requests and the compiled models."""
        self._dynamic = None
        self._by_shape.clear()
        self._model = None

    def __enter__(self) -> "OpenVinoPredictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
