"""Quantized models swapped in by config: QAT for real, detection, and use_calib_mode=False on TRT."""
import json
import shutil

import pytest
from paddle.inference import PrecisionType

from conftest import LENET_CONFIG, ROOT, error_line, run_tool, write_config
from deploy.config.loader import load_config
from deploy.engines.paddle import build_predictor_config
from deploy.engines.plan import resolve_plan
from paddle_signatures import RecordingConfig, bind
from test_predictor_contract import gpu_env

QAT_CONFIG = ROOT / "configs" / "lenet_mnist_qat.yml"


@pytest.fixture(scope="module")
def qat_model(lenet, tmp_path_factory):
    """A QAT LeNet trained for real (1 epoch on the 500 calibration digits, to keep the suite fast)."""
    root = tmp_path_factory.mktemp("qat")
    cfg = write_config(root / "qat.yml", f"_base_: {QAT_CONFIG}\nmodel:\n  dir: {root / 'qat_model'}\n"
                       f"qat:\n  train_images: {lenet / 'data' / 'calib'}\n  epochs: 1\n")
    result = run_tool("qat", "-c", cfg, "--quiet", check=True)
    assert "QAT done" in result.stdout
    return cfg, root / "qat_model"


def top1(result):
    return float(result.stdout.strip().splitlines()[-1].split("top-1 ")[1].split("%")[0])


def inspect(*args):
    return json.loads(run_tool("inspect_model", *args, "--json", check=True).stdout)


def test_qat_model_is_quantized_and_int8_matches_fp32(qat_model, lenet):
    cfg, model_dir = qat_model
    info = inspect("--model", model_dir)
    assert info["quantized"] and info["quant_ops"]["quantize_linear"] >= 4
    assert json.loads((model_dir / "qat.json").read_text())["epochs"] == 1
    test_dir = lenet / "data" / "test"
    fp32 = top1(run_tool("infer", "-c", LENET_CONFIG, "--image", test_dir, "--quiet", check=True))
    int8 = run_tool("infer", "-c", cfg, "--image", test_dir, "--precision", "int8", check=True)
    assert "int8 from quantized" in int8.stderr  # no calibration involved
    assert abs(top1(int8) - fp32) <= 1.0


def test_fp32_on_a_quantized_model_warns(qat_model, lenet):
    cfg, _ = qat_model
    result = run_tool("infer", "-c", cfg, "--image", lenet / "data" / "test" / "4", check=True)
    assert "is a quantized model but precision is fp32: its fake-quant ops will run" in result.stderr


def test_missing_qat_model_says_how_to_build_it(tmp_path):
    cfg = write_config(tmp_path / "q.yml", f"_base_: {QAT_CONFIG}\nmodel:\n  dir: {tmp_path / 'none'}\n")
    line = error_line(run_tool("infer", "-c", cfg, "--precision", "int8"))
    assert f"build it with: python tools/qat.py -c {cfg}" in line


def test_fp32_model_is_not_quantized(lenet):
    info = inspect("-c", LENET_CONFIG)
    assert info["quantized"] is False and info["quant_ops"] == {} and info["inputs"][0]["shape"] == ["?", 1, 28, 28]


def test_calibrating_a_quantized_model_is_refused(qat_model):
    cfg, _ = qat_model
    result = run_tool("calibrate", "-c", cfg)
    line = error_line(result)
    assert result.returncode == 2
    assert "is already quantized" in line and "carries its own scales" in line and "--precision int8" in line


def test_post_training_quantized_model_loads_by_config(lenet, lenet_copy, tmp_path):
    """The PTQ model from tools/calibrate.py, pointed at directly by a config, runs as a quantized model."""
    cfg = write_config(tmp_path / "l.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  dir: {lenet_copy}\n  build: null\n")
    run_tool("calibrate", "-c", cfg, "--quiet", "--num-images", "200", check=True)
    ptq_dir = tmp_path / "ptq"
    shutil.copytree(lenet_copy / "_opt_cache" / "int8_cpu", ptq_dir)
    assert inspect("--model", ptq_dir)["quantized"] is True
    swapped = write_config(tmp_path / "ptq.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  dir: {ptq_dir}\n  build: null\n")
    result = run_tool("infer", "-c", swapped, "--precision", "int8", "--image", lenet / "data" / "test", check=True)
    assert "int8 from quantized" in result.stderr and top1(result) >= 95.0
    line = error_line(run_tool("calibrate", "-c", swapped))
    assert "is already quantized" in line


def test_trt_contract_quantized_vs_calibrated(qat_model, lenet_config):
    qat_cfg, _ = qat_model
    plan = resolve_plan(load_config(qat_cfg, ["runtime.device=gpu", "runtime.backend=trt", "runtime.precision=int8"]),
                        env=gpu_env(), quiet=True)
    rec = build_predictor_config(plan, config_cls=RecordingConfig)
    for name, args, kwargs in rec.calls[1:]:
        bind(name, args, kwargs)
    trt = rec.call("enable_tensorrt_engine").arguments
    assert plan.int8_mode == "quantized"
    assert trt["precision_mode"] == PrecisionType.Int8 and trt["use_calib_mode"] is False

    fp32_model = load_config(lenet_config, ["runtime.device=gpu", "runtime.backend=trt", "runtime.precision=int8"])
    plan = resolve_plan(fp32_model, env=gpu_env(), quiet=True, calibrating=True)
    trt = build_predictor_config(plan, config_cls=RecordingConfig).call("enable_tensorrt_engine").arguments
    assert trt["precision_mode"] == PrecisionType.Int8 and trt["use_calib_mode"] is True
