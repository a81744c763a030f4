"""Image sets: a folder (label = sub-folder name), a glob, a single image or a list file of ``path<TAB>label``
(PaddleOCR's label files) or ``path [label]`` lines; and the one loop that turns them into preprocessed batches."""
from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, TypeVar

import numpy as np

from deploy.errors import DataError
from deploy.data.pipeline import ImagePipeline, ImageRecord

log = logging.getLogger(__name__)

T = TypeVar("T")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


class LabelReader(Protocol):
    """How a task reads labels: from a list file's label column, or from an image's sub-folder name."""

    def read_label(self, text: str) -> Any:
        """The label written after the path in a list file; raises ValueError when malformed."""

    def folder_label(self, name: str) -> Any:
        """The label a sub-folder name stands for, or None."""


@dataclass(frozen=True)
class ImageItem:
    """One image, its position in the source, and its label as the task reads it (None when unknown)."""

    path: Path
    label: Any = None
    index: int = 0


def load_label_names(path: Optional[Path]) -> Optional[list[str]]:
    """Class names, one per line (line number = class id)."""
    if path is None:
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as e:
        raise DataError(f"cannot read label list {path}: {e.strerror or e}; fix postprocess.label_list") from e
    return [n for n in names if n]


def _from_folder(root: Path, labels: Optional[LabelReader]) -> list[ImageItem]:
    items = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        rel = path.relative_to(root)
        label = labels.folder_label(rel.parts[0]) if labels and len(rel.parts) > 1 else None
        items.append(ImageItem(path, label))
    return items


def _split_list_line(line: str) -> tuple[str, Optional[str]]:
    """'path<TAB>label' (PaddleOCR's label files), else 'path label' with a one-word label, else 'path'."""
    if "\t" in line:
        path, label = line.split("\t", 1)
        return path.strip(), label.strip() or None
    parts = line.strip().rsplit(maxsplit=1)
    if len(parts) == 2 and Path(parts[1]).suffix.lower() not in IMAGE_SUFFIXES:
        return parts[0], parts[1]
    return line.strip(), None


def _from_list_file(list_file: Path, labels: Optional[LabelReader]) -> list[ImageItem]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read list file {list_file}: {e}; pass a folder, an image, a glob or a UTF-8 "
                        "list file of 'path[<TAB>label]' lines") from e
    items = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        path, text = _split_list_line(line)
        label = None
        if text is not None and labels is not None:
            try:
                label = labels.read_label(text)
            except ValueError as e:
                raise DataError(f"{list_file}:{lineno}: bad label {text[:60]!r}: {e}") from e
        items.append(ImageItem((list_file.parent / path).resolve(), label))
    return items


def list_images(source: Path | str, labels: Optional[LabelReader] = None) -> list[ImageItem]:
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
            items = _from_folder(path, labels)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            items = [ImageItem(path)]
        else:
            items = _from_list_file(path, labels)
    if not items:
        raise DataError(f"no images found in {source} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return [replace(item, index=i) for i, item in enumerate(items)]


@dataclass
class Batch:
    """Preprocessed images that decoded fine, stacked (padded by batch_pad), with their items and records."""

    items: list[ImageItem]
    array: np.ndarray
    records: list[ImageRecord]


SORT_WINDOW_BATCHES = 16  # sort_by_width looks this many batches ahead: bounded memory, little padding


def group_batches(pairs: Iterable[tuple[T, np.ndarray]], pipeline: ImagePipeline,
                  batch_size: int) -> Iterator[tuple[list[T], np.ndarray]]:
    """Stack (key, array) pairs into batches of ``batch_size``.

    Models with dynamic H/W get images of different preprocessed shapes. With ``batch_pad`` in the pipeline a
    batch takes the images in order (or, with sort_by_width, sorted by width within a window of batches) and
    pads them to its largest; without it, each shape fills its own batches (so batches may come out of input
    order) and a batch is short only at the end of a shape.
    """
    pad = pipeline.batch_pad
    if pad is not None and pad.sort_by_width:
        yield from _sorted_batches(pairs, pipeline, batch_size)
        return
    pending: dict[tuple[int, ...], list[tuple[T, np.ndarray]]] = {}
    for key, array in pairs:
        shape = () if pad is not None else array.shape
        bucket = pending.setdefault(shape, [])
        bucket.append((key, array))
        if len(bucket) == batch_size:
            del pending[shape]
            yield [k for k, _ in bucket], pipeline.batch([a for _, a in bucket])
    for bucket in pending.values():
        yield [k for k, _ in bucket], pipeline.batch([a for _, a in bucket])


def _sorted_batches(pairs: Iterable[tuple[T, np.ndarray]], pipeline: ImagePipeline,
                    batch_size: int) -> Iterator[tuple[list[T], np.ndarray]]:
    window: list[tuple[T, np.ndarray]] = []

    def flush() -> Iterator[tuple[list[T], np.ndarray]]:
        window.sort(key=lambda pair: pipeline.width_of(pair[1]))
        for i in range(0, len(window), batch_size):
            chunk = window[i:i + batch_size]
            yield [k for k, _ in chunk], pipeline.batch([a for _, a in chunk])
        window.clear()

    for pair in pairs:
        window.append(pair)
        if len(window) == batch_size * SORT_WINDOW_BATCHES:
            yield from flush()
    yield from flush()


def iter_batches(items: list[ImageItem], pipeline: ImagePipeline, batch_size: int,
                 on_skip: Optional[Callable[[ImageItem, DataError], None]] = None,
                 progress: Optional[Callable[[int], None]] = None) -> Iterator[Batch]:
    """Preprocess ``items`` into batches (see group_batches); an unreadable image goes to ``on_skip`` (or raises
    without it)."""

    def preprocessed() -> Iterator[tuple[tuple[ImageItem, ImageRecord], np.ndarray]]:
        for item in items:
            try:
                array, record = pipeline.load(item.path)
            except DataError as e:
                if on_skip is None:
                    raise
                on_skip(item, e)
                array = None
            if progress:
                progress(1)
            if array is not None:
                yield (item, record), array

    for keys, array in group_batches(preprocessed(), pipeline, batch_size):
        yield Batch([item for item, _ in keys], array, [record for _, record in keys])
