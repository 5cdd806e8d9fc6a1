"""INT8 calibration images: which training photos the converter measures ranges on.

Calibration images come from the run's *training* split, stratified by
class, decoded by the same ``edge.image.load_many`` as training, never random
noise. ``export`` (the model it writes), ``diagnose`` and ``validate
--diagnose`` (the debugger's runs) all draw them from here, with the run's seed.

Memory: ``--calibration-samples`` goes up to 100,000, which at 224 px is 15 GB of
decoded pixels (and the converter's feed used to copy them again to anchor the
input range). Export's calibration set is therefore *streamed*, never held: it
is decoded once into an unlinked row file in the run folder
(``pixel_file.decode_to_file``: disk is checked up front, exit 3 when short, and
no kill leaves it behind), and the converter's representative dataset reads it
back 64 images at a time. Memory stays a few batches whatever the count; only
the time grows. Only the debugger's fixed 64 images are read into memory.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

from edge.errors import BadInput
from edge.image import load_many
from toolchain.core.pixel_file import RowFile, Rows, batches, decode_to_file
from toolchain.core.progress import Log
from toolchain.core.rundir import RunDir

STATS_SAMPLE = 500  # training images the pixel statistics are taken on: a fixed, small cost
# A model with an out-of-class output also calibrates on this share of scrambled copies.
SCRAMBLED_SHARE = 0.125


def scrambled(pixels: np.ndarray, seed: int, grid: int = 8) -> np.ndarray:
    """Copies of ``pixels`` with their tiles (``grid`` x ``grid``) shuffled: the colours
    and textures of the training photos, no longer any of their objects.

    Why: INT8 takes each tensor's range from the calibration images. Calibrated on
    known-class photos only, the out-of-class distance saturates at their largest,
    just under the threshold: on a four-flower model the INT8 file's "unknown"
    output topped out at 0.39 and flagged 41% of dog photos, where Keras flagged
    99%. Scrambled photos land beyond the threshold (distance 4.4-8.1 against a
    threshold of 4.8 there), so the range spans both sides of it, without the
    ranges of the rest of the model moving far from the photos'.
    """
    rng = np.random.default_rng(seed)
    out = np.array(pixels, copy=True)
    size = out.shape[1]
    tile = size // grid
    if tile < 1:
        return out
    span = tile * grid
    for image in out:
        tiles = image[:span, :span].reshape(grid, tile, grid, tile, 3).swapaxes(1, 2)
        tiles = tiles.reshape(grid * grid, tile, tile, 3)[rng.permutation(grid * grid)]
        image[:span, :span] = (
            tiles.reshape(grid, grid, tile, tile, 3).swapaxes(1, 2).reshape(span, span, 3)
        )
    return out


def far_candidates(pixels: np.ndarray, seed: int) -> List[Tuple[str, np.ndarray]]:
    """Stronger stand-ins for out-of-class photos than ``scrambled`` copies, mildest first,
    for a model whose out-of-class threshold the scrambled copies do not reach (see
    ``toolchain.confidence.far_rows``): every pixel shuffled (the photos' palette, no
    texture), then flat colours (the palette's extremes and greys)."""
    size = pixels.shape[1]
    palette = np.array(
        [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255],
         [255, 255, 255], [0, 0, 0], [128, 128, 128], [204, 0, 0], [0, 204, 0], [0, 0, 204]],
        np.uint8,
    )  # fmt: skip
    flat = np.broadcast_to(palette[:, None, None, :], (len(palette), size, size, 3)).copy()
    return [
        ("pixel-shuffled copies", scrambled(pixels, seed + 1, grid=size)),
        ("flat colours", flat),
    ]


