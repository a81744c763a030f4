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
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from deploy import cache
from deploy.config.loader import CalibrationConfig, DeployConfig, NncfConfig
from deploy.data.sources import Batch, ImageItem, group_batches, list_images, load_images, seeded_order
from deploy.env import default_device, probe, support_reason
from deploy.config.schema import closest_key
from deploy.errors import CalibrationError, ConfigError, DataError, UnsupportedError
from deploy.engines.model import LAYER_OPS, ModelFiles, ensure_model, inspect_model, quant_scales, tensor_readers
from deploy.engines.openvino import read_program, write_ir
from deploy.engines.paddle import Predictor, native_stderr_to_log
from deploy.engines.plan import (QDQ_SHAPE_FILE, TRT_EXPLICIT_TARGET, PredictorPlan, check_shape_file, resolve_plan,
                                 shape_file, trt_int8, trt_table_dir)
from deploy.data.pipeline import ImagePipeline, ops_fingerprint
from deploy.int8.check import (WARN_POINTS, Scorer, candidate_plan, check_line, fp32_plan, load_check_set,
                                reference_scorer)
from deploy.int8.layers import QuantizedModel
from deploy.int8.search import RANK_IMAGES, Trial, search_layers
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
    """What a calibration produced, and what its check and accuracy budget found."""

    target: str  # "cpu", "trt" or "openvino"
    artifacts: list[Path]
    manifest: Path
    images: int
    seconds: float
    lines: list[str] = dataclasses.field(default_factory=list)  # the check's and the search's report lines


@dataclass
class Produced:
    """A calibration's artifacts in their staging dir: the model to run, the files and the manifest entry."""

    model: ModelFiles
    artifacts: list[Path]
    entry: dict


@dataclass
class Checked:
    """What the check (and the search, with a budget) found: report lines, the manifest record, and whether
    the result may be installed."""

    lines: list[str]
    record: dict
    installable: bool = True
    refusal: str = ""


def sample_images(cfg: DeployConfig, source: Optional[str] = None) -> list[ImageItem]:
    """All candidate images in a deterministic, seeded order."""
    source = source or cfg.calibration.images
    if source is None:
        raise DataError("no calibration images: set calibration.images (a folder, glob or list file) "
                        "or pass --images")
    return seeded_order(list_images(source), cfg.calibration.seed)


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


def _target(cfg: DeployConfig) -> str:
    """What the calibration writes (a key of _TARGETS), after checking it can be made here: TensorRT's Q/DQ model
    (explicit quantization) is written by PaddleSlim on the CPU, every other INT8 calibration needs its engine."""
    env = probe()
    backend = cfg.runtime.backend
    if backend == "trt" and trt_int8(cfg, env) == "explicit":
        return TRT_EXPLICIT_TARGET
    device = default_device(env) if cfg.runtime.device == "auto" else cfg.runtime.device
    reason = support_reason(env, device, backend, "int8")
    if reason:
        hint = ("; TensorRT's explicit-quantization (Q/DQ) model needs no GPU to make: add -o "
                "runtime.trt.int8_mode=explicit" if backend == "trt" else "")
        raise UnsupportedError(f"cannot calibrate for {device}/{backend}/int8 here: {reason}{hint}")
    return backend


def _check_config(cfg: DeployConfig, key: str) -> DeployConfig:
    """The config the check and the search run: TensorRT's Q/DQ model is scored on the CPU (its Q/DQ ops simulated
    in FP32, see _check), the same on every machine; TensorRT's own INT8 is measured by tools/eval.py on a GPU."""
    if key != TRT_EXPLICIT_TARGET:
        return cfg
    runtime = replace(cfg.runtime, device="cpu", backend="paddle", paddle=replace(cfg.runtime.paddle, onednn=True))
    return replace(cfg, runtime=runtime)


