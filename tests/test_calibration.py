"""INT8 calibration on CPU for real (PaddleSlim PTQ + oneDNN INT8) and the TRT calibration contract."""
import json
import shutil

import pytest
from paddle.inference import PrecisionType

from conftest import LENET_CONFIG, error_line, run_tool, write_config
from deploy import cache
from deploy.int8 import calibration as calibration_mod
from deploy.int8.calibration import calibrate
from deploy.config.loader import load_config
from deploy.errors import CalibrationError
from deploy.engines.model import ModelFiles, inspect_model
from deploy.engines.paddle import build_predictor_config
from deploy.engines.plan import resolve_plan
from deploy.data.pipeline import ops_fingerprint
from paddle_signatures import RecordingConfig, bind
from test_predictor_contract import gpu_env

MANIFEST_KEYS = {"created", "config", "model", "preprocess_sha256", "settings_sha256", "images_sha256", "images_source", "num_images",
                 "batch_size", "algo", "backend", "versions", "artifacts"}


@pytest.fixture(scope="module")
def calibrated(lenet, tmp_path_factory):
    """A private model copy calibrated once through the real CLI, and its config."""
    root = tmp_path_factory.mktemp("calibrated")
    shutil.copytree(lenet / "inference", root / "model")
    cfg = write_config(root / "lenet.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  dir: {root / 'model'}\n  build: null\n")
    result = run_tool("calibrate", "-c", cfg, "--quiet", check=True)
    assert "calibrated cpu INT8 from 500 images" in result.stdout
    return cfg, root / "model"


def snapshot(model_dir):
    return {p.relative_to(model_dir): p.read_bytes() for p in sorted((model_dir / "_opt_cache").rglob("*"))
            if p.is_file()}


def top1(result):
    line = result.stdout.strip().splitlines()[-1]
    return float(line.split("top-1 ")[1].split("%")[0])


def test_cpu_calibration_then_int8_inference_matches_fp32(calibrated, lenet):
    cfg, model_dir = calibrated
    test_dir = lenet / "data" / "test"
    fp32 = run_tool("infer", "-c", cfg, "--image", test_dir, "--quiet", check=True)
    int8 = run_tool("infer", "-c", cfg, "--image", test_dir, "--precision", "int8", "--quiet", check=True)
    assert top1(fp32) >= 95.0 and abs(top1(int8) - top1(fp32)) <= 1.0
    out = model_dir / "_opt_cache" / "int8_cpu"
    quantized = inspect_model(ModelFiles(out / "inference.pdmodel", out / "inference.pdiparams"))
    assert quantized.quantized and quantized.quant_op_counts.get("quantize_linear", 0) >= 4
    scales = json.loads((out / "scales.json").read_text())
    entry = json.loads((model_dir / "_opt_cache" / "calibration.json").read_text())["targets"]["cpu"]
    first_conv = entry["fp32_tensors"]  # the config keeps the conv that reads the 1-channel image in FP32
    assert len(first_conv) == 1 and first_conv[0] not in scales and "x" not in scales
    assert scales["pool2d_0.tmp_0"]["scale"] > 0  # the second conv's input got a calibrated scale
    assert not any(name.endswith(".quantized") for name in scales)


def test_manifest_records_provenance(calibrated):
    cfg, model_dir = calibrated
    manifest = json.loads((model_dir / "_opt_cache" / "calibration.json").read_text())
    entry = manifest["targets"]["cpu"]
    assert MANIFEST_KEYS <= set(entry)
    assert entry["model"]["params_sha256"] == cache.sha256_file(model_dir / "inference.pdiparams")
    assert entry["num_images"] == 500 and entry["algo"] == "hist" and entry["versions"]["paddle"]
    assert set(entry["artifacts"]["files"]) == {"inference.pdmodel", "inference.pdiparams", "scales.json"}


