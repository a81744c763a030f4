"""Contract tests of the GPU/TensorRT predictor configs: this machine has no GPU or TensorRT, so the calls the
factory makes are recorded and bound to the signatures in the installed Paddle's own docstrings."""
from dataclasses import replace

import pytest
from paddle.inference import PrecisionType

from conftest import LENET_CONFIG
from deploy.config.loader import load_config
from deploy.env import Environment, probe
from deploy.errors import CalibrationError, ModelError, UnsupportedError
from deploy.engines.paddle import build_predictor_config
from deploy.engines.plan import resolve_plan
from deploy.int8.shapes import collect_shapes
from paddle_signatures import RecordingConfig, bind


def gpu_env(trt: tuple[int, int, int] = (10, 0, 1)) -> Environment:
    """The probe of this machine with a CUDA+TensorRT build and one GPU described (no GPU is used). TensorRT 10.0 by
    default: the last release before implicit calibration was deprecated (runtime.trt.int8_mode auto = implicit)."""
    return replace(probe(), cuda_compiled=True, cuda_version="12.6", cudnn_version="9.5", trt_compile_version=trt,
                   trt_runtime_version=trt, gpus=["described GPU"], gpu_capabilities=[(8, 9)])


def record(cfg, env=None, **kw) -> RecordingConfig:
    plan = resolve_plan(cfg, env=env or gpu_env(), quiet=True, **kw)
    return build_predictor_config(plan, config_cls=RecordingConfig)


def assert_every_call_binds(rec: RecordingConfig) -> None:
    for name, args, kwargs in rec.calls[1:]:
        bind(name, args, kwargs)


def test_binder_rejects_wrong_names_order_and_arity():
    bind("enable_tensorrt_engine", (), {"workspace_size": 1, "use_calib_mode": False})
    with pytest.raises(TypeError):
        bind("enable_tensorrt_engine", (), {"use_calib": False})  # wrong name
    with pytest.raises(TypeError):
        bind("enable_tensorrt_engine", (1, 1, 3, PrecisionType.Int8, False, True, False, 99), {})  # arity
    with pytest.raises(TypeError):
        bind("set_optim_cache_dir", (), {})  # missing argument
    with pytest.raises(AttributeError):
        RecordingConfig("m", "p").enable_tensorrt_engines()  # no such Config method


@pytest.mark.parametrize("precision,enum", [("fp32", PrecisionType.Float32), ("fp16", PrecisionType.Half)])
def test_trt_float_modes(lenet, precision, enum):
    cfg = load_config(LENET_CONFIG, ["runtime.backend=trt", f"runtime.precision={precision}",
                                     "runtime.device=gpu", "runtime.batch_size=16"])
    rec = record(cfg)
    assert_every_call_binds(rec)
    names = rec.names()
    assert names.index("enable_use_gpu") < names.index("enable_tensorrt_engine")
    assert "disable_gpu" not in names and "enable_mkldnn" not in names
    trt = rec.call("enable_tensorrt_engine").arguments
    assert trt["precision_mode"] == enum and trt["use_calib_mode"] is False
    assert trt["max_batch_size"] == 16 and trt["workspace_size"] == 1 << 30 and trt["use_static"] is False
    gpu = rec.call("enable_use_gpu").arguments
    assert gpu["memory_pool_init_size_mb"] == 500 and gpu["device_id"] == 0


def test_trt_every_argument_is_passed_by_keyword(lenet):
    rec = record(load_config(LENET_CONFIG, ["runtime.backend=trt", "runtime.device=gpu"]))
    (_, args, kwargs), = [c for c in rec.calls if c[0] == "enable_tensorrt_engine"]
    assert args == () and set(kwargs) == {"workspace_size", "max_batch_size", "min_subgraph_size",
                                          "precision_mode", "use_static", "use_calib_mode", "use_cuda_graph"}


def test_trt_int8_calibration_run_uses_calib_mode(lenet_config):
    cfg = load_config(lenet_config, ["runtime.backend=trt", "runtime.precision=int8", "runtime.device=gpu"])
    rec = record(cfg, calibrating=True)
    assert_every_call_binds(rec)
    trt = rec.call("enable_tensorrt_engine").arguments
    assert trt["precision_mode"] == PrecisionType.Int8 and trt["use_calib_mode"] is True


def test_trt_int8_without_table_or_quantized_model_is_refused(lenet_config):
    cfg = load_config(lenet_config, ["runtime.backend=trt", "runtime.precision=int8", "runtime.device=gpu"])
    with pytest.raises(CalibrationError, match="run: python tools/calibrate.py -c"):
        resolve_plan(cfg, env=gpu_env(), quiet=True)


def test_gpu_native_fp16_and_cpu_modes(lenet):
    rec = record(load_config(LENET_CONFIG, ["runtime.device=gpu", "runtime.precision=fp16"]))
    assert_every_call_binds(rec)
    assert rec.call("enable_use_gpu").arguments["precision_mode"] == PrecisionType.Half
    assert "enable_tensorrt_engine" not in rec.names()
    rec = record(load_config(LENET_CONFIG, ["runtime.device=cpu", "runtime.cpu_threads=2"]), env=probe())
    assert_every_call_binds(rec)
    assert rec.names()[1:4] == ["disable_gpu", "set_cpu_math_library_num_threads", "enable_mkldnn"]
    assert "enable_mkldnn_int8" not in rec.names() and "enable_use_gpu" not in rec.names()


