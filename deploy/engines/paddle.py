"""The Paddle Inference engine: the ONE place that turns a plan into ``paddle.inference.Config`` and a predictor."""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import tempfile
from typing import Any, Callable, Iterator, Optional

import numpy as np

from deploy import cache
from deploy.engines.model import LAYER_OPS, inspect_model, params_mismatch, tensor_readers
from deploy.engines.plan import PredictorPlan, check_feeds, engine_cache_dir, shape_file
from deploy.errors import ConfigError, ModelError

log = logging.getLogger(__name__)


def _precision_enum(precision: str) -> Any:
    from paddle.inference import PrecisionType

    return {"fp32": PrecisionType.Float32, "fp16": PrecisionType.Half, "int8": PrecisionType.Int8,
            "bf16": PrecisionType.Bfloat16}[precision]


# Paddle's TensorRT pass list runs conv_bn_fuse_pass and conv_elementwise_add_fuse_pass before
# tensorrt_subgraph_pass: a conv2d whose output feeds only its batch_norm or bias add (as X) becomes one
# fused_conv2d_add_act writing that op's output (this slot), and the conv2d's own output is gone.
_CONV2D_FUSED_INTO = {"batch_norm": "Y", "elementwise_add": "Out"}


def trt_fp32_layer_names(plan: PredictorPlan) -> list[str]:
    """The names ``exp_disable_tensorrt_ops`` takes to keep the layers ``calibration.skip_tensors`` lists out of
    TensorRT, so that Paddle runs them in FP32.

    Paddle-TRT leaves an op out of TensorRT when its type or one of its output var names is in that list (the
    teller of TensorRtSubgraphPass::ApplyImpl, tensorrt_subgraph_pass.cc), so each conv / matmul reading a listed
    tensor is named by its own outputs, not by its type (which would take every op of that type out). The teller
    sees the graph after the fusion passes, so a conv2d is also named by the output of the batch_norm or bias add
    fused into it (if that add's Y is not constant, Paddle does not fuse them and the add stays out of TensorRT
    beside its conv).
    """
    key = "calibration.skip_tensors"
    layers = []
    for name, uses in tensor_readers(plan.model, plan.fp32_tensors, key=key).items():
        found = [use for use in uses if use.type in LAYER_OPS]
        if not found:
            raise ConfigError(f"{key}: '{name}' is read by no conv / matmul op of {plan.model.program} (only by "
                              f"{', '.join(sorted({use.type for use in uses}))}); list its layers' weights: "
                              f"python tools/inspect_model.py --model {plan.model.dir} --weights")
        layers += found
    conv_outputs = [out for layer in layers if layer.type == "conv2d" for out in layer.outputs.get("Output", ())]
    fused = {out: uses[0].outputs.get(_CONV2D_FUSED_INTO[uses[0].type], ())
             for out, uses in tensor_readers(plan.model, conv_outputs).items()
             if len(uses) == 1 and uses[0].slot == "X" and uses[0].type in _CONV2D_FUSED_INTO}
    names = [name for layer in layers for out in layer.output_names for name in (out, *fused.get(out, ()))]
    return list(dict.fromkeys(names))


