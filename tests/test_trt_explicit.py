"""TensorRT INT8 by explicit quantization (runtime.trt.int8_mode), the INT8 path chosen by the TensorRT version, and
the Paddle-TRT knobs. The Q/DQ model is built and scored for real on this CPU (PaddleSlim, oneDNN INT8); the
TensorRT predictor configs are contract-tested (recorded Config calls bound to the installed Paddle's signatures):
there is no GPU or TensorRT here, and no test pretends a TensorRT run happened."""
import json
import logging
import shutil
from pathlib import Path

import pytest
from paddle.inference import PrecisionType

from conftest import ROOT, error_line, run_tool, write_config
from deploy.config.loader import load_config
from deploy.engines import plan as plan_mod
from deploy.engines.model import LAYER_OPS, ModelFiles, _read_program_desc, inspect_model, tensor_readers
from deploy.engines.paddle import build_predictor_config
from deploy.env import capability_rows, format_env, probe, trt_int8_reasons
from deploy.errors import ConfigError, UnsupportedError
from deploy.int8 import calibration as calibration_mod
from deploy.report.int8_provenance import run_provenance
from deploy.report.runs import Run, RunSpec
from deploy.tasks.registry import build_task
from paddle_signatures import RecordingConfig
from test_predictor_contract import assert_every_call_binds, gpu_env

TRT_INT8 = ROOT / "configs" / "lenet_mnist_trt-int8.yml"


@pytest.fixture(scope="module")
def qdq(lenet, tmp_path_factory):
    """A LeNet copy whose TensorRT Q/DQ model was made by the README's command (on this CPU)."""
    root = tmp_path_factory.mktemp("qdq")
    shutil.copytree(lenet / "inference", root / "model", ignore=shutil.ignore_patterns("_opt_cache"))
    cfg = write_config(root / "trt.yml", f"_base_: {TRT_INT8}\nmodel:\n  dir: {root / 'model'}\n  build: null\n")
    result = run_tool("calibrate", "-c", cfg, "-o", "runtime.trt.int8_mode=explicit", "--device", "cpu", "--quiet",
                      check=True)
    qdq_dir = root / "model" / "_opt_cache" / "int8_trt_qdq"
    return {"cfg": cfg, "model": root / "model", "dir": qdq_dir, "stdout": result.stdout,
            "files": ModelFiles(qdq_dir / "inference.pdmodel", qdq_dir / "inference.pdiparams")}


def record(cfg, env, **kw):
    plan = plan_mod.resolve_plan(cfg, env=env, quiet=True, **kw)
    return plan, build_predictor_config(plan, config_cls=RecordingConfig)


def test_explicit_calibration_writes_a_qdq_model_for_tensorrt(qdq):
    assert "calibrated trt_explicit INT8 from 500 images" in qdq["stdout"]
    entry = json.loads((qdq["model"] / "_opt_cache" / "calibration.json").read_text())["targets"]["trt_explicit"]
    assert entry["artifacts"]["dir"] == str(qdq["dir"]) and entry["backend"] == "paddle-ptq-trt-qdq"
    assert entry["num_images"] == 500 and set(entry["artifacts"]["files"]) == {
        "inference.pdmodel", "inference.pdiparams", "scales.json"}
    counts = inspect_model(qdq["files"]).quant_op_counts
    assert counts.get("quantize_linear", 0) > 0 and counts.get("dequantize_linear", 0) > 0
    # TensorRT's placement: every Q/DQ pair feeds a conv / matmul (weights and activations), nothing else.
    ops = _read_program_desc(qdq["files"].program).blocks[0].ops
    dq_outputs = [name for op in ops if op.type == "dequantize_linear" for out in op.outputs for name in out.arguments
                  if out.parameter == "Y"]
    readers = tensor_readers(qdq["files"], dq_outputs)
    assert dq_outputs and all(uses and all(use.type in LAYER_OPS for use in uses) for uses in readers.values())
    # The check ran the Q/DQ model on this CPU (its Q/DQ ops in FP32) against FP32 on 200 labelled training digits.
    assert entry["check"]["images"] == 200 and entry["check"]["drop_points"] <= 0.5
    assert "scored on the CPU with its Q/DQ ops run in FP32" in qdq["stdout"]


