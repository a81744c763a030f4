"""The INT8 check and the accuracy budget (tools/calibrate.py --max-drop), on real models and real engines:
LeNet for the check and the FP32 layer copies, a small PP-OCRv4 rec build (whose default PTQ loses ~20 points of
exact match) for the search, its refusal and --accept-best."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import LENET_CONFIG, ROOT, error_line, run_tool, write_config
from deploy import cache
from deploy.config.loader import load_config
from deploy.engines.factory import create_predictor
from deploy.engines.model import ModelFiles
from deploy.int8.layers import QuantizedModel
from deploy.int8.check import candidate_plan, fp32_plan

REC_COUNTS = {"test": 40, "calib": 24}
# Default PTQ of every conv and matmul (what the shipped config avoids by hand): far over a 1-point budget.
DEFAULT_PTQ = ["-o", "calibration.quantize_op_types=null", "-o", "calibration.skip_tensors=[]"]


def manifest_entry(model_dir, target="cpu"):
    return json.loads((model_dir / "_opt_cache" / "calibration.json").read_text())["targets"][target]


@pytest.fixture(scope="module")
def lenet_checked(lenet, tmp_path_factory):
    """A LeNet copy calibrated through the CLI, with the default check (200 training digits)."""
    root = tmp_path_factory.mktemp("checked")
    shutil.copytree(lenet / "inference", root / "model", ignore=shutil.ignore_patterns("_opt_cache"))
    cfg = write_config(root / "lenet.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  dir: {root / 'model'}\n  build: null\n")
    result = run_tool("calibrate", "-c", cfg, "--quiet", check=True)
    return cfg, root / "model", result


def test_calibration_scores_int8_on_check_images_it_never_calibrated_on(lenet_checked, lenet):
    cfg, model_dir, result = lenet_checked
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(f"INT8 agrees with FP32 on 200 images of {lenet / 'data' / 'train'}: ")
    assert "top-1" in line and "vs FP32" in line
    check = manifest_entry(model_dir)["check"]
    assert check["images"] == 200 and check["labelled"] and check["metric"] == "top1" and not check["held_out"]
    assert abs(check["drop_points"] - 100 * (check["fp32"] - check["int8"])) < 1e-3
    assert check["drop_points"] <= 1.0  # LeNet INT8 is within a point: no warning, no search
    assert "--max-drop" not in result.stderr


def test_held_out_check_images_are_the_unsampled_calibration_images(lenet_config, tmp_path):
    """Without check_images, the check set is what the seeded sample left over, never a calibration image."""
    result = run_tool("calibrate", "-c", lenet_config, "--num-images", "450", "--quiet", "-o",
                      "calibration.check_images=null", check=True)
    assert "INT8 agrees with FP32 on 50 held-out images" in result.stdout
    entry = manifest_entry(lenet_config.parent.parent / "lenet_model")
    assert entry["check"]["held_out"] and entry["check"]["images"] == 50 and entry["num_images"] == 450
    # All 500 used for calibration: nothing left to check on; a warning names check_images, and --max-drop refuses.
    full = run_tool("calibrate", "-c", lenet_config, "-o", "calibration.check_images=null", check=True)
    assert "INT8 not checked" in full.stderr and "--check-images" in full.stderr
    refused = run_tool("calibrate", "-c", lenet_config, "-o", "calibration.check_images=null", "--max-drop", "1")
    assert refused.returncode == 2 and "--max-drop needs check images" in error_line(refused)


def test_fp32_layer_copies_run_exactly_the_named_layers_in_fp32(lenet_checked, tmp_path):
    cfg_path, model_dir, _ = lenet_checked
    cfg = load_config(cfg_path)
    quantized = ModelFiles(model_dir / "_opt_cache" / "int8_cpu" / "inference.pdmodel",
                           model_dir / "_opt_cache" / "int8_cpu" / "inference.pdiparams")
    fp32 = ModelFiles(model_dir / "inference.pdmodel", model_dir / "inference.pdiparams")
    model = QuantizedModel(quantized, fp32)
    names = [layer.name for layer in model.layers]
    # keep_image_conv_fp32: the first conv (the image's) was never quantized; the other conv and the fcs are.
    assert names == ["conv2d_3.w_0", "linear_2.w_0", "linear_3.w_0"]
    one = model.save({"linear_2.w_0"}, tmp_path / "one")
    assert [layer.name for layer in QuantizedModel(one, fp32).layers] == ["conv2d_3.w_0", "linear_3.w_0"]
    every = model.save(set(names), tmp_path / "all")
    assert QuantizedModel(every, fp32).layers == []  # no layer reads a Q/DQ input (layer outputs keep theirs)
    images = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    reference = fp32_plan(cfg)
    with create_predictor(reference) as p:
        expected = p.run({p.input_names[0]: images})
    with create_predictor(candidate_plan(reference, every)) as p:
        got = p.run({p.input_names[0]: images})
    for name, value in expected.items():  # the FP32 weights came back, not the INT8-rounded ones
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """A small PP-OCRv4 rec build and a config inheriting the shipped one (check on its 40 test lines)."""
    root = tmp_path_factory.mktemp("rec_budget")
    subprocess.run([sys.executable, str(ROOT / "models" / "ppocr_rec" / "build.py"), "--out", str(root / "rec"),
                    "--test", str(REC_COUNTS["test"]), "--calib", str(REC_COUNTS["calib"]), "--quiet"], check=True,
                   capture_output=True, timeout=600)
    data = root / "rec" / "data"
    cfg = write_config(root / "rec.yml", f"""_base_: {ROOT / 'configs' / 'ppocr_rec.yml'}
