"""Quantization-aware training (PaddleSlim dygraph QAT) from FP32 weights, exported as a classic-format
quantized inference model that the toolkit then runs in INT8 without any calibration."""
from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from deploy import cache
from deploy.config.loader import DeployConfig, QatConfig
from deploy.data.sources import ImageItem, iter_batches, list_images
from deploy.errors import ConfigError, DataError, ModelError
from deploy.engines.model import ModelFiles, run_build_script, inspect_model
from deploy.data.pipeline import ImagePipeline
from deploy.tasks.classification import ClassificationTask

log = logging.getLogger(__name__)
# What a QAT export folder holds (qat.json first: only we write it); an older export without our marker is
# recognised by these names alone.
QAT_FILES = ("qat.json", "inference.pdmodel", "inference.pdiparams", "inference.pdiparams.info")
QAT_CONFIG = {"weight_quantize_type": "channel_wise_abs_max",
              "activation_quantize_type": "moving_average_abs_max",
              "quantizable_layer_type": ["Conv2D", "Linear"], "onnx_format": True}


@dataclass
class QatResult:
    """Accuracy before/after QAT (fake-quant, in dygraph) and where the model went."""

    model: ModelFiles
    accuracy_before: float
    accuracy_after: float
    seconds: float


def _require(qc: QatConfig, *names: str) -> None:
    missing = [n for n in names if getattr(qc, n) is None]
    if missing:
        raise ConfigError(f"QAT needs qat.{', qat.'.join(missing)} in the config")


def load_network_class(path: Path, class_name: str) -> type:
    """Import ``class_name`` from the Python file ``path``."""
    if not path.is_file():
        raise ConfigError(f"qat.network_file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"qat_network_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, class_name):
        raise ConfigError(f"{path} defines no class '{class_name}' (qat.network_class)")
    return getattr(module, class_name)


def _labelled_arrays(source: Path, cfg: DeployConfig, quiet: bool, desc: str) -> tuple[np.ndarray, np.ndarray]:
    items = [i for i in list_images(source, ClassificationTask(cfg)) if i.label is not None]
    if not items:
        raise DataError(f"{source} has no labelled images (put them in one sub-folder per class)")
    pipeline = ImagePipeline(cfg.preprocess)
    arrays, labels = [], []
    skipped: list[ImageItem] = []
    with tqdm(total=len(items), disable=quiet, unit="img", desc=desc) as bar:
        for batch in iter_batches(items, pipeline, 256, lambda item, e: skipped.append(item), bar.update):
            arrays.append(batch.array)
            labels.extend(i.label for i in batch.items)
    if skipped:
        log.warning("skipped %d unreadable images in %s", len(skipped), source)
    return np.concatenate(arrays), np.asarray(labels, dtype=np.int64)


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    import paddle

    model.eval()
    correct = 0
    with paddle.no_grad():
        for i in range(0, len(x), 500):
            logits = model(paddle.to_tensor(x[i:i + 500]))
            correct += int((logits.numpy().argmax(axis=1) == y[i:i + 500]).sum())
    return correct / len(y)


def _train(model: Any, x: np.ndarray, y: np.ndarray, qc: QatConfig, quiet: bool) -> None:
    import paddle

    optimizer = paddle.optimizer.Adam(learning_rate=qc.learning_rate, parameters=model.parameters())
    loss_fn = paddle.nn.CrossEntropyLoss()
    rng = np.random.default_rng(qc.seed)
    for epoch in range(1, qc.epochs + 1):
        model.train()
        order = rng.permutation(len(x))
        losses = []
        for i in tqdm(range(0, len(x), qc.batch_size), disable=quiet, unit="batch",
                      desc=f"qat epoch {epoch}/{qc.epochs}"):
            idx = order[i:i + qc.batch_size]
            loss = loss_fn(model(paddle.to_tensor(x[idx])), paddle.to_tensor(y[idx]))
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            losses.append(float(loss))
        log.info("qat epoch %d/%d: train loss %.4f", epoch, qc.epochs, float(np.mean(losses)))