def test_qdq_model_scores_like_fp32_on_the_cpu(qdq, tmp_path):
    """The acceptance: the Q/DQ model within 0.5 point of FP32 top-1, run with oneDNN INT8 kernels and with its
    Q/DQ ops simulated in FP32 (the check's way); the simulation really rounds (its outputs differ from FP32)."""
    model = f"model.dir={qdq['dir']},model.build=null"
    run_tool("eval", "-c", ROOT / "configs" / "lenet_mnist.yml", "--precisions", "fp32",
             "--variant", f"onednn_int8={model},runtime.precision=int8", "--variant", f"simulated={model}",
             "--limit", "500", "--output-dir", tmp_path, "--quiet", check=True)
    results = {run["label"]: run for run in json.loads((tmp_path / "report.json").read_text())["accuracy"]["results"]}
    assert results["fp32"]["top1"] > 0.95
    assert all(results["fp32"]["top1"] - results[label]["top1"] <= 0.005 for label in ("onednn_int8", "simulated"))
    assert results["simulated"]["max_abs_diff"] > 0


def test_explicit_plan_builds_int8_from_the_qdq_model_without_calibration(qdq):
    cfg = load_config(qdq["cfg"])
    for env, calibrating in ((gpu_env((10, 5, 0)), False), (gpu_env((11, 4, 0)), True)):
        plan, rec = record(cfg, env, calibrating=calibrating)
        assert plan.explicit_quantization and plan.model.program == qdq["files"].program
        assert_every_call_binds(rec)
        trt = rec.call("enable_tensorrt_engine").arguments
        assert trt["precision_mode"] == PrecisionType.Int8 and trt["use_calib_mode"] is False
        names = rec.names()
        assert names.index("enable_use_gpu") < names.index("enable_tensorrt_engine") < names.index(
            "enable_tensorrt_explicit_quantization")
    # the report reads the Q/DQ model's calibration (its check) from the trt_explicit entry
    run = Run(RunSpec("int8", qdq["cfg"], "int8"), cfg, plan, build_task(cfg))
    provenance = run_provenance(run)
    assert provenance["target"] == "trt_explicit" and provenance["check"]["images"] == 200
    # explicit asked for on a TensorRT that still has implicit calibration: explicit all the same
    plan, rec = record(load_config(qdq["cfg"], ["runtime.trt.int8_mode=explicit"]), gpu_env((8, 6, 1)))
    assert rec.call("enable_tensorrt_engine").arguments["use_calib_mode"] is False
    assert "enable_tensorrt_explicit_quantization" in rec.names()


@pytest.mark.parametrize("version,path", [((8, 6, 1), "implicit"), ((10, 0, 1), "implicit"), ((10, 1, 0), "explicit"),
                                          ((11, 4, 0), "explicit"), ((0, 0, 0), "implicit")])
def test_auto_picks_the_path_by_tensorrt_runtime_version(lenet, version, path):
    assert plan_mod.trt_int8(load_config(TRT_INT8), gpu_env(version)) == path


def test_explicit_before_tensorrt_8_5_1_is_refused(lenet):
    cfg = load_config(TRT_INT8, ["runtime.trt.int8_mode=explicit"])
    with pytest.raises(UnsupportedError, match=r"runtime.trt.int8_mode is explicit, but Paddle-TRT converts "
                                               r"quantize_linear / dequantize_linear only from TensorRT 8.5.1 on, and "
                                               r"this is 8.4.3; use -o runtime.trt.int8_mode=implicit \(or auto\)$"):
        plan_mod.trt_int8(cfg, gpu_env((8, 4, 3)))


def test_implicit_on_tensorrt_11_is_refused_before_any_predictor(lenet_config, monkeypatch):
    cfg = load_config(lenet_config, ["runtime.backend=trt", "runtime.device=gpu", "runtime.trt.int8_mode=implicit"])
    monkeypatch.setattr(plan_mod, "probe", lambda: gpu_env((11, 4, 0)))
    monkeypatch.setattr(calibration_mod, "probe", lambda: gpu_env((11, 4, 0)))

    def no_predictor(plan):
        raise AssertionError("a predictor was built")

    monkeypatch.setattr(calibration_mod, "Predictor", no_predictor)
    for run in (lambda: calibration_mod.calibrate(cfg, quiet=True),
                lambda: plan_mod.resolve_plan(load_config(lenet_config, ["runtime.backend=trt", "runtime.device=gpu",
                                                                         "runtime.precision=int8",
                                                                         "runtime.trt.int8_mode=implicit"]))):
        with pytest.raises(UnsupportedError, match=r"TensorRT 11\.4\.0 removed implicit INT8 calibration \(11\.0\); "
                                                   r"use -o runtime.trt.int8_mode=explicit") as e:
            run()
        assert "\n" not in str(e.value)


