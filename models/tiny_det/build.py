#!/usr/bin/env python
"""Build the tiny detection stand-in: a hand-set grid detector with PaddleDetection's export interface, and its data.

Usage: python models/tiny_det/build.py [--out DIR] [--test N] [--calib N] [--seed S] [--force] [--quiet]

Not a PaddleDetection model and not trained: no real pretrained PaddleDetection model can be installed here
without a download, so this is a synthetic stand-in with the exact inputs and outputs of a PaddleDetection
export with multiclass_nms3, made to test the toolkit's detection task (inference, INT8 post-training
quantization, COCO mAP). Its weights are set by hand: a 1x1 conv turns the normalized RGB image into "red",
"green" and "blue" colour-response maps, an adaptive average pool measures how much of each cell of an 8x8
grid each colour covers, a sigmoid makes that a score; each (cell, class) is a candidate box equal to the
cell, mapped to original pixels with scale_factor and clipped to im_shape / scale_factor; the 100 best per
image are kept. The images are coloured boxes on grey, each filling most of one grid cell of the 320x320
model input. Everything is seeded: the same arguments give byte-identical images and labels.

Model inputs:  image float32 [N, 3, H, W] (H, W dynamic; 320x320 expected), im_shape float32 [N, 2] (the
               preprocessed [h, w]), scale_factor float32 [N, 2] ([h, w] preprocessed / original)
Model outputs: boxes float32 [N*100, 6] rows [class_id, score, x1, y1, x2, y2] in original pixels, the
               images' rows concatenated in batch order; box count int32 [N] (100 each)

Outputs under ``--out`` (default: this directory):
  inference/inference.pdmodel + .pdiparams   classic-format (non-PIR) Paddle inference program
  inference/.complete                        (JSON: model version, paddle, export check, FP32 mAP on test)
  data/test/NNNN.png + data/test/labels.txt  evaluation set (default 200 images)
  data/calib/NNNN.png + labels.txt           calibration set (default 200, rendered from another seed stream)
  data/labels.txt                            red, green, blue (class id = line number)
  data/.complete                             (JSON: seed, counts, renderer version)
A split's labels.txt has one line per image: NNNN.png<TAB>[{"label": "red", "bbox": [x1, y1, x2, y2]}, ...]
(JSON; bbox in original pixels, x2 / y2 exclusive edges, as floats).
"""
from __future__ import annotations

import os

# Must precede the first paddle import: Paddle 3.x otherwise saves PIR .json programs, not .pdmodel.
os.environ["FLAGS_enable_pir_api"] = "0"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
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
from buildkit import (BuildError, positive_int, print_build_result, read_marker, remove_leftovers, replace_dir,  # noqa: E402
                      run_build, setup_logging)

if TYPE_CHECKING:  # paddle (~3 s to import) is loaded only when there is work to do
    import paddle

LOGGER = logging.getLogger("models.tiny_det")

DEFAULT_OUT = Path(__file__).resolve().parent
DEFAULT_SEED = 0
DEFAULT_COUNTS = {"test": 200, "calib": 200}
SPLIT_STREAMS = {"test": 0, "calib": 1}  # each split renders from its own seed stream: no image is in both
LABELS = ("red", "green", "blue")  # class id = index = line number in data/labels.txt
MARKER = ".complete"
MODEL_PREFIX = "inference"
MODEL_FILES = (f"{MODEL_PREFIX}.pdmodel", f"{MODEL_PREFIX}.pdiparams")
INPUT_NAMES = ("image", "im_shape", "scale_factor")
RENDERER_VERSION = 1  # bump when the rendering changes, so existing data sets are rebuilt
MODEL_VERSION = 1  # bump when the network or its hand-set weights change, so the model is re-exported

# The preprocessing the model expects (and the evaluation here uses): RGB, 320x320, ImageNet mean/std.
INPUT_SIZE = 320
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# The detector.
GRID = 8  # cells per side: 40x40 px cells on the 320x320 input
TOP_K = 100  # boxes kept per image (of GRID * GRID * 3 = 192 candidates): all of pycocotools' maxDets=100
COLOUR_THRESHOLD = 0.25  # a pixel counts as colour c when c - mean(other two) > this (RGB in [0, 1])...
COLOUR_GAIN = 4.0  # ...the response (c - mean(others) - threshold) * gain is clipped to [0, 1]
SCORE_CENTER, SCORE_SLOPE = 0.4, 10.0  # score = sigmoid(slope * (cell coverage - center))

