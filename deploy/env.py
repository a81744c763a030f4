"""Environment probe: what this Paddle build and this machine can run, and why not when they cannot."""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

from deploy.table import format_table
from deploy import signals

DEVICES = ("gpu", "cpu")
BACKENDS = ("trt", "paddle", "openvino")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass
class Environment:
    """Facts about the installed Paddle and the machine."""

    python: str
    paddle_version: str
    paddle_commit: str
    paddleslim_version: Optional[str]
    cuda_compiled: bool
    cuda_version: Optional[str]
    cudnn_version: Optional[str]
    trt_compile_version: tuple[int, int, int]
    trt_runtime_version: tuple[int, int, int]
    onednn: bool
    gpus: list[str] = field(default_factory=list)
    gpu_capabilities: list[tuple[int, int]] = field(default_factory=list)  # CUDA compute capability per GPU
    cpu_model: str = ""
    cpu_count: int = 1
    cpu_flags: dict[str, bool] = field(default_factory=dict)
    openvino_version: Optional[str] = None  # read from the package metadata: probing does not import it

    @property
    def trt_compiled(self) -> bool:
        return self.trt_compile_version[0] > 0


def _read_cpu_info() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def _dist_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _gpus(paddle) -> tuple[list[str], list[tuple[int, int]]]:
    """Names and compute capabilities of the visible GPUs."""
    if not paddle.is_compiled_with_cuda():
        return [], []
    count = paddle.device.cuda.device_count()
    return ([paddle.device.cuda.get_device_name(i) for i in range(count)],
            [tuple(paddle.device.cuda.get_device_capability(i)) for i in range(count)])


def trt_version(reported: tuple[int, ...]) -> tuple[int, int, int]:
    """The TensorRT runtime version from what ``paddle.inference.get_trt_runtime_version()`` reports.

    Paddle decodes getInferLibVersion() as major*1000 + minor*100 + patch (GetTrtRuntimeVersion, Paddle's
    paddle/fluid/inference/tensorrt/helper.h), TensorRT 8's encoding. TensorRT 10 encodes major*10000 + minor*100 +
    patch (NV_TENSORRT_VERSION_INT, NvInferRuntimeBase.h), so Paddle reports 10.1.0 as (100, 1, 0) and 10.12.0 as
    (101, 2, 0); both are decoded again here from the number Paddle read."""
    major, minor, patch = (tuple(reported) + (0, 0, 0))[:3]
    if major < 100:
        return major, minor, patch
    number = major * 1000 + minor * 100 + patch
    return number // 10000, number // 100 % 100, number % 100


@functools.lru_cache(maxsize=1)
def probe() -> Environment:
    """Probe the installed Paddle and the machine (cached for the process)."""
    import paddle
    import paddle.inference as pi

    signals.reclaim_from_paddle()  # the first paddle import replaced our SIGTERM handler with Paddle's
    model, flags = _read_cpu_info()
    cuda = paddle.is_compiled_with_cuda()
    gpus, capabilities = _gpus(paddle)
    return Environment(
        python=platform.python_version(),
        paddle_version=paddle.__version__,
        paddle_commit=str(paddle.version.commit)[:10],
        paddleslim_version=_dist_version("paddleslim"),
        cuda_compiled=cuda,
        cuda_version=str(paddle.version.cuda()) if cuda else None,
        cudnn_version=str(paddle.version.cudnn()) if cuda else None,
        trt_compile_version=tuple(pi.get_trt_compile_version()),
        trt_runtime_version=trt_version(tuple(pi.get_trt_runtime_version())),
        onednn=bool(paddle.base.core.is_compiled_with_mkldnn()),
        gpus=gpus,
        gpu_capabilities=capabilities,
        cpu_model=model,
        cpu_count=os.cpu_count() or 1,
        cpu_flags={f: f in flags for f in CPU_FLAGS},
        openvino_version=_dist_version("openvino"),
    )


def _gpu_reason(env: Environment) -> Optional[str]:
    if not env.cuda_compiled:
        return (f"this Paddle build ({env.paddle_version}) has no CUDA; "
                "install paddlepaddle-gpu on a machine with an NVIDIA GPU")
    if not env.gpus:
        return "no NVIDIA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
    return None


