"""Typed deployment configs: YAML with ``_base_`` inheritance and ``-o key=value`` overrides -> dataclasses.

Every relative path is resolved against the file that set it (overrides: the current directory), and every
error names the key, the file and a fix.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import yaml

from deploy.errors import ConfigError
from deploy.data.pipeline import parse_ops
from deploy.config.schema import build_dataclass, check_keys, closest_key, closest_match, field_types

Device = Literal["auto", "cpu", "gpu"]
Backend = Literal["paddle", "trt", "openvino"]
Precision = Literal["fp32", "fp16", "int8", "bf16"]
CalibAlgo = Literal["hist", "KL", "mse", "avg", "abs_max", "emd"]
# The op types Paddle's post-training quantization quantizes by default (weights and inputs).
QUANTIZABLE_OPS = ("conv2d", "depthwise_conv2d", "mul", "matmul", "matmul_v2")
# Every op type Paddle's post-training quantization accepts: the keys of Paddle 3.3.1's
# paddle.static.quantization.quant_config.SUPPORT_QUANTIZATION_OP_DICT (any other name fails an assert deep inside
# PTQ). Kept here so loading a config does not import Paddle; tests/test_faults_config.py checks it still matches.
PTQ_OP_TYPES = frozenset((
    "abs", "arg_max", "argmax", "assign", "batch_norm", "bilinear_interp", "bilinear_interp_v2", "box_coder",
    "cast", "clip", "concat", "conv2d", "conv2d_transpose", "crop", "cumsum", "depthwise_conv2d", "dropout",
    "elementwise_add", "elementwise_mul", "elementwise_pow", "elementwise_sub", "equal", "expand_v2",
    "fill_any_like", "fill_constant", "fill_constant_batch_size_like", "flatten", "flatten2",
    "flatten_contiguous_range", "gather", "gelu", "greater_equal", "greater_than", "grid_sampler", "group_norm",
    "gru", "hard_sigmoid", "hard_swish", "instance_norm", "layer_norm", "leaky_relu", "less_equal", "less_than",
    "logical_and", "logical_not", "lookup_table", "lookup_table_v2", "lstm", "matmul", "matmul_v2", "mean",
    "meshgrid", "mul", "nearest_interp", "nearest_interp_v2", "norm", "not_equal", "p_norm", "pad2d", "pad3d",
    "pool2d", "pow", "prelu", "reduce_max", "reduce_mean", "reduce_sum", "relu", "relu6", "reshape", "reshape2",
    "roi_align", "scale", "shuffle_channel", "sigmoid", "slice", "softmax", "softplus", "split", "square",
    "squeeze", "squeeze2", "stack", "strided_slice", "swish", "tanh", "tile", "top_k_v2", "transpose",
    "transpose2", "trilinear_interp", "unsqueeze2", "where"))
# Measured with LeNet on a 2-core machine (Paddle 3.3.1, oneDNN): 16384 math threads ran (7 s per batch of 64
# instead of 0.02 s), 32768 aborted the whole process in OpenMP ("System unable to allocate necessary resources
# for OMP thread", SIGABRT). Threads past the core count only slow inference, so a sane bound is far lower.
MAX_CPU_THREADS = 1024
TaskName = Literal["classification", "ocr_det", "ocr_rec", "detection"]
OVERRIDE = "command line (-o)"


@dataclass
class ModelConfig:
    """Where the inference model is: a directory, or a program file plus a params file."""

    dir: Optional[Path] = None
    file: Optional[Path] = None
    params: Optional[Path] = None
    build: Optional[Path] = None  # a script that builds the model (and its data) when it is missing
    input_shape: Optional[list[int]] = None  # expected [C, H, W] of the image input; checked against the model

    def __post_init__(self) -> None:
        if self.dir is None and self.file is None:
            raise ValueError("set 'model.dir' (a model directory) or 'model.file' (+ 'model.params')")
        if self.dir is not None and self.file is not None:
            raise ValueError("set either 'model.dir' or 'model.file', not both")


@dataclass
class DynamicShapeConfig:
    """TensorRT dynamic shapes: off, manual per-input min/opt/max, or tuned from a collected shape file."""

    mode: Literal["off", "manual", "tuned"] = "off"
    min: dict[str, list[int]] = field(default_factory=dict)
    opt: dict[str, list[int]] = field(default_factory=dict)
    max: dict[str, list[int]] = field(default_factory=dict)
    shape_file: Optional[Path] = None  # default: <model dir>/_opt_cache/shape_range_info.pbtxt
    allow_build_at_runtime: bool = True
    disable_trt_plugin_fp16: bool = False

    def __post_init__(self) -> None:
        if self.mode == "manual":
            names = [set(self.min), set(self.opt), set(self.max)]
            if not names[0] or names.count(names[0]) != 3:
                raise ValueError("manual dynamic shapes need the same inputs in 'min', 'opt' and 'max'")
            for name in self.min:
                lo, mid, hi = self.min[name], self.opt[name], self.max[name]
                if not (len(lo) == len(mid) == len(hi)) or any(a > b or b > c for a, b, c in zip(lo, mid, hi)):
                    raise ValueError(f"dynamic shape of '{name}' needs min <= opt <= max per dim, "
                                     f"got min={lo} opt={mid} max={hi}")


@dataclass
class SubgraphPrecisionConfig:
    """Per-subgraph precision (Config.exp_specify_tensorrt_subgraph_precision): the TensorRT subgraphs holding any
    of these weights (parameter names) run at that precision, the others at runtime.precision."""

    fp16: list[str] = field(default_factory=list)
    int8: list[str] = field(default_factory=list)
    bf16: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.fp16 or self.int8 or self.bf16)


@dataclass
class TrtConfig:
    """Paddle-TRT subgraph engine settings."""

    workspace_size: int = 1 << 30
    max_batch_size: Optional[int] = None  # default: runtime.batch_size
    min_subgraph_size: int = 3
    use_static: bool = False
    cache_dir: Optional[Path] = None
    dynamic_shape: DynamicShapeConfig = field(default_factory=DynamicShapeConfig)
    disabled_ops: list[str] = field(default_factory=list)
    # INT8 by TensorRT's implicit calibration (a table, use_calib_mode) or explicit quantization (a Q/DQ model,
    # enable_tensorrt_explicit_quantization). auto: explicit on TensorRT >= 10.1, which deprecated implicit
    # calibration (TensorRT 11 removed it), implicit below.
    int8_mode: Literal["auto", "implicit", "explicit"] = "auto"
    use_cuda_graph: bool = False  # capture each engine's launch in a CUDA graph (fixed input shapes)
    optimization_level: Optional[int] = None  # set_tensorrt_optimization_level, 0-5 (TensorRT's default: 3)
    memory_sharing: bool = False  # enable_tensorrt_memory_optim: engines of the predictor share one workspace
    memory_sharing_id: int = 0  # ...and predictors with the same id > 0 share it too (sharing_identifier)
    subgraph_precision: SubgraphPrecisionConfig = field(default_factory=SubgraphPrecisionConfig)
    low_precision_io: bool = False  # enable_low_precision_io: FP16 engines take and give FP16 tensors (fp16 only)
    inspector: bool = False  # enable_tensorrt_inspector: log each engine's layers with the precision they run in
    inspector_serialize: bool = False  # ...written to engine_info_<key>.json in the engine cache dir instead

    def __post_init__(self) -> None:
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise ValueError(f"'runtime.trt.optimization_level' must be 0-5 (TensorRT's builder optimization level; "
                             f"3 is its default), got {self.optimization_level}")
        if self.memory_sharing_id < 0:
            raise ValueError(f"'runtime.trt.memory_sharing_id' must be >= 0, got {self.memory_sharing_id}")
        if self.memory_sharing_id and not self.memory_sharing:
            raise ValueError("'runtime.trt.memory_sharing_id' is set but 'runtime.trt.memory_sharing' is false; "
                             "set memory_sharing: true")


@dataclass
class OpenVinoConfig:
    """OpenVINO engine settings (runtime.backend: openvino; threads come from runtime.cpu_threads)."""

    # latency: one request on every core; throughput: each batch split over parallel streams, one core each.
    # auto: throughput from batch 8 on, latency below (README, CPU performance)
    performance_hint: Literal["auto", "latency", "throughput"] = "auto"
    # static: compile for the exact fed shapes (a few at most); auto: static when model.input_shape fixes the
    # image size, else dynamic
    shapes: Literal["auto", "static", "dynamic"] = "auto"


@dataclass
class PaddleConfig:
    """Paddle Inference CPU settings (README, CPU performance: each measured on PP-OCR cls at batch 1)."""

    memory_optim: bool = True  # reuse tensor memory between ops (enable_memory_optim)
    onednn: bool = True  # oneDNN kernels on the CPU (enable_mkldnn); false: Paddle's plain kernels, FP32 only
    onednn_cache_capacity: int = 0  # oneDNN primitives cached per input shape (0 = unlimited)
    pir: bool = False  # run a classic .pdmodel through PIR and the new executor

    def __post_init__(self) -> None:
        if self.onednn_cache_capacity < 0:
            raise ValueError(f"'runtime.paddle.onednn_cache_capacity' must be >= 0 (0 = unlimited), got "
                             f"{self.onednn_cache_capacity}")


def _too_many_threads(threads: int) -> str:
    cores = os.cpu_count() or 1
    return (f"'runtime.cpu_threads' (--threads) must be at most {MAX_CPU_THREADS}, got {threads}: Paddle's OpenMP "
            f"aborts the whole process when it cannot create that many threads, and threads beyond the cores "
            f"({cores} here) only slow inference; use 0 (all cores) or a number up to {cores}")


@dataclass
class RuntimeConfig:
    """Device, backend, precision and threads."""

    device: Device = "auto"
    backend: Backend = "paddle"
    precision: Precision = "fp32"
    batch_size: int = 1
    cpu_threads: int = 0  # 0: all cores
    gpu_mem_mb: int = 500
    gpu_id: int = 0
    ir_optim: bool = True
    # decode + preprocess overlap inference: this many batches are prepared ahead in a background thread
    # (0 = on the calling thread), each image decoded by one of decode_threads (README, CPU performance)
    prefetch_batches: int = 2
    decode_threads: int = 1
    paddle: PaddleConfig = field(default_factory=PaddleConfig)
    trt: TrtConfig = field(default_factory=TrtConfig)
    openvino: OpenVinoConfig = field(default_factory=OpenVinoConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"'runtime.batch_size' must be >= 1, got {self.batch_size}")
        if self.cpu_threads < 0:
            raise ValueError(f"'runtime.cpu_threads' must be >= 0 (0 = all cores), got {self.cpu_threads}")
        if self.cpu_threads > MAX_CPU_THREADS:
            raise ValueError(_too_many_threads(self.cpu_threads))
        if self.prefetch_batches < 0 or self.decode_threads < 1:
            raise ValueError(f"'runtime.prefetch_batches' must be >= 0 and 'runtime.decode_threads' >= 1, got "
                             f"{self.prefetch_batches} and {self.decode_threads}")


@dataclass
class PostprocessConfig:
    """How outputs become results; each task reads its own keys (README, "Config reference")."""

    # classification (label_list: detection too)
    topk: int = 5
    label_list: Optional[Path] = None  # class names, one per line (line number = class id)
    softmax: bool = False  # apply softmax to the output (for models that end in logits)
    # ocr_rec: CTC greedy decoding
    character_dict: Optional[Path] = None  # one character per line; class 0 is the CTC blank
    use_space_char: bool = True  # the last class is a space (PP-OCR models)
    # ocr_det: DB post-processing (PaddleOCR's defaults)
    thresh: float = 0.3  # binarize the probability map
    box_thresh: float = 0.6  # drop boxes whose mean probability is lower
    unclip_ratio: float = 1.5  # expand the shrunk text kernel back to the text
    max_candidates: int = 1000
    min_size: int = 3  # drop boxes with a side shorter than this (map pixels)
    score_mode: Literal["fast", "slow"] = "fast"  # box score: mean inside the box ("fast") or the polygon
    use_dilation: bool = False
    # detection: boxes kept in results (metrics see every box)
    score_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.topk < 1 or self.max_candidates < 1 or self.min_size < 0 or self.unclip_ratio <= 0:
            raise ValueError("'postprocess.topk' and 'max_candidates' must be >= 1, 'min_size' >= 0 and "
                             "'unclip_ratio' > 0")
        for key in ("thresh", "box_thresh", "score_threshold"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"'postprocess.{key}' must be between 0 and 1, got {getattr(self, key)}")


@dataclass
class DataConfig:
    """The default image set: a folder (label = sub-folder name), a glob, or a list file ``path [label]``."""

    images: Optional[Path] = None


@dataclass
class NncfConfig:
    """OpenVINO INT8 by NNCF post-training quantization (tools/calibrate.py with runtime.backend openvino)."""

    preset: Literal["performance", "mixed"] = "performance"  # mixed: asymmetric activations
    fast_bias_correction: bool = True
    ignored_scope: list[str] = field(default_factory=list)  # OpenVINO node names left in FP32
    ignored_types: list[str] = field(default_factory=list)  # OpenVINO op types left in FP32, e.g. Convolution


def _unknown_op_type(op: str) -> str:
    match = closest_match(op, sorted(PTQ_OP_TYPES), cutoff=0.7)  # 0.5 would offer 'gru' for 'bogus'
    hint = f"did you mean '{match}'?" if match else (f"the default list is [{', '.join(QUANTIZABLE_OPS)}]; "
                                                    f"any op type of paddle.static.quantization's "
                                                    f"SUPPORT_QUANTIZATION_OP_DICT is allowed")
    return (f"'calibration.quantize_op_types' has '{op}', which is not an op type Paddle's post-training "
            f"quantization can quantize; {hint}")


@dataclass
class CalibrationConfig:
    """INT8 calibration: which images, how many, and the PaddleSlim algorithm for CPU quantization."""

    images: Optional[Path] = None
    num_images: int = 500
    seed: int = 0
    algo: CalibAlgo = "hist"
    output_dir: Optional[Path] = None  # CPU quantized model; default <model dir>/_opt_cache/int8_cpu
    allow_fewer: bool = False
    keep_image_conv_fp32: bool = False  # CPU: leave convs reading < 4 channels (the image) in FP32
    observe_all_ops: bool = True  # CPU: export scales after every op (Paddle's default); false = conv/matmul inputs only
    # CPU: the op types PTQ quantizes, and weight tensors whose ops stay FP32 (a skip list for sensitive layers)
    quantize_op_types: Optional[list[str]] = field(default_factory=lambda: list(QUANTIZABLE_OPS))  # null: these
    skip_tensors: list[str] = field(default_factory=list)
    nncf: NncfConfig = field(default_factory=NncfConfig)
    # The INT8 check and the accuracy budget (tools/calibrate.py --max-drop): after calibrating, INT8 is scored
    # against FP32 on check_num check images (default: calibration images that were not sampled); with max_drop
    # (points of the task's metric, or of agreement with FP32 when the check images have no labels), layers go
    # back to FP32 until the drop fits, within max_trials scored trials.
    max_drop: Optional[float] = None
    check_images: Optional[Path] = None
    check_num: int = 200  # 0: no check
    max_trials: int = 120
    accept_best: bool = False  # install the best model found even when it is over max_drop

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ValueError(f"'calibration.num_images' must be >= 1, got {self.num_images}")
        if self.max_drop is not None and not 0 <= self.max_drop < 100:
            raise ValueError(f"'calibration.max_drop' is {self.max_drop}: give the largest loss INT8 may have, in "
                             "points of the task's metric (0-100), e.g. 1.0")
        if self.check_num < 0 or self.max_trials < 1:
            raise ValueError(f"'calibration.check_num' must be >= 0 (0: no check) and 'calibration.max_trials' >= 1,"
                             f" got {self.check_num} and {self.max_trials}")
        if self.quantize_op_types is None:
            self.quantize_op_types = list(QUANTIZABLE_OPS)
        unknown = [op for op in self.quantize_op_types if op not in PTQ_OP_TYPES]
        if unknown:
            raise ValueError(_unknown_op_type(unknown[0]))


@dataclass
class QatConfig:
    """Quantization-aware training of a dygraph network from its FP32 weights; exports to model.dir."""

    network_file: Optional[Path] = None  # the .py file that defines the network
    network_class: Optional[str] = None  # the nn.Layer class in it (built with no arguments)
    weights: Optional[Path] = None  # FP32 state dict (paddle.save) the network starts from
    weights_build: Optional[Path] = None  # a script that produces the weights when they are missing
    train_images: Optional[Path] = None  # labelled folder or list file, preprocessed like inference
    epochs: int = 2
    learning_rate: float = 1e-4
    batch_size: int = 64
    seed: int = 0
    export_softmax: bool = False  # append softmax at export (for networks that train on logits)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("'qat.epochs' and 'qat.batch_size' must be >= 1 and 'qat.learning_rate' > 0")


@dataclass
class DeployConfig:
    """The whole config."""

    model: ModelConfig
    preprocess: list[Any]
    task: TaskName = "classification"
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    source: Optional[Path] = None  # the YAML file this came from

    @property
    def name(self) -> str:
        return self.source.stem if self.source else "config"


_SECTIONS = {k: v for k, v in field_types(DeployConfig).items() if k != "source"}


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (PyYAML's own text spans several lines)."""
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or type(e).__name__
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)