def stratified_sample(labels: List[int], samples: int, seed: int) -> List[int]:
    """Indices of up to ``samples`` items, classes taking turns so each is represented.

    Round-robin over classes (each class shuffled with ``seed``) gives every
    class ``samples / n_classes`` images when it has them, instead of the
    majority class filling the calibration set.
    """
    rng = np.random.default_rng(seed)
    by_class: Dict[int, List[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    queues = {label: list(rng.permutation(members)) for label, members in sorted(by_class.items())}
    chosen: List[int] = []
    while len(chosen) < samples and any(queues.values()):
        for label in sorted(queues):
            if queues[label] and len(chosen) < samples:
                chosen.append(int(queues[label].pop()))
    return chosen


class AnchoredRows:
    """Calibration rows read back one at a time, the first with two pixels pinned.

    The converter derives the uint8 input's scale from the smallest and largest
    pixel it saw. Photos without a pure black and a pure white pixel give a
    scale like 254/255, and then decoder bytes no longer go in unchanged (the
    device must rescale, and 255 clips). Setting one pixel of the first image
    to 0 and one to 255 pins the input to scale 1, zero point 0, and moves no
    other activation range measurably (two pixels out of all calibration pixels).
    Only that first image is copied: the rows (an array or a ``RowFile``) are
    read in batches, so a large calibration set is never held twice.
    """

    def __init__(self, rows: Rows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[np.ndarray]:
        first = True
        for batch in batches(self.rows, 64):
            for image in batch:
                if first:
                    image = image.copy()
                    image[0, 0, :] = 0
                    image[0, 1, :] = 255
                    first = False
                yield image


def anchor_input_range(calibration: Rows) -> AnchoredRows:
    """The calibration rows as the converter must see them (see ``AnchoredRows``)."""
    return AnchoredRows(calibration)


def pixel_stats(rows: Rows) -> Tuple[float, float]:
    """Mean and standard deviation of every pixel value, a batch at a time (exact
    integer sums: uint8 rows of any count fit an int64)."""
    count, total, squares = 0, 0, 0
    for batch in batches(rows, 64):
        values = batch.astype(np.int64)
        count += values.size
        total += int(values.sum())
        squares += int((values * values).sum())
    if not count:
        return 0.0, 0.0
    mean = total / count
    return mean, max(squares / count - mean * mean, 0.0) ** 0.5


def config_seed(run: RunDir, config: Dict[str, Any]) -> int:
    """The run's seed (calibration is sampled with it), one line if it was edited."""
    value = config["options"].get("seed", 0)
    try:
        seed = int(value)
    except (TypeError, ValueError, OverflowError):
        seed = -1
    if seed < 0 or isinstance(value, bool):
        raise BadInput(
            f"{run.config}: options.seed {str(value)[:40]!r} is not a whole number >= 0; "
            f"it was edited: train again with `edgetl train --out {run.path} --force`"
        )
    return seed


def chosen_files(run: RunDir, samples: int, seed: int) -> Tuple[List[Any], List[str]]:
    """The calibration images' paths (stratified, seeded) and each one's class name."""
    names = run.labels()
    paths, labels = run.split_files("train", len(names))
    chosen = stratified_sample(labels, samples, seed)
    return [paths[i] for i in chosen], [names[labels[i]] for i in chosen]


def count_classes(classes: List[str], kept: List[int]) -> Dict[str, int]:
    per_class: Dict[str, int] = {}
    for i in kept:
        per_class[classes[i]] = per_class.get(classes[i], 0) + 1
    return per_class


def representative_images(
    run: RunDir, samples: int, seed: int, size: int
) -> Tuple[np.ndarray, Dict[str, int]]:
    """Calibration pixels (uint8) in memory, and per-class counts: for the small fixed
    samples only (the debugger's 64 images); export streams its own (``calibration_set``)."""
    paths, classes = chosen_files(run, samples, seed)
    pixels, kept, _ = load_many(paths, size)
    return pixels, count_classes(classes, kept)


def scrambled_copies(rows: Any, seed: int) -> np.ndarray:
    """The scrambled rows a model with the out-of-class output is calibrated with
    besides ``rows`` (see ``scrambled``): copies of ``SCRAMBLED_SHARE`` of them, at
    least 8, picked evenly."""
    count = max(8, int(round(len(rows) * SCRAMBLED_SHARE)))
    picks = np.linspace(0, len(rows) - 1, count).round().astype(int)
    return scrambled(rows[picks], seed)


def representative_rows(
    run: RunDir, samples: int, seed: int, size: int
) -> Tuple[RowFile, Dict[str, int]]:
    """The same images as ``representative_images``, decoded into an unlinked row file in
    the run folder: memory does not grow with ``samples`` (up to 100,000)."""
    paths, classes = chosen_files(run, samples, seed)
    rows, kept, _ = decode_to_file(paths, size, run.path, "--calibration-samples")
    return rows, count_classes(classes, kept)


def training_pixel_stats(
    run: RunDir, seed: int, size: int, sample: int = STATS_SAMPLE
) -> Dict[str, Any]:
    """Pixel mean/std of (a seeded sample of) the whole training split, to set beside
    the calibration set's: a calibration set that does not look like training shows here."""
    paths, _ = run.split_files("train")
    rng = np.random.default_rng(seed + 1)
    chosen = rng.permutation(len(paths))[:sample]
    pixels, _, _ = decode_to_file([paths[i] for i in chosen], size, run.path, "pixel statistics")
    try:
        if not len(pixels):
            return {}
        mean, std = pixel_stats(pixels)
    finally:
        pixels.close()
    return {
        "train_pixel_mean": round(mean, 2),
        "train_pixel_std": round(std, 2),
        "train_sample": int(len(pixels)),
    }


def calibration_set(
    run: RunDir, samples: int, seed: int, size: int, log: Log, out_of_class: bool = False
) -> Tuple[RowFile, Dict[str, Any]]:
    """INT8 calibration rows (streamed from disk, see the module docstring) and what the
    card says about them, read before the model is loaded: a run whose training images
    are all unreadable fails in seconds."""
    calibration, per_class = representative_rows(run, samples, seed, size)
    if len(calibration) == 0:
        calibration.close()
        raise BadInput(
            f"{run.path}: none of the training images chosen for calibration could be read; "
            "restore the dataset folder named in splits.json"
        )
    scrambled_rows = 0
    if out_of_class:  # the model has an out-of-class output: see ``scrambled``
        copies = scrambled_copies(calibration, seed)
        calibration.append(copies)
        scrambled_rows = len(copies)
    mean, std = pixel_stats(calibration)
    info = {
        "images": int(len(calibration)),
        "scrambled_images": scrambled_rows,
        "per_class": per_class,
        "source": "train split, stratified by class",
        "pixel_mean": round(mean, 2),
        "pixel_std": round(std, 2),
        **training_pixel_stats(run, seed, size),
    }
    log(
        f"int8: calibrating on {len(calibration) - scrambled_rows} training images "
        f"({', '.join(f'{k} {v}' for k, v in per_class.items())})"
        + (f" and {scrambled_rows} scrambled copies" if scrambled_rows else "")
    )
    return calibration, info
