"""The detection task on a model with PaddleDetection's export interface (3 inputs: image, im_shape, scale_factor;
2 outputs: boxes [K, 6] and the box count per image), from YAML alone: infer, calibrate, eval. The model is the
hand-set stand-in of models/tiny_det (no real PaddleDetection model installs without a download), built small."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, error_line, run_tool, write_config
from deploy.config.loader import load_config
from deploy.data.pipeline import ImagePipeline
from deploy.data.sources import Batch, list_images
from deploy.engines.model import inspect_model
from deploy.engines.paddle import Predictor
from deploy.engines.plan import resolve_plan
from deploy.errors import DataError
from deploy.tasks.detection import DetectionTask, Detections, coco_map

BUILD = ROOT / "models" / "tiny_det" / "build.py"
CONFIG = ROOT / "configs" / "tiny_det.yml"


@pytest.fixture(scope="module")
def tiny_det(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_det")
    out = root / "tiny_det"
    subprocess.run([sys.executable, str(BUILD), "--out", str(out), "--test", "24", "--calib", "16", "--quiet"],
                   check=True, capture_output=True, timeout=300)
    cfg = write_config(root / "det.yml", f"""_base_: {CONFIG}
model: {{dir: {out / 'inference'}, build: null}}
postprocess: {{label_list: {out / 'data' / 'labels.txt'}}}
data: {{images: {out / 'data' / 'test' / 'labels.txt'}}}
calibration: {{images: {out / 'data' / 'calib' / 'labels.txt'}, num_images: 16}}
""")
    return cfg, out


def test_the_model_has_paddledetections_interface(tiny_det):
    cfg, _ = tiny_det
    info = inspect_model(resolve_plan(load_config(cfg), quiet=True).model)
    assert {i.name: i.shape for i in info.inputs} == {"image": [-1, 3, -1, -1], "im_shape": [-1, 2],
                                                      "scale_factor": [-1, 2]}


def test_feeds_come_from_the_image_records(tiny_det):
    """im_shape is each image's resized size and scale_factor resized / original, per image of a batch."""
    cfg_path, _ = tiny_det
    cfg = load_config(cfg_path)
    task, pipeline = DetectionTask(cfg), ImagePipeline(cfg.preprocess)
    items = list_images(cfg.data.images, task)[:2]
    loaded = [pipeline.load(item.path) for item in items]
    batch = Batch(items, np.stack([a for a, _ in loaded]), [r for _, r in loaded])
    feeds = task.feeds(batch, ["image", "im_shape", "scale_factor"])
    for i, (_, record) in enumerate(loaded):
        h, w = record.src_hw
        np.testing.assert_allclose(feeds["im_shape"][i], [320, 320])
        np.testing.assert_allclose(feeds["scale_factor"][i], [320 / h, 320 / w], rtol=1e-6)
    with Predictor(resolve_plan(cfg, quiet=True)) as predictor:
        results = task.predict(predictor, batch)
        with pytest.raises(DataError, match="nothing feeds model input 'scale_factor'"):
            predictor.run({k: v for k, v in feeds.items() if k != "scale_factor"})
    # boxes come back in original pixels: inside each (non-square) original image
    for result, (_, record) in zip(results, loaded):
        h, w = record.src_hw
        assert len(result.boxes) == 100 and (result.boxes[:, [0, 2]] <= w + 1e-3).all()
        assert (result.boxes[:, [1, 3]] <= h + 1e-3).all()


def test_infer_calibrate_eval_from_yaml_alone(tiny_det, tmp_path):
    cfg, _ = tiny_det
    out = tmp_path / "det.json"
    result = run_tool("infer", "-c", cfg, "--output", out, "--quiet", check=True)
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("summary: 24 images, 0 failures") and "mAP " in summary
    data = json.loads(out.read_text())
    record = data["results"][0]
    assert set(record) == {"path", "boxes", "classes", "scores", "label"} and data["task"] == "detection"
    assert all(len(b) == 4 for b in record["boxes"]) and set(record["classes"]) <= {"red", "green", "blue"}
    assert min(record["scores"]) >= 0.5  # postprocess.score_threshold
    assert data["summary"]["map50"] > 0.9 and 0.3 < data["summary"]["map"] < 1.0
    run_tool("calibrate", "-c", cfg, "--quiet", check=True)
    run_tool("eval", "-c", cfg, "--precisions", "fp32,int8", "--output-dir", tmp_path / "report", "--quiet",
             check=True)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["task"] == "detection"
    fp32, int8 = report["accuracy"]["results"]
    assert set(fp32) == {"label", "map", "map50", "agreement", "seconds"}
    assert fp32["map"] == pytest.approx(data["summary"]["map"]) and fp32["agreement"] == 1.0
    assert int8["map50"] > 0.9 and int8["agreement"] > 0.9
    assert [c["key"] for c in report["accuracy"]["columns"]["metrics"]] == ["map", "map50"]


def test_coco_map_against_hand_made_cases():
    truth = [Detections(np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32), np.array([0, 1]), np.ones(2))]
    perfect = [Detections(truth[0].boxes.copy(), np.array([0, 1]), np.array([0.9, 0.8]))]
    assert coco_map(perfect, truth) == pytest.approx((1.0, 1.0))
    wrong_class = [Detections(truth[0].boxes.copy(), np.array([1, 0]), np.array([0.9, 0.8]))]
    assert coco_map(wrong_class, truth) == (0.0, 0.0)
    shifted = [Detections(truth[0].boxes + np.float32([0, 0, 5, 0]), np.array([0, 1]), np.array([0.9, 0.8]))]
    mean_ap, ap50 = coco_map(shifted, truth)
    assert ap50 == pytest.approx(1.0) and mean_ap < 0.9  # IoU 0.67 and 0.8: matched at .5, not at .85


def test_bad_detection_label_names_the_line(tiny_det, tmp_path):
    cfg, out = tiny_det
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{out / 'data' / 'test' / '0000.png'}\t" + '[{"label": "purple", "bbox": [0, 0, 5, 5]}]\n')
    line = error_line(run_tool("infer", "-c", cfg, "--image", bad))
    assert f"{bad}:1: bad label" in line and "'purple' is not in postprocess.label_list" in line
