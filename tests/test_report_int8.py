"""The precision report shows where each INT8 run came from: its calibration's INT8 check and, after
``tools/calibrate.py --max-drop``, the layers kept FP32 and the per-layer sensitivity chart. On real artifacts:
a LeNet copy calibrated through the real CLI for Paddle (oneDNN) and OpenVINO, then tools/eval.py."""
import copy
import json
import re
import shutil

import pytest

from conftest import LENET_CONFIG, run_tool, write_config
from deploy.report import int8_provenance as provenance

# Calibrated from 2 images with 'avg' and every conv quantized, LeNet's Paddle INT8 loses top-1 on the check
# digits, so --max-drop 0 makes the layer search run (on OpenVINO it loses nothing: no search). The test holds
# either way: each branch asserts what the report must then say.
CALIBRATION = """calibration:
  num_images: 2
  algo: avg
  keep_image_conv_fp32: false
  observe_all_ops: true
"""
CHECK_NUM = 64


@pytest.fixture(scope="module")
def report(lenet, tmp_path_factory):
    root = tmp_path_factory.mktemp("report_int8")
    shutil.copytree(lenet / "inference", root / "model", ignore=shutil.ignore_patterns("_opt_cache"))
    cfg = write_config(root / "lenet.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  dir: {root / 'model'}\n  "
                                           f"build: null\n{CALIBRATION}")
    for backend in ("paddle", "openvino"):
        run_tool("calibrate", "-c", cfg, "-o", f"runtime.backend={backend}", "--max-drop", "0", "--check-num",
                 CHECK_NUM, "--quiet", check=True)
    # An already quantized model (here: our own INT8 artifact as a model dir) has no calibration of its own.
    quantized = write_config(root / "quantized.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  dir: "
                                                     f"{root / 'model' / '_opt_cache' / 'int8_cpu'}\n  build: null\n")
    out = root / "out"
    result = run_tool("eval", "-c", cfg, "--backends", "paddle,openvino", "--precisions", "fp32,int8", "--limit",
                      "64", "--compare", f"ptq={quantized}:int8", "--output-dir", out, "--quiet", check=True)
    manifest = json.loads((root / "model" / "_opt_cache" / "calibration.json").read_text())
    return {"stdout": result.stdout, "out": out, "data": json.loads((out / "report.json").read_text()),
            "markdown": (out / "report.md").read_text(), "manifest": manifest["targets"]}


def check_line(check: dict) -> str:
    change = -check["drop_points"] + 0.0
    return (f"check {CHECK_NUM} images, top-1 {100 * check['int8']:.2f}% vs FP32 {100 * check['fp32']:.2f}% "
            f"({change:+.2f} pt)")


def test_report_json_carries_each_calibrated_int8_runs_manifest_entry(report):
    found = report["data"]["int8_provenance"]
    assert set(found) == {"paddle:int8", "openvino:int8"}  # not the fp32 runs, not the quantized model
    for label, target in (("paddle:int8", "cpu"), ("openvino:int8", "openvino")):
        entry, manifest = found[label], report["manifest"][target]
        assert entry["target"] == target and entry["created"] == manifest["created"]
        assert entry["check"] == manifest["check"] and entry["budget"] == manifest["budget"]
        assert entry["check"]["images"] == CHECK_NUM and entry["check"]["metric"] == "top1"
        assert entry["budget"]["max_drop"] == 0 and entry["check"]["drop_points"] <= 1e-9


def test_markdown_and_console_say_what_each_int8_run_kept_fp32(report):
    md, stdout, found = report["markdown"], report["stdout"], report["data"]["int8_provenance"]
    assert "## INT8 calibration" in md and "INT8 calibration (from each model's" in stdout
    for label, entry in found.items():
        line = next(x for x in md.splitlines() if x.startswith(f"- `{label}` ({entry['target']}; calibrated "))
        console = next(x for x in stdout.splitlines() if x.strip().startswith(f"{label}: check "))
        budget = entry["budget"]
        assert check_line(entry["check"]) in line and check_line(entry["check"]) in console
        if budget["method"] == "none":
            expected = (f"budget 0 pt: INT8 within it as calibrated (drop {budget['drop_before']:.2f} pt), no layer "
                        "kept FP32, no search")
        else:
            assert budget["method"] == "paddle-layer-search" and budget["kept_fp32"]
            kept = budget["kept_fp32"]
            expected = (f"kept FP32: {len(kept)} of {budget['layers']} layers ({', '.join(kept[:8])}"
                        f"{f', +{len(kept) - 8} more' if len(kept) > 8 else ''}), budget 0 pt, drop "
                        f"{budget['drop_before']:.2f} -> {budget['drop_points']:.2f} pt, {budget['trials']} trials")
            assert f"  - reproduce: `{budget['config_line']}`" in md
        assert expected in line and expected in console
    assert "ptq" not in found and not re.search(r"^- `ptq`", md, re.M)


def test_sensitivity_plot_when_the_search_ranked_layers(report):
    found, files = report["data"]["int8_provenance"], report["data"]["files"]["plots"]
    ranked = provenance.sensitivity_runs(found)
    png = report["out"] / "int8_sensitivity.png"
    if not ranked:  # LeNet lost nothing anywhere: no search, no chart
        assert "int8_sensitivity" not in files and not png.exists()
        pytest.skip("no INT8 run needed a layer search on this machine")
    assert set(ranked) == {"paddle:int8"}  # NNCF reports no per-layer scores
    sensitivity = ranked["paddle:int8"]["budget"]["sensitivity"]
    assert len(sensitivity) == ranked["paddle:int8"]["budget"]["layers"]
    assert all(s["mode"] == "alone_int8" and s["layer"] and "loss_points" in s for s in sensitivity)
    assert files["int8_sensitivity"] == "int8_sensitivity.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "![INT8 per-layer sensitivity](int8_sensitivity.png)" in report["markdown"]


def test_nncf_budget_has_no_chart_and_names_what_it_reverted(report):
    """LeNet's OpenVINO INT8 never loses enough for NNCF's accuracy control to run, so its entry is the real
    Paddle search's with NNCF's shape (no sensitivity, no op types) to check how the report words it."""
    paddle = report["data"]["int8_provenance"]["paddle:int8"]
    if paddle["budget"]["method"] == "none":
        pytest.skip("no INT8 run needed a layer search on this machine")
    nncf = copy.deepcopy(paddle)
    nncf["budget"].update(method="nncf-accuracy-control", sensitivity=[], op_types=[])
    found = {"openvino:int8": {**nncf, "target": "openvino"}}
    assert provenance.sensitivity_runs(found) == {}
    md = "\n".join(provenance.markdown_lines(found, None))
    kept = ", ".join(nncf["budget"]["kept_fp32"])
    assert f"  - NNCF does not report per-layer scores; reverted: {kept}" in md
    assert "(NNCF accuracy control)" in md and "sensitivity.png" not in md