def _trt_reason(env: Environment, precision: str) -> Optional[str]:
    if not env.trt_compiled:
        return (f"this Paddle build ({env.paddle_version}) was not compiled with TensorRT "
                "(get_trt_compile_version() is 0.0.0); install a paddlepaddle-gpu build with TensorRT")
    if env.trt_runtime_version[0] == 0:
        return "TensorRT libraries were not found at run time; add TensorRT's lib dir to LD_LIBRARY_PATH"
    if precision == "bf16":
        return "bf16 is not offered on TensorRT here; use fp16 or int8"
    if precision == "fp16" and env.trt_runtime_version >= FP16_FLAG_REMOVED:
        return (f"TensorRT {_version(env.trt_runtime_version)} removed BuilderFlag::kFP16, which Paddle-TRT builds "
                "FP16 engines with (it has no strongly typed networks); use runtime.backend=paddle (native GPU FP16) "
                "or TensorRT 10.x")
    return None


def _cpu_reason(env: Environment, backend: str, precision: str) -> Optional[str]:
    if backend == "trt":
        return "TensorRT runs only on NVIDIA GPUs; use runtime.backend=paddle on CPU"
    if backend == "openvino":
        return _openvino_reason(env, precision)
    if precision == "fp16":
        return "fp16 is not supported on CPU; use fp32, int8 (quantized model) or bf16"
    if precision in ("int8", "bf16") and not env.onednn:
        return f"{precision} on CPU needs a Paddle build with oneDNN"
    if precision == "bf16" and not (env.cpu_flags.get("avx512_bf16") or env.cpu_flags.get("amx_bf16")):
        return "bf16 on CPU needs avx512_bf16 or AMX, which this CPU does not have; use fp32 or int8"
    return None


def _openvino_reason(env: Environment, precision: str) -> Optional[str]:
    if env.openvino_version is None:
        return "OpenVINO is not installed; pip install -r requirements.txt"
    if precision == "fp16":
        return "fp16 is not offered on CPU; use fp32 or bf16"
    if precision == "bf16" and not (env.cpu_flags.get("avx512_bf16") or env.cpu_flags.get("amx_bf16")):
        return "bf16 on CPU needs avx512_bf16 or AMX, which this CPU does not have; use fp32"
    return None


OPENVINO_ON_GPU = ("this toolkit's OpenVINO engine runs on the CPU only; use runtime.device=cpu with it, or "
                   "runtime.backend=trt or paddle on an NVIDIA GPU")


def support_reason(env: Environment, device: str, backend: str, precision: str) -> Optional[str]:
    """None when the combination can run here, else a one-line reason saying what is missing."""
    if device == "gpu":
        if backend == "openvino":  # whatever the CUDA build: not a GPU engine here
            return OPENVINO_ON_GPU
        reason = _gpu_reason(env)
        if reason:
            return reason
        if backend == "trt":
            return _trt_reason(env, precision)
        if precision in ("int8", "bf16"):
            return f"{precision} on GPU runs through TensorRT; use runtime.backend=trt"
        return None
    return _cpu_reason(env, backend, precision)


def default_device(env: Environment) -> str:
    """The device ``auto`` picks: the GPU when this build and machine have one, else the CPU."""
    return "gpu" if env.cuda_compiled and env.gpus else "cpu"


INT8_NOTES = {  # what INT8 needs where it can run
    ("gpu", "trt"): "implicit: a calibration table; explicit: a Q/DQ model (tools/calibrate.py) or a quantized model",
    ("cpu", "paddle"): "oneDNN INT8 on a quantized model (tools/calibrate.py or a PaddleSlim model)",
    ("cpu", "openvino"): "an NNCF-quantized IR from tools/calibrate.py -o runtime.backend=openvino",
}


def capability_rows(env: Environment) -> list[tuple[str, str, str, str]]:
    """Every device/backend/precision combination with 'yes' or the reason it cannot run here."""
    rows = []
    for device in DEVICES:
        for backend in BACKENDS:
            for precision in PRECISIONS:
                reason = support_reason(env, device, backend, precision)
                note = INT8_NOTES.get((device, backend), "") if precision == "int8" else ""
                status = "yes" + (f" ({note})" if note else "") if reason is None else f"no: {reason}"
                rows.append((device, backend, precision, status))
    return rows


