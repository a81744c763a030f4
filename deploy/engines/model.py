"""Inference model files: locate them from the config, build the demo ones when missing, inspect the program."""
from __future__ import annotations

import collections
import functools
import json
import logging
import math
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Literal, Optional

from deploy.config.loader import ModelConfig
from deploy.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

# Op types that only a quantized program (PaddleSlim QAT / post-training quantization) contains.
QUANT_OP_PREFIXES = ("quantize_linear", "dequantize_linear", "fake_quantize_", "fake_dequantize_",
                     "fake_channel_wise_", "fake_quantize_dequantize_")
_PROGRAM_NAMES = ("inference", "model", "__model__")


@dataclass(frozen=True)
class ModelFiles:
    """The program file (classic .pdmodel or PIR .json) and its params file."""

    program: Path
    params: Path

    @property
    def format(self) -> Literal["classic", "pir", "openvino"]:
        """classic .pdmodel, PIR .json, or OpenVINO IR .xml (+ .bin) written by NNCF quantization."""
        return {".json": "pir", ".xml": "openvino"}.get(self.program.suffix, "classic")

    @property
    def dir(self) -> Path:
        return self.program.parent


def _find_in_dir(model_dir: Path) -> Optional[ModelFiles]:
    for stem in _PROGRAM_NAMES:
        for suffix in (".pdmodel", ".json", ""):
            program = model_dir / f"{stem}{suffix}"
            params = model_dir / f"{stem if stem != '__model__' else '__params__'}.pdiparams"
            if program.is_file() and params.is_file():
                return ModelFiles(program, params)
    programs = sorted(model_dir.glob("*.pdmodel")) + sorted(model_dir.glob("*.json"))
    pairs = [ModelFiles(p, p.with_suffix(".pdiparams")) for p in programs if p.with_suffix(".pdiparams").is_file()]
    return pairs[0] if len(pairs) == 1 else None


def find_model_files(mc: ModelConfig) -> Optional[ModelFiles]:
    """The model files the config names, or None when they do not exist (yet)."""
    if mc.file is not None:
        params = mc.params or mc.file.with_suffix(".pdiparams")
        return ModelFiles(mc.file, params) if mc.file.is_file() and params.is_file() else None
    if mc.dir is not None and mc.dir.is_dir():
        return _find_in_dir(mc.dir)
    return None


def _describe_missing(mc: ModelConfig) -> str:
    if mc.file is not None:
        return f"model file {mc.file} (params {mc.params or mc.file.with_suffix('.pdiparams')})"
    return f"an inference model (inference.pdmodel or inference.json + inference.pdiparams) in {mc.dir}"


def run_build_script(script: Path, quiet: bool) -> None:
    """Run a model's build script with this Python; its progress shows on the console."""
    log.warning("model not found; building it with: %s %s", Path(sys.executable).name, script)
    cmd = [sys.executable, str(script)] + (["--quiet"] if quiet else [])
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise ModelError(f"building the model with '{script}' failed (exit {result.returncode}); "
                         f"run 'python {script}' to see why")


def ensure_model(mc: ModelConfig, *, quiet: bool = False, how_to_build: Optional[str] = None) -> ModelFiles:
    """Locate the model; when missing and the config names a build script, run it first."""
    files = find_model_files(mc)
    if files is None and mc.build is not None:
        if not mc.build.is_file():
            raise ModelError(f"model.build script not found: {mc.build}")
        run_build_script(mc.build, quiet)
        files = find_model_files(mc)
    if files is None:
        how_to_build = how_to_build or (f"python {mc.build}" if mc.build else None)
        hint = f"; build it with: {how_to_build}" if how_to_build else "; fix model.dir / model.file in the config"
        raise ModelError(f"missing {_describe_missing(mc)}{hint}")
    return files


@dataclass
class InputSpec:
    """One feed of the program: name, shape (-1 for dynamic) and dtype."""

    name: str
    shape: list[int]
    dtype: str = "float32"


@dataclass
class ModelInfo:
    """What the program contains: op counts, quantization ops, inputs."""

    files: ModelFiles
    op_counts: dict[str, int] = field(default_factory=dict)
    inputs: list[InputSpec] = field(default_factory=list)
    # weight tensor -> (op type, dims) of the ops post-training quantization can quantize (calibration.skip_tensors)
    weights: dict[str, tuple[str, list[int]]] = field(default_factory=dict)
    # (name, element count or None when a dim is dynamic) of every tensor the program loads from its params file,
    # in the file's order (by name); classic format only
    params: Optional[list[tuple[str, Optional[int]]]] = None

    @property
    def quant_op_counts(self) -> dict[str, int]:
        return {op: n for op, n in self.op_counts.items() if op.startswith(QUANT_OP_PREFIXES)}

    @property
    def quantized(self) -> bool:
        return bool(self.quant_op_counts)