def _not_utf8(path: Path, e: UnicodeDecodeError) -> ConfigError:
    line = e.object[:e.start].count(b"\n") + 1
    byte = e.object[e.start:e.start + 1].hex()
    return ConfigError(f"{path}: line {line} has byte 0x{byte}, which is not UTF-8; config files must be UTF-8 "
                       f"text: re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path.name} > fixed.yml)")


def _read_text(path: Path) -> str:
    if path.is_dir():
        found = sorted(path.glob("*.yml"))
        hint = f", e.g. -c {found[0]}" if found else ""
        raise ConfigError(f"config {path} is a folder, not a file; pass a YAML config file with -c{hint}")
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from e
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e


def _read_yaml(path: Path) -> dict:
    text = _read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def _check_sections(raw: dict, where: str) -> None:
    for key, value in raw.items():
        if key == "_base_":
            continue
        if key not in _SECTIONS:
            raise ConfigError(f"{where}: unknown key '{key}'; {closest_key(key, list(_SECTIONS))}")
        if key != "preprocess":
            check_keys(value, _SECTIONS[key], f"{key}.", where)


def _merge(base: dict, top: dict, replaced: list[str], prefix: str = "") -> dict:
    out = dict(base)
    for key, value in top.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, replaced, f"{dotted}.")
        else:
            out[key] = copy.deepcopy(value)
            replaced.append(dotted)
    return out


