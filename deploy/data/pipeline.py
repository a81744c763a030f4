"""The one image pipeline: OpenCV decode, then the ordered ops from the YAML ``preprocess`` list.

Inference, calibration, evaluation and benchmarking all build their inputs through ``ImagePipeline``, so a
calibration set can never be preprocessed differently from what the model sees at inference.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union

import cv2
import numpy as np

from deploy.errors import ConfigError, DataError
from deploy.config.schema import build_dataclass, closest_key

WHITE = (255, 255, 255)
_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}
Interpolation = Literal["nearest", "linear", "area", "cubic", "lanczos"]
Size = Union[int, list[int]]


def _hw(size: Size, name: str) -> tuple[int, int]:
    if isinstance(size, int):
        size = [size, size]
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"'{name}' must be a positive integer or [height, width], got {size}")
    return int(size[0]), int(size[1])


@dataclass
class Decode:
    """Decode the file with OpenCV into HWC uint8 (GRAY gives one channel); transparent pixels (PNG, WebP, TIFF
    with alpha) are composited onto ``background`` (B, G, R), white by default as PaddleOCR's alpha_to_color."""

    mode: Literal["BGR", "RGB", "GRAY"] = "BGR"
    # Left out of the preprocess fingerprint at its default, so calibrations made before it existed stay fresh.
    background: list[int] = field(default_factory=lambda: list(WHITE), metadata={"fingerprint": "if_set"})

    def __post_init__(self) -> None:
        if len(self.background) != 3 or any(not 0 <= v <= 255 for v in self.background):
            raise ValueError(f"'background' must be [B, G, R] with values 0-255, got {self.background}")


@dataclass
class Resize:
    """Resize to a fixed [height, width], or so the short side has a given length."""

    size: Optional[Size] = None
    short_side: Optional[int] = None
    interpolation: Interpolation = "linear"

    def __post_init__(self) -> None:
        if (self.size is None) == (self.short_side is None):
            raise ValueError("resize takes exactly one of 'size' ([height, width]) or 'short_side'")
        if self.size is not None:
            _hw(self.size, "size")
        elif self.short_side <= 0:
            raise ValueError(f"'short_side' must be positive, got {self.short_side}")


@dataclass
class ResizeKeepRatio:
    """Resize to a fixed height keeping the aspect ratio (PP-OCR style). A line that would be wider than
    ``max_width`` is squeezed to it (``long_lines: squeeze``), or kept whole (``long_lines: split``: the ocr_rec
    task recognises it in pieces of at most ``max_width``, ``split_overlap`` px apart, and joins their texts)."""

    height: int = 48
    max_width: int = 192
    interpolation: Interpolation = "linear"
    # Left out of the preprocess fingerprint at their defaults, so calibrations made before they existed stay fresh.
    long_lines: Literal["squeeze", "split"] = field(default="squeeze", metadata={"fingerprint": "if_set"})
    split_overlap: int = field(default=96, metadata={"fingerprint": "if_set"})

    def __post_init__(self) -> None:
        if self.height <= 0 or self.max_width <= 0:
            raise ValueError("'height' and 'max_width' must be positive")
        if self.long_lines == "split" and not 0 <= self.split_overlap <= self.max_width // 2:
            raise ValueError(f"'split_overlap' must be 0 to max_width / 2 ({self.max_width // 2}), got "
                             f"{self.split_overlap}")


@dataclass
class ResizeLimitSide:
    """Scale so the longest side is at most ``limit_side_len`` (``limit_type: max``: never up; ``min``: the
    shortest at least, so small images are scaled up, by at most ``max_scale`` when set), then down again so the
    longest side is at most ``max_side_limit`` (when set), then round both sides to multiples of ``multiple``:
    PaddleOCR 3.x's DetResizeForTest (text_det_limit_type / text_det_limit_side_len / max_side_limit) for DB
    detectors, plus the upscale cap (not PaddleOCR's: tiny images with large text are read worse blown up)."""

    limit_side_len: int = 960
    limit_type: Literal["max", "min"] = "max"
    multiple: int = 32
    interpolation: Interpolation = "linear"
    # Left out of the preprocess fingerprint while unset, so calibrations made before they existed stay fresh.
    max_side_limit: Optional[int] = field(default=None, metadata={"fingerprint": "if_set"})
    max_scale: Optional[float] = field(default=None, metadata={"fingerprint": "if_set"})

    def __post_init__(self) -> None:
        if self.limit_side_len <= 0 or self.multiple <= 0:
            raise ValueError("'limit_side_len' and 'multiple' must be positive")
        if self.max_side_limit is not None and self.max_side_limit < self.multiple:
            raise ValueError(f"'max_side_limit' must be at least 'multiple' ({self.multiple}), got "
                             f"{self.max_side_limit}")
        if self.max_scale is not None and self.max_scale < 1:
            raise ValueError(f"'max_scale' caps scaling up, so it must be >= 1, got {self.max_scale}")


