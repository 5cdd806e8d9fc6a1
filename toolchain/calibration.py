"""INT8 calibration images: which training photos the converter measures ranges on.

Calibration images come from the run's *training* split, stratified by
class, decoded by the same ``edge.image.load_many`` as training, never random
noise. ``export`` (the model it writes), ``diagnose`` and ``validate
--diagnose`` (the debugger's runs) all draw them from here, with the run's seed.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from edge.errors import BadInput
from edge.image import load_many
from toolchain.progress import Log
from toolchain.rundir import RunDir


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


def anchor_input_range(calibration: np.ndarray) -> np.ndarray:
    """Make the calibration set span pixel values 0 and 255 exactly.

    The converter derives the uint8 input's scale from the smallest and largest
    pixel it saw. Photos without a pure black and a pure white pixel give a
    scale like 254/255, and then decoder bytes no longer go in unchanged (the
    device must rescale, and 255 clips). Setting one pixel of the first image
    to 0 and one to 255 pins the input to scale 1, zero point 0, and moves no
    other activation range measurably (two pixels out of all calibration pixels).
    """
    anchored = calibration.copy()
    if len(anchored):
        anchored[0, 0, 0, :] = 0
        anchored[0, 0, 1, :] = 255
    return anchored


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


def representative_images(
    run: RunDir, samples: int, seed: int, size: int
) -> Tuple[np.ndarray, Dict[str, int]]:
    """Calibration pixels (uint8) from the training split, and per-class counts."""
    names = run.labels()
    paths, labels = run.split_files("train", len(names))
    chosen = stratified_sample(labels, samples, seed)
    pixels, kept, _ = load_many([paths[i] for i in chosen], size)
    per_class: Dict[str, int] = {}
    for i in kept:
        per_class[names[labels[chosen[i]]]] = per_class.get(names[labels[chosen[i]]], 0) + 1
    return pixels, per_class


def training_pixel_stats(run: RunDir, seed: int, size: int, sample: int = 500) -> Dict[str, Any]:
    """Pixel mean/std of (a seeded sample of) the whole training split, to set beside
    the calibration set's: a calibration set that does not look like training shows here."""
    paths, _ = run.split_files("train")
    rng = np.random.default_rng(seed + 1)
    chosen = rng.permutation(len(paths))[:sample]
    pixels, _, _ = load_many([paths[i] for i in chosen], size)
    if not len(pixels):
        return {}
    return {
        "train_pixel_mean": round(float(pixels.mean()), 2),
        "train_pixel_std": round(float(pixels.std()), 2),
        "train_sample": int(len(pixels)),
    }


def calibration_set(
    run: RunDir, samples: int, seed: int, size: int, log: Log
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """INT8 calibration pixels and what the card says about them, read before the model
    is loaded: a run whose training images are all unreadable fails in seconds."""
    calibration, per_class = representative_images(run, samples, seed, size)
    if len(calibration) == 0:
        raise BadInput(
            f"{run.path}: none of the training images chosen for calibration could be read; "
            "restore the dataset folder named in splits.json"
        )
    info = {
        "images": int(len(calibration)),
        "per_class": per_class,
        "source": "train split, stratified by class",
        "pixel_mean": round(float(calibration.mean()), 2),
        "pixel_std": round(float(calibration.std()), 2),
        **training_pixel_stats(run, seed, size),
    }
    log(
        f"int8: calibrating on {len(calibration)} training images "
        f"({', '.join(f'{k} {v}' for k, v in per_class.items())})"
    )
    return calibration, info
