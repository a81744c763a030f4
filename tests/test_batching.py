"""Batching images of different preprocessed shapes (models with dynamic H/W): grouped by shape, or padded."""
import itertools
import threading

import cv2
import numpy as np
import pytest

from deploy.config.loader import load_config
from deploy.data.sources import ImageItem, Loading, iter_batches, list_images, prefetch
from deploy.errors import ConfigError, DataError
from deploy.data.pipeline import BatchPad, Decode, ImagePipeline, Normalize, ResizeKeepRatio, ToCHW
from conftest import write_config


@pytest.fixture
def mixed_widths(tmp_path):
    """Seven images 20 px high and 20, 40 or 60 px wide, in an interleaved order."""
    widths = [20, 40, 20, 60, 40, 20, 20]
    paths = []
    for i, w in enumerate(widths):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.full((20, w, 3), 10 * i, np.uint8))
        paths.append(path)
    return [ImageItem(p) for p in paths], widths


def ocr_ops(*extra):
    return [Decode("BGR"), ResizeKeepRatio(height=10, max_width=100), Normalize(1 / 255, [0.5] * 3, [0.5] * 3),
            ToCHW(), *extra]


def test_unequal_shapes_are_grouped_into_equal_shape_batches(mixed_widths):
    items, widths = mixed_widths
    seen = []
    batches = list(iter_batches(items, ImagePipeline(ocr_ops()), 2, progress=seen.append))
    assert sum(seen) == len(items)
    assert sorted(i.path.name for b in batches for i in b.items) == sorted(i.path.name for i in items)
    for batch in batches:
        assert batch.array.shape[0] == len(batch.items) <= 2
        assert {widths[int(i.path.stem)] for i in batch.items} == {batch.array.shape[3] * 2}
    # 4 images of width 10, 2 of 20, 1 of 30: full batches as soon as a shape has two, the rest at the end
    assert [b.array.shape for b in batches] == [(2, 3, 10, 10), (2, 3, 10, 20), (2, 3, 10, 10), (1, 3, 10, 30)]


def test_batch_pad_keeps_order_and_pads_right_and_bottom(mixed_widths):
    items, _ = mixed_widths
    batches = list(iter_batches(items, ImagePipeline(ocr_ops(BatchPad(value=-7.0))), 3))
    assert [i.path.name for b in batches for i in b.items] == [i.path.name for i in items]
    first = batches[0].array
    assert first.shape == (3, 3, 10, 20)
    assert np.all(first[0, :, :, 10:] == -7.0) and np.all(first[0, :, :, :10] != -7.0)
    assert np.all(first[1] != -7.0)


def test_single_image_pipeline_batch_still_refuses_mixed_shapes():
    with pytest.raises(DataError, match="different shapes"):
        ImagePipeline(ocr_ops()).batch([np.zeros((3, 10, 10), np.float32), np.zeros((3, 10, 20), np.float32)])
    with pytest.raises(DataError, match="differ in channels"):
        ImagePipeline(ocr_ops(BatchPad())).batch([np.zeros((3, 10, 10), np.float32),
                                                  np.zeros((1, 10, 20), np.float32)])


def test_batch_pad_must_be_the_last_op(tmp_path):
    cfg = write_config(tmp_path / "c.yml", "model: {dir: m}\npreprocess: [{decode: {mode: BGR}}, batch_pad, to_chw]\n")
    with pytest.raises(ConfigError, match="'batch_pad' pads whole batches, so it must be the last op"):
        load_config(cfg)


def test_unreadable_images_are_skipped_between_groups(mixed_widths, tmp_path):
    items, _ = mixed_widths
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    skipped = []
    batches = list(iter_batches([items[0], ImageItem(bad), items[1]], ImagePipeline(ocr_ops()), 4,
                                on_skip=lambda item, e: skipped.append(item)))
    assert skipped == [ImageItem(bad)] and sum(len(b.items) for b in batches) == 2
    assert list_images(tmp_path)  # the folder listing is unchanged by batching


@pytest.mark.parametrize("loading", [Loading(prefetch=2, threads=1), Loading(prefetch=1, threads=3),
                                     Loading(prefetch=0, threads=2)])
def test_prefetch_and_decode_threads_change_neither_results_nor_order(mixed_widths, tmp_path, loading):
    items, _ = mixed_widths
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    items = [*items[:3], ImageItem(bad), *items[3:]] * 3
    pipeline = ImagePipeline(ocr_ops(BatchPad(value=0.0)))

    def run(how):
        skipped, seen = [], []
        batches = list(iter_batches(items, pipeline, 2, lambda item, e: skipped.append(item), seen.append, how))
        return [[i.path.name for i in b.items] for b in batches], [b.array for b in batches], skipped, sum(seen)

    names, arrays, skipped, seen = run(Loading())
    names_p, arrays_p, skipped_p, seen_p = run(loading)
    assert names_p == names and skipped_p == skipped == [ImageItem(bad)] * 3 and seen_p == seen == len(items)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, arrays_p))


def test_prefetch_raises_the_error_where_it_happened_and_stops_when_closed(mixed_widths, tmp_path):
    items, _ = mixed_widths
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    stream = iter_batches([items[0], items[2], ImageItem(bad)], ImagePipeline(ocr_ops()), 1,
                          loading=Loading(prefetch=2))
    assert [i.path.name for i in next(stream).items] == ["0.png"]
    with pytest.raises(DataError, match="bad.png"):
        list(stream)

    pulled = []

    def endless():
        for i in itertools.count():
            pulled.append(i)
            yield i

    before = threading.active_count()
    ahead = prefetch(endless(), 3)
    assert [next(ahead) for _ in range(5)] == list(range(5))
    ahead.close()  # joins the producer thread
    assert threading.active_count() == before and len(pulled) <= 5 + 3 + 1