def _key_origins(tree: dict, file: str, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        out[f"{prefix}{key}"] = file
        if isinstance(value, dict):
            out.update(_key_origins(value, file, f"{prefix}{key}."))
    return out


def _merge_tracked(base: tuple[dict, dict], top: tuple[dict, dict]) -> tuple[dict, dict]:
    """Merge (tree, origins) pairs: ``top`` wins, and remembers which file set each key."""
    replaced: list[str] = []
    tree = _merge(base[0], top[0], replaced)
    origins = {k: v for k, v in base[1].items()
               if not any(k == r or k.startswith(f"{r}.") for r in replaced)}
    origins.update(top[1])
    return tree, origins


def _load_tree(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, dict]:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: '_base_' includes itself through {' -> '.join(str(p) for p in chain)}")
    raw = _read_yaml(path)
    _check_sections(raw, str(path))
    bases = raw.get("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: '_base_' must be a file name or a list of file names")
    merged: tuple[dict, dict] = ({}, {})
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"{path}: _base_ file not found: {base_path}")
        merged = _merge_tracked(merged, _load_tree(base_path, chain + (path,)))
    body = {k: v for k, v in raw.items() if k != "_base_"}
    return _merge_tracked(merged, (body, _key_origins(body, str(path))))


def parse_labelled_overrides(text: str, option: str, example: str) -> tuple[str, list[str]]:
    """'LABEL=KEY=VALUE[,KEY=VALUE...]' -> (LABEL, ['KEY=VALUE', ...]); a comma inside a value (a YAML list)
    stays in it: only a comma followed by 'key=' starts the next override."""
    label, sep, rest = text.partition("=")
    overrides = [o.strip() for o in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", rest) if o.strip()]
    if not sep or not label.strip() or not overrides or not all("=" in o for o in overrides):
        raise ConfigError(f"{option} '{text}': expected LABEL=KEY=VALUE[,KEY=VALUE...], e.g. {example}")
    return label.strip(), overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into the key path and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. runtime.batch_size=8")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{text}': empty key part in '{key}'")
    try:
        return parts, yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value '{value}' is not valid YAML ({_yaml_problem(e)}); write a "
                          "number, a word, a [list] or a {mapping} with its brackets and quotes closed") from e