@dataclass
class CenterCrop:
    """Crop [height, width] from the centre; the image must be at least that large."""

    size: Size = 224

    def __post_init__(self) -> None:
        _hw(self.size, "size")


@dataclass
class Pad:
    """Pad on the right and bottom to [height, width] with a constant value (after normalize for PP-OCR)."""

    size: Size = 0
    value: float = 0.0

    def __post_init__(self) -> None:
        _hw(self.size, "size")


@dataclass
class Normalize:
    """out = (pixel * scale - mean) / std, per channel, as float32."""

    scale: float = 1.0 / 255.0
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must be non-zero")


@dataclass
class ToCHW:
    """HWC -> CHW."""


@dataclass
class BatchPad:
    """Pad each batch's images on the right and bottom to the largest height and width in the batch, with
    ``value`` (for models with dynamic H/W). Must be the last op. Without it, images whose preprocessed shapes
    differ are grouped into batches of equal shape instead."""

    value: float = 0.0
    min_size: Optional[Size] = None  # pad every batch to at least [height, width] (PP-OCR rec: [48, 320])
    sort_by_width: bool = False  # batch images of similar width together (PP-OCR rec sorts crops by aspect ratio)

    def __post_init__(self) -> None:
        if self.min_size is not None:
            _hw(self.min_size, "min_size")


OP_TYPES: dict[str, type] = {
    "decode": Decode,
    "resize": Resize,
    "resize_keep_ratio": ResizeKeepRatio,
    "resize_limit_side": ResizeLimitSide,
    "center_crop": CenterCrop,
    "pad": Pad,
    "normalize": Normalize,
    "to_chw": ToCHW,
    "batch_pad": BatchPad,
}


def parse_ops(raw: Any, where: Callable[[str], str], key: str = "preprocess") -> list[Any]:
    """Turn the YAML list of ``{op_name: {args}}`` into op dataclasses (first op must be decode)."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where(key)}: '{key}' must be a non-empty list of ops, e.g. [{{decode: {{mode: RGB}}}}]")
    ops = []
    for i, item in enumerate(raw):
        item_key = f"{key}[{i}]"
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"{where(item_key)}: each op is one mapping like {{resize: {{size: [224, 224]}}}}, "
                              f"got {item!r}")
        (name, args), = item.items()
        if name not in OP_TYPES:
            raise ConfigError(f"{where(item_key)}: unknown preprocess op '{name}'; {closest_key(name, list(OP_TYPES))}")
        ops.append(build_dataclass(OP_TYPES[name], args or {}, f"{item_key}.{name}", where))
    if not isinstance(ops[0], Decode):
        raise ConfigError(f"{where(key)}: the first preprocess op must be 'decode', got '{raw[0]}'")
    if any(isinstance(op, Decode) for op in ops[1:]):
        raise ConfigError(f"{where(key)}: 'decode' may appear only once, as the first op")
    if any(isinstance(op, BatchPad) for op in ops[:-1]):
        raise ConfigError(f"{where(key)}: 'batch_pad' pads whole batches, so it must be the last op")
    return ops


def _fingerprinted(op: Any) -> dict:
    """The op's fields, less those marked fingerprint: if_set while at their default (keys added later)."""
    values = asdict(op)
    for f in fields(op):
        if f.metadata.get("fingerprint") == "if_set" and values[f.name] == getattr(type(op)(), f.name):
            del values[f.name]
    return values


