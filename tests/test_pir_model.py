"""A PIR-format (.json) model runs with only a YAML config: its inputs are read from the program, and Paddle
Inference loads it although deploy/__init__.py sets FLAGS_enable_pir_api=0 (verified with Paddle 3.3.1)."""
import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from conftest import LENET_CONFIG, error_line, run_tool, write_config
from deploy.int8.calibration import calibrate
from deploy.config.loader import load_config
from deploy.errors import CalibrationError, ModelError
from deploy.engines.model import ModelFiles, inspect_model
from deploy.engines.paddle import Predictor, build_predictor_config
from deploy.engines.plan import resolve_plan
from paddle_signatures import RecordingConfig, bind
from test_predictor_contract import gpu_env

EXPORT = textwrap.dedent("""
    import sys
    import numpy as np
    import paddle
    from paddle.static import InputSpec

    class Net(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = paddle.nn.Conv2D(3, 8, 3, padding=1)
            self.pool = paddle.nn.AdaptiveAvgPool2D(1)
            self.fc = paddle.nn.Linear(8, 4)

        def forward(self, image):
            x = self.pool(paddle.nn.functional.relu(self.conv(image)))
            return paddle.nn.functional.softmax(self.fc(paddle.flatten(x, 1)))

    paddle.seed(0)
    net = Net()
    net.eval()
    for name, shape in (("dynamic", [None, 3, None, None]), ("static", [None, 3, 32, 32])):
        paddle.jit.save(net, f"{sys.argv[1]}/{name}/inference", input_spec=[InputSpec(shape, "float32", name="image")])
    x = np.linspace(-1, 1, 2 * 3 * 20 * 36, dtype="float32").reshape(2, 3, 20, 36)
    np.save(f"{sys.argv[1]}/reference.npy", net(paddle.to_tensor(x)).numpy())  # dygraph output to match
""")
PREPROCESS = """preprocess:
  - decode: {mode: RGB}
  - resize: {size: [SIZE, SIZE]}
  - normalize: {mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}
  - to_chw
"""


@pytest.fixture(scope="module")
def pir_models(tmp_path_factory):
    """A tiny network exported by Paddle 3.x's default (PIR) path, with dynamic and with static H/W."""
    root = tmp_path_factory.mktemp("pir")
    env = {**os.environ, "FLAGS_enable_pir_api": "1"}
    script = root / "export.py"  # a file, not -c: paddle.jit.save reads the network's source
    script.write_text(EXPORT)
    subprocess.run([sys.executable, str(script), str(root)], env=env, check=True, capture_output=True, timeout=300)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 60), (50, 50), (30, 90)]):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return root


def pir_config(root, name, size=32):
    return write_config(root / f"{name}-{size}.yml", f"model: {{dir: {root / name}}}\n"
                        + PREPROCESS.replace("SIZE", str(size)))


def test_export_is_pir_and_inspection_reads_its_input(pir_models):
    for name, shape in (("dynamic", [-1, 3, -1, -1]), ("static", [-1, 3, 32, 32])):
        files = ModelFiles(pir_models / name / "inference.json", pir_models / name / "inference.pdiparams")
        assert not (pir_models / name / "inference.pdmodel").exists()
        info = inspect_model(files)
        assert files.format == "pir" and not info.quantized
        assert [(f.name, f.shape, f.dtype) for f in info.inputs] == [("image", shape, "float32")]
        assert info.op_counts["conv2d"] == 1 and info.op_counts["softmax"] == 1 and "data" not in info.op_counts


def test_pir_model_runs_from_a_yaml_config_with_the_pir_flag_off(pir_models):
    assert os.environ["FLAGS_enable_pir_api"] == "0"  # as every entry point sets it
    cfg = pir_config(pir_models, "dynamic", 48)
    result = run_tool("infer", "-c", cfg, "--image", pir_models / "images", "--quiet", check=True)
    assert "summary: 3 images, 0 failures" in result.stdout
    with Predictor(resolve_plan(load_config(cfg), quiet=True)) as predictor:
        assert predictor.input_names == ["image"] and len(predictor.output_names) == 1
        x = np.linspace(-1, 1, 2 * 3 * 20 * 36, dtype="float32").reshape(2, 3, 20, 36)  # any H/W: dynamic
        out = predictor.run({"image": x})[predictor.output_names[0]]
    np.testing.assert_allclose(out, np.load(pir_models / "reference.npy"), rtol=1e-4, atol=1e-5)


def test_shapes_that_disagree_with_a_pir_model_name_both(pir_models):
    cfg = pir_config(pir_models, "static", 32)
    result = run_tool("infer", "-c", cfg, "-o", "model.input_shape=[3, 28, 28]", "--image", pir_models / "images")
    line = error_line(result)
    assert result.returncode == 2
    assert "model.input_shape [3, 28, 28] does not match the model: input 'image'" in line
    assert "has shape [?, 3, 32, 32]" in line
    line = error_line(run_tool("infer", "-c", pir_config(pir_models, "static", 28), "--image", pir_models / "images"))
    assert "model input 'image' is fed [3, 28, 28] per image but expects [3, 32, 32]" in line


def test_trt_and_calibration_refuse_pir_with_the_fix(pir_models):
    cfg = load_config(pir_config(pir_models, "static"), ["runtime.backend=trt", "runtime.device=gpu"])
    with pytest.raises(ModelError, match=r"PIR \(.json\) program, but Paddle-TRT .* needs the classic .pdmodel"):
        resolve_plan(cfg, env=gpu_env(), quiet=True)
    with pytest.raises(CalibrationError, match="FLAGS_enable_pir_api=0"):
        calibrate(load_config(pir_config(pir_models, "static"), [f"calibration.images={pir_models / 'images'}"]),
                  quiet=True)


def test_pir_programs_run_on_the_new_executor(pir_models):
    plan = resolve_plan(load_config(pir_config(pir_models, "dynamic")), quiet=True)
    rec = build_predictor_config(plan, config_cls=RecordingConfig)
    for name, args, kwargs in rec.calls[1:]:
        bind(name, args, kwargs)
    names = rec.names()
    assert {"enable_new_ir", "enable_new_executor", "enable_memory_optim"} <= set(names)


def test_classic_programs_keep_the_default_executor(lenet):
    rec = build_predictor_config(resolve_plan(load_config(LENET_CONFIG), quiet=True), config_cls=RecordingConfig)
    assert "enable_new_ir" not in rec.names() and "enable_new_executor" not in rec.names()


def test_openvino_refuses_a_pir_model_with_what_to_do(pir_models):
    """OpenVINO 2026's Paddle frontend reads only the classic .pdmodel (it finds no frontend for .json)."""
    cfg = pir_config(pir_models, "dynamic", 48)
    line = error_line(run_tool("infer", "-c", cfg, "--backend", "openvino", "--image", pir_models / "images"))
    assert "is a PIR (.json) program, which OpenVINO's Paddle frontend cannot read" in line
    assert "FLAGS_enable_pir_api=0" in line