_REEXPORT = ("copy the .pdmodel and .pdiparams again from where they were exported together, or re-export the "
             "model (paddle.jit.save with FLAGS_enable_pir_api=0)")


def _read_program_desc(path: Path):
    """The parsed ProgramDesc of a classic .pdmodel; ModelError when it is empty or not a program."""
    from paddle.base.proto import framework_pb2

    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read the model file {path}: {e.strerror or e}") from e
    if not data:
        raise ModelError(f"{path} is empty (0 bytes), not a Paddle program file; {_REEXPORT}")
    program = framework_pb2.ProgramDesc()
    try:
        program.ParseFromString(data)
    except Exception as e:  # protobuf raises its own DecodeError type
        raise ModelError(f"{path} is not a valid Paddle program file ({e}); {_REEXPORT}") from e
    if not program.blocks:
        raise ModelError(f"{path} holds no program blocks ({len(data)} bytes), not a Paddle program; {_REEXPORT}")
    return program


def _inspect_classic(files: ModelFiles) -> ModelInfo:
    from paddle.base.proto import framework_pb2

    program = _read_program_desc(files.program)
    block = program.blocks[0]
    counts = collections.Counter(op.type for block_ in program.blocks for op in block_.ops)
    var_types = {v.name: v.type for v in block.vars}
    feeds = []
    for op in block.ops:
        if op.type != "feed":
            continue
        name = next(arg for out in op.outputs if out.parameter == "Out" for arg in out.arguments)
        tensor = var_types[name].dense_tensor.tensor if name in var_types else None
        dims = list(tensor.dims) if tensor is not None else []
        dtype = framework_pb2.VarType.Type.Name(tensor.data_type).lower() if tensor is not None else "float32"
        feeds.append(InputSpec(name, dims, {"fp32": "float32"}.get(dtype, dtype)))
    counts.pop("feed", None)
    counts.pop("fetch", None)
    return ModelInfo(files, dict(counts), feeds, _weights(block), _params_loaded(block))


# Variable types that are persistable but not loaded from the params file (framework.proto VarType.Type).
_NOT_PARAMS = (9, 10, 17)  # FEED_MINIBATCH, FETCH_LIST, RAW
_DENSE_TENSOR = 7


def _params_loaded(block) -> list[tuple[str, Optional[int]]]:
    """What Paddle loads from the params file, in order: the persistable variables of the global block, by name."""
    out = []
    for var in sorted(block.vars, key=lambda v: v.name):
        if var.persistable and var.type.type not in _NOT_PARAMS:
            dims = list(var.type.dense_tensor.tensor.dims) if var.type.type == _DENSE_TENSOR else [-1]
            out.append((var.name, math.prod(dims) if all(d >= 0 for d in dims) else None))
    return out


_WEIGHT_INPUTS = {"conv2d": "Filter", "depthwise_conv2d": "Filter", "conv2d_transpose": "Filter", "mul": "Y",
                  "matmul": "Y", "matmul_v2": "Y"}
# The op types that are layers of an INT8 model (conv / matmul): what calibration.skip_tensors keeps FP32.
LAYER_OPS = frozenset(_WEIGHT_INPUTS)


def _weights(block) -> dict[str, tuple[str, list[int]]]:
    """The persistable weight of every conv / matmul op, by tensor name."""
    persistable = {v.name: v for v in block.vars if v.persistable}
    weights = {}
    for op in block.ops:
        slot = _WEIGHT_INPUTS.get(op.type)
        for name in (arg for inp in op.inputs if inp.parameter == slot for arg in inp.arguments):
            if name in persistable:
                weights[name] = (op.type, list(persistable[name].type.dense_tensor.tensor.dims))
    return weights


@dataclass(frozen=True)
class OpUse:
    """An op of a classic program that reads a tensor: its type, the input slot it reads the tensor through, and
    its output names by slot."""

    type: str
    slot: str
    outputs: dict[str, tuple[str, ...]]

    @property
    def output_names(self) -> list[str]:
        return [name for names in self.outputs.values() for name in names]


