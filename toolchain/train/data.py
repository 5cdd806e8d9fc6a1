"""The training images, decoded once to disk and split train / val / test.

Everything a run trains and evaluates on is made here, in one place, and handed
on as a ``TrainingData``: the phases never re-read the folder (they read the
decoded rows back a batch at a time, ``toolchain.core.pixel_file``), and the splits
written to ``splits.json`` are the files that were actually decoded (an
unreadable image is skipped and listed, never silently dropped). A resumed run
reuses the splits it started with, so photos added since cannot leak into val
or test.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from edge import atomic
from edge.errors import BadInput
from toolchain.core.options import TrainOptions
from toolchain.core.pixel_file import Rows, decode_to_file
from toolchain.core.progress import Log
from toolchain.core.rundir import RunDir
from toolchain.train.datasets import resolve_data, scan_class_folders, split_items

SPLITS = ("train", "val", "test")
CLASS_WEIGHT_RATIO = 2.0  # auto class weights when the largest class is over 2x the smallest


class ImageFolder(NamedTuple):
    """A dataset found and scanned, nothing decoded yet."""

    root: Path
    description: str
    labels: List[str]
    items: List[Tuple[str, int]]  # (path relative to root, class index)


@dataclass(frozen=True)
class DecodedSplit:
    pixels: Rows  # uint8, (n, size, size, 3): a RowFile on disk, or an array
    class_indices: np.ndarray  # int64, (n,)


@dataclass(frozen=True)
class TrainingData:
    """The decoded splits and what describes them, made once by ``load_training_data``."""

    root: Path
    description: str
    labels: List[str]  # class names, in output order
    splits: Dict[str, DecodedSplit]  # train, val, test
    counts: Dict[str, int]
    skipped: List[Tuple[str, str]]  # (path, reason) of files that did not decode
    splits_json: Dict[str, Any]  # what splits.json holds: which file went where, and why
    seconds: float  # reading and decoding

    def close(self) -> None:
        """Let go of the decoded rows (their unlinked files vanish with them)."""
        for split in self.splits.values():
            if hasattr(split.pixels, "close"):
                split.pixels.close()


def read_image_folder(options: TrainOptions, run_path: Path) -> ImageFolder:
    """The image folder, its description, class names and every image (read only)."""
    root, description = resolve_data(
        options.data, run_path, options.synthetic_per_class, options.seed
    )
    labels, items = scan_class_folders(root)
    return ImageFolder(root, description, labels, items)


def load_training_data(
    options: TrainOptions, run: RunDir, folder: Optional[ImageFolder], log: Log
) -> TrainingData:
    """Split (or reuse the saved splits) and decode every split at the training size.

    ``folder`` is the dataset already read before the run was claimed, or None
    (generated data, or a resumed run whose splits are read back instead).
    A fresh run's splits are saved to ``checkpoints/splits.json`` at once.
    """
    o = options
    start = time.perf_counter()
    saved = _saved_splits(run, o.resume)
    if saved is not None:
        root = run.data_root(saved)
        description = f"{saved.get('description', 'image folder')} (splits reused)"
        labels = list(saved.get("labels") or [])
        try:
            entries = {name: [(rel, int(label)) for rel, label in saved[name]] for name in SPLITS}
        except (TypeError, ValueError):
            raise BadInput(
                f"--resume: {run.checkpoints / 'splits.json'} is damaged; start over with --force"
            ) from None
        if len(labels) < 2:
            raise BadInput(
                f"--resume: {run.checkpoints / 'splits.json'} names no classes; start over with --force"
            )
        n_items = sum(len(v) for v in entries.values())
        log(f"resume: reusing the run's splits ({n_items} images) from {root}")
    else:
        root, description, labels, items = folder or read_image_folder(o, run.path)
        entries = split_items(items, o.seed, o.val_fraction, o.test_fraction)
        n_items = len(items)
        log(f"data: {description}: {n_items} images, {len(labels)} classes ({', '.join(labels)})")
    log(
        f"decoding {n_items} images at {o.image_size}px to disk in {run.checkpoints} "
        f"(~{n_items * o.image_size**2 * 3 / 2**20:.0f} MiB, read back a batch at a time)"
    )
    decoded: Dict[str, DecodedSplit] = {}
    skipped: List[Tuple[str, str]] = []
    for split_name in SPLITS:
        pixels, y, kept, unreadable = load_split_pixels(
            root, entries[split_name], o.image_size, run.checkpoints
        )
        decoded[split_name] = DecodedSplit(pixels, y)
        entries[split_name] = kept
        skipped += unreadable
    for _, reason in skipped:
        log(f"skipped: {reason}")
    counts = {name: int(len(decoded[name].class_indices)) for name in decoded}
    if counts["train"] == 0:
        raise BadInput(f"--data {o.data}: no readable training images")
    log(
        f"splits: train {counts['train']}, val {counts['val']}, "
        f"test {counts['test']} (seed {o.seed}); decoded at {o.image_size}px in "
        f"{time.perf_counter() - start:.1f}s"
    )
    seconds = time.perf_counter() - start
    relative = os.path.relpath(root, run.path)
    splits_json = {
        "root": str(root),
        # a run moved together with its data finds the data again (RunDir.data_root)
        "root_relative": relative if not relative.startswith("..") else None,
        "description": description,
        "seed": o.seed,
        "val_fraction": o.val_fraction,
        "test_fraction": o.test_fraction,
        "labels": labels,
        **{n: [[rel, label] for rel, label in entries[n]] for n in SPLITS},
        "skipped": [[path, reason] for path, reason in skipped],
    }
    if saved is None:
        atomic.write_json(run.saved_splits, splits_json)
    return TrainingData(root, description, labels, decoded, counts, skipped, splits_json, seconds)


def _saved_splits(run: RunDir, resume: bool) -> Optional[Dict[str, Any]]:
    """``--resume`` uses the splits the run started with instead of re-scanning
    the folder (photos added since would leak into val or test)."""
    path = run.saved_splits
    if not (resume and path.is_file()):
        return None
    return run.read_splits(path)


def load_split_pixels(
    root: Path, entries: List[Tuple[str, int]], size: int, folder: Path
) -> Tuple[Rows, np.ndarray, List[Tuple[str, int]], List[Tuple[str, str]]]:
    """Decode one split in parallel into a file in ``folder``; returns the pixel rows,
    labels, kept entries and skipped files."""
    pixels, kept, skipped = decode_to_file(
        [root / rel for rel, _ in entries], size, folder, "training"
    )
    kept_entries = [entries[i] for i in kept]
    labels = np.array([label for _, label in kept_entries], dtype=np.int64)
    return pixels, labels, kept_entries, skipped


def class_weights_for(labels: np.ndarray, n_classes: int, mode: str) -> Optional[Dict[int, float]]:
    """Inverse-frequency weights (mean 1), or None when classes are balanced enough."""
    if mode not in ("auto", "on", "off"):
        raise BadInput(f"--class-weights {mode}: choose auto, on or off")
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts[counts > 0]
    if mode == "off" or (mode == "auto" and present.max() <= CLASS_WEIGHT_RATIO * present.min()):
        return None
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return {i: float(w) for i, w in enumerate(weights)}


class PaddedRows:
    """``rows`` read as ``total`` rows: indices past the end read its last row again.

    The filler behind ``even_shards``: what a padded index reads does not matter (its
    weight is 0), only that every worker gets a full batch of the same shape.
    """

    def __init__(self, rows: Rows, total: int) -> None:
        self.rows, self.total = rows, total

    def __len__(self) -> int:
        return self.total

    @property
    def shape(self) -> Tuple[int, ...]:
        return (self.total, *self.rows.shape[1:])

    def __getitem__(self, indices: Any) -> np.ndarray:
        return np.asarray(self.rows[np.minimum(np.asarray(indices), len(self.rows) - 1)])


def even_shards(
    rows: Rows,
    class_indices: np.ndarray,
    n_classes: int,
    global_batch: int,
    class_weights: Optional[np.ndarray],
) -> Tuple[PaddedRows, np.ndarray, np.ndarray]:
    """A split padded with zero-weight rows to a whole number of global batches, so that
    every worker of a multi-worker run takes the same number of steps of the same shape.

    Why: workers run each step's collective operations in lock step. A split that does
    not divide evenly gives one worker a step more than another (257 val images over
    two workers of 16-image batches: 9 steps against 8), and that worker's extra
    gradient all-reduce meets the other's end-of-epoch one: TensorFlow aborts with
    "Collective instance ... expected data_type 9 but got data_type 1". Padding rather
    than dropping the remainder keeps every image in every epoch; the padded rows
    are of an extra class ``n_classes`` whose one-hot label is all zeros and whose
    weight is 0, so they move neither the gradients nor the (weighted) metrics. Keras
    divides a batch's weighted loss by the batch size, so the last step of an epoch
    pushes a little less than a full one: at most one step per epoch, the price of
    keeping all the images.

    Returns the padded rows, their class indices (pad class ``n_classes``), and the
    per-class weights with the pad class's 0 appended (1 where no class is weighted).
    """
    count = len(class_indices)
    total = -(-count // global_batch) * global_batch
    labels = np.asarray(class_indices, dtype=np.int64)
    padded_labels = np.concatenate([labels, np.full(total - count, n_classes, np.int64)])
    weights = np.ones(n_classes) if class_weights is None else np.asarray(class_weights, float)
    return PaddedRows(rows, total), padded_labels, np.append(weights, 0.0)
