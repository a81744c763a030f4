"""The OCR system, a pipeline of tasks as PaddleOCR runs it: detect text boxes -> sort them top-to-bottom,
left-to-right -> crop each with a perspective warp -> (turn crops the direction classifier reads as 180 degrees)
-> recognise. Each stage is a model config of its own, at its own precision.

End-to-end metric on labelled documents (PaddleOCR det labels with transcriptions): a line counts when a
detected box matches a ground-truth polygon (IoU > 0.5, one-to-one, as the det metric) AND its recognised text
equals the transcription: spaces ignored, as the rec metric (precision, recall, f1), and with the word spaces
counted (precision_spaces, recall_spaces, f1_spaces), over all lines.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from deploy.config.loader import DeployConfig, OcrSystemConfig, StageConfig, load_config
from deploy.data.pipeline import ImagePipeline, ResizeKeepRatio, read_image
from deploy.data.sources import Batch, ImageItem, group_batches
from deploy.engines.factory import AnyPredictor, create_predictor
from deploy.engines.model import ensure_model
from deploy.engines.plan import resolve_plan
from deploy.errors import ConfigError
from deploy.tasks.base import Metrics, Task
from deploy.tasks.classification import ClassificationTask, Prediction
from deploy.tasks.ocr_det import OcrDetTask, TextBoxes, TextRegion
from deploy.tasks.ocr_det_post import match_pairs, order_points_clockwise
from deploy.tasks.ocr_rec import OcrRecTask, TextResult, compact, spaced
from deploy.tasks.registry import build_task

log = logging.getLogger(__name__)
SAME_LINE_PX = 10  # PaddleOCR's sorted_boxes: boxes whose tops differ less than this are on one line
UPSIDE_DOWN = "180"
CLS_PIECES = 8  # the most pieces of a long line the direction classifier reads
MERGE_GAP = 1.2  # line images: ink (or det's boxes) on a row at most this many row heights apart is one line


@dataclass
class OcrLines:
    """One image's recognised lines: boxes [K, 4, 2] in original pixels (reading order), texts, scores."""

    boxes: np.ndarray
    texts: list[str]
    scores: list[float]

    def to_json(self) -> dict:
        return {"boxes": self.boxes.astype(np.float64).round(1).tolist(), "texts": self.texts,
                "scores": [round(s, 4) for s in self.scores]}


@dataclass
class Stage:
    """A loaded stage: its config (precision applied), task, pipeline and predictor."""

    name: str
    cfg: DeployConfig
    task: Task
    pipeline: ImagePipeline
    predictor: AnyPredictor

    def run(self, images: Sequence[np.ndarray], path: Path) -> list[Any]:
        """Preprocess decoded images, batch them as the stage's config says, predict: results in input order."""
        prepared = [self.pipeline.apply(img, f"{path} ({self.name} input {i})") for i, img in enumerate(images)]
        loaded = [((ImageItem(path, index=i), record), array) for i, (array, record) in enumerate(prepared)]
        results: list[Any] = [None] * len(images)
        for keys, array in group_batches(loaded, self.pipeline, self.cfg.runtime.batch_size):
            batch = Batch([item for item, _ in keys], array, [record for _, record in keys])
            for item, result in zip(batch.items, self.task.predict(self.predictor, batch)):
                results[item.index] = result
        return results


def stage_config(stage: StageConfig) -> DeployConfig:
    """A stage's model config at the stage's precision."""
    return load_config(stage.config, [f"runtime.precision={stage.precision}"])


def enabled_stages(cfg: OcrSystemConfig) -> list[tuple[str, StageConfig]]:
    """(name, stage) of the stages that run, in order: det, cls (when present and enabled), rec."""
    cls = [("cls", cfg.cls)] if cfg.cls is not None and cfg.cls.enabled else []
    return [("det", cfg.det), *cls, ("rec", cfg.rec)]


def ensure_stage_models(cfg: OcrSystemConfig, *, quiet: bool = False) -> None:
    """Build every enabled stage's model when missing (model.build), as every tool does on first use: a demo
    model's build also writes the labelled documents the system config's data.images names."""
    for _, stage in enabled_stages(cfg):
        ensure_model(stage_config(stage).model, quiet=quiet)


