"""What runs where: a config checked against this machine and resolved into a ``PredictorPlan`` (device, backend,
precision, model files, and where INT8 scales come from), before any predictor is built."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Optional

from deploy import cache
from deploy.config.loader import DeployConfig, DynamicShapeConfig, RuntimeConfig
from deploy.engines.model import ModelFiles, ModelInfo, ensure_model, inspect_model
from deploy.env import (IMPLICIT_DEPRECATED, Environment, default_device, probe, support_reason, trt_int8_path,
                        trt_int8_reasons)
from deploy.errors import CalibrationError, ConfigError, DataError, ModelError, UnsupportedError

log = logging.getLogger(__name__)
SHAPES_MANIFEST_TARGET = "shapes"
# The TensorRT explicit-quantization model tools/calibrate.py writes (<model dir>/_opt_cache/int8_trt_qdq), and the
# tuned shape ranges beside it: the model's own, plus its Q/DQ tensors.
TRT_EXPLICIT_TARGET = "trt_explicit"
QDQ_SHAPE_FILE = "shape_range_info.pbtxt"

# How INT8 gets its scales: Paddle-TRT calibrating now, Paddle-TRT reading a table, or a quantized model.
Int8Mode = Literal["calibrate", "table", "quantized"]


@dataclass(frozen=True)
class PredictorPlan:
    """Everything the factory needs, resolved and checked: what runs where, at which precision, from which files."""

    device: str
    backend: str
    precision: str
    model: ModelFiles
    runtime: RuntimeConfig
    int8_mode: Optional[Int8Mode] = None
    collect_shapes: Optional[Path] = None  # run natively and record TRT shape ranges into this file
    fixed_image_shape: bool = False  # model.input_shape is set: every image is preprocessed to one [C, H, W]
    # Paddle-TRT calibrating or reading a table: calibration.skip_tensors, whose layers stay out of TensorRT (FP32)
    fp32_tensors: tuple[str, ...] = ()
    # TensorRT INT8 from the Q/DQ ops of a quantized model (enable_tensorrt_explicit_quantization)
    explicit_quantization: bool = False
    trt_shapes: Optional[Path] = None  # tuned shape ranges of this model when not the config's (the Q/DQ model's)

    @property
    def use_calib_mode(self) -> bool:
        return self.int8_mode in ("calibrate", "table")

    def describe(self) -> str:
        extra = f", int8 from {self.int8_mode}" if self.int8_mode else ""
        extra += " (explicit quantization)" if self.explicit_quantization else ""
        return f"{self.device}/{self.backend}/{self.precision}{extra} ({self.model.program})"


def resolve_plan(cfg: DeployConfig, *, env: Optional[Environment] = None, quiet: bool = False,
                 calibrating: bool = False) -> PredictorPlan:
    """Check the requested device/backend/precision against this machine and pick the model files to load."""
    env = env or probe()
    rt = cfg.runtime
    device = default_device(env) if rt.device == "auto" else rt.device
    reason = support_reason(env, device, rt.backend, rt.precision)
    if reason:
        raise UnsupportedError(f"cannot run {device}/{rt.backend}/{rt.precision} here: {reason} "
                               "(see: python tools/env.py)")
    files = ensure_model(cfg.model, quiet=quiet, how_to_build=_qat_command(cfg))
    if device == "cpu" and rt.backend == "paddle" and not rt.paddle.onednn and rt.precision != "fp32":
        raise ConfigError(f"runtime.paddle.onednn is false, so Paddle runs its plain CPU kernels, which are FP32 "
                          f"only; set runtime.paddle.onednn: true for {rt.precision}")
    plan = PredictorPlan(device, rt.backend, rt.precision, files, rt,
                         fixed_image_shape=cfg.model.input_shape is not None)
    info = inspect_model(files)
    check_input_shape(cfg.model.input_shape, info)
    if rt.backend == "trt":
        _check_trt_model(cfg, plan, info)
    elif rt.backend == "openvino":
        _check_openvino_model(plan, info)
    if rt.precision != "int8":
        if info.quantized:
            log.warning("%s is a quantized model but precision is %s: its fake-quant ops will run in %s; "
                        "use --precision int8 for INT8 speed", files.program, rt.precision, rt.precision)
        return plan
    plan = replace(plan, explicit_quantization=rt.backend == "trt" and trt_int8(cfg, env) == "explicit")
    if info.quantized:
        return replace(plan, int8_mode="quantized")
    return int8_artifacts(cfg, plan, calibrating=calibrating)


_warned: set[str] = set()


def trt_int8(cfg: DeployConfig, env: Optional[Environment] = None) -> str:
    """The TensorRT INT8 path runtime.trt.int8_mode picks on this TensorRT runtime: implicit (calibration, Paddle-TRT
    dynamic ranges) or explicit (Q/DQ). Implicit on TensorRT >= 11 is refused; on 10.1-10.x it is warned about."""
    env = env or probe()
    path = trt_int8_path(cfg.runtime.trt.int8_mode, env)
    version = env.trt_runtime_version
    # Without a TensorRT runtime nothing is refused here: the Q/DQ model for explicit is made on any machine.
    reason = trt_int8_reasons(env)[path] if env.trt_compiled and version[0] else None
    if reason:
        other = "implicit" if path == "explicit" else "explicit"
        after = (f", after: python tools/calibrate.py -c {cfg.source} -o runtime.trt.int8_mode=explicit"
                 if other == "explicit" else "")
        raise UnsupportedError(f"runtime.trt.int8_mode is {path}, but {reason}; use -o runtime.trt.int8_mode={other} "
                               f"(or auto){after}")
    if path == "implicit" and version >= IMPLICIT_DEPRECATED and "implicit" not in _warned:
        _warned.add("implicit")
        log.warning("runtime.trt.int8_mode is implicit on TensorRT %s, which deprecated implicit INT8 calibration "
                    "(10.1) and removes it in 11.0; switch to runtime.trt.int8_mode: explicit (or auto)",
                    ".".join(map(str, version)))
    return path


def _qat_command(cfg: DeployConfig) -> Optional[str]:
    """A config with a qat section builds its (quantized) model by quantization-aware training."""
    if cfg.qat.network_file is not None and cfg.model.build is None:
        return f"python tools/qat.py -c {cfg.source}"
    return None


def check_input_shape(expected: Optional[list[int]], info: ModelInfo) -> None:
    """Fail when the config's model.input_shape disagrees with the model's static input dims."""
    if expected is None or not info.inputs:
        return
    feed = info.inputs[0]
    dims = feed.shape[1:] if len(feed.shape) == len(expected) + 1 else feed.shape
    if len(dims) != len(expected) or any(d > 0 and d != e for d, e in zip(dims, expected)):
        raise ModelError(f"model.input_shape {expected} does not match the model: input '{feed.name}' of "
                         f"{info.files.program} has shape {format_shape(feed.shape)}; fix model.input_shape "
                         "or model.dir")


def _check_trt_knobs(rt: RuntimeConfig) -> None:
    """Paddle-TRT knob combinations Paddle refuses or ignores (read in Paddle's source: analysis_config.cc,
    tensorrt_subgraph_pass.cc, paddle_analysis_config.h)."""
    trt = rt.trt
    if trt.low_precision_io and rt.precision != "fp16":
        raise ConfigError(f"runtime.trt.low_precision_io makes FP16 engines take and give FP16 tensors; with "
                          f"precision {rt.precision} Paddle ignores it (auto_mixed_precision_pass): use --precision "
                          "fp16 or set it false")
    if trt.use_cuda_graph and trt.dynamic_shape.mode != "off":
        raise ConfigError("runtime.trt.use_cuda_graph needs fixed input shapes, batch included (Paddle's "
                          "enable_tensorrt_engine docs), and runtime.trt.dynamic_shape.mode is "
                          f"{trt.dynamic_shape.mode}; set one of them off")


def _check_trt_model(cfg: DeployConfig, plan: PredictorPlan, info: ModelInfo) -> None:
    _check_trt_knobs(cfg.runtime)
    if plan.model.format == "pir":
        raise ModelError(f"{plan.model.program} is a PIR (.json) program, but Paddle-TRT (enable_tensorrt_engine) "
                         "needs the classic .pdmodel format: export it with FLAGS_enable_pir_api=0 set before "
                         "paddle is imported, or run it with runtime.backend=paddle")
    shapes = cfg.runtime.trt.dynamic_shape
    if shapes.mode == "manual":
        check_dynamic_shapes(shapes, info)
    elif shapes.mode == "tuned":
        check_shape_file(cfg, plan)
    else:
        dynamic = [f for f in info.inputs if any(d < 0 for d in f.shape[1:])]
        if dynamic:
            raise ModelError(f"input '{dynamic[0].name}' of {plan.model.program} has dynamic dims "
                             f"{format_shape(dynamic[0].shape)}, so TensorRT needs shape ranges first: run "
                             f"python tools/calibrate.py -c {cfg.source} --collect-shapes, then use "
                             "runtime.trt.dynamic_shape.mode: tuned (configs/_base_/runtime/trt-dynamic-tuned.yml), "
                             "or give manual min/opt/max")


def _check_openvino_model(plan: PredictorPlan, info: ModelInfo) -> None:
    """What OpenVINO's Paddle frontend cannot read (measured with OpenVINO 2026.4)."""
    if plan.model.format == "pir":
        raise ModelError(f"{plan.model.program} is a PIR (.json) program, which OpenVINO's Paddle frontend cannot "
                         "read (it reads the classic .pdmodel): export it with FLAGS_enable_pir_api=0 set before "
                         "paddle is imported, or run it with runtime.backend=paddle")
    if info.quantized:
        raise ModelError(f"{plan.model.program} is a PaddleSlim-quantized program, which OpenVINO's Paddle frontend "
                         "cannot read (its quantize_linear scales); run it with runtime.backend=paddle "
                         "--precision int8, or point model.dir at the FP32 model")