def test_changed_params_make_int8_refuse_as_stale(calibrated, tmp_path):
    cfg, model_dir = calibrated
    params = model_dir / "inference.pdiparams"
    original = params.read_bytes()
    try:
        params.write_bytes(original[:-4] + bytes(b ^ 1 for b in original[-4:]))
        result = run_tool("infer", "-c", cfg, "--precision", "int8", "--image", tmp_path)
        line = error_line(result)
        assert result.returncode == 2
        assert "calibration is stale: model changed since" in line and f"python tools/calibrate.py -c {cfg}" in line
    finally:
        params.write_bytes(original)


def test_changed_preprocess_is_stale(calibrated):
    cfg, _ = calibrated
    config = load_config(cfg, ["runtime.precision=int8"])
    config.preprocess[2].mean = [0.4]
    with pytest.raises(CalibrationError, match="calibration is stale: preprocess changed since"):
        resolve_plan(config, quiet=True)


def test_changed_calibration_settings_warn_but_still_run(calibrated, lenet):
    cfg, _ = calibrated
    result = run_tool("infer", "-c", cfg, "--precision", "int8", "-o", "calibration.algo=KL",
                      "--image", lenet / "data" / "test" / "0", check=True)
    assert "the calibration section of" in result.stderr and "changed since the calibration" in result.stderr
    quiet = run_tool("infer", "-c", cfg, "--precision", "int8", "--image", lenet / "data" / "test" / "0", check=True)
    assert "changed since the calibration" not in quiet.stderr


def test_int8_on_cpu_without_calibration_says_what_to_run(lenet_config):
    line = error_line(run_tool("infer", "-c", lenet_config, "--precision", "int8"))
    assert "needs calibration or a quantized model" in line and "python tools/calibrate.py -c" in line


