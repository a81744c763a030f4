"""Image sets: a folder (label = sub-folder name), a glob, a single image or a list file ``path [label]``;
and the one loop that turns them into preprocessed batches."""
from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, TypeVar

import numpy as np

from deploy.errors import DataError
from deploy.data.pipeline import ImagePipeline

log = logging.getLogger(__name__)

T = TypeVar("T")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@dataclass(frozen=True)
class ImageItem:
    """One image and its class id (None when unknown)."""

    path: Path
    label: Optional[int] = None


def load_label_names(path: Optional[Path]) -> Optional[list[str]]:
    """Class names, one per line (line number = class id)."""
    if path is None:
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as e:
        raise DataError(f"cannot read label list {path}: {e.strerror or e}; fix postprocess.label_list") from e
    return [n for n in names if n]


def _label_id(name: str, label_names: Optional[list[str]]) -> Optional[int]:
    if label_names and name in label_names:
        return label_names.index(name)
    if name.isdigit():
        return int(name)
    return None


def _from_folder(root: Path, label_names: Optional[list[str]]) -> list[ImageItem]:
    items = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        rel = path.relative_to(root)
        label = _label_id(rel.parts[0], label_names) if len(rel.parts) > 1 else None
        items.append(ImageItem(path, label))
    return items


def _from_list_file(list_file: Path, label_names: Optional[list[str]]) -> list[ImageItem]:
    items = []
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.strip().rsplit(maxsplit=1)
        if not parts or line.lstrip().startswith("#"):
            continue
        if len(parts) == 2 and (parts[1].isdigit() or (label_names and parts[1] in label_names)):
            path, label = parts[0], _label_id(parts[1], label_names)
        else:
            path, label = line.strip(), None
        items.append(ImageItem((list_file.parent / path).resolve(), label))
    return items


def list_images(source: Path | str, label_names: Optional[list[str]] = None) -> list[ImageItem]:
    """All images named by ``source`` (folder, glob, image file or list file); DataError when none."""
    text = str(source)
    if any(ch in text for ch in "*?["):
        items = [ImageItem(Path(p)) for p in sorted(glob.glob(text, recursive=True))
                 if Path(p).suffix.lower() in IMAGE_SUFFIXES]
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"image source not found: {path}; pass a folder, an image, a glob or a list file")
        if path.is_dir():
            items = _from_folder(path, label_names)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            items = [ImageItem(path)]
        else:
            items = _from_list_file(path, label_names)
    if not items:
        raise DataError(f"no images found in {source} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return items


@dataclass
class Batch:
    """Preprocessed images that decoded fine, stacked, with their items."""

    items: list[ImageItem]
    array: np.ndarray


def group_batches(pairs: Iterable[tuple[T, np.ndarray]], pipeline: ImagePipeline,
                  batch_size: int) -> Iterator[tuple[list[T], np.ndarray]]:
    """Stack (key, array) pairs into batches of ``batch_size``.

    Models with dynamic H/W get images of different preprocessed shapes. With ``batch_pad`` in the pipeline a
    batch takes the images in order and pads them to its largest; without it, each shape fills its own batches
    (so batches may come out of input order) and a batch is short only at the end of a shape.
    """
    pending: dict[tuple[int, ...], list[tuple[T, np.ndarray]]] = {}
    for key, array in pairs:
        shape = () if pipeline.batch_pad is not None else array.shape
        bucket = pending.setdefault(shape, [])
        bucket.append((key, array))
        if len(bucket) == batch_size:
            del pending[shape]
            yield [k for k, _ in bucket], pipeline.batch([a for _, a in bucket])
    for bucket in pending.values():
        yield [k for k, _ in bucket], pipeline.batch([a for _, a in bucket])


def iter_batches(items: list[ImageItem], pipeline: ImagePipeline, batch_size: int,
                 on_skip: Optional[Callable[[ImageItem, DataError], None]] = None,
                 progress: Optional[Callable[[int], None]] = None) -> Iterator[Batch]:
    """Preprocess ``items`` into batches (equal shapes together, see group_batches); an unreadable image goes
    to ``on_skip`` (or raises without it)."""

    def preprocessed() -> Iterator[tuple[ImageItem, np.ndarray]]:
        for item in items:
            try:
                array = pipeline(item.path)
            except DataError as e:
                if on_skip is None:
                    raise
                on_skip(item, e)
                array = None
            if progress:
                progress(1)
            if array is not None:
                yield item, array

    for batch_items, array in group_batches(preprocessed(), pipeline, batch_size):
        yield Batch(batch_items, array)