def calibrate(cfg: DeployConfig, *, images: Optional[str] = None, num_images: Optional[int] = None,
              allow_fewer: Optional[bool] = None, output_dir: Optional[Path] = None, quiet: bool = False,
              check: bool = True) -> CalibrationResult:
    """Calibrate the config's model for INT8 on its device: a TRT table on GPU, a quantized model on CPU. Then
    (``check``, and calibration.check_num > 0) score INT8 against FP32 on check images, and with
    calibration.max_drop keep layers FP32 until the drop fits; an over-budget result is not installed."""
    if num_images is not None and num_images < 1:
        raise ConfigError(f"--num-images {num_images}: expected a positive number of calibration images, e.g. 500")
    cfg = replace(cfg, runtime=replace(cfg.runtime, precision="int8"))
    key = _target(cfg)
    if key == "trt" and cfg.calibration.max_drop is not None:
        raise ConfigError("--max-drop searches on a quantized model: for TensorRT add -o runtime.trt.int8_mode=explicit "
                          "(a Q/DQ model), or calibrate on a CPU engine with --max-drop and put the "
                          "calibration.skip_tensors it prints in this config (Paddle-TRT keeps those layers out of "
                          "TensorRT)")
    files = ensure_model(cfg.model, quiet=quiet)
    _check_calibratable(cfg, files)
    if key == TRT_EXPLICIT_TARGET and cfg.runtime.trt.dynamic_shape.mode == "tuned":
        # The Q/DQ model's shape ranges are derived from the model's: collected first, as for implicit calibration.
        check_shape_file(cfg, PredictorPlan("gpu", "trt", "int8", files, cfg.runtime))
    destination, produce = _TARGETS[key]
    # Everything that can fail is checked before the long work: where the artifacts go, the manifest.
    final = destination(cfg, files, output_dir, images)
    cache.prepare_install(files, final)
    calib = load_calibration_set(cfg, source=images, num_images=num_images, allow_fewer=allow_fewer, quiet=quiet)
    start = time.perf_counter()
    if key == "trt":  # Paddle-TRT reads its table from beside the model: checked once installed
        result = _calibrate_trt(cfg, files, calib, final, quiet)
        result.seconds = time.perf_counter() - start
        if check:
            result.lines = _check(cfg, files, calib, None, final, quiet).lines
        return result
    target, kind = _KINDS[key]
    manifest = cache.manifest_path(files)
    with cache.staged_dir(final, kind) as staged:
        produced = produce(cfg, files, calib, staged, final, quiet)
        seconds = time.perf_counter() - start
        explicit = key == TRT_EXPLICIT_TARGET
        checked = (_check(_check_config(cfg, key), files, calib, produced, final, quiet, simulated=explicit)
                   if check else Checked([], {}))
        if checked.lines and explicit:
            checked.lines.append("(the TensorRT Q/DQ model is scored on the CPU with its Q/DQ ops run in FP32: the INT8 "
                                 "rounding TensorRT applies at each of them, not TensorRT's kernels; on a GPU, "
                                 "tools/eval.py scores TensorRT's INT8)")
        if not checked.installable:
            raise CalibrationError(checked.refusal)
        entry = {**produced.entry, **checked.record}
        cache.install(manifest, [(staged, final)], (target, cache.new_entry(entry)))
    installed = [final / p.name for p in produced.artifacts]
    log.info("installed INT8 model %s", final)
    return CalibrationResult(target, installed, manifest, calib.count, seconds, checked.lines)