def check_dynamic_shapes(shapes: DynamicShapeConfig, info: ModelInfo) -> None:
    """Fail when manual TRT dynamic shapes name inputs the model lacks, or disagree with its rank/static dims."""
    feeds = {f.name: f.shape for f in info.inputs}
    if not feeds:
        return
    for name in shapes.min:
        if name not in feeds:
            raise ModelError(f"runtime.trt.dynamic_shape names input '{name}', but {info.files.program} has inputs "
                             f"{sorted(feeds)}; use the model's input names")
        model = feeds[name]
        for which, dims in (("min", shapes.min[name]), ("opt", shapes.opt[name]), ("max", shapes.max[name])):
            if len(dims) != len(model) or any(m > 0 and m != d for m, d in zip(model, dims)):
                raise ModelError(f"runtime.trt.dynamic_shape.{which} of '{name}' is {dims}, but the model's "
                                 f"input '{name}' has shape {format_shape(model)}; give one value per dim and "
                                 "keep its fixed dims")


def check_feeds(plan: PredictorPlan, input_dims: dict[str, list[int]], feeds: dict[str, Any]) -> None:
    """Every engine's check before a run: each input fed, with the model's rank and fixed dims (-1 = any)."""
    missing = [n for n in input_dims if n not in feeds]
    if missing:
        raise DataError(f"nothing feeds model input '{missing[0]}' of {plan.model.program} (inputs "
                        f"{list(input_dims)}, fed {sorted(feeds)}); set 'task' in the config to the task whose "
                        "model this is (classification, ocr_det, ocr_rec, detection)")
    for name, dims in input_dims.items():
        got = feeds[name].shape
        if dims and (len(dims) != len(got) or any(e > 0 and e != g for e, g in zip(dims[1:], got[1:]))):
            raise DataError(f"model input '{name}' is fed {list(got[1:])} per image but expects "
                            f"{format_shape(dims[1:])}; fix the preprocess ops (resize size, decode mode, "
                            "normalize mean/std count)")


