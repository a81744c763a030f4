"""Bad configs, options and model files end in ONE line 'error: ...' (exit 2) that says what is wrong and how to
fix it: real files written here, real tools run in a subprocess."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import LENET_CONFIG, error_line, run_tool, write_config
from deploy.config.loader import MAX_CPU_THREADS, PTQ_OP_TYPES, load_config
from deploy.env import Environment, probe, support_reason
from deploy.errors import ConfigError


def only_error(result) -> str:
    """The error line, checking it is the only thing on stderr and the exit code is 2."""
    line = error_line(result)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == line, result.stderr
    return line


# ---------------------------------------------------------------- config files and options


def test_a_config_that_is_not_utf8_names_the_file_and_the_encoding(lenet_config, tmp_path):
    bad = tmp_path / "latin1.yml"
    bad.write_bytes(b"# r\xe9glages (saved as latin-1)\n" + lenet_config.read_bytes())
    line = only_error(run_tool("infer", "-c", bad, "--quiet"))
    assert str(bad) in line and "line 1" in line and "0xe9" in line and "not UTF-8" in line
    assert "re-save the file as UTF-8" in line


def test_a_config_path_that_is_a_folder_or_missing(tmp_path):
    write_config(tmp_path / "configs" / "lenet.yml", f"_base_: {LENET_CONFIG}\n")
    line = only_error(run_tool("infer", "-c", tmp_path / "configs", "--quiet"))
    assert line == (f"error: config {tmp_path / 'configs'} is a folder, not a file; pass a YAML config file with "
                    f"-c, e.g. -c {tmp_path / 'configs' / 'lenet.yml'}")
    line = only_error(run_tool("infer", "-c", tmp_path / "nope.yml", "--quiet"))  # already fine: keep it so
    assert line == f"error: config file not found: {tmp_path / 'nope.yml'}"


def test_an_invalid_yaml_override_is_one_line_naming_the_override(lenet_config):
    line = only_error(run_tool("infer", "-c", lenet_config, "-o", "runtime.batch_size=[1", "--quiet"))
    assert line.startswith("error: override 'runtime.batch_size=[1': value '[1' is not valid YAML (")
    assert "brackets and quotes closed" in line


def test_threads_beyond_the_bound_are_refused_before_paddle_aborts(lenet_config):
    """--threads 100000 made Paddle's OpenMP abort the process (SIGABRT, no message of ours)."""
    line = only_error(run_tool("infer", "-c", lenet_config, "--threads", "100000", "--quiet"))
    assert f"'runtime.cpu_threads' (--threads) must be at most {MAX_CPU_THREADS}, got 100000" in line
    assert "aborts the whole process" in line and "use 0 (all cores)" in line
    assert load_config(lenet_config, [f"runtime.cpu_threads={MAX_CPU_THREADS}"]).runtime.cpu_threads == 1024
    with pytest.raises(ConfigError, match="at most 1024"):
        load_config(lenet_config, [f"runtime.cpu_threads={MAX_CPU_THREADS + 1}"])


def test_an_unknown_quantize_op_type_is_refused_with_the_closest_valid_one(lenet_config):
    """[conv2d, bogus] ended in an AssertionError deep inside Paddle's post-training quantization."""
    line = only_error(run_tool("calibrate", "-c", lenet_config, "-o", "calibration.quantize_op_types=[conv2d, bogus]",
                               "--quiet"))
    assert "'calibration.quantize_op_types' has 'bogus'" in line
    assert "the default list is [conv2d, depthwise_conv2d, mul, matmul, matmul_v2]" in line
    line = only_error(run_tool("calibrate", "-c", lenet_config, "-o",
                               "calibration.quantize_op_types=[conv2d, matmul_v3]", "--quiet"))
    assert "has 'matmul_v3'" in line and "did you mean 'matmul_v2'?" in line


def test_the_quantizable_op_types_are_the_ones_the_installed_paddle_accepts():
    from paddle.static.quantization.quant_config import SUPPORT_QUANTIZATION_OP_DICT

    assert PTQ_OP_TYPES == frozenset(SUPPORT_QUANTIZATION_OP_DICT)


# ---------------------------------------------------------------- model files

TOOLS = ("inspect_model", "infer", "calibrate")


def test_an_empty_pdmodel_is_one_line_in_every_tool(lenet_config, lenet_copy):
    """A 0-byte .pdmodel parsed as an empty program and failed with an IndexError."""
    (lenet_copy / "inference.pdmodel").write_bytes(b"")
    for tool in TOOLS:
        line = only_error(run_tool(tool, "-c", lenet_config, "--quiet"))
        assert line.startswith(f"error: {lenet_copy / 'inference.pdmodel'} is empty (0 bytes), not a Paddle "
                               "program file; "), (tool, line)
        assert "re-export the model" in line, (tool, line)


def test_a_truncated_pdiparams_is_one_line_in_every_tool(lenet_config, lenet_copy):
    """The real LeNet params cut in half: inspect_model said nothing, infer printed Paddle's '[operator <
    load_combine > error]', calibrate a traceback."""
    params = lenet_copy / "inference.pdiparams"
    data = params.read_bytes()
    params.write_bytes(data[:len(data) // 2])
    for tool in TOOLS:
        line = only_error(run_tool(tool, "-c", lenet_config, "--quiet"))
        assert line.startswith(f"error: {params} does not match inference.pdmodel: the file ends inside its "
                               "tensor "), (tool, line)
        assert "truncated or belongs to another model" in line and "re-export the model" in line, (tool, line)


def test_params_of_another_model_are_one_line_in_every_tool(lenet_config, lenet_copy, tmp_path):
    """A params file holding more tensors than the program loads (here: two LeNet params files back to back)."""
    params = lenet_copy / "inference.pdiparams"
    params.write_bytes(params.read_bytes() * 2)
    for tool in TOOLS:
        line = only_error(run_tool(tool, "-c", lenet_config, "--quiet"))
        assert line.startswith(f"error: {params} does not match inference.pdmodel: the file holds 16 tensors, "
                               "the program loads 8"), (tool, line)


def test_a_complete_model_still_inspects(lenet, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(lenet / "inference", model)
    result = run_tool("inspect_model", "--model", model, "--json", check=True)
    assert json.loads(result.stdout)["inputs"][0]["name"] == "x"


# ---------------------------------------------------------------- tools/env.py


def test_openvino_on_gpu_says_the_engine_is_cpu_only_not_cuda():
    env = probe()
    with_gpu = Environment(**{**env.__dict__, "cuda_compiled": True, "gpus": ["NVIDIA A10"]})
    for machine in (env, with_gpu):
        reason = support_reason(machine, "gpu", "openvino", "fp32")
        assert reason.startswith("this toolkit's OpenVINO engine runs on the CPU only; use runtime.device=cpu")
        assert "runtime.backend=trt or paddle" in reason and "CUDA" not in reason
    rows = json.loads(run_tool("env", "--json", check=True).stdout)["capabilities"]
    gpu_openvino = [status for device, backend, _, status in rows if (device, backend) == ("gpu", "openvino")]
    assert len(gpu_openvino) == 4
    assert all("OpenVINO engine runs on the CPU only" in s and "CUDA" not in s for s in gpu_openvino)