def _check(cfg: DeployConfig, files: ModelFiles, calib: CalibrationSet, produced: Optional[Produced], final: Path,
           quiet: bool, *, simulated: bool = False) -> Checked:
    """Score INT8 against FP32 on the check set; with a budget over which INT8 lost, restore FP32 layers in the
    staged artifacts (``produced``) until it fits. ``produced`` None: the installed artifacts (TensorRT's table).
    ``simulated``: the candidates run their Q/DQ ops in FP32 (TensorRT's Q/DQ model on the CPU)."""
    check_set = load_check_set(cfg, calib.task, calib.source, calib.items, quiet=quiet)
    if check_set is None:
        return Checked([], {})
    reference = fp32_plan(cfg)
    scorer = reference_scorer(calib.task, check_set, reference, quiet=quiet, simulated=simulated)
    plan = (resolve_plan(cfg, quiet=True) if produced is None
            else candidate_plan(reference, produced.model, simulated=simulated))
    value, results = scorer.run(plan, quiet=quiet, desc="check int8")
    drop = scorer.drop(value)
    lines = [check_line(scorer, results)]
    record = {"check": {**check_set.to_json(), **scorer.to_json(), "int8": round(value, 6), "drop_points": drop}}
    budget = cfg.calibration.max_drop
    if budget is None:
        if drop > WARN_POINTS:
            log.warning("INT8 loses %.2f pt of %s on the check images; calibrate with --max-drop POINTS to keep "
                        "the layers that lose it in FP32", drop, scorer.header)
        return Checked(lines, record)
    if drop <= budget + 1e-9:
        lines.append(f"within --max-drop {budget:g} ({drop:+.2f} pt): no layer kept FP32, no search")
        record["budget"] = {"max_drop": budget, "within": True, "drop_before": drop, "int8_before": round(value, 6),
                            "kept_fp32": [], "trials": 0, "seconds": 0.0, "method": "none"}
        return Checked(lines, record)
    assert produced is not None  # TensorRT refused --max-drop up front
    restore = _RESTORERS[cfg.runtime.backend]
    found = restore(cfg, files, calib, produced, scorer, reference, value, final, quiet)
    found.update({"max_drop": budget, "drop_before": drop, "int8_before": round(value, 6)})
    record["budget"] = found
    record["check"].update(int8=found["int8"], drop_points=found["drop_points"])
    kept = found["kept_fp32"]
    summary = (f"{len(kept)} of {found['layers']} quantized layers kept FP32: {scorer.header} drop "
               f"{drop:+.2f} -> {found['drop_points']:+.2f} pt (budget {budget:g}) in {found['trials']} trials, "
               f"{found['seconds']:.0f} s")
    lines += [summary, "reproduce with: " + found["config_line"]]
    if found["within"]:
        return Checked(lines, record)
    if cfg.calibration.accept_best:
        found["accepted_over_budget"] = True
        lines.append(f"over budget, installed anyway (--accept-best): {found['drop_points']:+.2f} pt")
        return Checked(lines, record)
    refusal = (f"no INT8 model within --max-drop {budget:g} in {found['trials']} trials: the best loses "
               f"{found['drop_points']:.2f} pt of {scorer.header} with {len(kept)} layers FP32 "
               f"({found['config_line']}); nothing installed: raise --max-drop or --max-trials, or pass "
               "--accept-best to install it")
    return Checked(lines, record, installable=False, refusal=refusal)


