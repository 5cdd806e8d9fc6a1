"""Decoded images on disk (toolchain/core/pixel_file.py): the same pixels as decoding into
memory, no file left behind, and a full disk refused in one line before decoding."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
from PIL import Image

from edge.errors import MissingEnvironment
from edge.image import load_many
from toolchain.core import pixel_file
from toolchain.core.pixel_file import RowFile, batches, decode_to_file, row_dataset


def photos(folder, count=7):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_decode_to_file_gives_load_many_pixels_and_skips_the_same_files(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    paths = photos(images)
    broken = images / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    paths.insert(3, broken)
    work = tmp_path / "work"
    work.mkdir()

    rows, kept, skipped = decode_to_file(paths, 24, work)
    pixels, kept_in_memory, skipped_in_memory = load_many(paths, 24)

    assert kept == kept_in_memory and len(kept) == 7
    assert [p for p, _ in skipped] == [p for p, _ in skipped_in_memory] == [str(broken)]
    assert rows.shape == pixels.shape == (7, 24, 24, 3)
    np.testing.assert_array_equal(rows[0:7], pixels)
    np.testing.assert_array_equal(rows[np.array([5, 1, 1])], pixels[[5, 1, 1]])
    np.testing.assert_array_equal(rows[-1], pixels[-1])
    np.testing.assert_array_equal(np.stack(list(rows)), pixels)
    np.testing.assert_array_equal(np.concatenate(list(batches(rows, 3))), pixels)
    # The file is unlinked from the start: a kill leaves nothing in the run folder.
    assert list(work.iterdir()) == []
    rows.close()


def test_row_file_refuses_rows_of_another_shape_and_indexes_like_an_array(tmp_path):
    rows = RowFile(tmp_path, (4,), np.float32)
    rows.append(np.arange(8, dtype=np.float32).reshape(2, 4))
    rows.append(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError):
        rows.append(np.ones((1, 5), np.float32))
    assert len(rows) == 3 and rows.shape == (3, 4)
    np.testing.assert_array_equal(rows[::2], [[0, 1, 2, 3], [1, 1, 1, 1]])
    np.testing.assert_array_equal(rows[np.array([True, False, True])], rows[::2])
    with pytest.raises(IndexError):
        rows[3]
    assert rows[5:9].shape == (0, 4)


def test_a_disk_too_small_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    paths = photos(tmp_path, 3)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(pixel_file.shutil, "disk_usage", lambda _: usage(10**9, 10**9, 1000))
    with pytest.raises(MissingEnvironment, match="GiB of disk for decoded images"):
        decode_to_file(paths, 32, tmp_path, "validate")


def test_row_dataset_shuffles_indices_with_the_seed_and_keeps_labels_with_their_rows(tmp_path):
    from toolchain.core.quiet import tensorflow

    tf = tensorflow()
    rows = RowFile(tmp_path, (2,), np.float32)
    values = np.arange(20, dtype=np.float32)
    rows.append(np.stack([values, values], axis=1))
    labels = np.arange(20) % 3

    def epoch(seed, shard=(1, 0)):
        xs, ys = [], []
        for x, y in row_dataset(tf, rows, labels, 3, 6, seed, shard=shard):
            xs.append(x.numpy()[:, 0])
            ys.append(y.numpy().argmax(axis=1))
        return np.concatenate(xs), np.concatenate(ys)

    x, y = epoch(seed=4)
    assert sorted(x) == list(values) and not np.array_equal(x, values)
    np.testing.assert_array_equal(y, x.astype(int) % 3)  # each label stays with its row
    np.testing.assert_array_equal(epoch(seed=4)[0], x)  # the same seed, the same order
    np.testing.assert_array_equal(epoch(None)[0], values)  # val: in order
    # Two workers' shards are disjoint and together are the whole split.
    first, second = epoch(4, (2, 0))[0], epoch(4, (2, 1))[0]
    assert sorted(np.concatenate([first, second])) == list(values)