def format_shape(dims: list[int]) -> str:
    """[?, 1, 28, 28] for [-1, 1, 28, 28]."""
    return "[" + ", ".join("?" if d < 0 else str(d) for d in dims) + "]"


def shape_file(plan: PredictorPlan) -> Path:
    """Where TRT shape ranges are collected to and read from (the Q/DQ model's: beside it)."""
    configured = plan.runtime.trt.dynamic_shape.shape_file
    return plan.trt_shapes or configured or plan.model.dir / "_opt_cache" / "shape_range_info.pbtxt"

def check_shape_file(cfg: DeployConfig, plan: "PredictorPlan") -> Path:
    """For tuned dynamic shapes: the shape file must exist and, when we collected it, match the model."""
    path = shape_file(plan)
    rerun = f"run: python tools/calibrate.py -c {cfg.source} --collect-shapes"
    if not path.is_file():
        raise CalibrationError(f"runtime.trt.dynamic_shape.mode is tuned but there is no shape range file {path}; "
                               f"{rerun}")
    entry = cache.read_manifest(plan.model)["targets"].get(SHAPES_MANIFEST_TARGET)
    recorded = entry and Path(entry["artifacts"]["dir"]) / path.name == path
    if recorded and cache.artifact_fingerprint([path]) == entry["artifacts"]["files"]:
        now = cache.model_fingerprint(plan.model)
        if (now["program_sha256"], now["params_sha256"]) != (entry["model"]["program_sha256"],
                                                              entry["model"]["params_sha256"]):
            raise CalibrationError(f"shape ranges in {path} are stale: the model changed since "
                                   f"{entry.get('created', 'they were collected')}; {rerun}")
    return path