def test_implicit_on_tensorrt_10_x_warns_and_calibrates(lenet_config, caplog):
    cfg = load_config(lenet_config, ["runtime.backend=trt", "runtime.device=gpu", "runtime.precision=int8",
                                     "runtime.trt.int8_mode=implicit"])
    plan_mod._warned.clear()
    with caplog.at_level(logging.WARNING):
        plan, rec = record(cfg, gpu_env((10, 5, 0)), calibrating=True)
    assert "deprecated implicit INT8 calibration (10.1)" in caplog.text
    assert rec.call("enable_tensorrt_engine").arguments["use_calib_mode"] is True
    assert "enable_tensorrt_explicit_quantization" not in rec.names()


def test_a_quantized_model_runs_explicit_from_tensorrt_10_1(qdq):
    """A PaddleSlim Q/DQ model (QAT or PTQ export; here the one calibrate wrote) pointed at by model.dir."""
    cfg = load_config(TRT_INT8, [f"model.dir={qdq['dir']}", "model.build=null"])
    plan, rec = record(cfg, gpu_env((10, 5, 0)))
    assert plan.int8_mode == "quantized" and plan.explicit_quantization
    assert rec.call("enable_tensorrt_engine").arguments["use_calib_mode"] is False
    assert "enable_tensorrt_explicit_quantization" in rec.names()
    plan, rec = record(cfg, gpu_env((10, 0, 1)))  # before 10.1: Paddle-TRT reads the scales as dynamic ranges
    assert plan.int8_mode == "quantized" and not plan.explicit_quantization
    assert rec.call("enable_tensorrt_engine").arguments["use_calib_mode"] is False
    assert "enable_tensorrt_explicit_quantization" not in rec.names()


def test_explicit_without_the_qdq_model_says_how_to_make_it(lenet_config):
    cfg = load_config(lenet_config, ["runtime.backend=trt", "runtime.device=gpu", "runtime.precision=int8",
                                     "runtime.trt.int8_mode=explicit"])
    with pytest.raises(Exception, match=r"needs a Q/DQ model, .* run: python tools/calibrate.py -c .* -o "
                                        r"runtime.trt.int8_mode=explicit \(it runs on the CPU too\)"):
        record(cfg, gpu_env((10, 5, 0)))
    result = run_tool("calibrate", "-c", lenet_config, "--backend", "trt", "--device", "cpu", "--quiet")
    assert result.returncode == 2
    assert error_line(result).endswith("needs no GPU to make: add -o runtime.trt.int8_mode=explicit")


def test_trt_knobs_are_config_keys_bound_in_order(lenet):
    cfg = load_config(TRT_INT8, [
        "runtime.precision=fp16", "runtime.trt.use_cuda_graph=true", "runtime.trt.optimization_level=5",
        "runtime.trt.memory_sharing=true", "runtime.trt.memory_sharing_id=2",
        "runtime.trt.subgraph_precision={fp16: [conv2d_0.w_0], int8: [], bf16: [linear_0.w_0]}",
        "runtime.trt.low_precision_io=true", "runtime.trt.inspector=true", "runtime.trt.inspector_serialize=true"])
    _, rec = record(cfg, gpu_env((10, 5, 0)))
    assert_every_call_binds(rec)
    assert rec.call("enable_tensorrt_engine").arguments["use_cuda_graph"] is True
    assert rec.call("set_tensorrt_optimization_level").arguments["arg0"] == 5
    memory = rec.call("enable_tensorrt_memory_optim").arguments
    assert memory["engine_memory_sharing"] is True and memory["sharing_identifier"] == 2
    precision = rec.call("exp_specify_tensorrt_subgraph_precision").arguments
    assert (precision["arg0"], precision["arg1"], precision["arg2"]) == (["conv2d_0.w_0"], [], ["linear_0.w_0"])
    assert rec.call("enable_low_precision_io").arguments["x"] is True
    # Paddle refuses low-precision I/O unless its GPU mixed precision is on, and sharing across predictors (an id)
    # unless they run on the new executor
    assert rec.call("enable_use_gpu").arguments["precision_mode"] == PrecisionType.Half
    assert rec.call("enable_new_executor").arguments["x"] is True
    assert rec.call("enable_tensorrt_inspector").arguments["inspector_serialize"] is True
    names = rec.names()
    knobs = ["set_tensorrt_optimization_level", "enable_tensorrt_memory_optim", "exp_specify_tensorrt_subgraph_precision",
             "enable_low_precision_io", "enable_tensorrt_inspector"]
    assert all(names.index("enable_tensorrt_engine") < names.index(knob) for knob in knobs)
    _, plain = record(load_config(TRT_INT8, ["runtime.precision=fp16"]), gpu_env((10, 5, 0)))
    assert not set(knobs + ["enable_new_executor"]) & set(plain.names())
    assert plain.call("enable_use_gpu").arguments["precision_mode"] == PrecisionType.Float32
    assert plain.call("enable_tensorrt_engine").arguments["use_cuda_graph"] is False


