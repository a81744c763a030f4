"""Contract tests (no GPU or TensorRT here): the layers calibration.skip_tensors keeps FP32 reach Paddle-TRT's
implicit INT8 as ``exp_disable_tensorrt_ops`` with the output var names of exactly the ops that read each listed
tensor (Paddle's tensorrt_subgraph_pass matches op types and output var names). The names are checked against the
real programs of LeNet and PP-OCRv4 rec; each recorded call is bound to the installed Paddle's own signature."""
import subprocess
import sys

import pytest
from paddle.base.proto import framework_pb2

from conftest import ROOT, write_config
from deploy import cache
from deploy.config.loader import load_config
from deploy.data.pipeline import ops_fingerprint
from deploy.engines import plan as plan_mod
from deploy.engines.paddle import build_predictor_config
from deploy.errors import CalibrationError, ConfigError
from deploy.int8 import calibration as calibration_mod
from paddle_signatures import RecordingConfig, recording_predictor
from test_predictor_contract import assert_every_call_binds, gpu_env

TRT_INT8 = ["runtime.device=gpu", "runtime.backend=trt", "runtime.precision=int8"]


def program_ops(program) -> list[tuple[str, dict, dict]]:
    """(type, {slot: inputs}, {slot: outputs}) of every op of a .pdmodel's global block, read with protobuf."""
    desc = framework_pb2.ProgramDesc()
    desc.ParseFromString(program.read_bytes())
    return [(op.type, {i.parameter: list(i.arguments) for i in op.inputs},
             {o.parameter: list(o.arguments) for o in op.outputs}) for op in desc.blocks[0].ops]


def outputs_of_reader(program, tensor: str, op_type: str) -> list[str]:
    """The outputs of the one ``op_type`` op reading ``tensor``, and, for a conv2d, of the batch_norm / bias add
    that alone reads its output (Paddle fuses them into one op before TensorRT sees the graph)."""
    ops = program_ops(program)
    (outs,) = [o for t, i, o in ops if t == op_type and any(tensor in names for names in i.values())]
    names = [n for slot in outs.values() for n in slot]
    if op_type == "conv2d":
        (after,) = [(t, o) for t, i, o in ops if outs["Output"][0] in sum(i.values(), [])]
        names += after[1]["Y" if after[0] == "batch_norm" else "Out"]
    return names


def disabled(rec: RecordingConfig) -> list[str]:
    assert_every_call_binds(rec)
    return rec.call("exp_disable_tensorrt_ops").arguments["arg0"]


def test_lenet_calibration_and_table_runs_keep_the_same_conv_out_of_tensorrt(lenet_config, lenet_copy, monkeypatch):
    program = lenet_copy / "inference.pdmodel"
    expected = outputs_of_reader(program, "conv2d_3.w_0", "conv2d")
    assert expected == ["conv2d_1.tmp_0", "conv2d_1.tmp_1"]  # the second conv and its bias add
    overrides = TRT_INT8 + ["calibration.skip_tensors=[conv2d_3.w_0]", "calibration.num_images=8"]

    # The calibration run, through tools/calibrate.py's own code, with a predictor that records its config.
    monkeypatch.setattr(plan_mod, "probe", gpu_env)
    monkeypatch.setattr(calibration_mod, "probe", gpu_env)
    configs, fed = [], []
    monkeypatch.setattr(calibration_mod, "Predictor", recording_predictor(build_predictor_config, configs, fed, ["x"]))
    with pytest.raises(CalibrationError, match="Paddle-TRT wrote no calibration table"):
        calibration_mod.calibrate(load_config(lenet_config, overrides), quiet=True)
    (rec,) = configs
    assert rec.call("enable_tensorrt_engine").arguments["use_calib_mode"] is True
    assert disabled(rec) == expected and fed

    # INT8 inference from the table that run writes: the same layers out, so the same subgraphs find their table.
    cfg = load_config(lenet_config, overrides)
    files = plan_mod.resolve_plan(cfg, quiet=True, calibrating=True).model
    table = cache.opt_cache_dir(files) / "trt_calib_1"
    cache.atomic_write_bytes(table, b"TRT-8501-EntropyCalibration2\nx: 3c010a14\n")
    entry = {"model": cache.model_fingerprint(files), "preprocess_sha256": ops_fingerprint(cfg.preprocess),
             "artifacts": {"dir": str(table.parent), "files": cache.artifact_fingerprint([table])},
             "fp32_tensors": ["conv2d_3.w_0"]}  # what _calibrate_trt records beside its table
    cache.write_manifest_entry(files, "trt", entry)
    plan = plan_mod.resolve_plan(cfg, quiet=True)
    assert plan.int8_mode == "table"
    assert disabled(build_predictor_config(plan, config_cls=RecordingConfig)) == expected
    # Another skip list makes other subgraphs, which the table has no scales for: refused, not recalibrated.
    other = load_config(lenet_config, TRT_INT8 + ["calibration.skip_tensors=[linear_3.w_0]"])
    with pytest.raises(CalibrationError, match=r"table is stale: calibration.skip_tensors changed .* rerun"):
        plan_mod.resolve_plan(other, quiet=True)


