"""Inference model files: locate them from the config, build the demo ones when missing, inspect the program."""
from __future__ import annotations

import collections
import functools
import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Optional

from deploy.config.loader import ModelConfig
from deploy.errors import ModelError

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

    @property
    def quant_op_counts(self) -> dict[str, int]:
        return {op: n for op, n in self.op_counts.items() if op.startswith(QUANT_OP_PREFIXES)}

    @property
    def quantized(self) -> bool:
        return bool(self.quant_op_counts)


def _inspect_classic(files: ModelFiles) -> ModelInfo:
    from paddle.base.proto import framework_pb2

    program = framework_pb2.ProgramDesc()
    try:
        program.ParseFromString(files.program.read_bytes())
    except Exception as e:  # protobuf raises its own DecodeError type
        raise ModelError(f"{files.program} is not a valid Paddle program file: {e}") from e
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
    return ModelInfo(files, dict(counts), feeds, _weights(block))


_WEIGHT_INPUTS = {"conv2d": "Filter", "depthwise_conv2d": "Filter", "conv2d_transpose": "Filter", "mul": "Y",
                  "matmul": "Y", "matmul_v2": "Y"}


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
    """Read the program (without running it): op counts, whether it is quantized, its feeds."""
    return _inspect_cached(files, files.program.stat().st_mtime_ns)


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