@pytest.mark.parametrize("override,message", [
    ("runtime.trt.optimization_level=9", "'runtime.trt.optimization_level' must be 0-5"),
    ("runtime.trt.memory_sharing_id=3", "set memory_sharing: true"),
    ("runtime.trt.int8_mode=explict", "int8_mode"),
])
def test_bad_knob_values_are_one_line_errors(lenet, override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(TRT_INT8, [override])
    assert "\n" not in str(e.value)


def test_env_names_the_int8_paths_and_compute_capability():
    text = format_env(gpu_env((11, 4, 0)), capability_rows(gpu_env((11, 4, 0))))
    assert ("tensorrt int8 implicit: no, TensorRT 11.4.0 removed implicit INT8 calibration (11.0); "
            "explicit: yes; runtime.trt.int8_mode auto picks explicit") in text
    assert "described GPU (compute capability 8.9: INT8 tensor cores)" in text
    assert trt_int8_reasons(gpu_env((10, 5, 0))) == {"implicit": None, "explicit": None}
    here = format_env(probe(), capability_rows(probe()))  # this machine: no TensorRT, so neither path
    assert "tensorrt int8 neither path here (no TensorRT); the explicit path's Q/DQ model can still be made" in here


@pytest.mark.parametrize("overrides,message", [
    (["runtime.trt.low_precision_io=true"], "low_precision_io makes FP16 engines .* with precision int8 Paddle ignores"),
    (["runtime.precision=fp16", "runtime.trt.use_cuda_graph=true",
      "runtime.trt.dynamic_shape={mode: manual, min: {x: [1,1,28,28]}, opt: {x: [8,1,28,28]}, max: {x: [64,1,28,28]}}"],
     "use_cuda_graph needs fixed input shapes"),
])
def test_knob_combinations_paddle_refuses_are_refused_first(lenet, overrides, message):
    with pytest.raises(ConfigError, match=message):
        record(load_config(TRT_INT8, overrides), gpu_env((10, 5, 0)))


def test_fp16_on_tensorrt_11_is_refused_with_what_to_do(lenet):
    cfg = load_config(TRT_INT8, ["runtime.precision=fp16"])
    with pytest.raises(UnsupportedError, match=r"TensorRT 11\.4\.0 removed BuilderFlag::kFP16, which Paddle-TRT builds "
                                               r"FP16 engines with .* use runtime.backend=paddle \(native GPU FP16\)"):
        record(cfg, gpu_env((11, 4, 0)))
    _, rec = record(load_config(TRT_INT8, ["runtime.precision=fp16", "runtime.backend=paddle"]), gpu_env((11, 4, 0)))
    assert rec.call("enable_use_gpu").arguments["precision_mode"] == PrecisionType.Half


@pytest.mark.parametrize("reported,version", [((8, 6, 1), (8, 6, 1)), ((100, 1, 0), (10, 1, 0)),
                                              ((101, 2, 0), (10, 12, 0)), ((110, 4, 0), (11, 4, 0))])
def test_tensorrt_runtime_version_is_decoded_from_what_paddle_reports(monkeypatch, reported, version):
    """Paddle decodes getInferLibVersion() with TensorRT 8's encoding; TensorRT 10 changed it (see env.trt_version).
    The probe runs for real with Paddle's get_trt_runtime_version answering as it does on such a machine."""
    import paddle.inference as pi
    from deploy import env as env_mod

    monkeypatch.setattr(pi, "get_trt_runtime_version", lambda: reported)
    env_mod.probe.cache_clear()
    try:
        assert env_mod.probe().trt_runtime_version == version
    finally:
        env_mod.probe.cache_clear()


def test_gpu_acceptance_matrix_follows_the_tensorrt_version(lenet, tmp_path):
    from deploy.report.acceptance import build_matrix

    qat = ROOT / "configs" / "lenet_mnist_qat.yml"
    matrix = build_matrix(TRT_INT8, gpu_env((10, 5, 0)), qat=qat, output_dir=tmp_path)
    runs = {s.label: s for s in matrix.runs}
    assert list(runs)[:2] == ["native:fp32", "native:fp16"]  # the reference first
    for mode in ("static", "tuned"):  # LeNet's input varies only in batch: both shape modes
        assert {f"trt:fp32:{mode}", f"trt:fp16:{mode}", f"trt:int8-explicit:{mode}", f"qat:int8:{mode}"} <= set(runs)
    assert runs["trt:int8-implicit:static"].skip is None  # the config's own (static) shapes
    assert "calibrated for static shapes" in runs["trt:int8-implicit:tuned"].skip
    assert all(s.skip is None for label, s in runs.items() if "implicit" not in label)
    prepare = [" ".join(map(str, argv)) for argv in matrix.prepare]
    assert "--collect-shapes" in prepare[0] and "int8_mode=implicit" in prepare[1]
    # the table goes where its run's Paddle-TRT reads tables: that run's engine cache
    implicit_cache = next(o for o in runs["trt:int8-implicit:static"].overrides if o.startswith("runtime.trt.cache_dir"))
    assert prepare[1].endswith(implicit_cache)
    assert "int8_mode=explicit" in prepare[2] and "dynamic_shape.mode=tuned" in prepare[2]
    assert any("qat.py" in p for p in prepare)
    # every TensorRT run keeps its own engines (the engine guard would remove another model's)
    engines = [o for s in matrix.runs for o in s.overrides if o.startswith("runtime.trt.cache_dir=")]
    assert len(engines) == len(set(engines)) == len(matrix.runs) - 2
    eleven = {s.label: s for s in build_matrix(TRT_INT8, gpu_env((11, 4, 0)), output_dir=tmp_path).runs}
    assert "removed implicit INT8 calibration" in eleven["trt:int8-implicit:static"].skip
    assert "removed BuilderFlag::kFP16" in eleven["trt:fp16:static"].skip
    assert eleven["trt:int8-explicit:static"].skip is None and eleven["native:fp16"].skip is None


def test_the_qdq_model_keeps_skipped_layers_fp32_and_goes_stale_with_the_model(lenet_config, lenet_copy):
    """calibration.skip_tensors applies (here by a matmul's activation input, as PaddleSlim's skip list takes it);
    the trt_explicit entry has the provenance of every target: new weights make it stale, with the command."""
    cfg = load_config(lenet_config, ["runtime.backend=trt", "runtime.device=gpu", "runtime.trt.int8_mode=explicit",
                                     "calibration.check_num=0", "calibration.skip_tensors=[flatten_0.tmp_0]"])
    result = calibration_mod.calibrate(cfg, quiet=True)
    assert result.target == "trt_explicit" and result.artifacts[0].parent == lenet_copy / "_opt_cache" / "int8_trt_qdq"
    qdq = ModelFiles(result.artifacts[0], result.artifacts[1])
    (first_linear,) = [use for use in tensor_readers(qdq, ["flatten_0.tmp_0"])["flatten_0.tmp_0"]]
    assert first_linear.type == "matmul_v2"  # reads the activation itself: no Q/DQ, FP32
    assert inspect_model(qdq).quant_op_counts["quantize_linear"] == 3  # the other three layers' inputs
    int8 = load_config(lenet_config, ["runtime.backend=trt", "runtime.device=gpu", "runtime.precision=int8",
                                      "runtime.trt.int8_mode=explicit"])
    assert plan_mod.resolve_plan(int8, env=gpu_env((10, 5, 0)), quiet=True).model.dir == result.artifacts[0].parent
    params = lenet_copy / "inference.pdiparams"
    data = bytearray(params.read_bytes())
    data[-4:] = bytes(4)  # one weight changed, same size and layout: a retrained model
    params.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"calibration is stale: model changed since .*; rerun: python tools/"
                                        r"calibrate.py -c .* -o runtime.trt.int8_mode=explicit"):
        plan_mod.resolve_plan(int8, env=gpu_env((10, 5, 0)), quiet=True)


