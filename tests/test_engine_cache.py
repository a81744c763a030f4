"""The serialized-engine guard, for real on files: Paddle-TRT engine keys do not hash the weights, so engines
serialized for an earlier model must go when the model changes. The engine files themselves can only come from
a GPU: stand-ins named like Paddle's (``trt_serialized_<key>``) take their place."""
import json
import logging

import pytest

from deploy import cache
from deploy.config.loader import load_config
from deploy.errors import ModelError
from deploy.engines.model import ModelFiles
from deploy.engines.paddle import Predictor, build_predictor_config
from deploy.engines.plan import resolve_plan
from paddle_signatures import RecordingConfig
from test_predictor_contract import gpu_env

ENGINES = ["trt_serialized_2719182723104613536", "trt_serialized_8857719301120040213"]


def stand_in_engines(cache_dir):
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name in ENGINES:
        (cache_dir / name).write_bytes(b"serialized engine stand-in")
    (cache_dir / "trt_calib_2719182723104613536").write_text("a calibration table, guarded by its own manifest")
    return [cache_dir / name for name in ENGINES]


def test_engines_are_kept_while_the_model_is_unchanged(lenet_copy, tmp_path):
    files = ModelFiles(lenet_copy / "inference.pdmodel", lenet_copy / "inference.pdiparams")
    cache_dir = tmp_path / "engines"
    assert cache.guard_engine_cache(files, cache_dir) == []  # first build: records the model
    record = json.loads((cache_dir / cache.ENGINE_MANIFEST_NAME).read_text())
    assert record["model"]["params_sha256"] == cache.sha256_file(files.params)
    engines = stand_in_engines(cache_dir)  # what Paddle-TRT would serialize during that first run
    assert cache.guard_engine_cache(files, cache_dir) == []
    assert all(p.is_file() for p in engines)


def test_engines_are_removed_with_a_warning_when_the_model_changes(lenet_copy, tmp_path, caplog):
    files = ModelFiles(lenet_copy / "inference.pdmodel", lenet_copy / "inference.pdiparams")
    cache_dir = tmp_path / "engines"
    cache.guard_engine_cache(files, cache_dir)
    engines = stand_in_engines(cache_dir)
    params = files.params.read_bytes()
    files.params.write_bytes(params[:-4] + bytes(b ^ 1 for b in params[-4:]))  # "retrained" weights
    with caplog.at_level(logging.WARNING, logger="deploy.cache"):
        removed = cache.guard_engine_cache(files, cache_dir)
    assert removed == engines and not any(p.exists() for p in engines)
    assert "removed 2 stale TensorRT engine(s)" in caplog.text and "the model changed" in caplog.text
    assert (cache_dir / "trt_calib_2719182723104613536").is_file()  # tables are not engines
    record = json.loads((cache_dir / cache.ENGINE_MANIFEST_NAME).read_text())
    assert record["model"]["params_sha256"] == cache.sha256_file(files.params)  # now records the new model


def test_engines_of_unknown_origin_are_removed(lenet_copy, tmp_path, caplog):
    files = ModelFiles(lenet_copy / "inference.pdmodel", lenet_copy / "inference.pdiparams")
    engines = stand_in_engines(tmp_path / "engines")
    with caplog.at_level(logging.WARNING, logger="deploy.cache"):
        assert cache.guard_engine_cache(files, tmp_path / "engines") == engines
    assert "no record of the model they were built from" in caplog.text


def use_static_config(lenet_config, cache_dir=None):
    extra = [f"runtime.trt.cache_dir={cache_dir}"] if cache_dir else []
    return load_config(lenet_config, ["runtime.backend=trt", "runtime.device=gpu", "runtime.trt.use_static=true",
                                      *extra])


def test_use_static_without_cache_dir_pins_the_model_opt_cache(lenet_config, lenet_copy):
    plan = resolve_plan(use_static_config(lenet_config), env=gpu_env(), quiet=True)
    rec = build_predictor_config(plan, config_cls=RecordingConfig)
    assert rec.call("set_optim_cache_dir").arguments["arg0"] == str(lenet_copy / "_opt_cache")
    assert rec.call("enable_tensorrt_engine").arguments["use_static"] is True


def test_predictor_guards_the_engine_cache_before_paddle_builds(lenet_config, lenet_copy, tmp_path):
    """The factory runs the guard before Paddle builds anything; no GPU run is pretended: on this CPU build
    Paddle then refuses enable_tensorrt_engine, which surfaces as a one-line ModelError."""
    cache_dir = tmp_path / "engines"
    engines = stand_in_engines(cache_dir)
    (cache_dir / cache.ENGINE_MANIFEST_NAME).write_text(json.dumps(
        {"format": 1, "created": "earlier", "model": {"program_sha256": "old", "params_sha256": "old"}}))
    plan = resolve_plan(use_static_config(lenet_config, cache_dir), env=gpu_env(), quiet=True)
    with pytest.raises(ModelError, match="Paddle could not load"):
        Predictor(plan)
    assert not any(p.exists() for p in engines)
    record = json.loads((cache_dir / cache.ENGINE_MANIFEST_NAME).read_text())
    assert record["model"]["program_sha256"] == cache.sha256_file(lenet_copy / "inference.pdmodel")