def ops_fingerprint(ops: list[Any]) -> str:
    """A stable hash of the preprocess ops, recorded with calibration artifacts."""
    text = json.dumps([[type(op).__name__, _fingerprinted(op)] for op in ops], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_image(path: Path, mode: str = "BGR", background: Sequence[int] = WHITE) -> np.ndarray:
    """The one place images are read: decode ``path`` into HWC uint8, or raise DataError."""
    return decode_image(_read_regular_file(Path(path)), mode, str(path), background)


def _not_regular(path: Path) -> DataError:
    return DataError(f"cannot read image {path}: not a regular file (a FIFO, device, socket or folder); "
                     "list only image files")


def _read_regular_file(path: Path) -> np.ndarray:
    """The bytes of ``path``; anything but a regular file is refused before it is opened (opening a FIFO blocks
    until a writer comes, a device may never end), and checked again on the open file in case it was swapped."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise _not_regular(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise _not_regular(path)
            return np.frombuffer(f.read(), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror or e}") from e


def _cv_reason(e: cv2.error) -> str:
    """OpenCV's own one-line reason (its str() spans lines and names its source files)."""
    return getattr(e, "err", None) or str(e).strip().splitlines()[-1]


def _may_have_alpha(data: np.ndarray) -> bool:
    """From the first bytes: a PNG with an alpha channel or a transparent palette entry, a WebP with alpha, or a
    TIFF (which may carry one). Everything else decodes in one pass."""
    head = data[:4096].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) > 25:
        return head[25] in (4, 6) or b"tRNS" in head[:head.find(b"IDAT") if b"IDAT" in head else None]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return head[12:16] == b"VP8L" or (head[12:16] == b"VP8X" and bool(head[20] & 0x10))
    return head[:4] in (b"II*\x00", b"MM\x00*")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """8 bits per channel, as IMREAD_COLOR gives (16-bit: the high byte; float: 0-1 scaled)."""
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if image.dtype.kind == "f":
        return np.clip(image * 255.0, 0, 255).astype(np.uint8)
    return image.astype(np.uint8, copy=False)


def _composite(image: np.ndarray, background: Sequence[int]) -> Optional[np.ndarray]:
    """BGR with the alpha channel of ``image`` (BGRA or gray + alpha, any depth) composited onto ``background``;
    None when it has no alpha channel."""
    if image.ndim != 3 or image.shape[2] not in (2, 4):
        return None
    image = _to_uint8(image)
    color = cv2.cvtColor(image[:, :, :1], cv2.COLOR_GRAY2BGR) if image.shape[2] == 2 else image[:, :, :3]
    alpha = image[:, :, -1:].astype(np.float32) / 255.0
    mixed = color.astype(np.float32) * alpha + np.asarray(background, np.float32) * (1.0 - alpha)
    return np.rint(mixed).astype(np.uint8)


def _decode_bgr_or_gray(data: np.ndarray, mode: str, background: Sequence[int]) -> Optional[np.ndarray]:
    if _may_have_alpha(data):
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        composited = _composite(image, background) if image is not None else None
        if composited is not None:
            return cv2.cvtColor(composited, cv2.COLOR_BGR2GRAY) if mode == "GRAY" else composited
    # IMREAD_COLOR applies EXIF orientation and turns gray, 16-bit, palette and CMYK images into 8-bit BGR.
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE if mode == "GRAY" else cv2.IMREAD_COLOR)


def decode_image(data: np.ndarray, mode: str, name: str, background: Sequence[int] = WHITE) -> np.ndarray:
    """Decode an encoded image (the bytes of a PNG, JPEG, ... file called ``name``) into HWC uint8; transparent
    pixels composited onto ``background`` (B, G, R)."""
    try:
        image = _decode_bgr_or_gray(data, mode, background) if data.size else None
        if image is not None and mode == "RGB":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    except cv2.error as e:
        raise DataError(f"cannot decode image {name}: OpenCV refused it ({_cv_reason(e)}); the file is corrupt or "
                        "has more pixels than OpenCV reads (2^30 unless the OPENCV_IO_MAX_IMAGE_PIXELS environment "
                        "variable raises it)") from e
    if image is None:
        raise DataError(f"cannot decode image {name}: not an image OpenCV can read, or the file is corrupt")
    return image[:, :, None] if mode == "GRAY" else image


def _resize(img: np.ndarray, op: Resize) -> np.ndarray:
    h, w = img.shape[:2]
    if op.size is not None:
        out_h, out_w = _hw(op.size, "size")
    else:
        ratio = op.short_side / min(h, w)
        out_h, out_w = max(1, round(h * ratio)), max(1, round(w * ratio))
    return cv2.resize(img, (out_w, out_h), interpolation=_INTERPOLATIONS[op.interpolation])