def test_gpu_acceptance_runs_prepare_report_and_restart_in_order(lenet, tmp_path, monkeypatch):
    """The orchestration, which needs a GPU to run for real: the GPU tools it starts and the report it builds are
    stood in for (recorded), everything else is the real code: what it runs, in which order, and what it writes."""
    from deploy.report import acceptance

    matrix = acceptance.build_matrix(TRT_INT8, gpu_env((10, 5, 0)), output_dir=tmp_path)
    started, reports = [], []

    def tool(argv, quiet):  # a GPU machine's tools/calibrate.py and tools/benchmark.py
        argv = [str(a) for a in argv]
        started.append(argv)
        if argv[0].endswith("benchmark.py"):
            out = Path(argv[argv.index("--output-dir") + 1])
            out.mkdir(parents=True)
            label = argv[argv.index("--precisions") + 1]
            (out / "report.json").write_text(json.dumps({"benchmark": {"results": [
                {"label": "fp32", "first_run_ms": 30.0}, {"label": label, "first_run_ms": 40.0}]}}))

    class Report:
        data = {"benchmark": {"results": [{"label": s.label, "first_run_ms": 900.0} for s in matrix.runs]}}

    monkeypatch.setattr(acceptance, "_tool", tool)
    monkeypatch.setattr(acceptance, "precision_report", lambda **kw: reports.append(kw) or Report())
    result = acceptance.run_matrix(matrix, tmp_path, gpu_env((10, 5, 0)), batch_sizes=[8], quiet=True)
    assert [s[:3] for s in started[:len(matrix.prepare)]] == [[str(a) for a in p[:3]] for p in matrix.prepare]
    (report,) = reports
    assert [r.label for r in report["runs"]] == [s.label for s in matrix.runs if s.skip is None]
    assert report["runs"][0].label == "native:fp32" and report["benchmark"].batch_sizes == [8]
    restarted = started[len(matrix.prepare):]
    assert len(restarted) == len(matrix.restart) and all(a[0].endswith("benchmark.py") for a in restarted)
    assert all(a[a.index("--batch-sizes") + 1] == "8" for a in restarted)
    timings = {r["label"]: r for r in result["restart"]}
    assert timings["trt:int8-explicit:static"] == {"label": "trt:int8-explicit:static", "first_run_ms": 900.0,
                                                    "after_restart_ms": 40.0}  # its own entry, not the reference's
    assert timings["trt:fp32:static"]["after_restart_ms"] == 30.0
    written = json.loads((tmp_path / "acceptance.json").read_text())
    assert written["skipped"] == {"trt:int8-implicit:tuned": "the table is calibrated for static shapes"}
    assert "tensorrt int8" in (tmp_path / "env.txt").read_text()
    assert "22.5x" in acceptance.restart_table(result["restart"])


def test_explicit_output_dir_never_replaces_a_users_folder(lenet_config, lenet_copy, tmp_path):
    """--output-dir for the Q/DQ model takes a new or empty folder, or one the toolkit made; a user's folder is
    refused before any work, its files untouched, and the model dir itself is never a target."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    base = ["-c", lenet_config, "--backend", "trt", "-o", "runtime.trt.int8_mode=explicit", "--quiet"]
    result = run_tool("calibrate", *base, "--output-dir", mine)
    assert result.returncode == 2 and "did not create" in error_line(result)
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    result = run_tool("calibrate", *base, "--output-dir", lenet_copy)
    assert result.returncode == 2 and "which the install would replace" in error_line(result)
    assert (lenet_copy / "inference.pdmodel").is_file()
    cfg = load_config(lenet_config, ["runtime.backend=trt", "runtime.trt.int8_mode=explicit", "calibration.check_num=0"])
    for _ in range(2):  # a new folder, then the folder it made: replaced
        result = calibration_mod.calibrate(cfg, output_dir=tmp_path / "qdq", quiet=True)
        assert result.artifacts[0] == tmp_path / "qdq" / "inference.pdmodel" and result.artifacts[0].is_file()