def _apply_overrides(loaded: tuple[dict, dict], overrides: list[str]) -> tuple[dict, dict]:
    for text in overrides:
        parts, value = parse_override(text)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        _check_sections(nested, f"{OVERRIDE} '{text}'")
        loaded = _merge_tracked(loaded, (nested, _key_origins(nested, OVERRIDE)))
    return loaded


def _origin_lookup(origins: dict[str, str]):
    def where(key: str) -> str:
        key = key.split("[")[0]
        while key:
            if key in origins and origins[key]:
                return origins[key]
            key = key.rpartition(".")[0]
        return "config"
    return where


def _path_resolver(where: Callable[[str], str]) -> Callable[[str, str], Path]:
    """Resolve a relative path against the file that set its key (overrides: the current directory)."""

    def resolve(key: str, value: str) -> Path:
        origin = where(key)
        base = Path.cwd() if origin in ("config", OVERRIDE) else Path(origin).parent
        return (base / Path(value).expanduser()).resolve()

    return resolve


def load_config(path: Path | str, overrides: list[str] | None = None) -> DeployConfig:
    """Load, merge, override and validate a config file."""
    path = Path(path)
    tree, origins = _apply_overrides(_load_tree(path), list(overrides or []))
    where = _origin_lookup(origins)
    resolve = _path_resolver(where)

    if "model" not in tree:
        raise ConfigError(f"{path}: missing section 'model' (set model.dir to the inference model directory)")
    ops = parse_ops(tree.get("preprocess"), where)
    body = {k: v for k, v in tree.items() if k != "preprocess"}
    cfg = build_dataclass(DeployConfig, {**body, "preprocess": []}, "", where, resolve)
    cfg.preprocess = ops
    cfg.source = path.resolve()
    return cfg


