"""DB text-detection post-processing and the IoU detection metric, with PaddleOCR's semantics.

Mirrors ppocr/postprocess/db_postprocess.py (DBPostProcess, quad boxes), the box filtering of
tools/infer/predict_det.py (order_points_clockwise, clip_det_res, filter_tag_det_res) and
ppocr/metrics/eval_det_iou.py (DetectionIoUEvaluator) + det_metric.py (DetMetric). Pure numpy/cv2/pyclipper/shapely.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon

SCORE_MODES = ("fast", "slow")


@dataclass(frozen=True)
class DBParams:
    """DBPostProcess settings (defaults: PP-OCR inference's det_db_* arguments)."""

    thresh: float = 0.3
    box_thresh: float = 0.6
    unclip_ratio: float = 1.5
    max_candidates: int = 1000
    min_size: int = 3
    score_mode: str = "fast"  # "fast" (box mean) or "slow" (polygon mean)
    use_dilation: bool = False

    def __post_init__(self) -> None:
        # PaddleOCR asserts this too; a typo would otherwise silently pick the slow path.
        if self.score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {self.score_mode!r}")


# ---------------------------------------------------------------------------------------------------------------
# DB boxes


def _empty_result() -> tuple[np.ndarray, np.ndarray]:
    """No detections, with the shapes/dtypes of a non-empty result."""
    return np.zeros((0, 4, 2), np.float32), np.zeros((0,), np.float32)


def binarize(prob: np.ndarray, params: DBParams) -> np.ndarray:
    """uint8 {0, 1} text mask: prob > thresh (strict, as PaddleOCR), optionally dilated by a 2x2 kernel."""
    mask = (prob > params.thresh).astype(np.uint8)
    if params.use_dilation:
        mask = cv2.dilate(mask, np.ones((2, 2), np.uint8))
    return mask


def mini_box(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimum-area rectangle of points as [4, 2] float32 (top-left, top-right, bottom-right, bottom-left by
    DB's x-then-y rule) and its shorter side."""
    rect = cv2.minAreaRect(np.asarray(points).reshape(-1, 1, 2))
    corners = cv2.boxPoints(rect)
    # Stable sort by x only, like Python's sorted(): ties keep boxPoints' order, so the result matches PaddleOCR.
    corners = corners[np.argsort(corners[:, 0], kind="stable")]
    left, right = corners[:2], corners[2:]
    top_left, bottom_left = (left[0], left[1]) if left[1][1] > left[0][1] else (left[1], left[0])
    top_right, bottom_right = (right[0], right[1]) if right[1][1] > right[0][1] else (right[1], right[0])
    box = np.array([top_left, top_right, bottom_right, bottom_left], np.float32)
    return box, float(min(rect[1]))


def _masked_mean(prob: np.ndarray, poly: np.ndarray, xmin: int, xmax: int, ymin: int, ymax: int) -> float:
    """Mean of prob inside the filled polygon, evaluated on the [ymin..ymax, xmin..xmax] window only."""
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), np.uint8)
    shifted = poly.astype(np.float64) - np.array([xmin, ymin], np.float64)
    # astype truncates toward zero, like PaddleOCR's astype(int32) after the shift.
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2).astype(np.int32), 1)
    return float(cv2.mean(prob[ymin:ymax + 1, xmin:xmax + 1], mask)[0])


