import cv2
import numpy as np
import pytest

from deploy.errors import DataError
from deploy.data.pipeline import (CenterCrop, Decode, ImagePipeline, Normalize, Pad, Resize, ResizeKeepRatio, ToCHW,
                               ops_fingerprint)


@pytest.fixture
def color_png(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    path = tmp_path / "c.png"
    cv2.imwrite(str(path), img)
    return path, img


def test_pipeline_matches_a_direct_numpy_computation(color_png):
    path, img = color_png
    pipe = ImagePipeline([Decode("RGB"), Resize(size=[20, 30]), CenterCrop([16, 16]),
                          Normalize(scale=1 / 255, mean=[0.1, 0.2, 0.3], std=[0.5, 0.4, 0.3]), ToCHW()])
    out = pipe(path)
    rgb = cv2.resize(img[:, :, ::-1], (30, 20), interpolation=cv2.INTER_LINEAR)[2:18, 7:23].astype(np.float32)
    expected = ((rgb / 255 - np.array([0.1, 0.2, 0.3], np.float32)) / np.array([0.5, 0.4, 0.3], np.float32))
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)


def test_short_side_and_keep_ratio_with_pad(color_png):
    path, _ = color_png
    assert ImagePipeline([Decode(), Resize(short_side=20)])(path).shape == (20, 30, 3)
    out = ImagePipeline([Decode(), ResizeKeepRatio(height=10, max_width=40), Pad(size=[10, 40], value=-1.0)])(path)
    assert out.shape == (10, 40, 3)
    assert np.all(out[:, 15:] == -1.0) and np.all(out[:, :15] >= 0)  # ceil(10 * 60 / 40) = 15 columns of image


def test_corrupt_and_missing_images_raise_data_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    pipe = ImagePipeline([Decode("GRAY")])
    with pytest.raises(DataError, match="cannot decode image"):
        pipe(bad)
    with pytest.raises(DataError, match="cannot read image"):
        pipe(tmp_path / "missing.png")


def test_normalize_channel_mismatch_is_clear(color_png):
    path, _ = color_png
    assert ImagePipeline([Decode("GRAY"), Normalize(mean=[0.1], std=[0.2])])(path).shape == (40, 60, 1)
    with pytest.raises(DataError, match="2 mean/std values but the image has 3 channels"):
        ImagePipeline([Decode("RGB"), Normalize(mean=[0.1, 0.2], std=[0.2, 0.3])])(path)


def test_fingerprint_changes_with_ops():
    a = ops_fingerprint([Decode("GRAY"), Resize(size=28)])
    assert a == ops_fingerprint([Decode("GRAY"), Resize(size=28)])
    assert a != ops_fingerprint([Decode("GRAY"), Resize(size=32)])
