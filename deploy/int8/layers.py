"""The layers of a PaddleSlim-quantized model, and copies of it with some layers back in FP32.

PaddleSlim's post-training quantization (onnx_format) feeds every quantized conv / matmul through
dequantize_linear ops: its activations through a quantize_linear + dequantize_linear pair, its weight (stored as
INT8 values) through a dequantize_linear. oneDNN (and TensorRT's explicit mode) run a layer in INT8 exactly when
those ops are there. Keeping a layer FP32 is therefore a rewiring, not a new calibration: its inputs are taken from
before the Q/DQ ops and its weight from the FP32 model; every other layer keeps its scales, which PTQ computed from
FP32 activations and which do not depend on what else is quantized. This is what PaddleSlim's
``quant.analysis.Analysis`` does layer by layer (``get_new_in_out_map`` / ``relink_graph``, "dequant layer by
layer"); done here for any set of layers at once, so the search can score each set on the real oneDNN INT8 engine.

A layer is named as ``calibration.skip_tensors`` names it for PaddleSlim (an op is skipped when any of its inputs
is listed): by its weight, or, for a matmul of two activations, by an input no other quantized layer reads.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator

import numpy as np

from deploy.engines.model import ModelFiles

# The quantizable ops and their two quantized inputs (PaddleSlim's SUPPORT_WEIGHT_OP_DICT, the ones we quantize).
QUANT_SLOTS = {"conv2d": ("Input", "Filter"), "depthwise_conv2d": ("Input", "Filter"),
               "conv2d_transpose": ("Input", "Filter"), "mul": ("X", "Y"), "matmul": ("X", "Y"),
               "matmul_v2": ("X", "Y")}
FP32_SUFFIX = "@fp32"


@dataclass(frozen=True)
class Layer:
    """One quantized layer: its skip-list name, op type, output names and position in the program."""

    name: str
    op_type: str
    outputs: tuple[str, ...]
    index: int

    def to_json(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "outputs": list(self.outputs)}


@contextlib.contextmanager
def _static() -> Iterator[None]:
    import paddle

    paddle.enable_static()
    try:
        yield
    finally:
        paddle.disable_static()


def _load(files: ModelFiles, scope: Any) -> tuple[Any, list[str], list[Any]]:
    import paddle

    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(scope):
        if files.program.stem == files.params.stem:
            return paddle.static.load_inference_model(str(files.dir / files.program.stem), exe)
        return paddle.static.load_inference_model(str(files.dir), exe, model_filename=files.program.name,
                                                  params_filename=files.params.name)


class QuantizedModel:
    """A quantized model loaded with its FP32 original; writes copies with chosen layers in FP32."""

    def __init__(self, quantized: ModelFiles, fp32: ModelFiles):
        import paddle

        with _static():
            self._scope, self._fp32_scope = paddle.static.Scope(), paddle.static.Scope()
            self.program, self._feeds, self._fetches = _load(quantized, self._scope)
            _load(fp32, self._fp32_scope)
        self.layers = self._find_layers()

    def _producers(self, block: Any) -> dict[str, Any]:
        return {name: op for op in block.ops for name in op.output_arg_names}

    def _origin(self, name: str, producers: dict[str, Any]) -> tuple[str, bool]:
        """(the tensor before the Q/DQ ops, whether it is a weight) for a quantized input; (name, False) if the
        input is not quantized."""
        dq = producers.get(name)
        if dq is None or dq.type != "dequantize_linear":
            return name, False
        source = dq.input("X")[0]
        q = producers.get(source)
        if q is not None and q.type == "quantize_linear":
            return q.input("X")[0], False
        return source, True

    def _find_layers(self) -> list[Layer]:
        block = self.program.global_block()
        producers = self._producers(block)
        found = []
        for index, op in enumerate(block.ops):
            slots = QUANT_SLOTS.get(op.type, ())
            inputs = [op.input(slot)[0] for slot in slots if op.input(slot)]
            if not any(self._origin(n, producers) != (n, False) for n in inputs):
                continue  # not quantized (skipped at calibration, or not a quantized op type)
            found.append((index, op, [self._origin(n, producers) for n in inputs]))
        readers = Counter(origin for _, _, origins in found for origin, _ in origins)
        layers = []
        for index, op, origins in found:
            weights = [o for o, is_weight in origins if is_weight]
            own = [o for o, _ in origins if readers[o] == 1]
            name = (weights or own or [origins[0][0]])[0]
            layers.append(Layer(name, op.type, tuple(op.output_arg_names), index))
        return layers

    def save(self, keep_fp32: Collection[str], out_dir: Path, *, layer_inputs_only: bool = False) -> ModelFiles:
        """Write the model with the layers named in ``keep_fp32`` in FP32 to ``out_dir``/inference.*. With
        ``layer_inputs_only``, Q/DQ pairs stay only on the inputs of quantized layers: the ones PaddleSlim adds on
        other ops' inputs (its output scales, e.g. between a conv and its bias add) are bypassed, the placement
        TensorRT's explicit quantization expects (NVIDIA: quantize the inputs of weighted layers, not outputs)."""
        import paddle

        keep = set(keep_fp32)
        with _static(), paddle.static.scope_guard(self._scope):
            program = self.program.clone()
            block = program.global_block()
            producers = self._producers(block)
            for layer in self.layers:
                if layer.name not in keep:
                    continue
                op = block.ops[layer.index]
                for slot in QUANT_SLOTS[op.type]:
                    if not op.input(slot):
                        continue
                    name = op.input(slot)[0]
                    origin, is_weight = self._origin(name, producers)
                    if origin == name:
                        continue
                    op._rename_input(name, self._fp32_weight(block, origin) if is_weight else origin)
            if layer_inputs_only:
                self._bypass_other_qdq(block, producers)
            feeds = [block.var(name) for name in self._feeds]
            fetches = [block.var(var.name) for var in self._fetches]
            exe = paddle.static.Executor(paddle.CPUPlace())
            out_dir.mkdir(parents=True, exist_ok=True)
            # Saving prunes what no fetch needs: the Q/DQ ops and INT8 weights only FP32 layers read.
            paddle.static.save_inference_model(str(out_dir / "inference"), feeds, fetches, exe, program=program,
                                               clip_extra=False)
        return ModelFiles(out_dir / "inference.pdmodel", out_dir / "inference.pdiparams")

    def _bypass_other_qdq(self, block: Any, producers: dict[str, Any]) -> None:
        """Every op input that reads an activation through a Q/DQ pair, other than a layer's quantized slots, reads
        the activation itself (saving then prunes the pairs nothing reads any more)."""
        for op in block.ops:
            layer_slots = QUANT_SLOTS.get(op.type, ())
            for slot in op.input_names:
                if slot in layer_slots:
                    continue
                for name in op.input(slot):
                    origin, is_weight = self._origin(name, producers)
                    if origin != name and not is_weight:
                        op._rename_input(name, origin)

    def _fp32_weight(self, block: Any, weight: str) -> str:
        """The name of ``weight``'s FP32 value (the FP32 model's tensor), added to the block and scope once."""
        import paddle

        name = weight + FP32_SUFFIX
        if self._scope.find_var(name) is None:
            value = np.array(self._fp32_scope.find_var(weight).get_tensor())
            self._scope.var(name).get_tensor().set(value, paddle.CPUPlace())
        if not block.has_var(name):
            source = block.var(weight)
            block.create_var(name=name, shape=source.shape, dtype=source.dtype, persistable=True)
        return name
