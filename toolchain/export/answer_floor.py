"""The answer floor an export writes into each model's card (``--min-precision``).

Chosen on the validation and test splits together: the photos the model was not
fitted to (training images would make its answers look more often right than
they are), as many of them as the run holds, since the bound's width, and with it
the coverage it gives away, shrinks with the count (158 validation photos alone
answered 0.51 of new flowers on one four-flower run, both splits 0.57 at the same
promise). The test split's other use, top-1 parity, is unaffected.
Keras's shipped model gives the scores: the floor is a property of the model's
calibrated scores, which every exported file reproduces (``validate`` measures
how closely). A photo the model itself calls ``unknown`` is not answered at any
floor. See ``toolchain.confidence.floor`` for the bound.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from edge.answer import best_classes, floor_score
from edge.errors import BadInput
from toolchain.confidence.floor import LOW_COVERAGE, choose_floor, lower_promises
from toolchain.confidence.shipped import has_out_of_class
from toolchain.core.pixel_file import decode_to_file, predict_in_batches
from toolchain.core.progress import Log
from toolchain.core.rundir import RunDir
from toolchain.validate.decision import DECISION_VAL_IMAGES, evenly

HELD_OUT = ("val", "test")  # the splits the floor is chosen on


def answer_floor(
    run: RunDir,
    config: Dict[str, Any],
    model: Any,
    min_precision: float,
    confidence: float,
    log: Log,
) -> Optional[Dict[str, Any]]:
    """The floor as the card and the report record it; None for a model without the
    ``unknown`` output (an older run: its device answers as before) or without
    readable validation or test photos."""
    if not has_out_of_class(config):
        return None
    classes = len(config["labels"])
    no_floor = "so no answer floor: the model answers unless it calls a photo out-of-class"
    paths, labels = [], []
    try:
        for split in HELD_OUT:
            split_paths, split_labels = run.split_files(split, classes)
            paths, labels = paths + split_paths, labels + split_labels
    except BadInput as error:  # the dataset folder moved: a float export needs no photos
        log(f"note: {error}; {no_floor}")
        return None
    paths, labels = evenly(paths, labels, DECISION_VAL_IMAGES)
    pixels, kept, _ = decode_to_file(paths, int(config["image_size"]), run.path, "answer floor")
    try:
        if not kept:
            log(f"note: no validation or test photo could be read, {no_floor}")
            return None
        probabilities = predict_in_batches(model, pixels)
    finally:
        pixels.close()
    truth = np.array([labels[i] for i in kept])
    best, score, flagged = best_classes(probabilities, classes)  # unknown comes last
    scores, correct = floor_score(score, flagged), ~flagged & (best == truth)
    floor = choose_floor(scores, correct, min_precision, confidence)
    figures = floor.json()
    if floor.answered:
        log(
            f"answer floor {floor.floor:.3f}: answers {floor.coverage:.0%} of {floor.images} "
            f"held-out photos at precision {floor.precision:.3f} "
            f"(lower bound {floor.precision_lower_bound:.3f} >= {min_precision:g})"
        )
    else:
        log(
            f"warning: no answer floor reaches precision {min_precision:g} on the "
            f"{floor.images} held-out photos (with a {floor.confidence:.0%} bound); the "
            "model will answer unknown to everything: lower --min-precision or train a better model"
        )
    lower = (
        lower_promises(scores, correct, min_precision, confidence)
        if not floor.answered or floor.coverage < LOW_COVERAGE
        else []
    )
    if lower:
        figures["lower_promises"] = [
            {key: f.json()[key] for key in ("min_precision", "floor", "coverage")} for f in lower
        ]
        log(
            "note: on the same photos, "
            + ", ".join(
                f"--min-precision {f.min_precision:g} would answer {f.coverage:.0%}" for f in lower
            )
        )
    return {**figures, "chosen_on": f"val and test splits ({floor.images} photos)"}