def _configure_trt(config: Any, plan: PredictorPlan) -> None:
    trt = plan.runtime.trt
    config.enable_tensorrt_engine(
        workspace_size=trt.workspace_size,
        max_batch_size=trt.max_batch_size or plan.runtime.batch_size,
        min_subgraph_size=trt.min_subgraph_size,
        precision_mode=_precision_enum(plan.precision),
        use_static=trt.use_static,
        use_calib_mode=plan.use_calib_mode,
        use_cuda_graph=trt.use_cuda_graph,
    )
    if plan.explicit_quantization:  # INT8 from the model's Q/DQ ops: no calibrator, no dynamic ranges
        config.enable_tensorrt_explicit_quantization()
    if trt.optimization_level is not None:
        config.set_tensorrt_optimization_level(trt.optimization_level)
    if trt.memory_sharing:
        config.enable_tensorrt_memory_optim(engine_memory_sharing=True, sharing_identifier=trt.memory_sharing_id)
        if trt.memory_sharing_id:  # Paddle refuses to share between predictors on the old executor
            config.enable_new_executor(True)
    if trt.subgraph_precision:  # positional: Paddle binds these three lists without names (fp16, int8, bf16)
        precision = trt.subgraph_precision
        config.exp_specify_tensorrt_subgraph_precision(list(precision.fp16), list(precision.int8),
                                                       list(precision.bf16))
    if trt.low_precision_io:
        config.enable_low_precision_io(x=True)
    if trt.inspector:
        config.enable_tensorrt_inspector(inspector_serialize=trt.inspector_serialize)
    disabled = list(trt.disabled_ops)
    if plan.fp32_tensors:
        layers = trt_fp32_layer_names(plan)
        log.info("TensorRT INT8: the layers reading %s (calibration.skip_tensors) stay FP32, out of TensorRT by "
                 "their outputs %s", list(plan.fp32_tensors), layers)
        disabled += [name for name in layers if name not in disabled]
    if disabled:
        config.exp_disable_tensorrt_ops(disabled)
    shapes = trt.dynamic_shape
    if shapes.mode == "manual":
        config.set_trt_dynamic_shape_info(
            min_input_shape=shapes.min, max_input_shape=shapes.max, optim_input_shape=shapes.opt,
            disable_trt_plugin_fp16=shapes.disable_trt_plugin_fp16)
    elif shapes.mode == "tuned":
        config.enable_tuned_tensorrt_dynamic_shape(
            shape_range_info_path=str(shape_file(plan)), allow_build_at_runtime=shapes.allow_build_at_runtime)
    if trt.cache_dir is not None or trt.use_static:
        config.set_optim_cache_dir(str(engine_cache_dir(plan)))


def _configure_gpu(config: Any, plan: PredictorPlan) -> None:
    rt = plan.runtime
    # FP16 engines with FP16 inputs and outputs (low_precision_io) need Paddle's GPU mixed precision on: Paddle
    # refuses enable_low_precision_io otherwise (EnableLowPrecisionIO, analysis_config.cc).
    half = plan.backend == "paddle" or (plan.backend == "trt" and rt.trt.low_precision_io)
    native_precision = "fp16" if half and plan.precision == "fp16" else "fp32"
    # enable_use_gpu must come before enable_tensorrt_engine, or Paddle silently leaves TensorRT off.
    config.enable_use_gpu(memory_pool_init_size_mb=rt.gpu_mem_mb, device_id=rt.gpu_id,
                          precision_mode=_precision_enum(native_precision))
    if plan.collect_shapes is not None:
        config.collect_shape_range_info(str(plan.collect_shapes))
    elif plan.backend == "trt":
        _configure_trt(config, plan)


def _configure_cpu(config: Any, plan: PredictorPlan) -> None:
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(plan.runtime.cpu_threads or os.cpu_count() or 1)
    if plan.collect_shapes is not None:  # works on CPU builds too (verified with Paddle 3.3.1)
        config.collect_shape_range_info(str(plan.collect_shapes))
    knobs = plan.runtime.paddle
    if not knobs.onednn:
        return
    config.enable_mkldnn()
    if knobs.onednn_cache_capacity:
        config.set_mkldnn_cache_capacity(knobs.onednn_cache_capacity)
    if plan.precision == "int8":
        config.enable_mkldnn_int8()
    elif plan.precision == "bf16":
        config.enable_mkldnn_bfloat16()


def build_predictor_config(plan: PredictorPlan, config_cls: Optional[Callable[..., Any]] = None) -> Any:
    """Turn a plan into a ``paddle.inference.Config`` (``config_cls`` lets tests record the calls)."""
    if config_cls is None:
        from paddle.inference import Config as config_cls
    config = config_cls(str(plan.model.program), str(plan.model.params))
    if plan.model.format == "pir" or plan.runtime.paddle.pir:
        # Paddle 3.3.1 loads .json programs with FLAGS_enable_pir_api=0 too, but with memory optimisation on
        # create_predictor fails (pass_result_info.h) unless they run on the new (PIR) executor.
        config.enable_new_ir(True)
        config.enable_new_executor(True)
    if plan.device == "gpu":
        _configure_gpu(config, plan)
    else:
        _configure_cpu(config, plan)
    config.switch_ir_optim(plan.runtime.ir_optim)
    config.enable_memory_optim(plan.runtime.paddle.memory_optim)
    config.disable_glog_info()
    return config


