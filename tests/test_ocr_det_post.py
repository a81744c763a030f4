"""DB post-processing and detection metric (deploy/tasks/ocr_det_post.py) on synthetic maps: no paddle, no models.

Text boxes are drawn as DB's training target would be: the probability "kernel" is the box shrunk by
D = A * (1 - 0.4^2) / L, so unclip_ratio 1.5 should give back (about) the box.
"""
from __future__ import annotations

import cv2
import numpy as np
import pyclipper
import pytest
from shapely.geometry import Polygon

from deploy.tasks.ocr_det_post import (DBParams, DetCounts, db_boxes, match_detections, match_pairs,
                                       order_points_clockwise, polygon_iou, sum_counts)

MAP_HW = (320, 480)
SRC_HW = (640, 960)  # twice the map: boxes must come back in original pixels
SHRINK_RATIO = 0.4


def rect(cx: float, cy: float, w: float, h: float, angle: float = 0.0) -> np.ndarray:
    """Corners [4, 2] of a (possibly rotated) rectangle."""
    return cv2.boxPoints(((cx, cy), (w, h), angle)).astype(np.float64)


def shrink(poly: np.ndarray, ratio: float = SHRINK_RATIO) -> np.ndarray:
    """DB's training-time kernel: the polygon offset inwards by A * (1 - r^2) / L."""
    shape = Polygon(poly)
    distance = shape.area * (1 - ratio ** 2) / shape.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(np.round(poly).astype(np.int64).tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return np.asarray(offset.Execute(-distance)[0], np.int32)


def draw(prob: np.ndarray, src_box: np.ndarray, value: float = 0.9, src_hw=SRC_HW) -> np.ndarray:
    """Paint the shrunk kernel of a box given in ORIGINAL pixels onto the map; returns the map."""
    scale = np.array([prob.shape[1] / src_hw[1], prob.shape[0] / src_hw[0]])
    cv2.fillPoly(prob, [shrink(src_box * scale)], value)
    return prob


def blank(hw=MAP_HW) -> np.ndarray:
    return np.zeros(hw, np.float32)


def best_iou(expected: np.ndarray, boxes: np.ndarray) -> float:
    return max((polygon_iou(expected, b) for b in boxes), default=0.0)


def signed_area(box: np.ndarray) -> float:
    """Shoelace area; positive means clockwise on screen (y axis pointing down)."""
    x, y = box[:, 0], box[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


# ---------------------------------------------------------------------------------------------------------------
# db_boxes


def test_axis_aligned_and_rotated_boxes_land_on_the_original_text():
    expected = [rect(300, 200, 320, 160), rect(660, 440, 300, 140, 25), rect(200, 500, 240, 120, -40)]
    prob = blank()
    for box in expected:
        draw(prob, box)
    boxes, scores = db_boxes(prob, SRC_HW, DBParams())
    assert boxes.shape == (3, 4, 2) and boxes.dtype == np.float32
    assert scores.shape == (3,) and scores.dtype == np.float32
    for box in expected:
        assert best_iou(box, boxes) >= 0.8
    assert np.all((scores >= 0.6) & (scores <= 0.9 + 1e-6))
    # Whole pixels inside the original image.
    assert np.array_equal(boxes, np.round(boxes))
    assert boxes[..., 0].min() >= 0 and boxes[..., 0].max() <= SRC_HW[1] - 1
    assert boxes[..., 1].min() >= 0 and boxes[..., 1].max() <= SRC_HW[0] - 1


def test_points_are_clockwise_from_top_left():
    prob = draw(draw(blank(), rect(300, 200, 320, 160)), rect(660, 440, 300, 140, 25))
    boxes, _ = db_boxes(prob, SRC_HW, DBParams())
    axis = boxes[np.argmin(boxes[:, :, 0].min(axis=1))]  # the axis-aligned one is left-most
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = axis
    assert x0 < x1 and y0 == y1 and x2 == x1 and y2 > y1 and x3 == x0 and y3 == y2
    for box in boxes:
        assert signed_area(box) > 0
        assert np.argmin(box.sum(axis=1)) == 0 and np.argmax(box.sum(axis=1)) == 2


def test_order_points_clockwise_sum_diff_rule():
    shuffled = np.array([[10, 50], [90, 10], [10, 10], [90, 50]], np.float32)
    assert order_points_clockwise(shuffled).tolist() == [[10, 10], [90, 10], [90, 50], [10, 50]]
    rng = np.random.default_rng(1)
    for _ in range(200):
        box = rect(*rng.uniform(50, 500, 2), *rng.uniform(5, 300, 2), rng.uniform(-90, 90))
        assert signed_area(order_points_clockwise(box)) > 0


def test_non_uniform_scale_to_source():
    src_hw = (400, 1200)  # x scale 2.5, y scale 1.25 from the 320x480 map
    box = rect(600, 200, 400, 200)
    prob = draw(blank(), box, src_hw=src_hw)
    boxes, _ = db_boxes(prob, src_hw, DBParams())
    assert len(boxes) == 1 and polygon_iou(box, boxes[0]) >= 0.8


def test_box_thresh_drops_faint_region_and_score_modes_agree_on_rectangles():
    bright, faint = rect(300, 200, 320, 160), rect(700, 450, 300, 150)
    prob = draw(draw(blank(), bright, 0.9), faint, 0.5)  # faint: above thresh 0.3, below box_thresh 0.6
    for mode in ("fast", "slow"):
        boxes, scores = db_boxes(prob, SRC_HW, DBParams(score_mode=mode))
        assert len(boxes) == 1 and best_iou(bright, boxes) >= 0.8
        assert scores[0] == pytest.approx(0.9, abs=0.05)
    boxes, _ = db_boxes(prob, SRC_HW, DBParams(box_thresh=0.45))
    assert len(boxes) == 2


def test_score_equal_to_box_thresh_is_kept():
    prob = draw(blank(), rect(300, 200, 320, 160), 0.5)
    boxes, scores = db_boxes(prob, SRC_HW, DBParams(score_mode="slow", box_thresh=float(np.float32(0.5))))
    assert len(boxes) == 1 and scores[0] == pytest.approx(0.5)


def test_thresh_is_strict():
    prob = draw(blank(), rect(300, 200, 320, 160), 0.3)
    assert len(db_boxes(prob, SRC_HW, DBParams(thresh=0.3, box_thresh=0.1))[0]) == 0
    assert len(db_boxes(prob, SRC_HW, DBParams(thresh=0.29, box_thresh=0.1))[0]) == 1


def test_max_candidates_caps_contours_examined():
    prob = blank()
    for i in range(5):
        draw(prob, rect(120 + 180 * i, 320, 140, 100))
    assert len(db_boxes(prob, SRC_HW, DBParams())[0]) == 5
    assert len(db_boxes(prob, SRC_HW, DBParams(max_candidates=2))[0]) == 2
    assert len(db_boxes(prob, SRC_HW, DBParams(max_candidates=0))[0]) == 0


def test_tiny_blobs_removed():
    prob = blank()
    prob[10:12, 10:12] = 0.9  # 2x2 px: min-area rect side 1 < min_size 3
    assert len(db_boxes(prob, SRC_HW, DBParams())[0]) == 0
    # 4 px tall: short side 3 passes min_size; the unclipped box must then reach min_size + 2.
    prob = blank()
    prob[100:104, 100:130] = 0.9
    assert len(db_boxes(prob, SRC_HW, DBParams())[0]) == 1
    assert len(db_boxes(prob, SRC_HW, DBParams(unclip_ratio=0.2))[0]) == 0  # offset < 0.5 px: nothing grows
    # A blob that survives in map pixels but is <= 3 px in a much smaller original (filter_tag_det_res's rule).
    prob = blank()
    prob[200:210, 200:210] = 0.9
    assert len(db_boxes(prob, SRC_HW, DBParams())[0]) == 1
    assert len(db_boxes(prob, (32, 48), DBParams())[0]) == 0


def test_boxes_are_clipped_to_the_image():
    prob = draw(blank(), rect(80, 80, 240, 160))
    prob[:60, :60] = 0.9  # kernel runs into the corner: the unclipped box pokes outside the map
    boxes, _ = db_boxes(prob, SRC_HW, DBParams())
    assert len(boxes) == 1
    assert boxes[0].min() == 0
    prob = np.full(MAP_HW, 0.9, np.float32)
    boxes, _ = db_boxes(prob, SRC_HW, DBParams())
    assert boxes.tolist() == [[[0, 0], [959, 0], [959, 639], [0, 639]]]


def test_dilation_joins_a_one_pixel_gap():
    prob = blank()
    prob[100:140, 100:160] = 0.9
    prob[100:140, 161:220] = 0.9
    assert len(db_boxes(prob, SRC_HW, DBParams())[0]) == 2
    assert len(db_boxes(prob, SRC_HW, DBParams(use_dilation=True))[0]) == 1


def test_empty_map_gives_empty_arrays():
    boxes, scores = db_boxes(blank(), SRC_HW, DBParams())
    assert boxes.shape == (0, 4, 2) and boxes.dtype == np.float32
    assert scores.shape == (0,) and scores.dtype == np.float32


def test_bad_inputs():
    with pytest.raises(ValueError):
        DBParams(score_mode="medium")
    with pytest.raises(ValueError):
        db_boxes(np.zeros((1, 32, 32), np.float32), SRC_HW, DBParams())


# ---------------------------------------------------------------------------------------------------------------
# metric


def square(x: float, y: float, size: float = 10) -> np.ndarray:
    return np.array([[x, y], [x + size, y], [x + size, y + size], [x, y + size]], np.float64)


def test_polygon_iou_known_squares():
    a = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], np.float64)
    assert polygon_iou(a, a) == pytest.approx(1.0)
    assert polygon_iou(a, a + [1, 0]) == pytest.approx(2 / 6)
    assert polygon_iou(a, a + [1, 1]) == pytest.approx(1 / 7)
    assert polygon_iou(a, a + [5, 5]) == 0.0
    assert polygon_iou(a, a[::-1]) == pytest.approx(1.0)  # orientation does not matter
    line = np.array([[0, 0], [1, 1], [2, 2], [3, 3]], np.float64)
    assert polygon_iou(a, line) == 0.0  # zero-area polygon
    assert polygon_iou(a, a[:2]) == 0.0  # too few points
    bowtie = np.array([[0, 0], [2, 2], [2, 0], [0, 2]], np.float64)
    assert 0.0 <= polygon_iou(a, bowtie) <= 1.0  # repaired by buffer(0), not an exception


