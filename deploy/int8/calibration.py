"""INT8 calibration from ~500 real images preprocessed exactly as at inference.

TRT builds: the Paddle-TRT two-run protocol (an Int8 predictor with use_calib_mode=True writes its table when
destroyed). CPU / builds without TensorRT: PaddleSlim post-training quantization into a quantized model that
oneDNN runs in INT8. Both write into a staging dir first and record provenance in ``_opt_cache/calibration.json``
only after the artifacts are complete, so an interrupted run leaves the previous artifacts as they were.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from deploy import cache
from deploy.config.loader import CalibrationConfig, DeployConfig, NncfConfig
from deploy.data.sources import Batch, ImageItem, group_batches, list_images, load_images
from deploy.env import default_device, probe, support_reason
from deploy.config.schema import closest_key
from deploy.errors import CalibrationError, ConfigError, DataError, UnsupportedError
from deploy.engines.model import ModelFiles, ensure_model, inspect_model, quant_scales
from deploy.engines.openvino import read_program, write_ir
from deploy.engines.paddle import Predictor, native_stderr_to_log
from deploy.engines.plan import resolve_plan, shape_file, trt_table_dir
from deploy.data.pipeline import ImagePipeline, ops_fingerprint
from deploy.tasks.base import Task
from deploy.tasks.registry import build_task

log = logging.getLogger(__name__)
# PaddleSlim's names for the algorithms we offer (we accept them case-insensitively in the config).


@dataclass
class CalibrationSet:
    """The sampled calibration images, preprocessed and batched exactly as at inference, and the task that turns a
    batch into the model's feeds."""

    source: str
    batches: list[Batch]
    items: list[ImageItem]
    task: Task
    skipped: int = 0

    def feeds(self, input_names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """Every batch as the model's feeds, by input name."""
        for batch in self.batches:
            yield self.task.feeds(batch, input_names)

    @property
    def count(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        """sha256 of the sorted image paths: which images calibrated the model."""
        return cache.sha256_text("\n".join(sorted(str(i.path) for i in self.items)))


@dataclass
class CalibrationResult:
    """What a calibration produced."""

    target: str  # "cpu", "trt" or "openvino"
    artifacts: list[Path]
    manifest: Path
    images: int
    seconds: float


def sample_images(cfg: DeployConfig, source: Optional[str] = None) -> list[ImageItem]:
    """All candidate images in a deterministic, seeded order."""
    source = source or cfg.calibration.images
    if source is None:
        raise DataError("no calibration images: set calibration.images (a folder, glob or list file) "
                        "or pass --images")
    items = list_images(source)
    order = np.random.default_rng(cfg.calibration.seed).permutation(len(items))
    return [items[i] for i in order]


def load_calibration_set(cfg: DeployConfig, *, source: Optional[str] = None, num_images: Optional[int] = None,
                         allow_fewer: Optional[bool] = None, quiet: bool = False) -> CalibrationSet:
    """Sample ``num_images`` readable images and preprocess them with the config's own pipeline."""
    wanted = num_images or cfg.calibration.num_images
    allow_fewer = cfg.calibration.allow_fewer if allow_fewer is None else allow_fewer
    candidates = sample_images(cfg, source)
    pipeline = ImagePipeline(cfg.preprocess)
    skipped: list[ImageItem] = []
    items: list[ImageItem] = []

    def readable(images: Iterator) -> Iterator[tuple[tuple[ImageItem, Any], np.ndarray]]:
        for item, result in images:
            if isinstance(result, DataError):
                skipped.append(item)
                log.warning("skipped %s", result)
                continue
            array, record = result
            items.append(item)
            bar.update(1)
            yield (item, record), array
            if len(items) == wanted:
                return

    # Batched as the images arrive, so the set is in memory once (PP-OCR det: 3.3 MB per preprocessed page).
    with tqdm(total=min(wanted, len(candidates)), disable=quiet, unit="img", desc="calibration set") as bar, \
            contextlib.closing(load_images(candidates, pipeline, cfg.runtime.decode_threads)) as images:
        batches = [Batch([item for item, _ in keys], array, [record for _, record in keys])
                   for keys, array in group_batches(readable(images), pipeline, cfg.runtime.batch_size)]
    src = str(source or cfg.calibration.images)
    if not items:
        raise CalibrationError(f"no readable images in {src} ({len(skipped)} unreadable); "
                               "point calibration.images at real images")
    if len(items) < wanted:
        msg = f"found only {len(items)} readable calibration images in {src}, {wanted} requested"
        if not allow_fewer:
            raise CalibrationError(f"{msg}; add images, lower calibration.num_images, or pass --allow-fewer")
        log.warning("%s; proceeding with %d (--allow-fewer)", msg, len(items))
    return CalibrationSet(src, batches, items, build_task(cfg), len(skipped))


def _versions() -> dict:
    env = probe()
    return {"paddle": env.paddle_version, "paddleslim": env.paddleslim_version,
            "tensorrt": ".".join(map(str, env.trt_runtime_version)) if env.trt_compiled else None,
            "openvino": env.openvino_version}


def _manifest_entry(cfg: DeployConfig, files: ModelFiles, calib: CalibrationSet, target: str, algo: str,
                    backend: str, artifact_dir: Path, artifacts: list[Path]) -> dict:
    return {
        "config": str(cfg.source),
        "model": cache.model_fingerprint(files),
        "preprocess_sha256": ops_fingerprint(cfg.preprocess),
        "settings_sha256": cache.calibration_settings_fingerprint(cfg, target),
        "images_sha256": calib.fingerprint(),
        "images_source": calib.source,
        "num_images": calib.count,
        "batch_size": cfg.runtime.batch_size,
        "algo": algo,
        "backend": backend,
        "versions": _versions(),
        "artifacts": {"dir": str(artifact_dir), "files": cache.artifact_fingerprint(artifacts)},
    }


def _target(cfg: DeployConfig) -> tuple[str, str]:
    """(device, backend) the calibration is for, after checking INT8 can run there."""
    env = probe()
    device = default_device(env) if cfg.runtime.device == "auto" else cfg.runtime.device
    reason = support_reason(env, device, cfg.runtime.backend, "int8")
    if reason:
        raise UnsupportedError(f"cannot calibrate for {device}/{cfg.runtime.backend}/int8 here: {reason}")
    return device, cfg.runtime.backend


def calibrate(cfg: DeployConfig, *, images: Optional[str] = None, num_images: Optional[int] = None,
              allow_fewer: Optional[bool] = None, output_dir: Optional[Path] = None,
              quiet: bool = False) -> CalibrationResult:
    """Calibrate the config's model for INT8 on its device: a TRT table on GPU, a quantized model on CPU."""
    if num_images is not None and num_images < 1:
        raise ConfigError(f"--num-images {num_images}: expected a positive number of calibration images, e.g. 500")
    cfg = replace(cfg, runtime=replace(cfg.runtime, precision="int8"))
    device, backend = _target(cfg)
    files = ensure_model(cfg.model, quiet=quiet)
    _check_calibratable(cfg, files)
    destination, run = _TARGETS[backend]
    # Everything that can fail is checked before the long work: where the artifacts go, the manifest.
    final = destination(cfg, files, output_dir, images)
    cache.prepare_install(files, final)
    calib = load_calibration_set(cfg, source=images, num_images=num_images, allow_fewer=allow_fewer, quiet=quiet)
    start = time.perf_counter()
    result = run(cfg, files, calib, final, quiet)
    result.seconds = time.perf_counter() - start
    return result


def _check_calibratable(cfg: DeployConfig, files: ModelFiles) -> None:
    """A classic, not yet quantized program, and every calibration.skip_tensors name one of its weights."""
    info = inspect_model(files)
    if info.quantized:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(info.quant_op_counts.items()))
        raise CalibrationError(f"{files.program} is already quantized ({ops}): it carries its own scales, so "
                               "there is nothing to calibrate; run it with: python tools/infer.py -c "
                               f"{cfg.source} --precision int8")
    if files.format == "pir":
        raise CalibrationError(f"{files.program} is a PIR (.json) program; PaddleSlim and Paddle-TRT calibrate only "
                               "the classic .pdmodel format: export it with FLAGS_enable_pir_api=0 set before "
                               "paddle is imported")
    unknown = [name for name in cfg.calibration.skip_tensors if name not in info.weights]
    if unknown:
        raise ConfigError(f"calibration.skip_tensors: '{unknown[0]}' is not a weight tensor of {files.program}; "
                          f"{closest_key(unknown[0], list(info.weights))} (list them: python "
                          f"tools/inspect_model.py -c {cfg.source} --weights)")


def _artifact_bytes(files: ModelFiles) -> int:
    """Room an INT8 install needs, with margin: twice the FP32 model."""
    return 2 * (files.program.stat().st_size + files.params.stat().st_size)


def _check_replaceable(cfg: DeployConfig, files: ModelFiles, images: Optional[str], final: Path, option: str,
                       legacy: tuple[str, ...]) -> Path:
    """``final`` may receive the artifacts: writable, with room, replacing only a folder the toolkit made (never
    the model, nor the calibration images)."""
    source = images or cfg.calibration.images
    keep = [files.program, files.params] + ([Path(source)] if source and Path(source).exists() else [])
    cache.check_replaceable(final, option, keep=keep, legacy=legacy, need_bytes=_artifact_bytes(files))
    return final


# ---------------------------------------------------------------- TensorRT: Paddle-TRT calibration mode


def _trt_destination(cfg: DeployConfig, files: ModelFiles, output_dir: Optional[Path], images: Optional[str]) -> Path:
    """Where Paddle-TRT reads tables (runtime.trt.cache_dir or _opt_cache): we only add table files there."""
    final = trt_table_dir(resolve_plan(cfg, quiet=True, calibrating=True))
    option = "runtime.trt.cache_dir" if cfg.runtime.trt.cache_dir else "_opt_cache"
    cache.check_output_dir(final, option, _artifact_bytes(files))
    return final


def _calibrate_trt(cfg: DeployConfig, files: ModelFiles, calib: CalibrationSet, table_dir: Path,
                   quiet: bool) -> CalibrationResult:
    plan = resolve_plan(cfg, quiet=True, calibrating=True)
    scratch = cache.staging_dir(cache.opt_cache_dir(files) / "trt_calibration")
    try:
        # Calibrate a copy: Paddle writes the table under the model dir of the predictor, and we only move it
        # beside the real model once it is complete. Engine keys hash tensor names, not paths.
        copy = ModelFiles(scratch / files.program.name, scratch / files.params.name)
        shutil.copy2(files.program, copy.program)
        shutil.copy2(files.params, copy.params)
        # Tuned shape ranges stay those collected beside the real model, not beside the scratch copy.
        shapes = replace(plan.runtime.trt.dynamic_shape, shape_file=shape_file(plan))
        calib_runtime = replace(plan.runtime, trt=replace(plan.runtime.trt, cache_dir=None, use_static=False,
                                                          dynamic_shape=shapes))
        calib_plan = replace(plan, model=copy, runtime=calib_runtime)
        with Predictor(calib_plan) as predictor:
            for feeds in tqdm(calib.feeds(predictor.input_names), total=len(calib.batches), disable=quiet,
                              unit="batch", desc="trt calibration"):
                predictor.run(feeds)
        # Leaving the with-block destroyed the predictor: only now has Paddle-TRT written the table.
        tables = [p for p in sorted((scratch / "_opt_cache").glob(f"{cache.TRT_TABLE_PREFIX}*"))
                  if p.stat().st_size > 0]
        if not tables:
            raise CalibrationError(
                f"Paddle-TRT wrote no calibration table after {len(calib.batches)} batches. Known causes: no op "
                "ran in a TensorRT subgraph (lower runtime.trt.min_subgraph_size, check runtime.trt.disabled_ops),"
                " the predictor was not destroyed, or the GPU ran out of memory")
        installed = [table_dir / t.name for t in tables]
        staged = [cache.stage_file(dst, src.read_bytes()) for src, dst in zip(tables, installed)]
        entry = _manifest_entry(cfg, files, calib, "trt", "tensorrt-entropy", "trt", table_dir, tables)
        manifest = cache.manifest_path(files)
        cache.install(manifest, list(zip(staged, installed)), ("trt", cache.new_entry(entry)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("wrote TensorRT calibration table %s", ", ".join(str(p) for p in installed))
    return CalibrationResult("trt", installed, manifest, calib.count, 0.0)


# ---------------------------------------------------------------- CPU: post-training quantization for oneDNN


def cpu_int8_dir(cfg: DeployConfig, files: ModelFiles, output_dir: Optional[Path] = None) -> Path:
    """Where the CPU quantized model goes: calibration.output_dir, else <model dir>/_opt_cache/int8_cpu."""
    return output_dir or cfg.calibration.output_dir or cache.opt_cache_dir(files) / "int8_cpu"


def _conv_matmul_only_quantizer(op_types: list[str]) -> Any:
    """Paddle's PTQ config minus 'observer' ops: scales only for the inputs of conv/matmul ops.

    The default BaseQuantizer also observes every other op (bias add, relu, pool, reshape...) and exports a
    quantize/dequantize pair after each. On LeNet those pairs keep oneDNN from fusing conv+bias+relu and cost
    about 5% of INT8 throughput (1.25x -> 1.30x FP32 at batch 64, same accuracy). On models whose other ops
    oneDNN also runs in INT8 (PP-OCR cls: hard_swish, SE blocks) the missing scales cost accuracy, so this is
    opt-in per model: calibration.observe_all_ops: false.
    """
    from paddle.static.quantization.quant_config import BaseQuantizer

    class OneDNNQuantizer(BaseQuantizer):
        @property
        def observer_operation_types(self) -> list[str]:
            return []

    return OneDNNQuantizer(quantizable_op_type=op_types, quant_bits=8)


def image_convs(files: ModelFiles) -> list[str]:
    """Filters of convs that read fewer than 4 channels (the image itself).

    On LeNet (1 channel), keeping it in FP32 saves quantizing the image and took INT8 from 1.27x to 1.31x FP32
    throughput at batch 64, same accuracy; on PP-OCR cls (3 channels) it breaks the INT8 chain (1.19x ->
    1.02x). So it is opt-in per model: calibration.keep_image_conv_fp32: true.
    """
    return [name for name, (op, dims) in inspect_model(files).weights.items()
            if op in ("conv2d", "depthwise_conv2d") and len(dims) == 4 and dims[1] < 4]


def _quantize_post_static(files: ModelFiles, calib: CalibrationSet, settings: CalibrationConfig, out_dir: Path,
                          quiet: bool, skip: list[str]) -> None:
    """PaddleSlim's quant_post_static, unrolled: the same PostTrainingQuantization it wraps, with our quantizer."""
    import paddle
    from paddle.static.quantization import PostTrainingQuantization

    input_names = [spec.name for spec in inspect_model(files).inputs]
    algo, op_types = settings.algo, list(settings.quantize_op_types)

    def loader() -> Iterator[dict]:
        yield from tqdm(calib.feeds(input_names), total=len(calib.batches), disable=quiet, unit="batch",
                        desc=f"quantize ({algo})", leave=False)

    paddle.enable_static()
    quiet_output = native_stderr_to_log() if quiet else contextlib.nullcontext()
    try:
        # PTQ runs in the global scope; a fresh one per call keeps repeated calibrations independent.
        with quiet_output, paddle.static.scope_guard(paddle.static.Scope()):
            ptq = PostTrainingQuantization(
                executor=paddle.static.Executor(paddle.CPUPlace()), model_dir=str(files.dir),
                model_filename=files.program.name, params_filename=files.params.name, data_loader=loader,
                batch_size=calib.batches[0].array.shape[0], batch_nums=len(calib.batches), algo=algo,
                quantizable_op_type=op_types, weight_quantize_type="channel_wise_abs_max",
                onnx_format=True, skip_tensor_list=skip or None)
            if not settings.observe_all_ops and hasattr(ptq, "quant_config"):  # Paddle >= 2.6 keeps it here
                ptq.quant_config = _conv_matmul_only_quantizer(op_types)
            ptq.quantize()
            ptq.save_quantized_model(str(out_dir), model_filename="inference.pdmodel",
                                     params_filename="inference.pdiparams")
    finally:
        paddle.disable_static()


def _cpu_destination(cfg: DeployConfig, files: ModelFiles, output_dir: Optional[Path], images: Optional[str]) -> Path:
    return _check_replaceable(cfg, files, images, cpu_int8_dir(cfg, files, output_dir).absolute(),
                              "--output-dir" if output_dir else "calibration.output_dir",
                              ("scales.json", "inference.pdmodel", "inference.pdiparams"))


def _calibrate_cpu(cfg: DeployConfig, files: ModelFiles, calib: CalibrationSet, final: Path,
                   quiet: bool) -> CalibrationResult:
    algo = cfg.calibration.algo
    with cache.staged_dir(final, "int8_cpu") as staged:
        skip = (image_convs(files) if cfg.calibration.keep_image_conv_fp32 else []) + cfg.calibration.skip_tensors
        _quantize_post_static(files, calib, cfg.calibration, staged, quiet, skip)
        quantized = ModelFiles(staged / "inference.pdmodel", staged / "inference.pdiparams")
        scales = quant_scales(quantized)
        cache.atomic_write_json(staged / "scales.json", scales)
        artifacts = [quantized.program, quantized.params, staged / "scales.json"]
        entry = {**_manifest_entry(cfg, files, calib, "cpu", algo, "paddle-ptq-onednn", final, artifacts),
                 "fp32_tensors": skip, "observe_all_ops": cfg.calibration.observe_all_ops,
                 "quantize_op_types": cfg.calibration.quantize_op_types}
        manifest = cache.manifest_path(files)
        cache.install(manifest, [(staged, final)], ("cpu", cache.new_entry(entry)))
    installed = [final / p.name for p in artifacts]
    log.info("wrote quantized model %s (%d tensors with scales)", final, len(scales))
    return CalibrationResult("cpu", installed, manifest, calib.count, 0.0)



# ---------------------------------------------------------------- OpenVINO: NNCF post-training quantization


def openvino_int8_dir(files: ModelFiles) -> Path:
    """Where the NNCF-quantized OpenVINO IR goes: <model dir>/_opt_cache/int8_openvino."""
    return cache.opt_cache_dir(files) / "int8_openvino"


def _nncf_quantize(files: ModelFiles, calib: CalibrationSet, settings: NncfConfig, out_xml: Path,
                   quiet: bool) -> None:
    """nncf.quantize over the calibration feeds (the same batches as every other target), saved as IR."""
    import nncf

    model = read_program(files.program)
    input_names = [port.get_any_name() for port in model.inputs]
    feeds = list(tqdm(calib.feeds(input_names), total=len(calib.batches), disable=quiet, unit="batch",
                      desc="feeds", leave=False))
    ignored = (nncf.IgnoredScope(names=list(settings.ignored_scope), types=list(settings.ignored_types))
               if settings.ignored_scope or settings.ignored_types else None)
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    with contextlib.ExitStack() as stack:
        if quiet:  # NNCF draws its own progress bars on stdout
            nncf.set_log_level(logging.ERROR)
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(native_stderr_to_log())
        quantized = nncf.quantize(model, nncf.Dataset(feeds), preset=preset[settings.preset],
                                  fast_bias_correction=settings.fast_bias_correction, subset_size=len(feeds),
                                  **({"ignored_scope": ignored} if ignored else {}))
    write_ir(quantized, out_xml)


def _openvino_destination(cfg: DeployConfig, files: ModelFiles, output_dir: Optional[Path],
                          images: Optional[str]) -> Path:
    return _check_replaceable(cfg, files, images, openvino_int8_dir(files), "_opt_cache/int8_openvino",
                              ("model.xml", "model.bin"))


def _calibrate_openvino(cfg: DeployConfig, files: ModelFiles, calib: CalibrationSet, final: Path,
                        quiet: bool) -> CalibrationResult:
    with cache.staged_dir(final, "int8_openvino") as staged:
        _nncf_quantize(files, calib, cfg.calibration.nncf, staged / "model.xml", quiet)
        artifacts = [staged / "model.xml", staged / "model.bin"]
        entry = {**_manifest_entry(cfg, files, calib, "openvino", "nncf", "openvino", final, artifacts),
                 "nncf": dataclasses.asdict(cfg.calibration.nncf)}
        manifest = cache.manifest_path(files)
        cache.install(manifest, [(staged, final)], ("openvino", cache.new_entry(entry)))
    installed = [final / p.name for p in artifacts]
    log.info("wrote OpenVINO INT8 model %s", final)
    return CalibrationResult("openvino", installed, manifest, calib.count, 0.0)


# backend -> (where its artifacts go, checked before the work; the calibration that writes them there)
_TARGETS = {"trt": (_trt_destination, _calibrate_trt), "openvino": (_openvino_destination, _calibrate_openvino),
            "paddle": (_cpu_destination, _calibrate_cpu)}