def box_score_fast(prob: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside a (float) box, on its floor/ceil bounding window clipped to the map."""
    h, w = prob.shape[:2]
    xs, ys = box[:, 0], box[:, 1]
    xmin, xmax = (int(np.clip(v, 0, w - 1)) for v in (np.floor(xs.min()), np.ceil(xs.max())))
    ymin, ymax = (int(np.clip(v, 0, h - 1)) for v in (np.floor(ys.min()), np.ceil(ys.max())))
    return _masked_mean(prob, box, xmin, xmax, ymin, ymax)


def box_score_slow(prob: np.ndarray, contour: np.ndarray) -> float:
    """Mean probability inside the contour polygon itself (slower, tighter for curved text)."""
    h, w = prob.shape[:2]
    pts = np.asarray(contour).reshape(-1, 2)
    xmin, xmax = int(np.clip(pts[:, 0].min(), 0, w - 1)), int(np.clip(pts[:, 0].max(), 0, w - 1))
    ymin, ymax = int(np.clip(pts[:, 1].min(), 0, h - 1)), int(np.clip(pts[:, 1].max(), 0, h - 1))
    return _masked_mean(prob, pts, xmin, xmax, ymin, ymax)


def unclip(box: np.ndarray, unclip_ratio: float) -> list:
    """Grow a polygon by D = area * ratio / perimeter (rounded joins): undoes DB's training-time shrink."""
    poly = Polygon(box)
    distance = poly.area * unclip_ratio / poly.length
    offset = pyclipper.PyclipperOffset()
    # pyclipper works on integers and truncates the float corners, exactly as it does inside PaddleOCR.
    offset.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return offset.Execute(distance)


def _candidate(prob: np.ndarray, contour: np.ndarray, params: DBParams) -> tuple[np.ndarray, float] | None:
    """One contour -> (expanded box in map pixels, score), or None when a DB filter rejects it."""
    box, short_side = mini_box(contour)
    if short_side < params.min_size:
        return None
    score = box_score_fast(prob, box) if params.score_mode == "fast" else box_score_slow(prob, contour)
    if score < params.box_thresh:  # PaddleOCR drops on `box_thresh > score`, so score == box_thresh survives
        return None
    expanded = unclip(box, params.unclip_ratio)
    if len(expanded) != 1:  # PaddleOCR skips a split (>1) result; an empty one could not yield a box either
        return None
    box, short_side = mini_box(np.asarray(expanded[0], np.int32))
    if short_side < params.min_size + 2:
        return None
    return box, score


def _to_source(box: np.ndarray, map_hw: tuple[int, int], src_hw: tuple[int, int]) -> np.ndarray:
    """Map-pixel box -> rounded original-image pixels, clipped to [0, size] (int32, as DBPostProcess returns)."""
    (map_h, map_w), (src_h, src_w) = map_hw, src_hw
    out = np.empty_like(box)
    # Same float32 arithmetic order as PaddleOCR (x / width * dest_width) so .5 roundings agree.
    out[:, 0] = np.clip(np.round(box[:, 0] / map_w * src_w), 0, src_w)
    out[:, 1] = np.clip(np.round(box[:, 1] / map_h * src_h), 0, src_h)
    return out.astype(np.int32)


def order_points_clockwise(pts: np.ndarray) -> np.ndarray:
    """Quad corners as [top-left, top-right, bottom-right, bottom-left] float32 (PaddleOCR's sum/diff rule)."""
    pts = np.asarray(pts).reshape(4, 2)
    s = pts.sum(axis=1)
    first, third = int(np.argmin(s)), int(np.argmax(s))
    rest = np.delete(pts, (first, third), axis=0)
    diff = np.diff(rest, axis=1).ravel()  # y - x: smallest is the upper-right corner
    return np.array([pts[first], rest[np.argmin(diff)], pts[third], rest[np.argmax(diff)]], np.float32)


def clip_det_res(box: np.ndarray, src_hw: tuple[int, int]) -> np.ndarray:
    """Clip corners into the image ([0, w-1] x [0, h-1]) and truncate to whole pixels."""
    h, w = src_hw
    out = box.astype(np.float32, copy=True)
    out[:, 0] = np.trunc(np.clip(out[:, 0], 0, w - 1))
    out[:, 1] = np.trunc(np.clip(out[:, 1], 0, h - 1))
    return out


def _big_enough(box: np.ndarray) -> bool:
    """filter_tag_det_res's size rule: both int-truncated side lengths (edges 0-1 and 0-3) must exceed 3 px."""
    width = int(np.linalg.norm(box[0] - box[1]))
    height = int(np.linalg.norm(box[0] - box[3]))
    return width > 3 and height > 3


def _find_contours(mask: np.ndarray) -> Sequence[np.ndarray]:
    """Outer and inner contours of the mask (RETR_LIST, CHAIN_APPROX_SIMPLE), in OpenCV's order."""
    found = cv2.findContours(mask * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    return found[-2]  # OpenCV 3 returns (image, contours, hierarchy), 4+ (contours, hierarchy)


def db_boxes(prob: np.ndarray, src_hw: tuple[int, int], params: DBParams) -> tuple[np.ndarray, np.ndarray]:
    """Probability map [H, W] of one image -> (boxes [K, 4, 2] float32 in original pixels, scores [K] float32)."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"prob must be a 2-D [H, W] map, got shape {prob.shape}")
    src_hw = (int(src_hw[0]), int(src_hw[1]))
    boxes, scores = [], []
    # max_candidates caps the contours examined (before any filter), as PaddleOCR does.
    for contour in _find_contours(binarize(prob, params))[:params.max_candidates]:
        found = _candidate(prob, contour, params)
        if found is None:
            continue
        box = clip_det_res(order_points_clockwise(_to_source(found[0], prob.shape, src_hw)), src_hw)
        if _big_enough(box):
            boxes.append(box)
            scores.append(found[1])
    if not boxes:
        return _empty_result()
    return np.stack(boxes).astype(np.float32), np.asarray(scores, np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Detection metric


def _shapely(points: np.ndarray) -> Polygon | None:
    """Raw shapely polygon of [P, 2] points, or None when shapely cannot even build it (< 3 points, NaN...)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3 or not np.isfinite(pts).all():
        return None
    try:
        return Polygon(pts)
    except (ValueError, TypeError):
        return None


def polygon_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two polygons given as [P, 2] points (invalid ones repaired with buffer(0); unusable -> 0)."""
    pa, pb = _shapely(a), _shapely(b)
    if pa is None or pb is None:
        return 0.0
    # buffer(0) is a no-op for valid polygons, so the metric (which only feeds valid ones) is unaffected.
    return _iou(*(p if p.is_valid else p.buffer(0) for p in (pa, pb)))


def _iou(pa: Polygon, pb: Polygon) -> float:
    """Intersection over union of two shapely geometries (0 when the union has no area)."""
    union = pa.union(pb).area
    return 0.0 if union <= 0 else float(pa.intersection(pb).area / union)


def _evaluable(points: np.ndarray) -> Polygon | None:
    """The polygon if DetectionIoUEvaluator would use it (valid and simple), else None (it is skipped)."""
    poly = _shapely(points)
    return poly if poly is not None and poly.is_valid and poly.is_simple else None


def _care_sets(gt: Sequence[np.ndarray], det: Sequence[np.ndarray], ignore: Sequence[bool] | None,
               area_precision_thresh: float) -> tuple[dict[int, Polygon], dict[int, Polygon]]:
    """Index -> polygon of the gts and dets that count (valid; gt not don't-care; det not mostly in a don't-care)."""
    flags = [False] * len(gt) if ignore is None else [bool(f) for f in ignore]
    if len(flags) != len(gt):
        raise ValueError(f"ignore has {len(flags)} flags for {len(gt)} ground-truth polygons")
    gt_polys = {i: p for i, p in enumerate(map(_evaluable, gt)) if p is not None}
    dont_care = [p for i, p in gt_polys.items() if flags[i]]
    det_care = {}
    for j, poly in enumerate(map(_evaluable, det)):
        if poly is None:
            continue
        # Strict >: a det exactly half inside a don't-care region still counts (PaddleOCR's comparison).
        if not any(_covered_fraction(poly, p) > area_precision_thresh for p in dont_care):
            det_care[j] = poly
    gt_care = {i: p for i, p in gt_polys.items() if not flags[i]}
    return gt_care, det_care


def _covered_fraction(det: Polygon, region: Polygon) -> float:
    """Share of det's own area that lies inside region (0 for a zero-area det, as PaddleOCR)."""
    return 0.0 if det.area == 0 else det.intersection(region).area / det.area


@dataclass
class DetCounts:
    """Matched / counted gt / counted detection totals of one image or a dataset."""

    matched: int
    gt: int  # ground-truth polygons that count (not "don't care")
    det: int  # detections that count

    @property
    def precision(self) -> float:
        """matched / det, 0 with no detections (DetectionIoUEvaluator.combine_results)."""
        return self.matched / self.det if self.det else 0.0

    @property
    def recall(self) -> float:
        """matched / gt, 0 with no ground truth (DetectionIoUEvaluator.combine_results)."""
        return self.matched / self.gt if self.gt else 0.0

    @property
    def hmean(self) -> float:
        """Harmonic mean of precision and recall, 0 when both are 0."""
        p, r = self.precision, self.recall
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _greedy_pairs(gt_care: dict[int, Polygon], det_care: dict[int, Polygon],
                  iou_thresh: float) -> list[tuple[int, int]]:
    pairs, used = [], set()
    for i, g in gt_care.items():
        for j, d in det_care.items():
            # First-come, not best-IoU: the earliest free det above the threshold wins, as in PaddleOCR.
            if j not in used and _iou(g, d) > iou_thresh:
                pairs.append((i, j))
                used.add(j)
                break
    return pairs


def match_pairs(gt: Sequence[np.ndarray], det: Sequence[np.ndarray], iou_thresh: float = 0.5,
                ignore: Sequence[bool] | None = None,
                area_precision_thresh: float = 0.5) -> list[tuple[int, int]]:
    """Matched (gt index, det index) pairs: one-to-one greedy over gt order x det order where IoU > iou_thresh."""
    return _greedy_pairs(*_care_sets(gt, det, ignore, area_precision_thresh), iou_thresh)


def match_detections(gt: Sequence[np.ndarray], det: Sequence[np.ndarray], *, iou_thresh: float = 0.5,
                     ignore: Sequence[bool] | None = None, area_precision_thresh: float = 0.5) -> DetCounts:
    """One image's DetCounts under DetectionIoUEvaluator semantics (see match_pairs for the matching)."""
    gt_care, det_care = _care_sets(gt, det, ignore, area_precision_thresh)
    return DetCounts(len(_greedy_pairs(gt_care, det_care, iou_thresh)), len(gt_care), len(det_care))


def sum_counts(counts: Iterable[DetCounts]) -> DetCounts:
    """Dataset totals: matched/gt/det summed over images (P/R/hmean then come from the totals, as DetMetric)."""
    total = DetCounts(0, 0, 0)
    for c in counts:
        total = DetCounts(total.matched + c.matched, total.gt + c.gt, total.det + c.det)
    return total
