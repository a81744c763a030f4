"""The OpenVINO engine for real on this CPU: it reads the same Paddle program files, runs through the same factory
and Predictor interface, and gives the Paddle engine's results; what it cannot read is a one-line error."""
import json
import shutil

import numpy as np
import pytest

from conftest import LENET_CONFIG, ROOT, error_line, run_tool, write_config
from deploy.config.loader import load_config
from deploy.engines.factory import create_predictor
from deploy.engines import openvino as openvino_engine
from deploy.engines.openvino import OpenVinoPredictor, compile_properties
from deploy.engines.paddle import Predictor
from deploy.engines.plan import resolve_plan
from deploy.errors import ConfigError, DataError
from deploy.int8 import calibration as calibration_mod
from deploy.report.runs import parse_backends, run_specs

OPENVINO_LENET = ROOT / "configs" / "lenet_mnist_openvino.yml"


@pytest.fixture
def lenet_openvino(lenet_config, tmp_path):
    return write_config(tmp_path / "cfg" / "lenet_ov.yml", f"_base_: [{lenet_config}, "
                        f"{ROOT / 'configs' / '_base_' / 'runtime' / 'openvino.yml'}]\n")


def test_same_outputs_as_paddle_through_the_one_factory(lenet_config, lenet_openvino):
    paddle_plan = resolve_plan(load_config(lenet_config), quiet=True)
    ov_plan = resolve_plan(load_config(lenet_openvino), quiet=True)
    assert ov_plan.backend == "openvino" and ov_plan.model == paddle_plan.model  # the same .pdmodel file
    x = np.random.default_rng(0).uniform(-1, 1, (5, 1, 28, 28)).astype(np.float32)
    with create_predictor(paddle_plan) as paddle_p, create_predictor(ov_plan) as ov_p:
        assert isinstance(paddle_p, Predictor) and isinstance(ov_p, OpenVinoPredictor)
        assert ov_p.input_names == paddle_p.input_names == ["x"] and ov_p.output_names == paddle_p.output_names
        ours, theirs = paddle_p.run({"x": x}), ov_p.run({"x": x})
        np.testing.assert_allclose(theirs[ov_p.output_names[0]], ours[paddle_p.output_names[0]], atol=1e-4)
        with pytest.raises(DataError, match="model input 'x' is fed \\[3, 28, 28\\] per image but expects"):
            ov_p.run({"x": np.zeros((1, 3, 28, 28), np.float32)})
        with pytest.raises(DataError, match="nothing feeds model input 'x'"):
            ov_p.run({})


def test_threads_and_performance_hint_come_from_the_config(lenet_openvino):
    plan = resolve_plan(load_config(lenet_openvino, ["runtime.cpu_threads=1", "runtime.batch_size=1"]), quiet=True)
    assert compile_properties(plan) == {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY",
                                        "INFERENCE_PRECISION_HINT": "f32"}
    batched = resolve_plan(load_config(lenet_openvino, ["runtime.batch_size=64"]), quiet=True)
    assert compile_properties(batched)["PERFORMANCE_HINT"] == "THROUGHPUT"  # auto: a batch split over streams
    one = resolve_plan(load_config(lenet_openvino, ["runtime.batch_size=64",
                                                    "runtime.openvino.performance_hint=latency"]), quiet=True)
    assert compile_properties(one)["PERFORMANCE_HINT"] == "LATENCY"


@pytest.mark.parametrize("hint,shapes", [("latency", "dynamic"), ("throughput", "static"), ("throughput", "dynamic"),
                                         ("latency", "static")])
def test_streams_and_static_shapes_give_the_same_outputs(lenet_config, lenet_openvino, hint, shapes):
    """A batch split over parallel requests, and models compiled per fed shape (more shapes than are kept
    compiled), give what Paddle gives on the whole batch."""
    overrides = ["runtime.cpu_threads=2", f"runtime.openvino.performance_hint={hint}",
                 f"runtime.openvino.shapes={shapes}"]
    ov_plan = resolve_plan(load_config(lenet_openvino, overrides), quiet=True)
    rng = np.random.default_rng(1)
    with create_predictor(resolve_plan(load_config(lenet_config), quiet=True)) as paddle_p, \
            create_predictor(ov_plan) as ov_p:
        for batch in (64, 7, 1, 2, 3, 5, 64):
            x = rng.uniform(-1, 1, (batch, 1, 28, 28)).astype(np.float32)
            name = ov_p.output_names[0]
            np.testing.assert_allclose(ov_p.run({"x": x})[name], paddle_p.run({"x": x})[name], atol=1e-4)
        assert len(ov_p._by_shape) == (openvino_engine.MAX_STATIC_SHAPES if shapes == "static" else 0)


