"""Decoded images on disk, read back a batch at a time: memory that does not grow with the data.

Training, validation and the head's feature cache used to hold every decoded
image in memory, and the steps around them copied it again (float32 is four
times uint8): 3,000 images of 160 px peaked at 3.9 GB and 30,000 were killed
by the kernel. Now each image is decoded once (``edge.image.load_rgb``, the
decoder the device uses, in parallel threads) into a raw file of fixed-size
rows, and every later step reads the rows it needs with ``os.pread``. Rows
read pass through the page cache, which the kernel can always drop, so the
process's resident memory stays the size of a few batches.

The file is a ``tempfile.TemporaryFile``: unlinked as soon as it is open, so
no kill leaves gigabytes behind, and made in the run folder the user chose
(``/tmp`` is often RAM). A ``RowFile`` reads like the uint8 array it
replaces: ``len``, ``shape``, ``rows[i]``, ``rows[a:b]``, ``rows[indices]``
and iteration, so code written for an array takes either.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from edge.errors import MissingEnvironment
from edge.image import DEFAULT_RESIZE, load_or_reason

DECODE_CHUNK = 256  # images decoded per round: bounds what waits in memory to be written
DISK_MARGIN = 256 * 2**20  # left free on the disk besides the decoded rows


class RowFile:
    """Fixed-shape rows of one dtype in an unlinked temporary file, appended then read."""

    def __init__(self, folder: Path, row_shape: Sequence[int], dtype: Any = np.uint8) -> None:
        self.row_shape = tuple(int(n) for n in row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".edgetl-rows-")  # noqa: SIM115 (lives as long as the rows)
        self._count = 0

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        os.pwrite(self._file.fileno(), rows.tobytes(), self._count * self.row_bytes)
        self._count += len(rows)

    def __len__(self) -> int:
        return self._count

    @property
    def shape(self) -> Tuple[int, ...]:
        return (self._count, *self.row_shape)

    def _span(self, start: int, stop: int) -> np.ndarray:
        size = (stop - start) * self.row_bytes
        data = os.pread(self._file.fileno(), size, start * self.row_bytes) if size else b""
        if len(data) != size:
            raise OSError(f"short read from the decoded-image file ({len(data)} of {size} bytes)")
        return np.frombuffer(data, self.dtype).reshape(stop - start, *self.row_shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            index = int(key) + (self._count if key < 0 else 0)
            if not 0 <= index < self._count:
                raise IndexError(f"row {key} of {self._count}")
            return self._span(index, index + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self._count)
            if step == 1:
                return self._span(start, max(start, stop))
            key = np.arange(start, stop, step)
        indices = np.asarray(key)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        out = np.empty((len(indices), *self.row_shape), self.dtype)
        for i, index in enumerate(indices.astype(np.int64)):
            out[i] = self[int(index)]
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in batches(self, 64):
            yield from batch

    def close(self) -> None:
        self._file.close()


Rows = Any  # a RowFile or a numpy array: whatever has len() and slices


def batches(rows: Rows, size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of ``rows`` (a ``RowFile`` or an array), ``size`` at a time."""
    for start in range(0, len(rows), size):
        yield np.asarray(rows[start : start + size])


def predict_in_batches(model: Any, rows: Rows, batch_size: int = 64) -> np.ndarray:
    """A Keras model's outputs over ``rows``, one float32 batch in memory at a time.

    ``model.predict(pixels.astype(np.float32))`` would make a float32 copy of
    every image first: four times the decoded size.
    """
    outputs = [
        np.asarray(model.predict_on_batch(batch.astype(np.float32)))
        for batch in batches(rows, batch_size)
    ]
    if not outputs:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    return np.concatenate(outputs).astype(np.float32)


