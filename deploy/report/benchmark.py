"""Latency, throughput, first-run time and memory of each run, per batch size.

Runs are interleaved so their ratio holds on a noisy machine: for each batch size every predictor is built,
then the runs take turns (the starting run rotating each round), so a burst of background load hits all of them
alike. Each turn is a block of BLOCK samples of both passes: predictor-only times the runs of batches decoded
before the block (nothing else on the cores); end to end takes each batch from the run's image pipeline (decode
+ preprocess in the background, runtime.prefetch_batches, for an engine that releases the GIL), runs it and
post-processes the outputs with the task, as infer.py does. Each block starts with one untimed run: a run
after a pause of a few ms is slower (the engine's threads went idle, its weights left the caches; up to 2x for
PP-OCR cls on OpenVINO at batch 1), so one predictor-only sample per turn had measured that, not the steady
state, and came out slower than end to end.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from deploy.data.sources import Batch, ImageItem, Loading, iter_batches, list_images
from deploy.errors import DataError
from deploy.engines.factory import AnyPredictor, create_predictor
from deploy.data.pipeline import ImagePipeline
from deploy.report.runs import Run

log = logging.getLogger(__name__)
PERCENTILES = (50, 90, 99)


@dataclass
class BenchOptions:
    """Batch sizes (default: the config's runtime.batch_size), warm-up and timed iterations, images to decode."""

    batch_sizes: list[int] = field(default_factory=list)
    warmup: int = 10
    iters: int = 100
    images: Optional[str] = None


@dataclass
class LatencyStats:
    """Milliseconds per batch."""

    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> "LatencyStats":
        ms = np.asarray(samples, dtype=np.float64) * 1000.0
        p50, p90, p99 = np.percentile(ms, PERCENTILES)
        return cls(float(ms.mean()), float(p50), float(p90), float(p99), float(ms.min()), float(ms.max()))


@dataclass
class BenchEntry:
    """One run at one batch size."""

    label: str
    batch_size: int
    threads: int
    build_ms: float
    first_run_ms: float  # predictor build + first batch (on TensorRT this includes the engine build)
    latency_ms: LatencyStats
    e2e_latency_ms: LatencyStats
    peak_rss_mb: float
    rss_added_mb: float
    gpu_memory_mb: Optional[float]
    samples_ms: list[float]
    e2e_samples_ms: list[float]
    throughput_ratio: Optional[float] = None  # vs the reference run at this batch size (median-based)
    e2e_throughput_ratio: Optional[float] = None

    @property
    def throughput_ips(self) -> float:
        return self.batch_size * 1000.0 / self.latency_ms.p50

    @property
    def e2e_throughput_ips(self) -> float:
        return self.batch_size * 1000.0 / self.e2e_latency_ms.p50

    def to_json(self) -> dict:
        data = asdict(self)
        samples, e2e_samples = data.pop("samples_ms"), data.pop("e2e_samples_ms")
        return {**data, "throughput_ips": self.throughput_ips, "e2e_throughput_ips": self.e2e_throughput_ips,
                "throughput_mean_ips": self.batch_size * 1000.0 / self.latency_ms.mean,
                "samples_ms": [round(s, 4) for s in samples], "e2e_samples_ms": [round(s, 4) for s in e2e_samples]}


@dataclass
class BenchmarkResult:
    """Every run at every batch size, and how it was measured."""

    reference: str
    batch_sizes: list[int]
    warmup: int
    iters: int
    images: str
    entries: list[BenchEntry]

    def to_json(self) -> dict:
        return {"reference": self.reference, "batch_sizes": self.batch_sizes, "warmup": self.warmup,
                "iters": self.iters, "images": self.images, "order": "blocks",
                "results": [e.to_json() for e in self.entries]}


# ---------------------------------------------------------------- memory


def _status_kb(key: str) -> Optional[float]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float:
    """Resident set size now."""
    kb = _status_kb("VmRSS")
    return (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM); no-op where unsupported."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset_peak_rss (or since start)."""
    kb = _status_kb("VmHWM")
    return (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


def gpu_memory_mb(run: Run) -> Optional[float]:
    """GPU memory this process holds on the run's GPU (via NVML), or None on CPU / without pynvml."""
    if run.plan.device != "gpu":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(run.plan.runtime.gpu_id)
        used = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                if p.pid == os.getpid() and p.usedGpuMemory is not None]
        return sum(used) / 2**20 if used else None
    except Exception as e:  # NVML is optional: a missing library or driver only loses this one number
        log.debug("no GPU memory reading: %s", e)
        return None


# ---------------------------------------------------------------- timing


def batch_stream(items: list[ImageItem], pipeline: ImagePipeline, batch_size: int,
                 loading: Loading = Loading(), start: int = 0) -> Iterator[Batch]:
    """Endless full batches, decoded and preprocessed, cycling over ``items`` from item ``start`` (equal shapes
    batched together); with ``loading.prefetch`` made in a background thread while the caller runs the previous
    ones."""
    cycled = itertools.islice(itertools.cycle(items), start % max(len(items), 1), None)
    return iter_batches(cycled, pipeline, batch_size, loading=loading)


@dataclass
class _Timed:
    """A built predictor and its samples during one batch size."""

    run: Run
    predictor: AnyPredictor
    build_s: float
    first_s: float
    peak_rss_mb: float
    rss_added_mb: float
    gpu_mb: Optional[float]
    infer: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)