def _resize_keep_ratio(img: np.ndarray, op: ResizeKeepRatio) -> np.ndarray:
    h, w = img.shape[:2]
    out_w = max(1, int(math.ceil(op.height * w / h)))
    if op.long_lines == "squeeze":
        out_w = min(op.max_width, out_w)
    return cv2.resize(img, (out_w, op.height), interpolation=_INTERPOLATIONS[op.interpolation])


def limit_side_size(h: int, w: int, op: ResizeLimitSide) -> tuple[int, int]:
    """The (height, width) ``resize_limit_side`` gives an h x w image, as PaddleX's resize_image_type0."""
    side = max(h, w) if op.limit_type == "max" else min(h, w)
    out_of_limit = side > op.limit_side_len if op.limit_type == "max" else side < op.limit_side_len
    ratio = op.limit_side_len / side if out_of_limit else 1.0
    if op.max_scale is not None:
        ratio = min(ratio, op.max_scale)
    out_h, out_w = int(h * ratio), int(w * ratio)
    if op.max_side_limit is not None and max(out_h, out_w) > op.max_side_limit:
        cap = op.max_side_limit / max(out_h, out_w)
        out_h, out_w = int(out_h * cap), int(out_w * cap)

    def snap(n: int) -> int:
        return max(int(round(n / op.multiple) * op.multiple), op.multiple)

    return snap(out_h), snap(out_w)


def _resize_limit_side(img: np.ndarray, op: ResizeLimitSide) -> np.ndarray:
    out_h, out_w = limit_side_size(*img.shape[:2], op)
    return cv2.resize(img, (out_w, out_h), interpolation=_INTERPOLATIONS[op.interpolation])


def _center_crop(img: np.ndarray, op: CenterCrop) -> np.ndarray:
    ch, cw = _hw(op.size, "size")
    h, w = img.shape[:2]
    if h < ch or w < cw:
        raise DataError(f"center_crop {ch}x{cw} is larger than the image ({h}x{w}); resize first")
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top:top + ch, left:left + cw]


def _pad(img: np.ndarray, op: Pad) -> np.ndarray:
    th, tw = _hw(op.size, "size")
    h, w = img.shape[:2]
    if h > th or w > tw:
        raise DataError(f"pad to {th}x{tw} but the image is already {h}x{w}; resize first")
    out = np.full((th, tw) + img.shape[2:], op.value, dtype=np.float32)
    out[:h, :w] = img
    return out


def _normalize(img: np.ndarray, op: Normalize) -> np.ndarray:
    channels = img.shape[2]
    if len(op.mean) not in (1, channels):
        raise DataError(f"normalize has {len(op.mean)} mean/std values but the image has {channels} channels; "
                        "fix preprocess.normalize or decode.mode")
    mean = np.asarray(op.mean, dtype=np.float32)
    std = np.asarray(op.std, dtype=np.float32)
    return (img.astype(np.float32) * np.float32(op.scale) - mean) / std