def test_paddle_and_openvino_side_by_side_in_one_report(lenet, lenet_config, lenet_openvino, tmp_path):
    images = tmp_path / "images.txt"
    images.write_text("\n".join(f"{p} {d}" for d in range(10)
                                for p in sorted((lenet / "data" / "test" / str(d)).glob("*.png"))[:5]) + "\n")
    run_tool("eval", "-c", lenet_config, "--precisions", "fp32", "--compare", f"openvino={lenet_openvino}:fp32",
             "--image", images, "--output-dir", tmp_path / "report", "--quiet", check=True)
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["backend"] for r in data["runs"]] == ["paddle", "openvino"]
    fp32, ov = data["accuracy"]["results"]
    assert ov["top1"] == fp32["top1"] and ov["agreement"] == 1.0 and ov["cosine_min"] > 0.9999


def test_what_openvino_cannot_run_is_one_line(lenet_openvino, lenet_copy, tmp_path):
    line = error_line(run_tool("infer", "-c", lenet_openvino, "--device", "gpu"))
    assert "cannot run gpu/openvino/fp32" in line
    run_tool("calibrate", "-c", write_config(tmp_path / "p.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  dir: "
                                             f"{lenet_copy}\n  build: null\ncalibration:\n  num_images: 32\n"),
             "--quiet", check=True)
    quantized = tmp_path / "quantized"
    shutil.copytree(lenet_copy / "_opt_cache" / "int8_cpu", quantized)
    cfg = write_config(tmp_path / "q.yml", f"_base_: {OPENVINO_LENET}\nmodel:\n  dir: {quantized}\n  build: null\n")
    line = error_line(run_tool("infer", "-c", cfg))
    assert "PaddleSlim-quantized program, which OpenVINO's Paddle frontend cannot read" in line


def test_backends_grid_labels_and_reference(lenet, lenet_config, tmp_path):
    specs = run_specs(lenet_config, ["int8", "fp32"], backends=parse_backends("openvino,paddle"))
    assert [s.label for s in specs] == ["paddle:fp32", "paddle:int8", "openvino:fp32", "openvino:int8"]
    assert "runtime.device=cpu" in specs[2].overrides and "runtime.backend=openvino" in specs[2].overrides
    with pytest.raises(ConfigError, match="unknown backend 'onnx'"):
        parse_backends("paddle,onnx")
    images = tmp_path / "images.txt"
    images.write_text("\n".join(f"{p} {d}" for d in range(10)
                                for p in sorted((lenet / "data" / "test" / str(d)).glob("*.png"))[:3]) + "\n")
    run_tool("benchmark", "-c", lenet_config, "--backends", "paddle,openvino", "--precisions", "fp32", "--image",
             images, "--batch-sizes", "1,4", "--warmup", "1", "--iters", "3", "--output-dir", tmp_path / "r",
             "--quiet", check=True)
    bench = json.loads((tmp_path / "r" / "report.json").read_text())["benchmark"]
    assert bench["reference"] == "paddle:fp32"
    assert [(e["label"], e["batch_size"]) for e in bench["results"]] == [
        ("paddle:fp32", 1), ("openvino:fp32", 1), ("paddle:fp32", 4), ("openvino:fp32", 4)]
    assert all(e["throughput_ratio"] > 0 for e in bench["results"])


def test_openvino_int8_from_the_same_calibration_set(lenet, lenet_openvino, lenet_copy, monkeypatch):
    """NNCF quantizes the Paddle program into OpenVINO IR beside the model, with the manifest, staleness check
    and interruption safety of the other targets."""
    line = error_line(run_tool("infer", "-c", lenet_openvino, "--precision", "int8"))
    assert "no openvino calibration" in line and "-o runtime.backend=openvino" in line
    cfg = load_config(lenet_openvino, ["calibration.num_images=64"])
    result = calibration_mod.calibrate(cfg, quiet=True)
    out = lenet_copy / "_opt_cache" / "int8_openvino"
    assert result.target == "openvino" and sorted(p.name for p in result.artifacts) == ["model.bin", "model.xml"]
    entry = json.loads((lenet_copy / "_opt_cache" / "calibration.json").read_text())["targets"]["openvino"]
    assert entry["num_images"] == 64 and entry["versions"]["openvino"] == "2026.4.1" and entry["algo"] == "nncf"
    summary = run_tool("infer", "-c", lenet_openvino, "--precision", "int8", "--image",
                       lenet / "data" / "test", "--quiet", check=True).stdout.strip().splitlines()[-1]
    assert float(summary.split("top-1 ")[1].split("%")[0]) >= 95.0
    plan = resolve_plan(load_config(lenet_openvino, ["runtime.precision=int8"]), quiet=True)
    assert plan.int8_mode == "quantized" and plan.model.program == out / "model.xml"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(calibration_mod, "_nncf_quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        calibration_mod.calibrate(cfg, quiet=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in out.parent.iterdir() if "staging" in p.name]
    params = lenet_copy / "inference.pdiparams"
    params.write_bytes(params.read_bytes()[:-4] + b"\0\0\0\0")
    line = error_line(run_tool("infer", "-c", lenet_openvino, "--precision", "int8"))
    assert "calibration is stale: model changed" in line and "-o runtime.backend=openvino" in line