def test_empty_and_non_image_folders_are_clear_errors(lenet_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_tool("calibrate", "-c", lenet_config, "--images", empty)
    assert result.returncode == 2 and f"no images found in {empty}" in error_line(result)
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.png").write_text("this is not an image")
    result = run_tool("calibrate", "-c", lenet_config, "--images", junk)
    assert result.returncode == 2 and "no readable images" in error_line(result)


def test_fewer_images_than_asked(lenet, lenet_config):
    ten = lenet / "data" / "calib" / "3"
    result = run_tool("calibrate", "-c", lenet_config, "--images", ten, "--quiet")
    assert result.returncode == 2
    assert "found only 50 readable calibration images" in error_line(result) and "--allow-fewer" in error_line(result)
    result = run_tool("calibrate", "-c", lenet_config, "--images", ten, "--allow-fewer", "--quiet", check=True)
    assert "from 50 images" in result.stdout and "proceeding with 50" in result.stderr


class ExplodingBatches(list):
    """Calibration batches whose iteration fails part-way, as a Ctrl-C or a crash inside PaddleSlim would."""

    def __iter__(self):
        for i, batch in enumerate(list.__iter__(self)):
            if i == 2:
                raise KeyboardInterrupt("injected mid-calibration")
            yield batch


def test_interrupted_calibration_leaves_previous_artifacts_untouched(calibrated, monkeypatch):
    cfg_path, model_dir = calibrated
    before = snapshot(model_dir)
    real_loader = calibration_mod.load_calibration_set

    def exploding(*args, **kwargs):
        calib = real_loader(*args, **kwargs)
        calib.batches = ExplodingBatches(calib.batches)
        return calib

    monkeypatch.setattr(calibration_mod, "load_calibration_set", exploding)
    with pytest.raises(KeyboardInterrupt):
        calibrate(load_config(cfg_path, ["calibration.algo=avg"]), quiet=True)
    assert snapshot(model_dir) == before  # no staging dir left, nothing replaced
    monkeypatch.setattr(calibration_mod, "load_calibration_set", real_loader)

    # A failure inside the install (here: the manifest write) leaves the install's journal: the next run that
    # reads the manifest finishes it, so the artifacts and the manifest always match.
    real_write = cache._write_entry

    def failing_write(*args):
        raise OSError("injected: disk full while installing")

    monkeypatch.setattr(cache, "_write_entry", failing_write)
    with pytest.raises(OSError, match="injected"):
        calibrate(load_config(cfg_path, ["calibration.algo=avg"]), quiet=True)
    monkeypatch.setattr(cache, "_write_entry", real_write)
    plan = resolve_plan(load_config(cfg_path, ["runtime.precision=int8", "calibration.algo=avg"]), quiet=True)
    assert plan.int8_mode == "quantized"
    files = ModelFiles(model_dir / "inference.pdmodel", model_dir / "inference.pdiparams")
    entry = cache.read_manifest(files)["targets"]["cpu"]
    assert entry["algo"] == "avg" and cache.check_artifacts(entry, load_config(cfg_path))
    assert not [p for p in (model_dir / "_opt_cache").iterdir() if ".install-" in p.name or ".staging-" in p.name]


def test_trt_calibration_and_int8_inference_contract(lenet_config, lenet_copy):
    """No TensorRT here: record the configs for the calibration run and for INT8 inference from a table."""
    cfg = load_config(lenet_config, ["runtime.device=gpu", "runtime.backend=trt", "runtime.precision=int8"])
    calib_plan = resolve_plan(cfg, env=gpu_env(), quiet=True, calibrating=True)
    rec = build_predictor_config(calib_plan, config_cls=RecordingConfig)
    for name, args, kwargs in rec.calls[1:]:
        bind(name, args, kwargs)
    trt = rec.call("enable_tensorrt_engine").arguments
    assert trt["precision_mode"] == PrecisionType.Int8 and trt["use_calib_mode"] is True

    # The table Paddle-TRT would have written, recorded in the manifest as tools/calibrate.py records it.
    files = calib_plan.model
    table = cache.opt_cache_dir(files) / "trt_calib_1234567890"
    cache.atomic_write_bytes(table, b"TRT-8501-EntropyCalibration2\nx: 3c010a14\n")
    entry = {"model": cache.model_fingerprint(files), "preprocess_sha256": ops_fingerprint(cfg.preprocess),
             "artifacts": {"dir": str(table.parent), "files": cache.artifact_fingerprint([table])}}
    cache.write_manifest_entry(files, "trt", entry)
    plan = resolve_plan(cfg, env=gpu_env(), quiet=True)
    assert plan.int8_mode == "table" and plan.use_calib_mode
    rec = build_predictor_config(plan, config_cls=RecordingConfig)
    trt = rec.call("enable_tensorrt_engine").arguments
    assert trt["precision_mode"] == PrecisionType.Int8 and trt["use_calib_mode"] is True

    # A cache_dir that does not hold the table is caught instead of silently recalibrating on inference data.
    moved = load_config(lenet_config, ["runtime.device=gpu", "runtime.backend=trt", "runtime.precision=int8",
                                       f"runtime.trt.cache_dir={lenet_copy / 'elsewhere'}"])
    with pytest.raises(CalibrationError, match="no TensorRT calibration table in"):
        resolve_plan(moved, env=gpu_env(), quiet=True)
    assert lenet_copy.exists()


def test_settings_fingerprint_covers_only_what_the_target_uses(calibrated):
    cfg, _ = calibrated
    base = load_config(cfg)
    nncf_only = load_config(cfg, ["calibration.nncf.preset=mixed"])
    paddle_only = load_config(cfg, ["calibration.algo=KL"])
    shared = load_config(cfg, ["calibration.num_images=100"])
    fp = cache.calibration_settings_fingerprint
    assert fp(nncf_only, "cpu") == fp(base, "cpu") != fp(nncf_only, "openvino")
    assert fp(paddle_only, "openvino") == fp(base, "openvino") != fp(paddle_only, "trt")
    assert fp(shared, "cpu") != fp(base, "cpu") and fp(shared, "openvino") != fp(base, "openvino")
    # a key at its default value is left out: writing the default out does not flag a calibration
    explicit = load_config(cfg, [f"calibration.seed={base.calibration.seed}", "calibration.nncf.ignored_types=[]"])
    assert fp(explicit, "cpu") == fp(base, "cpu") and fp(explicit, "openvino") == fp(base, "openvino")