def load_stage(name: str, stage: StageConfig, expected: type[Task], *, quiet: bool) -> Stage:
    """Load a stage's config at its precision and build its predictor; the config must be of the right task."""
    cfg = stage_config(stage)
    task = build_task(cfg)
    if not isinstance(task, expected):
        raise ConfigError(f"the OCR system's '{name}' stage needs a {expected.name} config, but {stage.config} is "
                          f"task '{cfg.task}'")
    if name != "det" and cfg.preprocess[0].mode != "BGR":
        raise ConfigError(f"the '{name}' stage gets crops of the BGR document: set its decode mode to BGR "
                          f"({stage.config})")
    plan = resolve_plan(cfg, quiet=quiet)  # builds a demo model (and its label list) when missing
    if name == "cls" and task.label_names != ["0", UPSIDE_DOWN]:
        raise ConfigError(f"the direction classifier's postprocess.label_list must be ['0', '180'], got "
                          f"{task.label_names} ({stage.config})")
    predictor = create_predictor(plan)
    log.info("%s: %s", name, predictor.plan.describe())
    return Stage(name, cfg, task, ImagePipeline(cfg.preprocess), predictor)


def sorted_boxes(boxes: np.ndarray) -> np.ndarray:
    """Reading order as PaddleOCR's sorted_boxes: by top-left y then x, then neighbours on one line by x."""
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][0][1], boxes[i][0][0]))
    for i in range(len(order) - 1):
        for j in range(i, -1, -1):
            a, b = boxes[order[j]], boxes[order[j + 1]]
            if abs(b[0][1] - a[0][1]) < SAME_LINE_PX and b[0][0] < a[0][0]:
                order[j], order[j + 1] = order[j + 1], order[j]
            else:
                break
    return boxes[order] if len(order) else boxes


def crop_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box's quadrilateral warped to an upright rectangle (PaddleOCR's get_rotate_crop_image): tall crops
    (height >= 1.5 x width) are turned by 90 degrees, as vertical lines are."""
    points = box.astype(np.float32)
    width = int(max(np.linalg.norm(points[0] - points[1]), np.linalg.norm(points[2] - points[3])))
    height = int(max(np.linalg.norm(points[0] - points[3]), np.linalg.norm(points[1] - points[2])))
    width, height = max(width, 1), max(height, 1)
    target = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    crop = cv2.warpPerspective(image, cv2.getPerspectiveTransform(points, target), (width, height),
                               borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    return np.rot90(crop) if height / width >= 1.5 else crop


def is_line_image(hw: tuple[int, int], aspect: float) -> bool:
    """An image at least ``aspect`` times wider than tall (``aspect`` 0: none is)."""
    return aspect > 0 and hw[1] >= aspect * hw[0]


def merge_rows(boxes: np.ndarray, max_gap: float = MERGE_GAP) -> np.ndarray:
    """Fragments of one line merged: boxes on one row (each overlapping the row's vertical extent by at least
    half its own height) and at most ``max_gap`` times the row's height apart are replaced by the minimum-area
    rectangle around them, clockwise from top-left. Boxes further apart on a row (a message and its time stamp)
    stay apart."""
    rows: list[list[np.ndarray]] = []
    for box in sorted(boxes, key=lambda b: b[:, 1].mean()):
        top, bottom = box[:, 1].min(), box[:, 1].max()
        if rows:
            row_top = min(b[:, 1].min() for b in rows[-1])
            row_bottom = max(b[:, 1].max() for b in rows[-1])
            if min(bottom, row_bottom) - max(top, row_top) >= 0.5 * (bottom - top):
                rows[-1].append(box)
                continue
        rows.append([box])
    lines: list[list[np.ndarray]] = []
    for row in rows:
        height = float(np.median([np.ptp(b[:, 1]) for b in row]))
        row.sort(key=lambda b: b[:, 0].min())
        lines.append([row[0]])
        for box in row[1:]:
            if box[:, 0].min() - max(b[:, 0].max() for b in lines[-1]) <= max_gap * height:
                lines[-1].append(box)
            else:
                lines.append([box])
    merged = [line[0] if len(line) == 1 else
              order_points_clockwise(cv2.boxPoints(cv2.minAreaRect(np.concatenate(line).astype(np.float32))))
              for line in lines]
    return np.array(merged, np.float32).reshape(-1, 4, 2)


def ink_mask(image: np.ndarray) -> np.ndarray:
    """1 where a pixel is ink: the Otsu class of the grey image that is the minority."""
    gray = image if image.ndim == 2 or image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    _, ink = cv2.threshold(gray.reshape(image.shape[:2]), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return 1 - ink if ink.mean() > 0.5 else ink


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-d mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def ink_bands(ink: np.ndarray) -> list[tuple[int, int]]:
    """The horizontal bands of ink of a mask, [top, bottom) each: runs of rows where at least 1% of the pixels
    are ink, at least a fifth as tall as the tallest run."""
    runs = _runs(ink.mean(axis=1) >= 0.01)
    tallest = max((b - a for a, b in runs), default=0)
    return [(a, b) for a, b in runs if b - a >= 0.2 * tallest]


def ink_lines(ink: np.ndarray, max_gap: float = MERGE_GAP) -> list[tuple[int, int, int, int]]:
    """The text lines of a line image's ink mask, (left, top, right, bottom) each, tight around their ink: every
    band of ink, cut where its columns are blank for more than ``max_gap`` times its height (a message and its
    time stamp are two lines, word spaces are not), less specks narrower than a third of the height."""
    lines = []
    for top, bottom in ink_bands(ink):
        height = bottom - top
        segments: list[list[int]] = []
        for left, right in _runs(ink[top:bottom].any(axis=0)):
            if segments and left - segments[-1][1] <= max_gap * height:
                segments[-1][1] = right
            else:
                segments.append([left, right])
        for left, right in segments:
            rows = np.flatnonzero(ink[top:bottom, left:right].any(axis=1))  # a time stamp is shorter than its band
            if right - left >= height / 3:
                lines.append((left, top + int(rows[0]), right, top + int(rows[-1]) + 1))
    return lines


def line_image_boxes(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """A line image's lines, from its ink: each band of ink rows cut at wide blank gaps, each line's box padded
    by a quarter of its height (as DB's unclipped boxes are), however det cut the lines up or missed them.
    When a band is most of the image's height but det found several rows (a textured background Otsu did not
    separate), det's boxes instead, the fragments of one line merged."""
    height, width = image.shape[:2]
    lines = ink_lines(ink_mask(image))
    merged = merge_rows(boxes)
    if not lines or (max(bottom - top for _, top, _, bottom in lines) > 0.8 * height and len(merged) > 1):
        merged[..., 0] = merged[..., 0].clip(0, width)
        merged[..., 1] = merged[..., 1].clip(0, height)
        return merged
    out = []
    for left, top, right, bottom in lines:
        pad = (bottom - top) // 4
        left, right, top, bottom = max(0, left - pad), min(width, right + pad), max(0, top - pad), min(height,
                                                                                                      bottom + pad)
        out.append([[left, top], [right, top], [right, bottom], [left, bottom]])
    return np.array(out, np.float32)