model: {{dir: {root / 'rec' / 'inference'}, build: null}}
postprocess: {{character_dict: {root / 'rec' / 'inference' / 'ppocr_keys_v1.txt'}}}
data: {{images: {data / 'test' / 'labels.txt'}}}
calibration: {{images: {data / 'calib' / 'labels.txt'}, num_images: {REC_COUNTS['calib']}, algo: avg,
               check_images: {data / 'test' / 'labels.txt'}}}
""")
    return cfg, root / "rec" / "inference"


def test_max_drop_keeps_layers_fp32_until_the_budget_fits(rec):
    cfg, model_dir = rec
    result = run_tool("calibrate", "-c", cfg, *DEFAULT_PTQ, "--max-drop", "2", "--max-trials", "8", "--quiet",
                      check=True)
    budget = manifest_entry(model_dir)["budget"]
    assert budget["method"] == "paddle-layer-search" and budget["within"]
    assert budget["drop_before"] > 10 >= 2 >= budget["drop_points"]  # default PTQ loses >10 points
    assert 0 < len(budget["kept_fp32"]) < budget["layers"] and budget["trials"] <= 8
    assert [t["op_type"] for t in budget["op_types"]] == ["conv2d", "depthwise_conv2d", "matmul_v2"]
    # The installed model is the one scored, with exactly those layers FP32, and the check says so.
    installed = ModelFiles(model_dir / "_opt_cache" / "int8_cpu" / "inference.pdmodel",
                           model_dir / "_opt_cache" / "int8_cpu" / "inference.pdiparams")
    layers = QuantizedModel(installed, ModelFiles(model_dir / "inference.pdmodel",
                                                  model_dir / "inference.pdiparams")).layers
    assert len(layers) == budget["layers"] - len(budget["kept_fp32"])
    assert not {layer.name for layer in layers} & set(budget["kept_fp32"])
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "reproduce with: calibration.skip_tensors: [" + ", ".join(budget["kept_fp32"]) + "]"
    # Running the installed model (without --max-drop) scores what the search measured.
    evaluated = run_tool("eval", "-c", cfg, *DEFAULT_PTQ, "--precisions", "fp32,int8", "--quiet", check=True)
    rows = {line.split()[0]: line.split() for line in evaluated.stdout.splitlines() if line[:5] in ("fp32 ", "int8 ")}
    drop = float(rows["fp32"][1].rstrip("%")) - float(rows["int8"][1].rstrip("%"))
    assert drop == pytest.approx(budget["drop_points"], abs=0.01)


def test_over_budget_installs_nothing_unless_accept_best(rec):
    cfg, model_dir = rec
    before = {p: p.read_bytes() for p in sorted((model_dir / "_opt_cache").rglob("*")) if p.is_file()}
    result = run_tool("calibrate", "-c", cfg, *DEFAULT_PTQ, "--max-drop", "0", "--max-trials", "1")
    line = error_line(result)
    assert result.returncode == 2 and "no INT8 model within --max-drop 0 in 1 trials" in line
    assert "nothing installed" in line and "--accept-best" in line
    assert {p: p.read_bytes() for p in sorted((model_dir / "_opt_cache").rglob("*")) if p.is_file()} == before
    accepted = run_tool("calibrate", "-c", cfg, *DEFAULT_PTQ, "--max-drop", "0", "--max-trials", "1",
                        "--accept-best", "--quiet", check=True)
    budget = manifest_entry(model_dir)["budget"]
    assert budget["accepted_over_budget"] and not budget["within"] and budget["drop_points"] > 0
    assert "installed anyway (--accept-best)" in accepted.stdout
    assert cache.read_manifest(ModelFiles(model_dir / "inference.pdmodel", model_dir / "inference.pdiparams"))


def test_max_drop_is_refused_for_tensorrt_and_checked_in_yaml(lenet_config):
    result = run_tool("calibrate", "-c", lenet_config, "-o", "runtime.backend=trt", "--max-drop", "1")
    assert result.returncode == 2
    bad = run_tool("calibrate", "-c", lenet_config, "--max-drop", "-1")
    assert bad.returncode == 2 and "calibration.max_drop" in error_line(bad)
