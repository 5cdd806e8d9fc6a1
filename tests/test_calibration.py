"""Export's calibration set is streamed from an unlinked row file, never held: the
same images and the same anchored feed as the in-memory path, in a few batches of
memory whatever ``--calibration-samples`` says (up to 100,000)."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from toolchain.core.pixel_file import RowFile
from toolchain.quantize.calibration import (
    anchor_input_range,
    calibration_set,
    pixel_stats,
    representative_images,
    representative_rows,
)


class StubRun:
    """The three things calibration reads from a run: its folder, labels and train split."""

    def __init__(self, path: Path, paths: List[Path], labels: List[int]) -> None:
        self.path, self._paths, self._labels = path, paths, labels

    def labels(self) -> List[str]:
        return ["cat", "dog", "fox"]

    def split_files(self, name: str, n_classes: int = 0) -> Tuple[List[Path], List[int]]:
        return self._paths, self._labels


def stub_run(tmp_path: Path, count: int = 30) -> StubRun:
    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = []
    for i in range(count):
        paths.append(photos / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(paths[-1])
    run = tmp_path / "run"
    run.mkdir()
    return StubRun(run, paths, [i % 3 for i in range(count)])


def old_anchor(calibration: np.ndarray) -> np.ndarray:
    """What ``anchor_input_range`` returned when it copied the whole set."""
    anchored = calibration.copy()
    anchored[0, 0, 0, :] = 0
    anchored[0, 0, 1, :] = 255
    return anchored


def test_the_streamed_feed_is_the_in_memory_feed(tmp_path):
    run = stub_run(tmp_path)
    pixels, per_class = representative_images(run, 20, seed=1, size=32)
    rows, rows_per_class = representative_rows(run, 20, seed=1, size=32)
    try:
        assert isinstance(rows, RowFile) and rows_per_class == per_class
        assert np.array_equal(rows[:], pixels)
        assert os.listdir(run.path) == []  # unlinked: no kill leaves it behind
        streamed = np.stack(list(anchor_input_range(rows)))
        assert np.array_equal(streamed, old_anchor(pixels))
        assert np.array_equal(np.stack(list(anchor_input_range(pixels))), old_anchor(pixels))
        assert np.array_equal(rows[:], pixels)  # the rows themselves are not changed
    finally:
        rows.close()


def test_calibration_set_reports_the_same_figures_from_the_stream(tmp_path):
    run = stub_run(tmp_path)
    rows, info = calibration_set(run, 20, seed=1, size=32, log=lambda line: None)
    pixels, _ = representative_images(run, 20, seed=1, size=32)
    rows.close()
    assert info["images"] == 20 and sum(info["per_class"].values()) == 20
    assert info["pixel_mean"] == round(float(pixels.mean()), 2)
    assert info["pixel_std"] == round(float(pixels.std()), 2)
    assert info["train_sample"] == 30


def test_pixel_stats_are_numpys_figures_computed_a_batch_at_a_time():
    pixels = np.random.default_rng(0).integers(0, 256, (200, 9, 9, 3), dtype=np.uint8)
    mean, std = pixel_stats(pixels)
    assert abs(mean - pixels.mean()) < 1e-9 and abs(std - pixels.std()) < 1e-9
    assert pixel_stats(pixels[:0]) == (0.0, 0.0)


def test_feeding_a_large_calibration_set_holds_a_few_batches_not_the_set(tmp_path):
    """2,000 images of 64 px are 24 MB; the feed's peak Python allocation stays a few
    64-image batches (0.8 MB each) whatever the count."""
    rows = RowFile(tmp_path, (64, 64, 3))
    chunk = np.random.default_rng(0).integers(0, 256, (250, 64, 64, 3), dtype=np.uint8)
    for _ in range(8):
        rows.append(chunk)
    total = len(rows) * 64 * 64 * 3
    try:
        tracemalloc.start()
        count = 0
        for image in anchor_input_range(rows):
            count += 1
            image[np.newaxis].astype(np.float32)  # what the converter's feed does with it
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        rows.close()
    assert count == 2000
    assert peak < total / 8, (peak, total)
