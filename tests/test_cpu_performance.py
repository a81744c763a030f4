"""The CPU speed settings for real on this CPU: every Paddle knob (runtime.paddle) builds a predictor that gives the
default's outputs and makes the Paddle call it names; --variant runs the -c config with more overrides side by
side. Speed itself is measured by tools/benchmark.py, never asserted here."""
import json

import numpy as np
import pytest

from conftest import error_line, run_tool
from deploy.config.loader import load_config, parse_labelled_overrides
from deploy.engines.paddle import Predictor, build_predictor_config
from deploy.engines.plan import resolve_plan
from deploy.errors import ConfigError
from deploy.report.runs import parse_variant, run_specs
from paddle_signatures import RecordingConfig, bind

KNOBS = {
    "runtime.paddle.memory_optim=false": ("enable_memory_optim", (False,)),
    "runtime.paddle.onednn_cache_capacity=4": ("set_mkldnn_cache_capacity", (4,)),
    "runtime.paddle.pir=true": ("enable_new_executor", (True,)),
    "runtime.ir_optim=false": ("switch_ir_optim", (False,)),
}


@pytest.mark.parametrize("override", [*KNOBS, "runtime.paddle.onednn=false"])
def test_each_paddle_knob_makes_its_call_and_keeps_the_outputs(lenet_config, override):
    default, tuned = (resolve_plan(load_config(lenet_config, extra), quiet=True) for extra in ([], [override]))
    rec = build_predictor_config(tuned, config_cls=RecordingConfig)
    for name, args, kwargs in rec.calls[1:]:
        bind(name, args, kwargs)
    if override in KNOBS:
        name, args = KNOBS[override]
        assert (name, args) in [(n, a) for n, a, _ in rec.calls]
    else:  # plain Paddle kernels: oneDNN is never switched on
        assert "enable_mkldnn" not in rec.names()
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 28, 28)).astype(np.float32)
    with Predictor(default) as a, Predictor(tuned) as b:
        out = a.output_names[0]
        np.testing.assert_allclose(b.run({"x": x})[out], a.run({"x": x})[out], rtol=1e-4, atol=1e-5)


def test_int8_without_onednn_is_a_one_line_error(lenet_config):
    with pytest.raises(ConfigError, match="plain CPU kernels, which are FP32 only"):
        resolve_plan(load_config(lenet_config, ["runtime.paddle.onednn=false", "runtime.precision=int8"]), quiet=True)


def test_variant_and_labelled_overrides_parsing(lenet_config):
    assert parse_labelled_overrides("a=x.y=[1, 2],x.z=3", "--variant", "e.g.") == ("a", ["x.y=[1, 2]", "x.z=3"])
    assert parse_variant("q=runtime.precision=int8,runtime.cpu_threads=1") == ("q", "int8", ["runtime.cpu_threads=1"])
    assert parse_variant("noir=runtime.ir_optim=false") == ("noir", "fp32", ["runtime.ir_optim=false"])
    for bad in ("noir", "=runtime.ir_optim=false", "x=runtime.precision=int4"):
        with pytest.raises(ConfigError, match="--variant"):
            parse_variant(bad)
    specs = run_specs(lenet_config, ["fp32"], overrides=["runtime.batch_size=2"], shared=["runtime.cpu_threads=1"],
                      variants=["noir=runtime.ir_optim=false"])
    assert [(s.label, s.precision, s.overrides) for s in specs] == [
        ("fp32", "fp32", ("runtime.cpu_threads=1", "runtime.batch_size=2")),
        ("noir", "fp32", ("runtime.cpu_threads=1", "runtime.batch_size=2", "runtime.ir_optim=false"))]


def test_benchmark_compares_knobs_side_by_side(lenet_config, tmp_path):
    run_tool("benchmark", "-c", lenet_config, "--precisions", "fp32", "--variant", "no_memopt=runtime.paddle."
             "memory_optim=false", "--variant", "ov=runtime.backend=openvino,runtime.device=cpu",
             "--batch-sizes", "1", "--iters", "2", "--warmup", "0", "--output-dir", tmp_path, "--quiet", check=True)
    data = json.loads((tmp_path / "report.json").read_text())
    assert [(r["label"], r["backend"]) for r in data["runs"]] == [("fp32", "paddle"), ("no_memopt", "paddle"),
                                                                  ("ov", "openvino")]
    assert [e["label"] for e in data["benchmark"]["results"]] == ["fp32", "no_memopt", "ov"]
    bad = run_tool("benchmark", "-c", lenet_config, "--variant", "runtime.ir_optim")
    assert bad.returncode == 2 and "expected LABEL=KEY=VALUE" in error_line(bad)