# ---------------------------------------------------------------- pipelines of models (the OCR system)


@dataclass
class StageConfig:
    """One stage of a pipeline: a model's own config file, run at one precision."""

    config: Path
    precision: Precision = "fp32"
    enabled: bool = True


@dataclass
class OcrSystemConfig:
    """PP-OCR's system: detection -> (direction classification) -> recognition, each stage its own config."""

    det: StageConfig
    rec: StageConfig
    cls: Optional[StageConfig] = None
    drop_score: float = 0.5  # recognised lines less confident than this are dropped (PaddleOCR's drop_score)
    cls_thresh: float = 0.9  # a crop is turned by 180 degrees when the classifier says so at least this surely
    # An image at least this many times wider than tall (a strip, a screenshot of a few lines) is read as text
    # lines found from its ink (bands of ink rows, cut at wide blank gaps), not as det's fragments; det's boxes
    # (fragments of a line merged) only when the ink cannot be told from the background. 0 reads every image as
    # a document (PaddleOCR's way).
    line_image_aspect: float = 8.0
    # Each box is grown by this fraction of its height on every side before it is cropped for rec (the reported
    # box is det's): rec reads a line better with some background around it than cut at DB's box.
    crop_margin: float = 0.1
    data: DataConfig = field(default_factory=DataConfig)
    source: Optional[Path] = None

    def __post_init__(self) -> None:
        for key in ("drop_score", "cls_thresh"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"'{key}' must be between 0 and 1, got {getattr(self, key)}")
        if not 0.0 <= self.crop_margin <= 1.0:
            raise ValueError(f"'crop_margin' must be between 0 and 1 (a fraction of the box height), got "
                             f"{self.crop_margin}")
        if self.line_image_aspect < 0:
            raise ValueError(f"'line_image_aspect' must be >= 0 (0: off), got {self.line_image_aspect}")


def load_ocr_system_config(path: Path | str, overrides: list[str] | None = None) -> OcrSystemConfig:
    """Load an OCR system config; ``-o det.precision=int8``-style overrides apply on top."""
    path = Path(path).resolve()
    raw = _read_yaml(path)
    check_keys(raw, OcrSystemConfig, "", str(path))
    loaded = (raw, _key_origins(raw, str(path)))
    for text in overrides or []:
        parts, value = parse_override(text)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        check_keys(nested, OcrSystemConfig, "", f"{OVERRIDE} '{text}'")
        loaded = _merge_tracked(loaded, (nested, _key_origins(nested, OVERRIDE)))
    tree, origins = loaded
    where = _origin_lookup(origins)
    resolve = _path_resolver(where)

    for stage in ("det", "rec"):
        if stage not in tree:
            raise ConfigError(f"{path}: missing section '{stage}' (set {stage}.config to the {stage} model's config)")
    cfg = build_dataclass(OcrSystemConfig, tree, "", where, resolve)
    cfg.source = path
    return cfg