# The rendering (sizes in the 320x320 input unless said otherwise).
IMAGE_SIDES = (240, 480)  # original height and width, drawn independently (never within 24 px of square)
OBJECTS_PER_IMAGE = (1, 5)
BOX_SCALE = (0.78, 1.08)  # box side / cell side...
BOX_ASPECT_JITTER = 0.05  # ...times 1 +- this per axis
CENTER_JITTER = 0.10  # box centre offset from the cell centre, in cells, per axis
NOISE_AMPLITUDE = (2, 6)  # sensor noise: uniform integers in +-a per pixel and channel (most of the PNGs' size)

warnings.filterwarnings("ignore", message="No ccache found")  # printed by every `import paddle`


# ------------------------------------------------------------------------------------ rendering


def pick_cells(rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    """``count`` distinct (row, col) grid cells, no two touching (not even diagonally): boxes cannot overlap."""
    cells: list[tuple[int, int]] = []
    for flat in rng.permutation(GRID * GRID):
        row, col = divmod(int(flat), GRID)
        if all(max(abs(row - r), abs(col - c)) >= 2 for r, c in cells):
            cells.append((row, col))
            if len(cells) == count:
                break
    return cells


def render_image(rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One BGR uint8 image of a random non-square size with 1-5 solid coloured boxes, and its labels.

    Each box is square in the 320x320 model input (so a rectangle in the original image, stretched by the
    image's aspect ratio) and mostly fills one grid cell there: 0.78-1.08 of the cell side, centre within
    0.1 cell of the cell's centre, so the cell's IoU with it is about 0.6-0.95.
    """
    while True:
        height, width = (int(v) for v in rng.integers(IMAGE_SIDES[0], IMAGE_SIDES[1] + 1, 2))
        if abs(height - width) >= 24:
            break
    grey = rng.uniform(95, 165)
    image = np.empty((height, width, 3), np.float32)
    image[:] = grey + rng.uniform(-10, 10, 3)  # RGB, a slight tint
    if rng.random() < 0.5:  # a soft grey ramp, left to right or top to bottom
        horizontal = rng.random() < 0.5
        ramp = np.linspace(0, rng.uniform(-25, 25), width if horizontal else height, dtype=np.float32)
        image += ramp[None, :, None] if horizontal else ramp[:, None, None]
    cell = INPUT_SIZE / GRID
    to_x, to_y = width / INPUT_SIZE, height / INPUT_SIZE
    objects = []
    for row, col in pick_cells(rng, int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        class_id = int(rng.integers(len(LABELS)))
        colour = rng.uniform(0, 55, 3)
        colour[class_id] = rng.uniform(185, 255)
        side = rng.uniform(*BOX_SCALE) * cell
        half_w, half_h = side / 2 * (1 + rng.uniform(-BOX_ASPECT_JITTER, BOX_ASPECT_JITTER, 2))
        cx, cy = (np.array([col, row]) + 0.5 + rng.uniform(-CENTER_JITTER, CENTER_JITTER, 2)) * cell
        x1, x2 = (int(np.clip(round(v * to_x), 0, width)) for v in (cx - half_w, cx + half_w))
        y1, y2 = (int(np.clip(round(v * to_y), 0, height)) for v in (cy - half_h, cy + half_h))
        image[y1:y2, x1:x2] = colour
        objects.append({"label": LABELS[class_id], "bbox": [float(x1), float(y1), float(x2), float(y2)]})
    amplitude = int(rng.integers(NOISE_AMPLITUDE[0], NOISE_AMPLITUDE[1] + 1))
    noisy = np.rint(image).astype(np.int16) + rng.integers(-amplitude, amplitude + 1, image.shape, dtype=np.int16)
    rgb = np.clip(noisy, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1]), objects


def write_split(root: Path, name: str, count: int, seed: int, bar: tqdm) -> None:
    """Render ``count`` images into ``root/name/NNNN.png`` and their boxes into ``root/name/labels.txt``."""
    import cv2

    rng = np.random.default_rng([seed, SPLIT_STREAMS[name]])
    split = root / name
    split.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        image, objects = render_image(rng)
        path = split / f"{i:04d}.png"
        if not cv2.imwrite(str(path), image):
            raise BuildError(f"cv2.imwrite failed for {path}; is the disk full or read-only?")
        lines.append(f"{path.name}\t{json.dumps(objects)}\n")
        bar.update()
    (split / "labels.txt").write_text("".join(lines))


def write_dataset(out_dir: Path, counts: dict[str, int], seed: int, quiet: bool) -> Path:
    """Render every split into a temp dir, then move it to ``out_dir/data`` with its marker."""
    final, tmp = out_dir / "data", out_dir / f"data.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tqdm(total=sum(counts.values()), desc="render", unit="img", disable=quiet, leave=False) as bar:
            for name, count in counts.items():
                write_split(tmp, name, count, seed, bar)
        (tmp / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
        (tmp / MARKER).write_text(json.dumps(data_marker(counts, seed), indent=2) + "\n")
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOGGER.info("wrote %s (%s)", final, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return final


def data_marker(counts: dict[str, int], seed: int) -> dict[str, Any]:
    """What a data set was built from: a different marker means rebuild."""
    return {"seed": seed, "counts": counts, "renderer": RENDERER_VERSION}


def read_split(split_dir: Path) -> list[tuple[Path, list[dict[str, Any]]]]:
    """(image path, objects) for every line of ``split_dir/labels.txt``, in file order."""
    items = []
    for line in (split_dir / "labels.txt").read_text().splitlines():
        name, objects = line.split("\t", 1)
        items.append((split_dir / name, json.loads(objects)))
    return items


# ----------------------------------------------------------------------------------------- model


def colour_conv_weights() -> tuple[np.ndarray, np.ndarray]:
    """The 1x1 conv's [3, 3, 1, 1] weight and [3] bias: normalized RGB -> (c - mean(others) - thr) * gain.

    The normalization is undone inside the conv (rgb = x * std + mean), so it reads the model's real input.
    """
    contrast = (np.eye(3) * 1.5 - 0.5) * COLOUR_GAIN  # row c: c - (sum of the other two) / 2
    weight = contrast * np.asarray(STD)[None, :]
    bias = contrast @ np.asarray(MEAN) - COLOUR_GAIN * COLOUR_THRESHOLD
    return weight.reshape(3, 3, 1, 1).astype(np.float32), bias.astype(np.float32)


def _legacy_op(op_type: str, x: Any, y: Any = None, **attrs: Any) -> Any:
    """Append one op to the static program being traced.

    With FLAGS_enable_pir_api=0, Paddle 3.3's generated functions (F.sigmoid, paddle.floor, paddle.minimum...)
    only accept PIR values and fail on the classic program's Variables; the classic ops themselves are fine.
    """
    from paddle.base.layer_helper import LayerHelper

    helper = LayerHelper(op_type)
    out = helper.create_variable_for_type_inference(x.dtype)
    inputs = {"X": [x]} if y is None else {"X": [x], "Y": [y]}
    helper.append_op(type=op_type, inputs=inputs, outputs={"Out": [out]}, attrs=attrs)
    return out


def make_detector() -> paddle.nn.Layer:
    """The hand-set grid detector as a Paddle layer (forward traced to a classic program by jit.save)."""
    import paddle

    class GridColourDetector(paddle.nn.Layer):
        """Colour-response conv -> per-cell coverage -> sigmoid score; each (cell, class) is a box."""

        def __init__(self) -> None:
            super().__init__()
            self.colour = paddle.nn.Conv2D(3, len(LABELS), 1)
            weight, bias = colour_conv_weights()
            self.colour.weight.set_value(weight)
            self.colour.bias.set_value(bias)

        def forward(self, image: Any, im_shape: Any, scale_factor: Any) -> tuple[Any, Any]:
            response = paddle.clip(self.colour(image), 0.0, 1.0)  # [N, 3, H, W], ~1 where the colour is
            coverage = paddle.nn.functional.adaptive_avg_pool2d(response, GRID)  # [N, 3, G, G]
            scores = _legacy_op("sigmoid", (coverage - SCORE_CENTER) * SCORE_SLOPE)
            top_scores, index = paddle.topk(paddle.flatten(scores, 1), TOP_K, axis=1)  # [N, K], class-major
            class_id = paddle.cast(index // (GRID * GRID), "float32")
            cell = index % (GRID * GRID)
            row, col = paddle.cast(cell // GRID, "float32"), paddle.cast(cell % GRID, "float32")
            size = paddle.cast(paddle.shape(image)[2:4], "float32")  # the cells tile the tensor fed
            cell_h, cell_w = size[0] / GRID, size[1] / GRID
            scale_y, scale_x = scale_factor[:, 0:1], scale_factor[:, 1:2]
            # The original image's size, as PaddleDetection's BBoxPostProcess computes it.
            orig_h = _legacy_op("floor", im_shape[:, 0:1] / scale_y + 0.5)
            orig_w = _legacy_op("floor", im_shape[:, 1:2] / scale_x + 0.5)

            def clip(value: Any, high: Any) -> Any:  # value >= 0 already
                return _legacy_op("elementwise_min", value, high, axis=-1)

            x1, x2 = clip(col * cell_w / scale_x, orig_w), clip((col + 1) * cell_w / scale_x, orig_w)
            y1, y2 = clip(row * cell_h / scale_y, orig_h), clip((row + 1) * cell_h / scale_y, orig_h)
            boxes = paddle.stack([class_id, top_scores, x1, y1, x2, y2], axis=-1)  # [N, K, 6]
            count = paddle.cast(paddle.ones_like(top_scores[:, 0]) * TOP_K, "int32")  # [N]
            return paddle.reshape(boxes, [-1, 6]), count

    model = GridColourDetector()
    model.eval()
    return model


def export_model(path_prefix: Path) -> None:
    """Trace the detector and save ``<prefix>.pdmodel/.pdiparams`` with PaddleDetection's input names."""
    import paddle
    from paddle.static import InputSpec

    paddle.set_device("cpu")
    spec = [InputSpec([None, 3, None, None], "float32", name="image"),
            InputSpec([None, 2], "float32", name="im_shape"),
            InputSpec([None, 2], "float32", name="scale_factor")]
    with paddle.utils.unique_name.guard():  # the same variable names however many programs came before
        paddle.jit.save(make_detector(), str(path_prefix), input_spec=spec)
    wanted = [path_prefix.with_name(name) for name in MODEL_FILES]
    if not all(path.is_file() for path in wanted):
        found = sorted(p.name for p in path_prefix.parent.iterdir())
        raise BuildError(f"paddle.jit.save wrote {found}, not {[p.name for p in wanted]}: set "
                         "FLAGS_enable_pir_api=0 before paddle is first imported")
    strip_callstacks(wanted[0])


def strip_callstacks(program_file: Path) -> None:
    """Drop the Python stack trace Paddle records in every op (``op_callstack``): it holds this checkout's
    paths and line numbers, so without it the program is byte-identical wherever it is built."""
    from paddle.base.proto import framework_pb2

    program = framework_pb2.ProgramDesc()
    program.ParseFromString(program_file.read_bytes())
    for block in program.blocks:
        for op in block.ops:
            kept = [attr for attr in op.attrs if attr.name != "op_callstack"]
            del op.attrs[:]
            op.attrs.extend(kept)
    program_file.write_bytes(program.SerializeToString())


# ------------------------------------------------------------------------------ inference, mAP


def preprocess(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's preprocessing: BGR -> RGB, 320x320 (linear), /255, ImageNet mean/std, CHW; and the
    image's im_shape [320, 320] and scale_factor [320 / h, 320 / w]."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BuildError(f"cannot read {path}")
    height, width = bgr.shape[:2]
    rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    x = (rgb.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
    return (x.transpose(2, 0, 1), np.float32([INPUT_SIZE, INPUT_SIZE]),
            np.float32([INPUT_SIZE / height, INPUT_SIZE / width]))


def create_predictor(model_dir: Path) -> Any:
    """A paddle.inference CPU predictor (oneDNN) for ``model_dir/inference.pdmodel``."""
    from paddle import inference

    config = inference.Config(str(model_dir / MODEL_FILES[0]), str(model_dir / MODEL_FILES[1]))
    config.disable_gpu()
    config.enable_mkldnn()
    config.set_cpu_math_library_num_threads(2)
    config.disable_glog_info()
    return inference.create_predictor(config)


def predict(predictor: Any, samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Run one batch; the [count_i, 6] boxes of each image, split by the box-count output."""
    feeds = dict(zip(INPUT_NAMES, (np.stack(parts) for parts in zip(*samples))))
    for name in predictor.get_input_names():
        handle = predictor.get_input_handle(name)
        handle.reshape(list(feeds[name].shape))
        handle.copy_from_cpu(np.ascontiguousarray(feeds[name]))
    predictor.run()
    boxes, counts = (predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names())
    return np.split(boxes, np.cumsum(counts)[:-1])


def check_export_samples(split_dir: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The first image of the split and the next one of another original size (so another scale_factor)."""
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for path, _ in read_split(split_dir):
        sample = preprocess(path)
        if not samples or not np.array_equal(sample[2], samples[0][2]):
            samples.append(sample)
        if len(samples) == 2:
            return samples
    raise BuildError(f"the export check needs two images of different sizes in {split_dir}; try more --test")


def check_export(model_dir: Path, samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Load the saved program with paddle.inference and check its interface on batch 1 and batch 2 (two
    images of different original sizes): names, dtypes, shapes, counts, boxes inside the original images, and
    the same rows for an image alone or in a batch."""
    predictor = create_predictor(model_dir)
    inputs, outputs = predictor.get_input_names(), predictor.get_output_names()
    if tuple(inputs) != INPUT_NAMES or len(outputs) != 2:
        raise BuildError(f"exported model has inputs {inputs} and outputs {outputs}; expected inputs "
                         f"{list(INPUT_NAMES)} and 2 outputs (boxes, box count)")
    first, second = samples[:2]
    singles = [predict(predictor, [sample])[0] for sample in (first, second)]
    pair = predict(predictor, [first, second])
    boxes, counts = (predictor.get_output_handle(name).copy_to_cpu() for name in outputs)
    problems = []
    if boxes.dtype != np.float32 or boxes.shape != (2 * TOP_K, 6):
        problems.append(f"boxes are {boxes.dtype} {list(boxes.shape)}, not float32 [{2 * TOP_K}, 6]")
    if counts.dtype != np.int32 or counts.tolist() != [TOP_K, TOP_K]:
        problems.append(f"box counts are {counts.dtype} {counts.tolist()}, not int32 [{TOP_K}, {TOP_K}]")
    for i, (single, batched, sample) in enumerate(zip(singles, pair, (first, second))):
        orig_h, orig_w = np.floor(sample[1] / sample[2] + 0.5)
        if not np.allclose(single, batched, atol=1e-4):
            problems.append(f"image {i}: its rows differ alone and in a batch of 2")
        if ((single[:, 2:] < 0).any() or (single[:, [2, 4]] > orig_w).any() or (single[:, [3, 5]] > orig_h).any()
                or (single[:, 4] <= single[:, 2]).any() or (single[:, 5] <= single[:, 3]).any()):
            problems.append(f"image {i}: boxes leave the {orig_w:.0f}x{orig_h:.0f} original image or are empty")
        if not set(np.unique(single[:, 0])) <= set(range(len(LABELS))) or not ((single[:, 1] > 0)
                                                                               & (single[:, 1] < 1)).all():
            problems.append(f"image {i}: class ids or scores out of range")
    if problems:
        raise BuildError("exported model fails its check: " + "; ".join(problems))
    return {"inputs": inputs, "outputs": outputs, "batch_sizes": [1, 2]}


def evaluate(model_dir: Path, split_dir: Path, batch_size: int = 10, quiet: bool = True) -> dict[str, float]:
    """COCO bbox mAP@[.5:.95], mAP@.5 and mAP@.75 of the model on a split, through paddle.inference."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    items = read_split(split_dir)
    predictor = create_predictor(model_dir)
    images, annotations, detections = [], [], []
    for start in tqdm(range(0, len(items), batch_size), desc="evaluate", unit="batch", disable=quiet, leave=False):
        chunk = items[start:start + batch_size]
        samples = [preprocess(path) for path, _ in chunk]
        for offset, ((_, objects), sample, rows) in enumerate(zip(chunk, samples, predict(predictor, samples))):
            image_id = start + offset + 1  # pycocotools treats id 0 as "no match"
            height, width = np.floor(sample[1] / sample[2] + 0.5)
            images.append({"id": image_id, "height": int(height), "width": int(width)})
            for obj in objects:
                x1, y1, x2, y2 = obj["bbox"]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                    "category_id": LABELS.index(obj["label"]), "area": (x2 - x1) * (y2 - y1),
                                    "bbox": [x1, y1, x2 - x1, y2 - y1]})
            detections += [{"image_id": image_id, "category_id": int(c), "score": float(s),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
                           for c, s, x1, y1, x2, y2 in rows]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": i, "name": name} for i, name in enumerate(LABELS)]}
        gt.createIndex()
        result = COCOeval(gt, gt.loadRes(detections), "bbox")
        result.evaluate()
        result.accumulate()
        result.summarize()
    return {"map": round(float(result.stats[0]), 4), "map50": round(float(result.stats[1]), 4),
            "map75": round(float(result.stats[2]), 4), "images": len(items), "objects": len(annotations)}


def write_model(out_dir: Path, data: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """Export, check and evaluate the detector in a temp dir, then move it to ``out_dir/inference``."""
    import paddle

    final, tmp = out_dir / "inference", out_dir / f"inference.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        export_model(tmp / MODEL_PREFIX)
        test_dir = out_dir / "data" / "test"
        samples = check_export_samples(test_dir)
        info: dict[str, Any] = {"model_version": MODEL_VERSION, "paddle": paddle.__version__,
                                "check": check_export(tmp, samples), "evaluated_on": data}
        try:
            info["fp32_test"] = evaluate(tmp, test_dir, quiet=quiet)
        except ImportError:
            LOGGER.warning("pycocotools is not installed: no mAP measured (pip install pycocotools)")
            info["fp32_test"] = None
        info["sha256"] = {name: hashlib.sha256((tmp / name).read_bytes()).hexdigest() for name in MODEL_FILES}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOGGER.info("exported %s", final / MODEL_FILES[0])
    return info


# --------------------------------------------------------------------------------------- build


def model_up_to_date(out_dir: Path, data: dict[str, Any]) -> bool:
    """The model exists, is of this version and was checked and evaluated on this data set."""
    marker = read_marker(out_dir / "inference" / MARKER) or {}
    return (marker.get("model_version") == MODEL_VERSION and marker.get("evaluated_on") == data
            and all((out_dir / "inference" / name).is_file() for name in MODEL_FILES))


def data_up_to_date(out_dir: Path, counts: dict[str, int], seed: int) -> bool:
    """The data set exists and was rendered with these counts, this seed and this renderer."""
    return read_marker(out_dir / "data" / MARKER) == data_marker(counts, seed)


def build(out_dir: Path, *, counts: dict[str, int] | None = None, seed: int = DEFAULT_SEED, force: bool = False,
          quiet: bool = False) -> dict[str, Any]:
    """Render the data and export the model where missing or out of date; returns what was done, how long,
    and the model's FP32 mAP on the test split."""
    counts = dict(counts or DEFAULT_COUNTS)
    if counts["test"] < 2:
        raise BuildError(f"--test must be at least 2 (the export check runs a batch of 2), got {counts['test']}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)
    started, done = time.perf_counter(), []
    data = data_marker(counts, seed)
    if force or not data_up_to_date(out_dir, counts, seed):
        write_dataset(out_dir, counts, seed, quiet)
        done.append("data")
    if force or "data" in done or not model_up_to_date(out_dir, data):
        write_model(out_dir, data, quiet)
        done.append("model")
    info = read_marker(out_dir / "inference" / MARKER) or {}
    return {"built": done, "seconds": round(time.perf_counter() - started, 1), "counts": counts, "seed": seed,
            "fp32_test": info.get("fp32_test")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dir (default: %(default)s)")
    parser.add_argument("--test", type=positive_int, default=DEFAULT_COUNTS["test"],
                        help="evaluation images, at least 2 (default: %(default)s)")
    parser.add_argument("--calib", type=positive_int, default=DEFAULT_COUNTS["calib"],
                        help="calibration images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="rendering seed (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="render and export again, even if up to date")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args = parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")  # hide Paddle's C++ INFO lines ("New Executor is Running")
    setup_logging(args.quiet)
    out_dir = args.out.resolve()
    result, code = run_build(lambda: build(out_dir, counts={"test": args.test, "calib": args.calib},
                                           seed=args.seed, force=args.force, quiet=args.quiet), quiet=args.quiet)
    if code:
        return code
    fp32 = result["fp32_test"]
    notes = (f"FP32 on test ({fp32['images']} images, {fp32['objects']} boxes): mAP@[.5:.95] {fp32['map']:.3f}, "
             f"mAP@.5 {fp32['map50']:.3f}",) if fp32 else ()
    print_build_result(out_dir, result, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
