
import pytest

from conftest import LENET_CONFIG, ROOT, write_config
from deploy.config.loader import load_config
from deploy.errors import ConfigError
from deploy.data.pipeline import Decode, Normalize, Resize, ToCHW


def test_lenet_config_is_typed_and_paths_are_absolute():
    cfg = load_config(LENET_CONFIG)
    assert cfg.model.dir == (ROOT / "models/lenet_mnist/inference").resolve()
    assert cfg.runtime.batch_size == 64 and cfg.runtime.precision == "fp32"
    assert [type(op) for op in cfg.preprocess] == [Decode, Resize, Normalize, ToCHW]
    assert cfg.preprocess[0].mode == "GRAY" and cfg.preprocess[1].size == [28, 28]
    assert cfg.calibration.num_images == 500 and cfg.calibration.algo == "hist"


def test_base_inheritance_overrides_and_relative_paths(tmp_path):
    write_config(tmp_path / "base" / "common.yml", """
model: {dir: models/m}
preprocess: [{decode: {mode: RGB}}, to_chw]
runtime: {batch_size: 4, cpu_threads: 1, trt: {min_subgraph_size: 5}}
""")
    leaf = write_config(tmp_path / "leaf.yml", """
_base_: base/common.yml
runtime: {batch_size: 8}
postprocess: {label_list: labels.txt}
""")
    cfg = load_config(leaf, ["runtime.cpu_threads=2", "runtime.trt.use_static=true"])
    assert cfg.runtime.batch_size == 8  # the leaf wins over its base
    assert cfg.runtime.cpu_threads == 2 and cfg.runtime.trt.use_static is True  # -o wins over files
    assert cfg.runtime.trt.min_subgraph_size == 5  # untouched nested keys survive the merge
    assert cfg.model.dir == tmp_path / "base" / "models" / "m"  # relative to the file that set it
    assert cfg.postprocess.label_list == tmp_path / "labels.txt"


def test_misspelt_key_names_key_file_and_suggestion(tmp_path):
    bad = write_config(tmp_path / "bad.yml", f"_base_: {LENET_CONFIG}\nruntime:\n  batchsize: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert "'runtime.batchsize'" in msg and str(bad) in msg and "did you mean 'runtime.batch_size'" in msg


def test_misspelt_key_in_a_base_file_names_that_base_file(tmp_path):
    base = write_config(tmp_path / "b.yml", "model: {dir: m}\npreprocess: [decode]\ncalibraton: {}\n")
    leaf = write_config(tmp_path / "leaf.yml", "_base_: b.yml\n")
    with pytest.raises(ConfigError, match=r"b\.yml: unknown key 'calibraton'; did you mean 'calibration'"):
        load_config(leaf)
    assert base.exists()


def test_wrong_type_names_the_expected_type(tmp_path):
    with pytest.raises(ConfigError, match=r"'runtime.batch_size' must be an integer, got 'eight' \(str\)"):
        load_config(LENET_CONFIG, ["runtime.batch_size=eight"])
    with pytest.raises(ConfigError, match=r"'runtime.precision' must be one of 'fp32', 'fp16', 'int8', 'bf16'"):
        load_config(LENET_CONFIG, ["runtime.precision=int4"])
    with pytest.raises(ConfigError, match=r"'runtime.trt.use_static' must be true or false, got 'yes please'"):
        load_config(LENET_CONFIG, ["runtime.trt.use_static=yes please"])


def test_bad_override_and_unknown_preprocess_op(tmp_path):
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(LENET_CONFIG, ["runtime.batch_size"])
    with pytest.raises(ConfigError, match=r"unknown key 'runtime.devcie'; did you mean 'runtime.device'"):
        load_config(LENET_CONFIG, ["runtime.devcie=cpu"])
    bad = write_config(tmp_path / "ops.yml", "model: {dir: m}\npreprocess: [decode, {resise: {size: 8}}]\n")
    with pytest.raises(ConfigError, match=r"unknown preprocess op 'resise'; did you mean 'resize'"):
        load_config(bad)
    bad = write_config(tmp_path / "ops2.yml", "model: {dir: m}\npreprocess: [decode, {resize: {size: 8, sise: 3}}]\n")
    with pytest.raises(ConfigError, match=r"unknown key 'preprocess\[1\].resize.sise'; did you mean"):
        load_config(bad)


def test_semantic_validation(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of 'size'"):
        load_config(write_config(tmp_path / "r.yml", "model: {dir: m}\npreprocess: [decode, resize]\n"))
    with pytest.raises(ConfigError, match="set 'model.dir'"):
        load_config(write_config(tmp_path / "m.yml", "model: {}\npreprocess: [decode]\n"))
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        load_config(LENET_CONFIG, ["runtime.trt.dynamic_shape={mode: manual, min: {x: [1,1,28,28]}, "
                                   "opt: {x: [8,1,28,28]}, max: {x: [4,1,28,28]}}"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write_config(tmp_path / "y.yml", "model: [dir\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yml")
