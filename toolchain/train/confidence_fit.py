"""After training: fit the calibration and the out-of-class answer, build the shipped model.

The trained classifier runs once more over the training split (class means and
spreads of its pooled features, accumulated a batch at a time, so memory does
not grow with the data) and over the held-out splits. The temperature is fitted
on the validation and test splits together: one number, but on a few hundred
photos its noise is what limits calibration (one four-flower run: T from 158
validation photos 0.95, from both splits 0.92, from 394 new photos 0.89), and
the test split's other use, top-1 parity, does not care. The figures reported in
``train_report.json`` and the reliability diagram stay held out: each split is
scored at the temperature the *other* split fits alone (cross-fitting). The
out-of-class threshold is set on the validation split; the test split measures
what it keeps. A model without edgetl's layer layout (``pool`` and
``probabilities``) is saved as trained, with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edge import metrics
from edge.answer import best_classes
from toolchain.confidence import outofclass
from toolchain.confidence.shipped import features_and_logits, has_head, with_confidence
from toolchain.confidence.temperature import fit_temperature, softmax
from toolchain.core.pixel_file import Rows, batches
from toolchain.core.progress import Log
from toolchain.train.data import TrainingData


@dataclass
class ConfidenceFit:
    """What the fit found, for train_report.json, config.json and the diagram."""

    report: Dict[str, Any]
    reliability: Dict[str, List[Dict[str, float]]] = field(default_factory=dict)


def features_of(extractor: Any, rows: Rows) -> Tuple[np.ndarray, np.ndarray]:
    """Pooled features and logits of ``rows``, a batch at a time."""
    features, logits = [], []
    for batch in batches(rows, 64):
        f, z = extractor.predict_on_batch(batch.astype(np.float32))
        features.append(np.asarray(f, np.float32))
        logits.append(np.asarray(z, np.float32))
    if not features:
        width = int(extractor.outputs[0].shape[-1]), int(extractor.outputs[1].shape[-1])
        return np.zeros((0, width[0]), np.float32), np.zeros((0, width[1]), np.float32)
    return np.concatenate(features), np.concatenate(logits)


def class_statistics(
    extractor: Any, rows: Rows, labels: np.ndarray, n_classes: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Class means and per-feature scales of the training split in one streaming pass
    (``outofclass.ClassSums``), never every feature row at once."""
    sums = outofclass.ClassSums(n_classes)
    start = 0
    for batch in batches(rows, 64):
        features, _ = extractor.predict_on_batch(batch.astype(np.float32))
        sums.add(features, labels[start : start + len(features)])
        start += len(features)
    return sums.means_and_scales()


def fit_confidence(
    model: Any, data: TrainingData, out_of_class: bool, log: Log
) -> Tuple[Any, Optional[ConfidenceFit]]:
    """``(shipped model, fit)``: calibrated, and with ``out_of_class`` the ``unknown``
    output too; ``(model, None)`` when the model has no edgetl head."""
    if not has_head(model):
        log("note: the model has no pooled-feature head; scores are saved uncalibrated")
        return model, None
    n = len(data.labels)
    extractor = features_and_logits(model)
    train = data.splits["train"]
    means, scales = class_statistics(extractor, train.pixels, train.class_indices, n)
    val, test = data.splits["val"], data.splits["test"]
    val_features, val_logits = features_of(extractor, val.pixels)
    test_features, test_logits = features_of(extractor, test.pixels)
    temperature = fit_temperature(
        np.concatenate([val_logits, test_logits]),
        np.concatenate([val.class_indices, test.class_indices]),
    )
    # Held-out figures: each split at the temperature the other fits alone.
    scored_at = {
        "val": fit_temperature(test_logits, test.class_indices) if len(test_logits) else None,
        "test": fit_temperature(val_logits, val.class_indices) if len(val_logits) else None,
    }
    # Without a validation split the threshold falls back on the test split, then on
    # training images (which sit closer to their means: a looser threshold).
    held_out, held_name = val_features, "val"
    if not len(held_out):
        held_out, held_name = (test_features, "test") if len(test_features) else (None, "train")
    if held_out is None:
        train_features, _ = features_of(extractor, train.pixels[: min(len(train.pixels), 2000)])
        held_out = train_features
    ooc = outofclass.fit(means, scales, held_out)
    shipped = with_confidence(model, temperature, ooc if out_of_class else None)

    report: Dict[str, Any] = {
        "temperature": round(temperature, 6),
        "fitted_on": (
            f"val and test splits ({len(val.class_indices)} + {len(test.class_indices)} images)"
            if len(val.class_indices) + len(test.class_indices)
            else "nothing (no held-out split): the scores as trained"
        ),
        "calibration_error_after": "each split at the temperature fitted on the other alone",
        "calibration_error_bins": metrics.CALIBRATION_BINS,
        # Fitted and measured either way; in the model only with --out-of-class.
        "out_of_class": {
            **ooc.summary(),
            "threshold_set_on": f"{held_name} split",
            "in_model": out_of_class,
        },
    }
    reliability: Dict[str, List[Dict[str, float]]] = {}
    for name, logits, features, labels in (
        ("val", val_logits, val_features, val.class_indices),
        ("test", test_logits, test_features, test.class_indices),
    ):
        if not len(labels):
            continue
        before, after = softmax(logits), softmax(logits, temperature)
        other = scored_at[name]
        held_out_after = softmax(logits, other) if other is not None else None
        report[f"{name}_calibration_error"] = {
            "before": round(metrics.top1_calibration_error(before, labels), 4),
            "after": (
                round(metrics.top1_calibration_error(held_out_after, labels), 4)
                if held_out_after is not None
                else None  # no other split to fit on: nothing held out to say
            ),
            # what scores that were exactly right would read on these photos (sampling)
            "noise": metrics.top1_calibration_noise(
                held_out_after if held_out_after is not None else before
            ),
        }
        if name != held_name:  # photos the threshold was set on say nothing new
            # Flagged as the shipped model flags: its output row, by edge.answer's rule.
            u = ooc.probability(features)[:, None]
            _, _, flagged = best_classes(np.hstack([after * (1 - u), u]), n)
            report["out_of_class"][f"{name}_kept"] = round(float(1 - flagged.mean()), 4)
        if name == "test" or not len(test.class_indices):
            for stage, probs in (("before", before), ("after", held_out_after)):
                if probs is None:
                    continue
                reliability[f"{name} split, {stage} calibration"] = metrics.top1_reliability(
                    probs, labels
                )
    log(
        f"calibration: temperature {temperature:.3f}"
        + (
            f"; out-of-class threshold {ooc.threshold:.3f} keeps {outofclass.KEEP:.0%} of "
            "known-class photos"
            if out_of_class
            else ""
        )
    )
    return shipped, ConfidenceFit(report, reliability)