def _as_hwc(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 3 else img[:, :, None]


_APPLY: dict[type, Callable[[np.ndarray, Any], np.ndarray]] = {
    Resize: lambda img, op: _as_hwc(_resize(img, op)),
    ResizeKeepRatio: lambda img, op: _as_hwc(_resize_keep_ratio(img, op)),
    ResizeLimitSide: lambda img, op: _as_hwc(_resize_limit_side(img, op)),
    CenterCrop: _center_crop,
    Pad: _pad,
    Normalize: _normalize,
    ToCHW: lambda img, op: np.ascontiguousarray(img.transpose(2, 0, 1)),
}


_RESIZES = (Resize, ResizeKeepRatio, ResizeLimitSide)


def _op_name(op: Any) -> str:
    """The op's name as the YAML writes it."""
    return next(name for name, cls in OP_TYPES.items() if isinstance(op, cls))


@dataclass(frozen=True)
class ImageRecord:
    """What preprocessing did to one image, for the tasks that map results back to it (boxes, polygons)."""

    src_hw: tuple[int, int]  # the decoded image's height and width
    resized_hw: tuple[int, int]  # after the last resize, before any crop or pad

    @property
    def scale_hw(self) -> tuple[float, float]:
        """resized / original, per axis (PaddleDetection's scale_factor, PaddleOCR's ratio_h, ratio_w)."""
        return self.resized_hw[0] / self.src_hw[0], self.resized_hw[1] / self.src_hw[1]


class ImagePipeline:
    """Decode a file and apply the configured ops: ``load`` gives the float32 array and its ImageRecord."""

    def __init__(self, ops: list[Any]):
        self.decode: Decode = ops[0]
        self.batch_pad: Optional[BatchPad] = ops[-1] if isinstance(ops[-1], BatchPad) else None
        self.ops = [op for op in ops[1:] if not isinstance(op, BatchPad)]
        self._spatial_axes = (1, 2) if any(isinstance(op, ToCHW) for op in self.ops) else (0, 1)

    def __call__(self, path: Path) -> np.ndarray:
        return self.load(path)[0]

    def load(self, path: Path) -> tuple[np.ndarray, ImageRecord]:
        """Decode ``path`` and preprocess it."""
        return self.apply(read_image(path, self.decode.mode, self.decode.background), str(path))

    def load_bytes(self, data: np.ndarray, name: str) -> tuple[np.ndarray, ImageRecord]:
        """Decode an image file's bytes (read from any filesystem) and preprocess it."""
        return self.apply(decode_image(data, self.decode.mode, name, self.decode.background), name)

    def apply(self, img: np.ndarray, name: str = "image") -> tuple[np.ndarray, ImageRecord]:
        """Preprocess an already decoded HWC uint8 image (in the decode op's channel order); an op OpenCV cannot
        run on it (``name``) is a DataError."""
        src_hw = resized_hw = img.shape[:2]
        for op in self.ops:
            try:
                img = _APPLY[type(op)](img, op)
            except cv2.error as e:
                raise DataError(f"cannot preprocess image {name}: OpenCV failed in {_op_name(op)} on the "
                                f"{src_hw[0]}x{src_hw[1]} image ({_cv_reason(e)}); fix the image or the op") from e
            if isinstance(op, _RESIZES):
                resized_hw = img.shape[:2]
        array = img.astype(np.float32, copy=False)
        return array, ImageRecord(tuple(src_hw), tuple(resized_hw))

    def batch(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Stack preprocessed images: all must share one shape, unless batch_pad pads them to the largest."""
        shape = self.batch_shape({a.shape for a in arrays})
        return np.stack([a if a.shape == shape else self._pad_to(a, shape) for a in arrays])

    def batch_shape(self, shapes: set[tuple[int, ...]]) -> tuple[int, ...]:
        """The shape of each image in a batch of preprocessed images of these shapes (see ``batch``)."""
        if self.batch_pad is not None and (len(shapes) > 1 or self.batch_pad.min_size is not None):
            return self._batch_shape(shapes)
        if len(shapes) > 1:
            raise DataError(f"preprocessed images have different shapes {sorted(shapes)}; batch equal shapes "
                            "together (data.iter_batches), or add a fixed-size resize/center_crop/pad op or "
                            "batch_pad to preprocess")
        return next(iter(shapes))

    def _batch_shape(self, shapes: set[tuple[int, ...]]) -> tuple[int, ...]:
        """The padded shape of a batch: the largest height and width; every other dim must agree."""
        fixed = {tuple(d for i, d in enumerate(s) if i not in self._spatial_axes) for s in shapes}
        if len(fixed) > 1 or len({len(s) for s in shapes}) > 1:
            raise DataError(f"batch_pad pads height and width only, but the images differ in channels: "
                            f"{sorted(shapes)}; fix decode.mode")
        shape = [max(s[i] for s in shapes) for i in range(len(next(iter(shapes))))]
        if self.batch_pad.min_size is not None:
            for axis, least in zip(self._spatial_axes, _hw(self.batch_pad.min_size, "min_size")):
                shape[axis] = max(shape[axis], least)
        return tuple(shape)

    def width_of(self, array: np.ndarray) -> int:
        """The width of a preprocessed image (for sorting by width)."""
        return array.shape[self._spatial_axes[1]]

    def _pad_to(self, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        widths = [(0, target - size) for size, target in zip(array.shape, shape)]
        return np.pad(array, widths, constant_values=np.float32(self.batch_pad.value))