def tensor_readers(files: ModelFiles, names: Iterable[str], *, key: Optional[str] = None) -> dict[str, list[OpUse]]:
    """For each tensor name, the ops of the program's global block that take it as an input, in program order.
    With ``key`` (the config key the names come from), a name no op reads is a one-line ConfigError naming
    tools/inspect_model.py; without it, such a name maps to []."""
    readers: dict[str, list[OpUse]] = {name: [] for name in names}
    for op in _read_program_desc(files.program).blocks[0].ops:
        outputs = {out.parameter: tuple(out.arguments) for out in op.outputs if out.arguments}
        seen: set[str] = set()  # an op reading a tensor through two slots is one use
        for inp in op.inputs:
            for name in inp.arguments:
                if name in readers and name not in seen:
                    seen.add(name)
                    readers[name].append(OpUse(op.type, inp.parameter, outputs))
    unknown = [name for name, uses in readers.items() if not uses]
    if key is not None and unknown:
        raise ConfigError(f"{key}: '{unknown[0]}' is not an input of any op of {files.program}; list its layers' "
                          f"weights: python tools/inspect_model.py --model {files.dir} --weights")
    return readers


# Bytes per element of the tensor data types (framework.proto VarType.Type) a params file stores.
_DTYPE_BYTES = {0: 1, 1: 2, 2: 4, 3: 8, 4: 2, 5: 4, 6: 8, 20: 1, 21: 1, 22: 2, 23: 8, 24: 16, 32: 1, 33: 1,
                36: 2, 37: 4, 38: 8}


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _skip_tensor(f: BinaryIO, size: int) -> Optional[int]:
    """Skip one tensor of a combined params file (Paddle's save_combine layout: version, LoD, version, TensorDesc,
    data) and return its element count; None when its header is not that layout. EOFError when the file ends
    inside it."""
    from paddle.base.proto import framework_pb2

    version, lod_levels = struct.unpack("<IQ", _read_exact(f, 12))
    if version != 0 or lod_levels > 16:
        return None
    for _ in range(lod_levels):
        f.seek(struct.unpack("<Q", _read_exact(f, 8))[0], 1)
    version, desc_size = struct.unpack("<Ii", _read_exact(f, 8))
    if version != 0 or not 0 < desc_size < 1 << 20:
        return None
    desc = framework_pb2.VarType.TensorDesc()
    desc.ParseFromString(_read_exact(f, desc_size))
    if desc.data_type not in _DTYPE_BYTES or any(d < 0 for d in desc.dims):
        return None
    numel = math.prod(desc.dims)
    f.seek(_DTYPE_BYTES[desc.data_type] * numel, 1)
    if f.tell() > size:
        raise EOFError
    return numel


@functools.lru_cache(maxsize=32)
def _scan_params(params: Path, size: int, mtime_ns: int) -> tuple[Literal["complete", "cut", "unknown"], list[int]]:
    """How a combined params file ends (complete, or inside a tensor) and the element count of each tensor in it;
    "unknown" when its layout is not the one known here (Paddle then says what is wrong when it loads it)."""
    from google.protobuf.message import DecodeError

    numels: list[int] = []
    try:
        with params.open("rb") as f:
            while f.tell() < size:
                numel = _skip_tensor(f, size)
                if numel is None:
                    return "unknown", numels
                numels.append(numel)
    except EOFError:
        return "cut", numels
    except DecodeError:  # a tensor header that is not a TensorDesc: not the known layout
        return "unknown", numels
    except OSError as e:
        raise ModelError(f"cannot read the params file {params}: {e.strerror or e}") from e
    return "complete", numels


def _params_problem(info: ModelInfo) -> Optional[str]:
    """What makes the params file unloadable by its program, or None when nothing is seen."""
    stat = info.files.params.stat()
    state, numels = _scan_params(info.files.params, stat.st_size, stat.st_mtime_ns)
    if state == "cut":
        return f"the file ends inside its tensor {len(numels) + 1} ({stat.st_size} bytes)"
    if state == "unknown" or info.params is None:
        return None
    if len(numels) != len(info.params):
        return f"the file holds {len(numels)} tensors, the program loads {len(info.params)}"
    for (name, expected), found in zip(info.params, numels):
        if expected is not None and expected != found:
            return f"the tensor it holds for '{name}' has {found} values where the program expects {expected}"
    return None


def check_params_file(info: ModelInfo) -> None:
    """ModelError when the params file cannot be the one exported with the program: it ends inside a tensor, or
    its tensors differ in number or size from what the program loads."""
    if info.files.format != "classic":
        return
    problem = _params_problem(info)
    if problem:
        raise ModelError(params_mismatch(info.files, problem))


def params_mismatch(files: ModelFiles, found: str) -> str:
    """The message for a params file that the program cannot load."""
    return (f"{files.params} does not match {files.program.name}: {found}, so it is truncated or belongs to "
            f"another model; {_REEXPORT}")