def _fp32_network(qc: QatConfig, quiet: bool) -> Any:
    import paddle

    if not qc.weights.is_file() and qc.weights_build is not None:
        run_build_script(qc.weights_build, quiet)
    if not qc.weights.is_file():
        hint = f"; build them with: python {qc.weights_build}" if qc.weights_build else ""
        raise ModelError(f"FP32 weights not found: {qc.weights}{hint}")
    model = load_network_class(qc.network_file, qc.network_class)()
    state = paddle.load(str(qc.weights))
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise ModelError(f"{qc.weights} does not fit {qc.network_class}: missing {missing[:5]}")
    model.set_state_dict(state)
    return model


def run_qat(cfg: DeployConfig, *, quiet: bool = False) -> QatResult:
    """Fine-tune with fake quantization, export the quantized model to model.dir (atomically)."""
    import paddle
    from paddleslim import QAT

    qc = cfg.qat
    if cfg.task != ClassificationTask.name:
        raise ConfigError(f"tools/qat.py trains classifiers (labels = class ids), but {cfg.source} is task "
                          f"'{cfg.task}'; quantize it with PaddleSlim's QAT in its own training code and point "
                          "model.dir at the exported model")
    _require(qc, "network_file", "network_class", "weights", "train_images")
    if cfg.model.dir is None or cfg.data.images is None:
        raise ConfigError("QAT exports to model.dir and evaluates on data.images: set both in the config")
    _check_model_dir(cfg)
    start = time.perf_counter()
    paddle.seed(qc.seed)
    x_train, y_train = _labelled_arrays(qc.train_images, cfg, quiet, "load train")
    x_test, y_test = _labelled_arrays(cfg.data.images, cfg, quiet, "load test")
    model = _fp32_network(qc, quiet)
    before = _accuracy(model, x_test, y_test)
    log.info("FP32 top-1 before QAT: %.2f%% on %d images", 100 * before, len(y_test))
    QAT(config=QAT_CONFIG).quantize(model)
    _train(model, x_train, y_train, qc, quiet)
    after = _accuracy(model, x_test, y_test)
    log.info("fake-quant top-1 after QAT: %.2f%%", 100 * after)
    files = _export(cfg, model, x_train.shape[1:], {"accuracy_before": before, "accuracy_after": after,
                                                      "epochs": qc.epochs, "seed": qc.seed})
    return QatResult(files, before, after, time.perf_counter() - start)


def _check_model_dir(cfg: DeployConfig) -> None:
    """Before training: model.dir is new, empty, or an earlier QAT export (never the FP32 model, the weights or
    the images); a half-done export of a killed run is finished and dead runs' leftovers removed."""
    final = cfg.model.dir.absolute()
    cache.recover(final)
    cache.remove_dead_leftovers(final.parent, final.name)
    qc = cfg.qat
    keep = [p for p in (qc.weights, qc.train_images, cfg.data.images, qc.network_file) if p is not None]
    cache.check_replaceable(final, "model.dir", keep=keep, legacy=QAT_FILES)


def _export(cfg: DeployConfig, model: Any, chw: tuple, info: dict) -> ModelFiles:
    import paddle
    from paddleslim import QAT

    final = cfg.model.dir.absolute()
    with cache.staged_dir(final, "qat") as staged:
        export = paddle.nn.Sequential(model, paddle.nn.Softmax(axis=-1)) if cfg.qat.export_softmax else model
        export.eval()
        spec = [paddle.static.InputSpec([None, *chw], "float32", name="x")]
        QAT(config=QAT_CONFIG).save_quantized_model(export, str(staged / "inference"), input_spec=spec)
        files = ModelFiles(staged / "inference.pdmodel", staged / "inference.pdiparams")
        if not files.program.is_file() or not inspect_model(files).quantized:
            raise ModelError(f"QAT export did not produce a quantized classic model in {staged}")
        cache.atomic_write_json(staged / "qat.json", {**info, "source_weights": str(cfg.qat.weights)})
        cache.install(final, [(staged, final)])
    return ModelFiles(final / "inference.pdmodel", final / "inference.pdiparams")