@contextlib.contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """Route what Paddle's C++ passes print on fd 2 during predictor creation into the debug log."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                log.debug("paddle: %s", text)


def paddle_reason(e: BaseException) -> str:
    """The one informative line of a Paddle C++ error ("(InvalidArgument) text [Hint: ...]" -> "text")."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith("(")), lines[-1] if lines else type(e).__name__)
    reason = re.sub(r"^\(\w+\)\s*", "", reason.split("[Hint:")[0]).strip().rstrip(".")
    return reason or type(e).__name__


def _load_failure(plan: PredictorPlan, e: BaseException) -> str:
    """Why a predictor could not be built: a params file Paddle cannot read, or another error of Paddle's."""
    if "load_combine" in str(e):  # the op that reads the .pdiparams
        return params_mismatch(plan.model, f"Paddle could not load it ({paddle_reason(e)})")
    return f"Paddle could not load {plan.model.program} for {plan.describe()}: {paddle_reason(e)}"


_NUMPY_DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
                 "fp16": np.float16, "float16": np.float16, "uint8": np.uint8, "bool": np.bool_}


class Predictor:
    """A Paddle predictor: named input arrays in, named output arrays out; a context manager whose close()
    flushes TensorRT calibration."""

    # Paddle 3.3.1's predictor.run() holds the GIL for the whole run (measured: a Python thread makes no
    # progress during it), so no Python thread can decode images beside it (README, CPU performance).
    releases_gil = False

    def __init__(self, plan: PredictorPlan):
        import paddle.inference as pi

        self.plan = plan
        if plan.backend == "trt" and plan.collect_shapes is None and plan.runtime.trt.use_static:
            cache.guard_engine_cache(plan.model, engine_cache_dir(plan))
        try:
            with native_stderr_to_log():
                self._predictor = pi.create_predictor(build_predictor_config(plan))
        except (RuntimeError, ValueError, OSError) as e:
            raise ModelError(_load_failure(plan, e)) from e
        self.input_names: list[str] = list(self._predictor.get_input_names())
        self.output_names: list[str] = list(self._predictor.get_output_names())
        specs = {f.name: f for f in inspect_model(plan.model).inputs}
        self._specs = {name: specs[name] for name in self.input_names if name in specs}
        self._dims = {name: specs[name].shape if name in specs else [] for name in self.input_names}
        # Handles are looked up once: they stay valid for the predictor's life and cost a map lookup per call.
        self._inputs = {name: self._predictor.get_input_handle(name) for name in self.input_names}
        self._outputs = {name: self._predictor.get_output_handle(name) for name in self.output_names}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch fed by input name; returns every output by name."""
        check_feeds(self.plan, self._dims, feeds)
        for name, handle in self._inputs.items():
            spec = self._specs.get(name)
            array = np.ascontiguousarray(feeds[name], dtype=_NUMPY_DTYPES.get(spec.dtype) if spec else None)
            handle.reshape(list(array.shape))
            handle.copy_from_cpu(array)
        try:
            self._predictor.run()
        except (RuntimeError, ValueError) as e:  # Paddle's op errors (InvalidArgument, ...) on valid feeds
            shapes = {name: list(np.shape(feeds[name])) for name in self._inputs}
            raise ModelError(f"Paddle could not run {self.plan.describe()} on inputs {shapes}: {paddle_reason(e)}; "
                             f"check that {self.plan.model.params} is the params file exported with "
                             f"{self.plan.model.program.name}") from e
        return {name: handle.copy_to_cpu() for name, handle in self._outputs.items()}

    def close(self) -> None:
        """Destroy the predictor (Paddle-TRT writes its calibration table only now)."""
        if getattr(self, "_predictor", None) is not None:
            self._inputs, self._outputs = {}, {}
            del self._predictor
            self._predictor = None
            gc.collect()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