def test_runtime_disabled_ops_and_skip_list_go_in_one_call(lenet_config):
    cfg = load_config(lenet_config, TRT_INT8 + ["runtime.trt.disabled_ops=[pool2d]",
                                                "calibration.skip_tensors=[linear_3.w_0, conv2d_2.w_0]"])
    rec = build_predictor_config(plan_mod.resolve_plan(cfg, env=gpu_env(), quiet=True, calibrating=True),
                                 config_cls=RecordingConfig)
    assert disabled(rec) == ["pool2d", "linear_1.tmp_0", "conv2d_0.tmp_0", "conv2d_0.tmp_1"]
    # The skip list is an INT8 setting: TensorRT FP16 runs every layer it can.
    fp16 = load_config(lenet_config, TRT_INT8 + ["runtime.precision=fp16", "calibration.skip_tensors=[linear_3.w_0]"])
    rec = build_predictor_config(plan_mod.resolve_plan(fp16, env=gpu_env(), quiet=True), config_cls=RecordingConfig)
    assert_every_call_binds(rec)
    assert "exp_disable_tensorrt_ops" not in rec.names()


@pytest.mark.parametrize("name,says", [
    ("conv2d_9.w_0", "'conv2d_9.w_0' is not an input of any op of"),
    ("conv2d_2.b_0", "'conv2d_2.b_0' is read by no conv / matmul op of .* \\(only by reshape2\\)"),
])
def test_a_name_that_is_no_layer_is_one_line(lenet_config, lenet_copy, name, says):
    cfg = load_config(lenet_config, TRT_INT8 + [f"calibration.skip_tensors=[{name}]"])
    plan = plan_mod.resolve_plan(cfg, env=gpu_env(), quiet=True, calibrating=True)
    with pytest.raises(ConfigError, match=f"^calibration.skip_tensors: {says}") as e:
        build_predictor_config(plan, config_cls=RecordingConfig)
    assert "\n" not in str(e.value)
    assert str(e.value).endswith(f"python tools/inspect_model.py --model {lenet_copy} --weights")


def test_ppocr_rec_classifier_conv_and_attention_matmul(tmp_path):
    """The shipped rec config's skip list (the classifier matmul), a backbone conv (fused with its batch_norm
    before TensorRT sees it) and an attention QK^T matmul named by its activation input."""
    rec = tmp_path / "rec"
    subprocess.run([sys.executable, str(ROOT / "models" / "ppocr_rec" / "build.py"), "--out", str(rec), "--test", "1",
                    "--calib", "1", "--quiet"], check=True, capture_output=True, timeout=600)
    cfg = write_config(tmp_path / "rec.yml", f"""_base_: {ROOT / 'configs' / 'ppocr_rec.yml'}
model: {{dir: {rec / 'inference'}, build: null}}
runtime:
  trt: {{dynamic_shape: {{mode: manual, min: {{x: [1, 3, 48, 32]}}, opt: {{x: [6, 3, 48, 320]}},
                          max: {{x: [6, 3, 48, 1600]}}}}}}
""")
    program = rec / "inference" / "inference.pdmodel"
    shipped = load_config(cfg, TRT_INT8)
    assert shipped.calibration.skip_tensors == ["linear_85.w_0"]
    rec_cfg = build_predictor_config(plan_mod.resolve_plan(shipped, env=gpu_env(), quiet=True, calibrating=True),
                                     config_cls=RecordingConfig)
    assert disabled(rec_cfg) == outputs_of_reader(program, "linear_85.w_0", "matmul_v2") == ["linear_170.tmp_0"]

    qk = next(i["X"][0] for t, i, o in program_ops(program) if t == "matmul_v2" and not i["Y"][0].endswith(".w_0"))
    three = load_config(cfg, TRT_INT8 + [f"calibration.skip_tensors=[linear_85.w_0, conv2d_10.w_0, {qk}]"])
    rec_cfg = build_predictor_config(plan_mod.resolve_plan(three, env=gpu_env(), quiet=True, calibrating=True),
                                     config_cls=RecordingConfig)
    expected = (outputs_of_reader(program, "linear_85.w_0", "matmul_v2")
                + outputs_of_reader(program, "conv2d_10.w_0", "conv2d")
                + outputs_of_reader(program, qk, "matmul_v2"))
    assert disabled(rec_cfg) == expected
    assert expected[1:3] == ["conv2d_185.tmp_0", "batch_norm_2.tmp_2"]  # the first conv and its batch_norm
