"""Image sets: a folder (label = sub-folder name), a glob, a single image or a list file of ``path<TAB>label``
(PaddleOCR's label files) or ``path [label]`` lines; and the one loop that turns them into preprocessed batches."""
from __future__ import annotations

import collections
import glob
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, TypeVar

import numpy as np

from deploy.errors import DataError
from deploy.data.pipeline import ImagePipeline, ImageRecord

log = logging.getLogger(__name__)

T = TypeVar("T")
BOM = "\ufeff"
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
        lines = list_file.read_text(encoding="utf-8").splitlines()  # parse_list_lines drops a BOM
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read list file {list_file}: {e}; pass a folder, an image, a glob or a UTF-8 "
                        "list file of 'path[<TAB>label]' lines") from e
    return [ImageItem((list_file.parent / path).resolve(), label)
            for path, label in parse_list_lines(lines, labels, str(list_file))]


def parse_list_lines(lines: list[str], labels: Optional[LabelReader], where: str) -> list[tuple[str, Any]]:
    """(path as written, label or None) per line of a list file; blank and '#' lines skipped; a malformed
    label is a DataError naming ``where`` and the line. A UTF-8 byte order mark (Windows editors write one)
    is not part of the first path."""
    entries = []
    if lines and lines[0].startswith(BOM):
        lines = [lines[0][len(BOM):], *lines[1:]]
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        path, text = _split_list_line(line)
        label = None
        if text is not None and labels is not None:
            try:
                label = labels.read_label(text)
            except ValueError as e:
                raise DataError(f"{where}:{lineno}: bad label {text[:60]!r}: {e}") from e
        entries.append((path, label))
    return entries


def seeded_order(items: list[ImageItem], seed: int) -> list[ImageItem]:
    """``items`` in the seeded order calibration samples from (the INT8 check takes the ones the sample left)."""
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


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


def nothing_read(count: int, what: str, first: DataError, source: Any = None) -> DataError:
    """The error of a run in which not one of ``count`` inputs (``what``: images, documents) could be read: the
    input's own error when there was one."""
    if count == 1:
        return first
    where = f" in {source}" if source is not None else ""
    return DataError(f"none of the {count} {what}{where} could be read (the first: {first}); fix the files or "
                     "the paths")


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


@dataclass(frozen=True)
class Loading:
    """How images are read: ``prefetch`` batches prepared ahead in a background thread (0 = on the calling
    thread), each image decoded and preprocessed by one of ``threads``. Results and their order do not change."""

    prefetch: int = 0
    threads: int = 1

    @classmethod
    def of(cls, runtime: Any, overlaps: bool = True) -> "Loading":
        """The config's runtime.prefetch_batches and runtime.decode_threads. ``overlaps``: whether the caller has
        work a background thread can run beside (an engine that releases the GIL while it runs); without it,
        prefetching only adds hand-offs and competes for the cores, so the batches are made on the caller's
        thread."""
        return cls(runtime.prefetch_batches if overlaps else 0, runtime.decode_threads)


def ordered_map(fn: Callable[[T], Any], items: Iterable[T], threads: int, ahead: int) -> Iterator[Any]:
    """``map(fn, items)`` on ``threads`` threads, at most ``ahead`` items in flight, results in input order.

    OpenCV's decode and resize release the GIL, so the threads decode in parallel. Unlike
    ThreadPoolExecutor.map this does not submit every item up front (a million paths stay paths)."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        pending: collections.deque = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


_END = object()


def prefetch(source: Iterator[T], depth: int) -> Iterator[T]:
    """Run ``source`` in a background thread up to ``depth`` items ahead; yield its items in order.

    An exception in ``source`` is raised here, at the item where it happened. Closing this generator (a
    ``break``, an error in the consumer) stops the thread and closes ``source`` within one item."""
    if depth <= 0:
        yield from source
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put((True, item)):
                    return
            put((True, _END))
        except BaseException as e:  # handed to the consumer, which raises it
            put((False, e))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = slots.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def load_images(items: Iterable[ImageItem], pipeline: ImagePipeline, threads: int = 1,
                ahead: int = 64) -> Iterator[tuple[ImageItem, tuple[np.ndarray, ImageRecord] | DataError]]:
    """Each item with its decoded, preprocessed array and record, or the DataError that stopped it; in order."""

    def load(item: ImageItem) -> tuple[ImageItem, tuple[np.ndarray, ImageRecord] | DataError]:
        try:
            return item, pipeline.load(item.path)
        except DataError as e:
            return item, e

    return ordered_map(load, items, threads, ahead)


def iter_batches(items: Iterable[ImageItem], pipeline: ImagePipeline, batch_size: int,
                 on_skip: Optional[Callable[[ImageItem, DataError], None]] = None,
                 progress: Optional[Callable[[int], None]] = None,
                 loading: Loading = Loading()) -> Iterator[Batch]:
    """Preprocess ``items`` into batches (see group_batches); an unreadable image goes to ``on_skip`` (or raises
    without it). With ``loading.prefetch`` the batches are made in a background thread while the caller runs
    the previous ones; ``on_skip`` and ``progress`` are then called from that thread."""

    def preprocessed() -> Iterator[tuple[tuple[ImageItem, ImageRecord], np.ndarray]]:
        for item, loaded in load_images(items, pipeline, loading.threads, max(batch_size, 1) * 2):
            if progress:
                progress(1)
            if isinstance(loaded, DataError):
                if on_skip is None:
                    raise loaded
                on_skip(item, loaded)
                continue
            array, record = loaded
            yield (item, record), array

    def batches() -> Iterator[Batch]:
        for keys, array in group_batches(preprocessed(), pipeline, batch_size):
            yield Batch([item for item, _ in keys], array, [record for _, record in keys])

    return prefetch(batches(), loading.prefetch)