def line_pieces_for_cls(crop: np.ndarray, aspect: float) -> list[np.ndarray]:
    """The crop, or when it is more than twice ``aspect`` times wider than tall, up to CLS_PIECES pieces of
    ``aspect`` times its height spread evenly over it."""
    height, width = crop.shape[:2]
    piece = int(round(aspect * height))
    if width <= 2 * piece:
        return [crop]
    count = min(CLS_PIECES, width // piece)
    starts = np.linspace(0, width - piece, count).round().astype(int)
    return [crop[:, start:start + piece] for start in starts]


def grow_box(box: np.ndarray, margin: float, hw: tuple[int, int]) -> np.ndarray:
    """A quadrilateral (clockwise from top-left) moved out by ``margin`` x its height along its own axes on every
    side, inside the image."""
    if margin <= 0:
        return box
    along, across = box[1] - box[0], box[3] - box[0]
    grow = margin * np.linalg.norm(across)
    unit_along = along / max(np.linalg.norm(along), 1e-6) * grow
    unit_across = across / max(np.linalg.norm(across), 1e-6) * grow
    grown = box + np.array([-unit_along - unit_across, unit_along - unit_across, unit_along + unit_across,
                            -unit_along + unit_across], np.float32)
    grown[:, 0] = grown[:, 0].clip(0, hw[1])
    grown[:, 1] = grown[:, 1].clip(0, hw[0])
    return grown.astype(np.float32)


STAGE_TASKS: dict[str, type[Task]] = {"det": OcrDetTask, "cls": ClassificationTask, "rec": OcrRecTask}


class OcrSystem:
    """The loaded pipeline; a context manager that owns its predictors."""

    def __init__(self, cfg: OcrSystemConfig, *, quiet: bool = False):
        self.cfg = cfg
        self.stages: dict[str, Stage] = {}
        try:
            for name, stage in enabled_stages(cfg):
                self.stages[name] = load_stage(name, stage, STAGE_TASKS[name], quiet=quiet)
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        return ", ".join(f"{name} {stage.predictor.plan.precision}" for name, stage in self.stages.items())

    def __call__(self, path: Path) -> OcrLines:
        """Read one document and return its lines (raises DataError for an unreadable image)."""
        image = read_image(path, "BGR", self.stages["det"].pipeline.decode.background)  # alpha as det says
        found: TextBoxes = self.stages["det"].run([image], path)[0]
        boxes = found.boxes
        if is_line_image(image.shape[:2], self.cfg.line_image_aspect):
            boxes = line_image_boxes(image, boxes)
        boxes = sorted_boxes(boxes)
        crops = [crop_box(image, grow_box(box, self.cfg.crop_margin, image.shape[:2])) for box in boxes]
        if "cls" in self.stages and crops:
            crops = self.turn_upside_down_lines(crops, path)
        texts: list[TextResult] = self.stages["rec"].run(crops, path) if crops else []
        keep = [i for i, t in enumerate(texts) if t.score >= self.cfg.drop_score]
        return OcrLines(boxes[keep] if keep else np.zeros((0, 4, 2), np.float32), [texts[i].text for i in keep],
                        [texts[i].score for i in keep])

    def turn_upside_down_lines(self, crops: list[np.ndarray], path: Path) -> list[np.ndarray]:
        """Crops the direction classifier reads as 180 degrees (its mean score over the crop's pieces at least
        cls_thresh), turned. A line longer than the classifier's input (48x192: 4 heights) is classified in
        pieces of that shape, at most CLS_PIECES spread over it: squeezed whole, a long line is a smear the
        classifier calls upside down with 0.9-0.99 confidence (measured on the hard set's screenshots)."""
        stage = self.stages["cls"]
        resize = next((op for op in stage.cfg.preprocess if isinstance(op, ResizeKeepRatio)), None)
        aspect = resize.max_width / resize.height if resize is not None else math.inf
        pieces = [line_pieces_for_cls(crop, aspect) for crop in crops]
        directions: list[Prediction] = stage.run([piece for line in pieces for piece in line], path)
        upside = stage.task.label_names.index(UPSIDE_DOWN)
        turned, first = [], 0
        for crop, line in zip(crops, pieces):
            score = float(np.mean([d.row[upside] for d in directions[first:first + len(line)]]))
            turned.append(cv2.rotate(crop, cv2.ROTATE_180) if score >= self.cfg.cls_thresh else crop)
            first += len(line)
        return turned

    def close(self) -> None:
        for stage in self.stages.values():
            stage.predictor.close()

    def __enter__(self) -> "OcrSystem":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def line_counts(lines: OcrLines, truth: Sequence[TextRegion]) -> tuple[int, int, int, int]:
    """(lines right in place and text with spaces ignored, the same with spaces counted, ground-truth lines that
    count, detected lines) for one image."""
    ignore = [r.ignore for r in truth]
    pairs = match_pairs([r.points for r in truth], list(lines.boxes), ignore=ignore)
    right = sum(compact(lines.texts[d]) == compact(truth[g].text) for g, d in pairs)
    right_spaces = sum(spaced(lines.texts[d]) == spaced(truth[g].text) for g, d in pairs)
    return right, right_spaces, sum(not i for i in ignore), len(lines.texts)


def _prf(right: int, gt: int, found: int, suffix: str = "") -> Metrics:
    precision = right / found if found else 0.0
    recall = right / gt if gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {f"precision{suffix}": precision, f"recall{suffix}": recall, f"f1{suffix}": f1}


def end_to_end(results: Sequence[OcrLines], labels: Sequence[Optional[Sequence[TextRegion]]]) -> Metrics:
    """Line-level precision, recall and F1 over the labelled images, spaces ignored, then counted."""
    right = right_spaces = gt = found = 0
    for lines, truth in zip(results, labels):
        if truth is None:
            continue
        counts = line_counts(lines, truth)
        right, right_spaces = right + counts[0], right_spaces + counts[1]
        gt, found = gt + counts[2], found + counts[3]
    return {**_prf(right, gt, found), **_prf(right_spaces, gt, found, "_spaces")}


def agreement(results: Sequence[OcrLines], reference: Sequence[OcrLines]) -> float:
    """Line F1 of ``results`` against the reference run's lines (same place, same text); 1 when both are empty."""
    if not any(r.texts for r in results) and not any(r.texts for r in reference):
        return 1.0
    as_truth = [[TextRegion(box, text) for box, text in zip(ref.boxes, ref.texts)] for ref in reference]
    return end_to_end(results, as_truth)["f1"]