def test_hand_computed_case_with_dont_care_and_conflict():
    gt = [square(0, 0), square(20, 0), square(40, 0)]
    ignore = [False, False, True]  # gt 2 is "###"
    det = [square(0, 0),  # exact match of gt 0
           square(1, 0),  # also IoU 90/110 with gt 0, but gt 0 is taken: unmatched, counts as a false positive
           square(41, 1, 8),  # inside the don't-care gt: dropped from the detections
           square(100, 100)]  # plain false positive
    counts = match_detections(gt, det, ignore=ignore)
    assert (counts.matched, counts.gt, counts.det) == (1, 2, 3)
    assert counts.precision == pytest.approx(1 / 3)
    assert counts.recall == pytest.approx(1 / 2)
    assert counts.hmean == pytest.approx(0.4)
    assert match_pairs(gt, det, ignore=ignore) == [(0, 0)]


def test_greedy_takes_the_first_det_not_the_best():
    gt = [square(0, 0)]
    det = [square(1, 0), square(0, 0)]  # the worse det comes first and wins
    assert match_pairs(gt, det) == [(0, 0)]
    gt = [square(0, 0), square(2, 0)]
    det = [square(1, 0)]  # IoU 90/110 with both gts: the first gt takes it
    assert match_pairs(gt, det) == [(0, 0)]