def _check_calibratable(cfg: DeployConfig, files: ModelFiles) -> None:
    """A classic, not yet quantized program, and every calibration.skip_tensors name a layer of it (a weight, or an
    input of a conv / matmul)."""
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
    # A layer is named by its weight, or (a matmul of two activations) by an input only it reads.
    readers = tensor_readers(files, [n for n in cfg.calibration.skip_tensors if n not in info.weights])
    unknown = [name for name, uses in readers.items() if not any(use.type in LAYER_OPS for use in uses)]
    if unknown:
        raise ConfigError(f"calibration.skip_tensors: '{unknown[0]}' is neither a weight nor an input of a conv / "
                          f"matmul of {files.program}; "
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
        entry = {**_manifest_entry(cfg, files, calib, "trt", "tensorrt-entropy", "trt", table_dir, tables),
                 "fp32_tensors": list(cfg.calibration.skip_tensors)}  # the subgraphs the table was made for
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


def _produce_cpu(cfg: DeployConfig, files: ModelFiles, calib: CalibrationSet, staged: Path, final: Path,
                 quiet: bool) -> Produced:
    algo = cfg.calibration.algo
    skip = (image_convs(files) if cfg.calibration.keep_image_conv_fp32 else []) + cfg.calibration.skip_tensors
    _quantize_post_static(files, calib, cfg.calibration, staged, quiet, skip)
    quantized = ModelFiles(staged / "inference.pdmodel", staged / "inference.pdiparams")
    artifacts = _write_scales(quantized)
    entry = {**_manifest_entry(cfg, files, calib, "cpu", algo, "paddle-ptq-onednn", final, artifacts),
             "fp32_tensors": skip, "observe_all_ops": cfg.calibration.observe_all_ops,
             "quantize_op_types": cfg.calibration.quantize_op_types}
    return Produced(quantized, artifacts, entry)


def _write_scales(quantized: ModelFiles) -> list[Path]:
    """scales.json beside a quantized model (what tools/inspect_model.py and the report show); the artifacts."""
    scales = quant_scales(quantized)
    cache.atomic_write_json(quantized.dir / "scales.json", scales)
    log.info("quantized model %s has %d tensors with scales", quantized.dir, len(scales))
    return [quantized.program, quantized.params, quantized.dir / "scales.json"]


def _restore_cpu(cfg: DeployConfig, files: ModelFiles, calib: CalibrationSet, produced: Produced, scorer: Scorer,
                 reference: PredictorPlan, value: float, final: Path, quiet: bool) -> dict:
    """The layer search (search.py) on the staged PTQ model; the model it settles on replaces the staged one."""
    settings = cfg.calibration
    scratch = cache.staging_dir(final)
    try:
        int8 = Trial(frozenset(), value, scorer.drop(value))
        found, model = search_layers(produced.model, files, reference, scorer, int8, settings.max_drop,
                                     settings.max_trials, scratch, quiet=quiet)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    model.save(found.best.fp32, produced.model.dir)
    produced.artifacts = list(dict.fromkeys(_write_scales(produced.model) + produced.artifacts))  # + shape ranges
    kept = found.kept_fp32()
    produced.entry["fp32_tensors"] = produced.entry["fp32_tensors"] + [layer.name for layer in kept]
    produced.entry["artifacts"]["files"] = cache.artifact_fingerprint(produced.artifacts)
    skip = list(settings.skip_tensors) + [layer.name for layer in kept]
    return {"method": "paddle-layer-search", "within": found.within, "int8": round(found.best.value, 6),
            "drop_points": found.best.drop, "layers": len(found.layers), "kept_fp32": [layer.name for layer in kept],
            "kept_fp32_layers": [layer.to_json() for layer in kept], "trials": found.trials,
            "seconds": round(found.seconds, 1), "sensitivity": found.sensitivity, "op_types": found.op_types,
            "config_line": f"calibration.skip_tensors: [{', '.join(skip)}]"}


# ---------------------------------------------------------------- TensorRT: a Q/DQ model for explicit quantization


def trt_qdq_dir(files: ModelFiles, output_dir: Optional[Path] = None) -> Path:
    """Where the TensorRT Q/DQ model goes: --output-dir, else <model dir>/_opt_cache/int8_trt_qdq."""
    return output_dir or cache.opt_cache_dir(files) / "int8_trt_qdq"


def _trt_qdq_destination(cfg: DeployConfig, files: ModelFiles, output_dir: Optional[Path],
                         images: Optional[str]) -> Path:
    return _check_replaceable(cfg, files, images, trt_qdq_dir(files, output_dir).absolute(),
                              "--output-dir" if output_dir else "_opt_cache/int8_trt_qdq", ())


def trt_qdq_settings(settings: CalibrationConfig) -> CalibrationConfig:
    """PaddleSlim PTQ settings for the Q/DQ placement TensorRT expects: quantize_linear / dequantize_linear on the
    inputs of conv / matmul ops only (weights per channel, activations per tensor), none after other ops, which
    TensorRT fuses or runs in INT8 where it can on its own."""
    op_types = [op for op in settings.quantize_op_types if op in LAYER_OPS]
    if not op_types:
        raise ConfigError(f"calibration.quantize_op_types {settings.quantize_op_types} has no conv / matmul op type, "
                          f"and TensorRT's Q/DQ model quantizes only those; add some of {sorted(LAYER_OPS)}")
    return replace(settings, quantize_op_types=op_types, observe_all_ops=False)


_SHAPE_ENTRY = re.compile(r'shape_range_info\s*\{[^{}]*?name:\s*"([^"]*)"[^{}]*\}')


def _qdq_shape_ranges(source: Path, quantized: ModelFiles, out: Path) -> None:
    """The model's tuned shape ranges plus one per tensor the Q/DQ ops add (each the shape of the tensor it
    quantizes), so TensorRT finds every tensor of the Q/DQ model in the file."""
    text = source.read_text()
    bodies = {m.group(1): m.group(0) for m in _SHAPE_ENTRY.finditer(text)}
    added: dict[str, str] = {}
    frontier = list(bodies)
    while frontier:  # a dequantize_linear reads a quantize_linear's output: two rounds
        readers = tensor_readers(quantized, frontier)
        frontier = []
        for name, uses in readers.items():
            for use in uses:
                if use.type in ("quantize_linear", "dequantize_linear") and use.slot == "X":
                    for quantized_name in use.outputs.get("Y", ()):
                        if quantized_name not in bodies and quantized_name not in added:
                            body = bodies.get(name) or added[name]
                            added[quantized_name] = body.replace(f'"{name}"', f'"{quantized_name}"', 1)
                            frontier.append(quantized_name)
    cache.atomic_write_text(out, text.rstrip("\n") + "\n" + "".join(body + "\n" for body in added.values()))
    log.info("shape ranges for the Q/DQ model: %d tensors of %s plus %d Q/DQ outputs", len(bodies), source,
             len(added))


def _produce_trt_qdq(cfg: DeployConfig, files: ModelFiles, calib: CalibrationSet, staged: Path, final: Path,
                     quiet: bool) -> Produced:
    """PaddleSlim PTQ (onnx_format) into a Q/DQ model for enable_tensorrt_explicit_quantization; with tuned dynamic
    shapes, its shape ranges beside it."""
    settings = trt_qdq_settings(cfg.calibration)
    skip = list(cfg.calibration.skip_tensors)
    _quantize_post_static(files, calib, settings, staged, quiet, skip)
    quantized = QuantizedModel(ModelFiles(staged / "inference.pdmodel", staged / "inference.pdiparams"),
                               files).save((), staged, layer_inputs_only=True)
    artifacts = _write_scales(quantized)
    extra: dict = {}
    if cfg.runtime.trt.dynamic_shape.mode == "tuned":
        source = check_shape_file(cfg, PredictorPlan("gpu", "trt", "int8", files, cfg.runtime))
        _qdq_shape_ranges(source, quantized, staged / QDQ_SHAPE_FILE)
        artifacts.append(staged / QDQ_SHAPE_FILE)
        extra["shape_source"] = {"path": str(source), "sha256": cache.sha256_file(source)}
    entry = {**_manifest_entry(cfg, files, calib, TRT_EXPLICIT_TARGET, settings.algo, "paddle-ptq-trt-qdq", final,
                               artifacts),
             "fp32_tensors": skip, "quantize_op_types": settings.quantize_op_types, **extra}
    return Produced(quantized, artifacts, entry)


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


def _produce_openvino(cfg: DeployConfig, files: ModelFiles, calib: CalibrationSet, staged: Path, final: Path,
                      quiet: bool) -> Produced:
    _nncf_quantize(files, calib, cfg.calibration.nncf, staged / "model.xml", quiet)
    artifacts = [staged / "model.xml", staged / "model.bin"]
    entry = {**_manifest_entry(cfg, files, calib, "openvino", "nncf", "openvino", final, artifacts),
             "nncf": dataclasses.asdict(cfg.calibration.nncf)}
    return Produced(ModelFiles(artifacts[0], artifacts[1]), artifacts, entry)


class _NncfReport(logging.Handler):
    """What NNCF's accuracy control logs about its result: how many operations it quantized and which it
    reverted to FP32 (NNCF's own node names; the algorithm keeps them in its report object only)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.total: Optional[int] = None
        self.reverted: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("Total number of quantized operations in the model:"):
            self.total = int(text.rsplit(":", 1)[1])
        elif "were reverted back to the floating-point precision:" in text:
            self.reverted = [line.strip() for line in text.splitlines()[1:] if line.strip()]


class _CompiledEngine:
    """An OpenVINO compiled model as a task engine (what NNCF's validation function is given)."""

    def __init__(self, compiled: Any):
        self._compiled = compiled
        self.input_names = [port.get_any_name() for port in compiled.inputs]
        self.output_names = [port.get_any_name() for port in compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._compiled(feeds)
        return {name: np.array(outputs[port]) for name, port in zip(self.output_names, self._compiled.outputs)}


def _restore_openvino(cfg: DeployConfig, files: ModelFiles, calib: CalibrationSet, produced: Produced,
                      scorer: Scorer, reference: PredictorPlan, value: float, final: Path, quiet: bool) -> dict:
    """nncf.quantize_with_accuracy_control with the task's metric (or agreement) as its validation function;
    the operations it reverted to FP32 are those its own report names (logged; captured by _NncfReport)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    settings = cfg.calibration
    start = time.perf_counter()
    model = read_program(files.program)
    input_names = [port.get_any_name() for port in model.inputs]
    feeds = list(calib.feeds(input_names))
    batches = scorer.check.eval_set.batches
    offsets = np.cumsum([0] + [len(b.items) for b in batches])
    calls = []

    def validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
        engine = _CompiledEngine(compiled)
        results, per_item, indices = [], [], []
        for index in items:
            batch = batches[index]
            got = scorer.task.predict(engine, batch)
            span = list(range(offsets[index], offsets[index + 1]))
            per_item.append(scorer.value_on(got, span))
            results.extend(got)
            indices.extend(span)
        calls.append(len(indices) == len(scorer.reference))  # a whole-set validation: one trial
        return scorer.value_on(results, indices), per_item

    ignored = (nncf.IgnoredScope(names=list(settings.nncf.ignored_scope), types=list(settings.nncf.ignored_types))
               if settings.nncf.ignored_scope or settings.nncf.ignored_types else None)
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    # NNCF ranks every quantizer group on a subset of the check batches (those INT8 differs on most); the same
    # number of images as the Paddle search ranks on keeps that affordable on long inputs (hard-set lines).
    ranking = int(np.searchsorted(offsets[1:], RANK_IMAGES)) + 1
    restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=settings.max_trials, num_ranking_workers=1,
                                                  ranking_subset_size=min(ranking, len(batches)))
    report = _NncfReport()
    nncf_log = logging.getLogger("nncf")
    with contextlib.ExitStack() as stack:
        levels = {h: h.level for h in nncf_log.handlers}
        stack.callback(lambda level=nncf_log.level: nncf_log.setLevel(level))
        stack.callback(lambda: [h.setLevel(level) for h, level in levels.items()])
        nncf_log.setLevel(logging.INFO)  # our handler needs the INFO lines, even after a quiet nncf.quantize
        nncf_log.addHandler(report)
        stack.callback(nncf_log.removeHandler, report)
        if quiet:  # NNCF's own handlers print ERROR only
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(native_stderr_to_log())
            for handler in levels:
                handler.setLevel(logging.ERROR)
        quantized = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(feeds), nncf.Dataset(list(range(len(batches)))), validate,
            max_drop=settings.max_drop / 100, drop_type=nncf.DropType.ABSOLUTE, preset=preset[settings.nncf.preset],
            fast_bias_correction=settings.nncf.fast_bias_correction, subset_size=len(feeds),
            advanced_accuracy_restorer_parameters=restorer, **({"ignored_scope": ignored} if ignored else {}))
    kept = {name: _node_type(quantized, name) for name in report.reverted}
    write_ir(quantized, produced.model.program)
    produced.entry["artifacts"]["files"] = cache.artifact_fingerprint(produced.artifacts)
    produced.entry["nncf"]["accuracy_control_ignored"] = sorted(kept)
    # Our own measurement of what is installed (NNCF's is on the same images, in its own loop).
    final_value, _ = scorer.run(candidate_plan(reference, produced.model), quiet=True)
    drop = scorer.drop(final_value)
    names = list(settings.nncf.ignored_scope) + sorted(kept)
    return {"method": "nncf-accuracy-control", "within": drop <= settings.max_drop + 1e-9,
            "int8": round(final_value, 6), "drop_points": drop, "layers": report.total,
            "kept_fp32": sorted(kept), "kept_fp32_layers": [{"name": n, "op_type": t} for n, t in sorted(kept.items())],
            "trials": sum(calls), "seconds": round(time.perf_counter() - start, 1), "sensitivity": [],
            "op_types": [], "config_line": f"calibration.nncf.ignored_scope: [{', '.join(names)}]"}


def _node_type(model: Any, name: str) -> str:
    """The op type of the node named ``name`` in an OpenVINO model ("?" if NNCF renamed it)."""
    return next((op.get_type_name() for op in model.get_ops() if op.get_friendly_name() == name), "?")


# backend -> (where its artifacts go, checked before the work; the calibration that writes them there)
_TARGETS = {"trt": (_trt_destination, _calibrate_trt), TRT_EXPLICIT_TARGET: (_trt_qdq_destination, _produce_trt_qdq),
            "openvino": (_openvino_destination, _produce_openvino), "paddle": (_cpu_destination, _produce_cpu)}
# -> (manifest target, staged folder kind); the check's backend -> what restores FP32 layers within a budget
_KINDS = {"openvino": ("openvino", "int8_openvino"), "paddle": ("cpu", "int8_cpu"),
          TRT_EXPLICIT_TARGET: (TRT_EXPLICIT_TARGET, "int8_trt_qdq")}
_RESTORERS = {"openvino": _restore_openvino, "paddle": _restore_cpu}