# PIR json names ops "<dialect>.<op>"; the serializer shortens dialect names ("1" = pd_op, "0" = builtin).
_PIR_DIALECTS = ("pd_op", "builtin", "1", "0")
_PIR_FEEDS = ("data", "feed")


def _pir_attrs(op: dict) -> dict:
    """An op's attributes {name: value} from PIR json's [{"N": name, "AT": {"D": value}}] list."""
    attrs = op.get("A")
    if not isinstance(attrs, list):
        return {}
    return {a["N"]: a.get("AT", {}).get("D") for a in attrs if isinstance(a, dict) and "N" in a}


def _pir_ops(node) -> Iterator[dict]:
    """Every op dict in a PIR json program, in order, including ops inside nested regions."""
    if isinstance(node, dict):
        if isinstance(node.get("#"), str) and ("A" in node or "O" in node):
            yield node
        for value in node.values():
            yield from _pir_ops(value)
    elif isinstance(node, list):
        for value in node:
            yield from _pir_ops(value)


def _inspect_pir(files: ModelFiles) -> ModelInfo:
    try:
        data = json.loads(files.program.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{files.program} is not a valid PIR json program: {e}") from e
    if not isinstance(data, dict) or "program" not in data:
        raise ModelError(f"{files.program} is not a PIR json program (no 'program' key); export it with "
                         "paddle.jit.save")
    counts: collections.Counter = collections.Counter()
    feeds = []
    for op in _pir_ops(data["program"]):
        dialect, _, name = op["#"].partition(".")
        if dialect not in _PIR_DIALECTS or not name:
            continue  # parameters ("p") and attribute/type records
        if name in _PIR_FEEDS:
            attrs = _pir_attrs(op)
            if isinstance(attrs.get("name"), str):
                shape = attrs.get("shape") if isinstance(attrs.get("shape"), list) else []
                feeds.append(InputSpec(attrs["name"], [int(d) for d in shape], str(attrs.get("dtype", "float32"))))
            continue
        if name != "fetch":
            counts[name] += 1
    return ModelInfo(files, dict(counts), feeds)


@functools.lru_cache(maxsize=32)
def _inspect_cached(files: ModelFiles, mtime_ns: int) -> ModelInfo:
    return _inspect_pir(files) if files.format == "pir" else _inspect_classic(files)


def inspect_model(files: ModelFiles) -> ModelInfo:
    """Read the program (without running it): op counts, whether it is quantized, its feeds; ModelError when the
    program file is not a program or the params file cannot be the one exported with it."""
    info = _inspect_cached(files, files.program.stat().st_mtime_ns)
    check_params_file(info)
    return info


def quant_scales(files: ModelFiles) -> dict[str, dict]:
    """Scales a quantized classic-format model carries, by quantized tensor: {tensor: {scale, bits, op}}."""
    import numpy as np
    import paddle

    paddle.enable_static()
    try:
        scope = paddle.static.Scope()
        exe = paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            if files.program.stem == files.params.stem:
                program, _, _ = paddle.static.load_inference_model(str(files.dir / files.program.stem), exe)
            else:
                program, _, _ = paddle.static.load_inference_model(
                    str(files.dir), exe, model_filename=files.program.name, params_filename=files.params.name)
        scales = {}
        for op in program.global_block().ops:
            if not op.type.startswith(QUANT_OP_PREFIXES) or "Scale" not in op.input_names:
                continue
            tensor, scale_var = op.input("X")[0], op.input("Scale")[0]
            found = scope.find_var(scale_var)
            if found is None or tensor in scales or tensor.endswith(".quantized"):
                continue
            value = np.array(found.get_tensor()).astype(float).ravel()
            bits = op.attr("bit_length") if op.has_attr("bit_length") else 8
            scales[tensor] = {"scale": value.tolist() if value.size > 1 else float(value[0]),
                              "bits": int(bits), "op": op.type}
        return scales
    finally:
        paddle.disable_static()


def describe_model(info: ModelInfo) -> dict:
    """A JSON-ready summary: files, inputs, quantization ops, op counts."""
    return {
        "program": str(info.files.program),
        "format": info.files.format,
        "params": str(info.files.params),
        "params_mb": info.files.params.stat().st_size / 2**20,
        "inputs": [{"name": f.name, "shape": ["?" if d < 0 else d for d in f.shape], "dtype": f.dtype}
                   for f in info.inputs],
        "quantized": info.quantized,
        "quant_ops": dict(sorted(info.quant_op_counts.items())),
        "weights": {name: {"op": op, "shape": dims} for name, (op, dims) in info.weights.items()},
        "ops": dict(sorted(info.op_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