# TensorRT's INT8 paths by version (NVIDIA's TensorRT 10.1 release notes and its 10.x-to-11.x migration guide):
# implicit calibration (IInt8Calibrator, what use_calib_mode=True drives) was deprecated in 10.1 and removed in 11.0;
# explicit quantization (Q/DQ layers in the network) is the path from then on.
IMPLICIT_DEPRECATED = (10, 1, 0)
IMPLICIT_REMOVED = (11, 0, 0)
# Paddle-TRT's quantize_linear / dequantize_linear converters need TensorRT >= 8.5.1 (IS_TRT_VERSION_GE(8510))
EXPLICIT_FROM = (8, 5, 1)
# TensorRT 11 also removed BuilderFlag::kFP16, which Paddle-TRT builds every FP16 engine with (engine.cc,
# FreezeNetwork; Paddle has no strongly typed network path)
FP16_FLAG_REMOVED = (11, 0, 0)


def trt_int8_reasons(env: Environment) -> dict[str, Optional[str]]:
    """For each TensorRT INT8 path (implicit, explicit): None when this TensorRT runtime allows it, else why not."""
    version = env.trt_runtime_version
    if not env.trt_compiled or version[0] == 0:
        reason = _trt_reason(env, "int8")
        return {"implicit": reason, "explicit": reason}
    implicit = explicit = None
    if version >= IMPLICIT_REMOVED:
        implicit = f"TensorRT {_version(version)} removed implicit INT8 calibration (11.0)"
    if version < EXPLICIT_FROM:
        explicit = (f"Paddle-TRT converts quantize_linear / dequantize_linear only from TensorRT 8.5.1 on, and this "
                    f"is {_version(version)}")
    return {"implicit": implicit, "explicit": explicit}


def trt_int8_path(mode: str, env: Environment) -> str:
    """implicit or explicit for runtime.trt.int8_mode ``mode`` on this TensorRT runtime: auto is explicit from
    TensorRT 10.1 on (which deprecated implicit calibration), implicit below it and where there is no TensorRT."""
    if mode == "auto":
        return "explicit" if env.trt_runtime_version >= IMPLICIT_DEPRECATED else "implicit"
    return mode


def int8_tensor_cores(capability: tuple[int, int]) -> str:
    """What a GPU of this compute capability does for TensorRT INT8 (NVIDIA's TensorRT support matrix)."""
    if capability >= (7, 2):
        return "INT8 tensor cores"
    if capability >= (6, 1):
        return "INT8 by DP4A, no INT8 tensor cores (expect little over FP16)"
    return "no INT8 in TensorRT (needs compute capability 6.1 or newer)"


def _version(v: tuple[int, int, int]) -> str:
    return ".".join(map(str, v)) if v[0] else "none"


def _trt_int8_text(env: Environment) -> str:
    """Which TensorRT INT8 paths this runtime allows, and what runtime.trt.int8_mode auto picks."""
    reasons = trt_int8_reasons(env)
    if reasons["implicit"] is not None and reasons["implicit"] == reasons["explicit"]:
        return ("neither path here (no TensorRT); the explicit path's Q/DQ model can still be made here: "
                "tools/calibrate.py -o runtime.trt.int8_mode=explicit")
    paths = "; ".join(f"{path}: {'yes' if reason is None else 'no, ' + reason}" for path, reason in reasons.items())
    return f"{paths}; runtime.trt.int8_mode auto picks {trt_int8_path('auto', env)}"


def format_env(env: Environment, rows: list[tuple[str, str, str, str]]) -> str:
    """The probe as text: versions, hardware, then the capability table."""
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in env.cpu_flags.items())
    facts = [
        ("python", env.python),
        ("paddle", f"{env.paddle_version} (commit {env.paddle_commit})"),
        ("paddleslim", env.paddleslim_version or "not installed"),
        ("openvino", env.openvino_version or "not installed"),
        ("cuda build", f"yes (CUDA {env.cuda_version}, cuDNN {env.cudnn_version})" if env.cuda_compiled else "no"),
        ("tensorrt", f"compiled {_version(env.trt_compile_version)}, runtime {_version(env.trt_runtime_version)}"),
        ("onednn", "yes" if env.onednn else "no"),
        ("tensorrt int8", _trt_int8_text(env)),
        ("gpus", ", ".join(f"{name} (compute capability {c[0]}.{c[1]}: {int8_tensor_cores(c)})"
                           for name, c in zip(env.gpus, env.gpu_capabilities)) or "none"),
        ("cpu", f"{env.cpu_model} ({env.cpu_count} cores)"),
        ("cpu flags", flags),
    ]
    head = "\n".join(f"{k:<13} {v}" for k, v in facts)
    return head + "\n\n" + format_table(("device", "backend", "precision", "runs here"), rows)