def test_manual_dynamic_shape_argument_order(lenet):
    cfg = load_config(LENET_CONFIG, [
        "runtime.backend=trt", "runtime.device=gpu",
        "runtime.trt.dynamic_shape={mode: manual, min: {x: [1,1,28,28]}, opt: {x: [8,1,28,28]}, "
        "max: {x: [64,1,28,28]}}"])
    rec = record(cfg)
    assert_every_call_binds(rec)
    shapes = rec.call("set_trt_dynamic_shape_info").arguments
    assert shapes["min_input_shape"] == {"x": [1, 1, 28, 28]}
    assert shapes["max_input_shape"] == {"x": [64, 1, 28, 28]}
    assert shapes["optim_input_shape"] == {"x": [8, 1, 28, 28]}
    names = rec.names()
    assert names.index("enable_tensorrt_engine") < names.index("set_trt_dynamic_shape_info")


def test_manual_dynamic_shapes_must_fit_the_model(lenet):
    base = ["runtime.backend=trt", "runtime.device=gpu"]
    wrong_name = "runtime.trt.dynamic_shape={mode: manual, min: {image: [1,1,28,28]}, opt: {image: [8,1,28,28]}, " \
                 "max: {image: [64,1,28,28]}}"
    with pytest.raises(ModelError, match=r"names input 'image', but .*inference.pdmodel has inputs \['x'\]"):
        record(load_config(LENET_CONFIG, base + [wrong_name]))
    wrong_dims = "runtime.trt.dynamic_shape={mode: manual, min: {x: [1,3,28,28]}, opt: {x: [8,3,28,28]}, " \
                 "max: {x: [64,3,28,28]}}"
    with pytest.raises(ModelError, match=r"dynamic_shape.min of 'x' is \[1, 3, 28, 28\], but the model's input "
                                         r"'x' has shape \[\?, 1, 28, 28\]"):
        record(load_config(LENET_CONFIG, base + [wrong_dims]))


def test_tuned_dynamic_shape_without_collected_ranges_says_what_to_run(lenet_config, lenet_copy):
    cfg = load_config(lenet_config, ["runtime.backend=trt", "runtime.device=gpu",
                                     "runtime.trt.dynamic_shape.mode=tuned"])
    with pytest.raises(CalibrationError, match=f"no shape range file {lenet_copy}/_opt_cache/shape_range_info.pbtxt; "
                                               f"run: python tools/calibrate.py -c {lenet_config} --collect-shapes"):
        record(cfg)


def test_tuned_dynamic_shape_and_static_engine_cache(lenet_config, lenet_copy, tmp_path):
    collect_shapes(load_config(lenet_config), num_images=100, quiet=True)  # the real collect run, on this CPU
    cfg = load_config(lenet_config, ["runtime.backend=trt", "runtime.device=gpu", "runtime.trt.use_static=true",
                                     f"runtime.trt.cache_dir={tmp_path / 'engines'}",
                                     "runtime.trt.dynamic_shape.mode=tuned"])
    rec = record(cfg)
    assert_every_call_binds(rec)
    tuned = rec.call("enable_tuned_tensorrt_dynamic_shape").arguments
    assert tuned["shape_range_info_path"] == str(lenet_copy / "_opt_cache" / "shape_range_info.pbtxt")
    assert tuned["allow_build_at_runtime"] is True
    assert rec.call("set_optim_cache_dir").arguments["arg0"] == str(tmp_path / "engines")
    assert rec.call("enable_tensorrt_engine").arguments["use_static"] is True
    names = rec.names()
    assert names.index("enable_tensorrt_engine") < names.index("enable_tuned_tensorrt_dynamic_shape")
    assert "collect_shape_range_info" not in names and "set_trt_dynamic_shape_info" not in names


def test_collect_run_on_a_gpu_is_native(lenet, tmp_path):
    plan = resolve_plan(load_config(LENET_CONFIG, ["runtime.device=gpu"]), env=gpu_env(), quiet=True)
    rec = build_predictor_config(replace(plan, collect_shapes=tmp_path / "shapes.pbtxt"), config_cls=RecordingConfig)
    assert_every_call_binds(rec)
    assert rec.call("collect_shape_range_info").arguments["arg0"] == str(tmp_path / "shapes.pbtxt")
    names = rec.names()
    assert names.index("enable_use_gpu") < names.index("collect_shape_range_info")
    assert "enable_tensorrt_engine" not in names and "disable_gpu" not in names


def test_impossible_requests_on_this_machine_say_why(lenet):
    with pytest.raises(UnsupportedError, match="cannot run gpu/paddle/fp32 here: .*no CUDA"):
        resolve_plan(load_config(LENET_CONFIG, ["runtime.device=gpu"]))
    with pytest.raises(UnsupportedError, match="cannot run cpu/trt/fp32 here: TensorRT runs only on NVIDIA GPUs"):
        resolve_plan(load_config(LENET_CONFIG, ["runtime.device=cpu", "runtime.backend=trt"]))
    with pytest.raises(UnsupportedError, match="fp16 is not supported on CPU"):
        resolve_plan(load_config(LENET_CONFIG, ["runtime.device=cpu", "runtime.precision=fp16"]))
    with pytest.raises(UnsupportedError, match="not compiled with TensorRT"):
        resolve_plan(load_config(LENET_CONFIG, ["runtime.device=gpu", "runtime.backend=trt"]),
                     env=replace(gpu_env(), trt_compile_version=(0, 0, 0)))