def test_iou_threshold_is_strict():
    gt = [np.array([[0, 0], [2, 0], [2, 2], [0, 2]], np.float64)]
    det = [np.array([[0, 0], [2, 0], [2, 1], [0, 1]], np.float64)]  # IoU exactly 0.5
    assert match_detections(gt, det).matched == 0
    assert match_detections(gt, det, iou_thresh=0.49).matched == 1


def test_dont_care_overlap_is_strict_and_uses_the_det_area():
    gt = [square(0, 0)]
    half_in = [np.array([[5, 0], [15, 0], [15, 10], [5, 10]], np.float64)]  # exactly 50% of its area inside
    assert match_detections(gt, half_in, ignore=[True]) == DetCounts(0, 0, 1)
    mostly_in = [np.array([[4, 0], [14, 0], [14, 10], [4, 10]], np.float64)]
    assert match_detections(gt, mostly_in, ignore=[True]) == DetCounts(0, 0, 0)
    big = [square(-10, -10, 40)]  # covers the don't-care gt but mostly lies outside it: still counts
    assert match_detections(gt, big, ignore=[True]) == DetCounts(0, 0, 1)


def test_invalid_polygons_are_skipped_but_indices_are_kept():
    bowtie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], np.float64)
    gt = [bowtie, square(20, 0)]
    det = [bowtie, square(20, 0)]
    assert match_pairs(gt, det) == [(1, 1)]
    assert match_detections(gt, det) == DetCounts(1, 1, 1)


def test_ignore_length_must_match():
    with pytest.raises(ValueError):
        match_detections([square(0, 0)], [], ignore=[True, False])


def test_empty_images_and_dataset_totals():
    empty = match_detections([], [])
    assert empty == DetCounts(0, 0, 0)
    assert (empty.precision, empty.recall, empty.hmean) == (0.0, 0.0, 0.0)
    only_gt = match_detections([square(0, 0)], [])
    only_det = match_detections([], [square(0, 0)])
    perfect = match_detections([square(0, 0), square(20, 0)], [square(20, 0), square(0, 0)])
    assert perfect == DetCounts(2, 2, 2)
    total = sum_counts([empty, only_gt, only_det, perfect])
    assert total == DetCounts(2, 3, 3)
    assert total.precision == pytest.approx(2 / 3) and total.recall == pytest.approx(2 / 3)
    assert total.hmean == pytest.approx(2 / 3)
    assert sum_counts([]) == DetCounts(0, 0, 0)