def predict_to_file(model: Any, rows: Rows, folder: Path, batch_size: int = 256) -> RowFile:
    """A Keras model's outputs over ``rows`` into a new ``RowFile``: the head phase's
    feature cache, on disk like the pixels it was computed from."""
    out = RowFile(folder, model.output_shape[1:], np.float32)
    for batch in batches(rows, batch_size):
        out.append(np.asarray(model.predict_on_batch(batch.astype(np.float32))))
    return out


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse in one line before decoding when the disk cannot hold the rows."""
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_MARGIN:
        raise MissingEnvironment(
            f"{folder}: {what} needs {needed / 2**30:.1f} GiB of disk for decoded images and "
            f"{free / 2**30:.1f} GiB is free; free some space or use a smaller --image-size"
        )


def decode_to_file(
    paths: Sequence[str | os.PathLike],
    size: int,
    folder: Path,
    what: str = "decoding",
    resize: str = DEFAULT_RESIZE,
    workers: int = 0,
) -> Tuple[RowFile, List[int], List[Tuple[str, str]]]:
    """Decode ``paths`` at ``size`` into a ``RowFile`` in ``folder``.

    Returns the rows, the indices of the paths that decoded and ``(path,
    reason)`` for each that did not: the same contract (and the same per-file step,
    ``load_or_reason``) as ``edge.image.load_many``, without holding the pixels. A
    file that vanished, was cut short or replaced after ``paths`` was listed is
    skipped and listed like any unreadable one.
    """
    names = [str(p) for p in paths]
    check_free_space(folder, len(names) * size * size * 3, what)
    rows = RowFile(folder, (size, size, 3))
    kept: List[int] = []
    skipped: List[Tuple[str, str]] = []

    workers = workers or min(8, (os.cpu_count() or 1) + 1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(names), DECODE_CHUNK):
                chunk = names[start : start + DECODE_CHUNK]
                decoded = []
                for offset, (pixels, problem) in enumerate(
                    pool.map(lambda path: load_or_reason(path, size, resize), chunk)
                ):
                    if problem is None:
                        decoded.append(pixels)
                        kept.append(start + offset)
                    else:
                        skipped.append((chunk[offset], problem))
                if decoded:
                    rows.append(np.stack(decoded))
    except BaseException:
        rows.close()
        raise
    return rows, kept, skipped


def row_dataset(
    tf: Any,
    rows: Rows,
    class_indices: np.ndarray,
    n_classes: int,
    batch: int,
    seed: Optional[int],
    augment: Any = None,
    shard: Tuple[int, int] = (1, 0),
    class_weights: Optional[np.ndarray] = None,
) -> Any:
    """Rows (pixels or features) and one-hot labels as shuffled float32 batches, with
    each row's weight (``class_weights[label]``) as a third element when given.

    Only indices are shuffled (the same ``shuffle(n, seed)`` order the
    in-memory pipeline had, so a seed trains the same model); each batch is
    read from ``rows`` when it is needed, and ``prefetch`` overlaps the read
    with training. ``shard`` = (workers, this worker) gives each worker of a
    multi-worker run its own slice of the indices, before anything is read.
    """
    count = len(rows)
    labels = tf.constant(np.asarray(class_indices, dtype=np.int64))
    ds = tf.data.Dataset.range(count)
    if seed is not None:
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if shard[0] > 1:
        ds = ds.shard(*shard)
        # Sharded here, so tf.distribute must not shard it again (it would keep
        # every other batch of each worker's half: half the data per epoch).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
    ds = ds.batch(batch)
    row_shape = tuple(rows.shape[1:])

    def read(indices: np.ndarray) -> np.ndarray:
        return np.asarray(rows[indices], dtype=np.float32)

    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def load(indices: Any) -> Tuple[Any, ...]:
        x = tf.numpy_function(read, [indices], tf.float32, stateful=False)
        x.set_shape((None, *row_shape))
        y = tf.gather(labels, indices)
        if weights is None:
            return x, tf.one_hot(y, n_classes)
        return x, tf.one_hot(y, n_classes), tf.gather(weights, y)

    ds = ds.map(load)
    if augment is not None:
        # One batch at a time: the augmentation layers draw from one seeded stateful
        # generator, and parallel calls would take its numbers in a racy order, so the
        # same --seed would give a different model. Each call is a whole batch of TF
        # ops (multi-threaded inside), and prefetch still overlaps it with training.
        ds = ds.map(lambda x, *rest: (augment(x, training=True), *rest))
    return ds.prefetch(tf.data.AUTOTUNE)
