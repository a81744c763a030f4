"""The one image reader on real files the tests write: transparent PNGs composited onto a background (as
PaddleOCR's alpha_to_color), and 16-bit, grayscale, palette, CMYK and EXIF-rotated images still decoded right."""
import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import LENET_CONFIG, run_tool, write_config
from deploy.config.loader import load_config
from deploy.data.pipeline import Decode, ImagePipeline, ops_fingerprint, read_image


# configs/_base_/preprocess/gray28.yml with transparent pixels composited onto black (MNIST's background)
BLACK_LENET_PREPROCESS = ("preprocess=[{decode: {mode: GRAY, background: [0, 0, 0]}}, "
                          "{resize: {size: [28, 28], interpolation: area}}, "
                          "{normalize: {scale: 0.00392156862745098, mean: [0.5], std: [0.5]}}, to_chw]")


def text_on_transparent(h=40, w=120) -> np.ndarray:
    """BGRA: black strokes (opaque) on a fully transparent background, with a half-transparent band."""
    image = np.zeros((h, w, 4), np.uint8)
    cv2.putText(image, "ab12", (5, 30), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0, 255), 2)
    image[:, 100:, :3], image[:, 100:, 3] = (0, 0, 200), 128  # red at 50% over the background
    return image


def test_transparent_png_is_composited_onto_white_by_default(tmp_path):
    bgra = text_on_transparent()
    path = tmp_path / "t.png"
    cv2.imwrite(str(path), bgra)
    out = read_image(path)
    assert out.shape == (40, 120, 3) and out.dtype == np.uint8
    transparent = bgra[:, :100, 3] == 0
    assert (out[:, :100][transparent] == 255).all()  # was black-on-black with IMREAD_COLOR
    assert (out[:, :100][bgra[:, :100, 3] == 255] == 0).all()  # the text stays black
    assert np.allclose(out[:, 100:].reshape(-1, 3)[0], [128, 128, 228], atol=1)  # 50% red over white
    assert (read_image(path, "GRAY")[:, :100][transparent] == 255).all()
    assert (read_image(path, "BGR", (0, 0, 0))[:, :100][transparent] == 0).all()


@pytest.mark.parametrize("kind", ["gray_alpha", "rgba16", "palette_trns", "webp"])
def test_other_alpha_layouts_are_composited(tmp_path, kind):
    alpha = np.zeros((20, 30), np.uint8)
    alpha[5:15, 5:25] = 255
    if kind == "gray_alpha":
        path = tmp_path / "la.png"
        Image.fromarray(np.stack([np.zeros_like(alpha), alpha], -1), "LA").save(path)
    elif kind == "rgba16":
        path = tmp_path / "rgba16.png"
        cv2.imwrite(str(path), np.dstack([np.zeros((20, 30, 3), np.uint16), alpha.astype(np.uint16) * 257]))
    elif kind == "palette_trns":
        path = tmp_path / "p.png"
        image = Image.fromarray(np.where(alpha > 0, 1, 0).astype(np.uint8), "P")
        image.putpalette([255, 0, 0, 0, 0, 0])  # index 0: red (transparent below), 1: black
        image.save(path, transparency=0)
    else:
        path = tmp_path / "a.webp"
        Image.fromarray(np.dstack([np.zeros((20, 30, 3), np.uint8), alpha]), "RGBA").save(path, lossless=True)
    out = read_image(path)
    assert out.shape == (20, 30, 3)
    assert (out[alpha == 0] == 255).all() and (out[alpha == 255] == 0).all()


def test_images_without_alpha_decode_as_before(tmp_path):
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (24, 32, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    assert np.array_equal(read_image(tmp_path / "c.png"), bgr)
    cv2.imwrite(str(tmp_path / "g.png"), bgr[:, :, 0])  # grayscale file -> 3 equal channels
    assert np.array_equal(read_image(tmp_path / "g.png"), np.repeat(bgr[:, :, :1], 3, axis=2))
    deep = bgr.astype(np.uint16) * 256 + 3  # 16-bit file -> its high byte, as IMREAD_COLOR gives
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    assert np.array_equal(read_image(tmp_path / "d.png"), bgr)
    rgb = read_image(tmp_path / "c.png", "RGB")
    assert np.array_equal(rgb, bgr[:, :, ::-1])


def test_cmyk_jpeg_and_exif_orientation(tmp_path):
    red = Image.new("RGB", (40, 20), (220, 30, 30))
    red.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    out = read_image(tmp_path / "cmyk.jpg")
    assert out.shape == (20, 40, 3) and np.allclose(out.reshape(-1, 3).mean(0), [30, 30, 220], atol=12)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    red.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    assert read_image(tmp_path / "rotated.jpg").shape == (40, 20, 3)


def test_background_is_a_config_key_and_default_keeps_old_fingerprints(tmp_path):
    cfg_path = write_config(tmp_path / "bg.yml", f"_base_: {LENET_CONFIG}\n")
    default = load_config(cfg_path)
    black = load_config(cfg_path, [BLACK_LENET_PREPROCESS])
    assert black.preprocess[0].background == [0, 0, 0]
    assert ops_fingerprint(black.preprocess) != ops_fingerprint(default.preprocess)
    # a default background is left out of the fingerprint: calibrations made before the key existed stay fresh
    assert ops_fingerprint([Decode("BGR")]) == ops_fingerprint([Decode("BGR", [255, 255, 255])])
    with pytest.raises(ValueError, match="background"):
        Decode("BGR", [0, 0])


def test_lenet_reads_a_transparent_digit_like_the_opaque_one(lenet, tmp_path):
    """A real model on real files: an MNIST digit saved as a transparent PNG (white strokes, alpha = ink) with a
    black background configured, and the same digit opaque, give the same top-1."""
    digit_path = sorted((lenet / "data" / "test").rglob("*.png"))[0]
    digit = cv2.imread(str(digit_path), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(tmp_path / "opaque.png"), digit)
    cv2.imwrite(str(tmp_path / "transparent.png"), np.dstack([np.full_like(digit, 255)] * 3 + [digit]))
    cfg = write_config(tmp_path / "lenet.yml", f"_base_: {LENET_CONFIG}\n")
    over = ["-o", BLACK_LENET_PREPROCESS]
    pipeline = ImagePipeline(load_config(cfg, [BLACK_LENET_PREPROCESS]).preprocess)
    a, _ = pipeline.load(tmp_path / "opaque.png")
    b, _ = pipeline.load(tmp_path / "transparent.png")
    assert np.abs(a - b).max() < 0.02
    results = [run_tool("infer", "-c", cfg, *over, "--image", tmp_path / name, "--quiet", check=True).stdout
               for name in ("opaque.png", "transparent.png")]
    assert results[0].splitlines()[0].split()[1:3] == results[1].splitlines()[0].split()[1:3]