def trt_table_dir(plan: PredictorPlan) -> Path:
    """Where Paddle-TRT READS calibration tables: the cache dir when set, else the model's _opt_cache."""
    return plan.runtime.trt.cache_dir or cache.opt_cache_dir(plan.model)


def engine_cache_dir(plan: PredictorPlan) -> Path:
    """Where Paddle-TRT reads and writes serialized engines (use_static): the same dir as its tables."""
    return trt_table_dir(plan)


def int8_target(plan: PredictorPlan) -> str:
    """The manifest target an INT8 plan's artifacts are recorded under."""
    if plan.backend == "trt":
        return TRT_EXPLICIT_TARGET if plan.explicit_quantization else "trt"
    return "openvino" if plan.backend == "openvino" else "cpu"


def int8_artifacts(cfg: DeployConfig, plan: PredictorPlan, *, calibrating: bool) -> PredictorPlan:
    """The INT8 plan of a non-quantized model: its calibration's artifacts (a table, or a quantized model and, for
    TensorRT's Q/DQ model with tuned shapes, its shape ranges), after checking they are fresh."""
    target = int8_target(plan)
    # The calibration run and INT8 inference from its table keep the same layers out of TensorRT, so both build
    # the same subgraphs (Paddle-TRT finds a table by its subgraph's tensor names).
    fp32 = tuple(cfg.calibration.skip_tensors)
    if target == "trt" and calibrating:
        return replace(plan, int8_mode="calibrate", fp32_tensors=fp32)
    entry = cache.read_manifest(plan.model)["targets"].get(target)
    if entry is None:
        what = ("by explicit quantization needs a Q/DQ model" if target == TRT_EXPLICIT_TARGET
                else "needs calibration or a quantized model")
        raise CalibrationError(
            f"INT8 on {plan.device}/{plan.backend} {what}, and {plan.model.dir} has no {target} calibration; run: "
            f"{cache.calibrate_command(cfg)}{' (it runs on the CPU too)' if target == TRT_EXPLICIT_TARGET else ''}, "
            "or point model.dir at a PaddleSlim-quantized model")
    cache.check_fresh(entry, plan.model, cfg, target)
    paths = cache.check_artifacts(entry, cfg)
    if target == "trt":
        # The table holds scales for the subgraphs of its calibration run; other FP32 layers make other subgraphs,
        # which Paddle-TRT would silently calibrate again on inference data.
        if list(entry.get("fp32_tensors", [])) != list(cfg.calibration.skip_tensors):
            raise CalibrationError(f"the TensorRT calibration table is stale: calibration.skip_tensors changed since "
                                   f"{entry.get('created', 'it was made')} (it was {entry.get('fp32_tensors', [])}), so "
                                   f"TensorRT's subgraphs changed; {cache.rerun_hint(cfg)}")
        table_dir = trt_table_dir(plan)
        if not any((table_dir / p.name).is_file() for p in paths):
            raise CalibrationError(f"no TensorRT calibration table in {table_dir} (runtime.trt.cache_dir changed "
                                   f"since calibration?); {cache.rerun_hint(cfg)}")
        return replace(plan, int8_mode="table", fp32_tensors=fp32)
    if target == "openvino":
        program = next(p for p in paths if p.suffix == ".xml")
        return replace(plan, model=ModelFiles(program, program.with_suffix(".bin")), int8_mode="quantized")
    program = next(p for p in paths if p.suffix in (".pdmodel", ".json"))
    shapes = _qdq_shapes(cfg, plan, entry, program.parent) if target == TRT_EXPLICIT_TARGET else None
    return replace(plan, model=ModelFiles(program, program.with_suffix(".pdiparams")), int8_mode="quantized",
                   trt_shapes=shapes)


def _qdq_shapes(cfg: DeployConfig, plan: PredictorPlan, entry: dict, folder: Path) -> Optional[Path]:
    """Tuned dynamic shapes: the TensorRT Q/DQ model's shape ranges (derived from the model's at calibration),
    stale when the model's were collected again since."""
    if cfg.runtime.trt.dynamic_shape.mode != "tuned":
        return None
    source = entry.get("shape_source")
    now = check_shape_file(cfg, plan)
    if source is None or cache.sha256_file(now) != source["sha256"]:
        raise CalibrationError(f"the TensorRT Q/DQ model's shape ranges are stale: {now} was collected again (or not "
                               f"used) since {entry.get('created', 'calibration')}; {cache.rerun_hint(cfg)}")
    return folder / QDQ_SHAPE_FILE