def _build(run: Run, first: Batch, warmup: int) -> _Timed:
    """Build the predictor, time build + first batch, warm up, and read memory."""
    gc.collect()
    rss_before = current_rss_mb()
    reset_peak_rss()
    start = time.perf_counter()
    predictor = create_predictor(run.plan)
    built = time.perf_counter()
    feeds = run.task.feeds(first, predictor.input_names)
    predictor.run(feeds)
    first_done = time.perf_counter()
    for _ in range(warmup):
        predictor.run(feeds)
    peak = peak_rss_mb()
    return _Timed(run, predictor, built - start, first_done - start, peak, max(0.0, peak - rss_before),
                  gpu_memory_mb(run))


def _round_robin(timed: list[_Timed], iters: int, bar: tqdm, step: int = 1, start: int = 0) -> Iterator[_Timed]:
    """``iters`` rounds over the runs, the starting run rotating (round i starts at run start + i); the garbage
    collector off meanwhile (a collection inside one run's sample would charge it to that run alone). ``step``:
    samples each visit takes, for the progress bar."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(start, start + iters):
            for k in range(len(timed)):
                yield timed[(i + k) % len(timed)]
            bar.update(len(timed) * step)
    finally:
        if gc_was_enabled:
            gc.enable()


BLOCK = 10  # samples a run takes in a row in each pass, after one untimed run
PREDECODED_BYTES = 256 << 20  # at most this much of a block's batches decoded ahead; beyond it they repeat


def _decoded_block(t: _Timed, stream: Iterator[Batch], count: int) -> list[dict[str, np.ndarray]]:
    """``count`` feeds for ``t``, decoded now: fresh batches until PREDECODED_BYTES, then those again."""
    feeds, size = [], 0
    while len(feeds) < count and size < PREDECODED_BYTES:
        batch = next(stream)
        feeds.append(t.run.task.feeds(batch, t.predictor.input_names))
        size += batch.array.nbytes
    return [feeds[i % len(feeds)] for i in range(count)]


def _predictor_block(t: _Timed, stream: Iterator[Batch], block: int) -> None:
    """Predictor-only: the block's batches are decoded first, so each sample times one run with nothing else on
    the cores; the runs follow each other as infer.py's do, the first one untimed."""
    feeds = _decoded_block(t, stream, block + 1)
    t.predictor.run(feeds[0])
    for feed in feeds[1:]:
        start = time.perf_counter()
        t.predictor.run(feed)
        t.infer.append(time.perf_counter() - start)


def _end_to_end_block(t: _Timed, stream: Iterator[Batch], block: int) -> None:
    """End to end, as infer.py runs: each sample takes the next batch from the run's image pipeline (which
    prefetches in the background for an engine that releases the GIL, waiting only when decoding fell behind),
    runs it and post-processes the outputs; the first batch (which also fills the pipeline) untimed."""
    for timed_sample in [False] + [True] * block:
        start = time.perf_counter()
        batch = next(stream)
        t.run.task.postprocess(t.predictor.run(t.run.task.feeds(batch, t.predictor.input_names)), batch)
        if timed_sample:
            t.e2e.append(time.perf_counter() - start)


def _time_blocks(timed: list[_Timed], serial: Iterator[Batch], open_stream: Callable[[_Timed], Iterator[Batch]],
                 iters: int, bar: tqdm) -> None:
    """Both passes, ``iters`` samples each per run: the runs take turns, each turn a predictor-only block then
    an end-to-end block on a freshly opened pipeline that is closed before the next turn, so no run's
    background decoding spills into another run's samples, and load that drifts hits both passes alike."""
    done = 0
    while done < iters:
        block = min(BLOCK, iters - done)
        for t in _round_robin(timed, 1, bar, step=2 * block, start=done // BLOCK):
            _predictor_block(t, serial, block)
            with contextlib.closing(open_stream(t)) as stream:
                _end_to_end_block(t, stream, block)
        done += block


def _entry(t: _Timed, batch_size: int) -> BenchEntry:
    threads = t.run.plan.runtime.cpu_threads or os.cpu_count() or 1
    return BenchEntry(t.run.label, batch_size, threads, t.build_s * 1000, t.first_s * 1000,
                      LatencyStats.from_seconds(t.infer), LatencyStats.from_seconds(t.e2e), t.peak_rss_mb,
                      t.rss_added_mb, t.gpu_mb, [s * 1000 for s in t.infer], [s * 1000 for s in t.e2e])


def bench_batch_size(runs: Sequence[Run], items: list[ImageItem], batch_size: int, options: BenchOptions,
                     bar: tqdm) -> list[BenchEntry]:
    """Build every run's predictor at ``batch_size``, then time them interleaved."""
    sized = [r.with_batch_size(batch_size) for r in runs]
    pipeline = ImagePipeline(runs[0].cfg.preprocess)
    with contextlib.ExitStack() as stack:
        serial = stack.enter_context(contextlib.closing(batch_stream(items, pipeline, batch_size)))
        first = next(serial)
        timed = []
        for run in sized:
            timed.append(_build(run, first, options.warmup))
            stack.enter_context(timed[-1].predictor)
            log.debug("%s bs=%d: first run %.1f ms", run.label, batch_size, timed[-1].first_s * 1000)
        opened = itertools.count()  # each block's pipeline starts further into the images

        def open_stream(t: _Timed) -> Iterator[Batch]:
            start = next(opened) * (BLOCK + 1) * batch_size
            return batch_stream(items, pipeline, batch_size, Loading.of(t.run.cfg.runtime, t.predictor.releases_gil),
                                start)

        _time_blocks(timed, serial, open_stream, options.iters, bar)
    entries = [_entry(t, batch_size) for t in timed]
    add_ratios(entries, runs[0].label)
    return entries


def add_ratios(entries: list[BenchEntry], reference: str) -> None:
    """Throughput of each entry divided by the reference's at the same batch size (median-based)."""
    ref = next((e for e in entries if e.label == reference), None)
    for e in entries:
        if ref is not None:
            e.throughput_ratio = e.throughput_ips / ref.throughput_ips
            e.e2e_throughput_ratio = e.e2e_throughput_ips / ref.e2e_throughput_ips


def benchmark(runs: Sequence[Run], options: BenchOptions, *, quiet: bool = False) -> BenchmarkResult:
    """Time every run at every batch size; the first run is the reference for the ratios."""
    cfg = runs[0].cfg
    if options.iters < 1 or options.warmup < 0:
        raise DataError(f"--iters must be >= 1 and --warmup >= 0, got {options.iters} and {options.warmup}")
    sizes = options.batch_sizes or [cfg.runtime.batch_size]
    if min(sizes) < 1:
        raise DataError(f"--batch-sizes must be >= 1, got {sizes}")
    source = options.images or cfg.data.images
    if source is None:
        raise DataError("no images to decode for the benchmark: pass --image DIR|LIST or set data.images")
    items = list_images(source)
    entries: list[BenchEntry] = []
    with tqdm(total=2 * len(sizes) * len(runs) * options.iters, disable=quiet, unit="batch", desc="benchmark") as bar:
        for batch_size in sizes:
            entries.extend(bench_batch_size(runs, items, batch_size, options, bar))
    return BenchmarkResult(runs[0].label, list(sizes), options.warmup, options.iters, str(source), entries)
