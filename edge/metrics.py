"""Accuracy and agreement as plain numpy functions over probability arrays.

``probabilities`` are (n_images, n_classes); ``labels`` are (n_images,) ints.
Accuracies and agreement are fractions in 0..1, drops are percentage points.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import numpy as np

from edge.errors import NotFinite

WORST_SHOWN = 12


def require_finite(probabilities: np.ndarray, what: str) -> np.ndarray:
    """``probabilities`` unchanged when every value is finite; ``NotFinite`` otherwise.

    Call it on both sides (Keras's and the TFLite model's) before any figure: every
    comparison with NaN is false and ``argmax`` of an all-NaN row is 0, so a model that
    outputs NaN everywhere "agrees" with itself on every image and passes every gate.
    """
    values = np.asarray(probabilities)
    rows = values.reshape(len(values), -1) if values.ndim else values.reshape(1, 1)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1)) if rows.size else np.array([], int)
    if len(bad):
        name = " ".join(str(what).split())
        raise NotFinite(
            f"{name} outputs NaN or infinity for {len(bad)} of {len(rows)} images "
            f"(first: image #{bad[0] + 1}), so no figure of it means anything and it is not fit "
            "to ship; train again (a diverged training makes such a model) and export again"
        )
    return probabilities


def topk_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    if len(labels) == 0:
        return float("nan")
    k = min(k, probabilities.shape[1])
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(best == labels[:, None], axis=1)))


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of images where both models pick the same top-1 class."""
    if len(reference) == 0:
        return float("nan")
    return float(np.mean(np.argmax(reference, axis=1) == np.argmax(candidate, axis=1)))


def drop_points(reference_top1: float, candidate_top1: float) -> float:
    """Top-1 lost by the candidate, in percentage points (negative: it gained)."""
    return 100.0 * (reference_top1 - candidate_top1)


def worse_evidence(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray
) -> Dict[str, Any]:
    """How strongly the images say the candidate is less accurate than the reference.

    Only the images where exactly one of the two is right tell them apart: the
    reference right alone on ``lost`` of them, the candidate on ``gained``. If the two
    were equally accurate, each such image would go either way with even odds, so
    ``p_worse`` is the chance of the candidate losing at least ``lost`` of them by luck
    (the exact one-sided sign test, McNemar's test without approximation). Why: on a
    test split of ~170 images one image is 0.6 points of top-1, and a model as accurate
    as Keras that differs on 4-8 images loses two of them net about a third of the time.
    """
    truth = np.asarray(labels)
    if len(truth) == 0:
        return {"lost": 0, "gained": 0, "p_worse": 1.0}
    right = np.argmax(reference, axis=1) == truth
    right_now = np.argmax(candidate, axis=1) == truth
    lost, gained = int(np.sum(right & ~right_now)), int(np.sum(right_now & ~right))
    return {"lost": lost, "gained": gained, "p_worse": sign_test(lost, gained)}


def sign_test(lost: int, gained: int) -> float:
    """P(at least ``lost`` of ``lost + gained`` fair coin flips go against the candidate)."""
    total = lost + gained
    if total == 0:
        return 1.0
    # In logs (lgamma), so a split of tens of thousands of differing images stays fast.
    terms = [
        math.lgamma(total + 1) - math.lgamma(k + 1) - math.lgamma(total - k + 1)
        for k in range(lost, total + 1)
    ]
    top = max(terms)
    log_tail = top + math.log(sum(math.exp(t - top) for t in terms)) - total * math.log(2)
    return float(min(1.0, math.exp(log_tail)))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(at most ``k`` successes in ``n`` trials of probability ``p``), summed in logs
    (lgamma) like ``sign_test``, so tens of thousands of images stay fast and exact."""
    if k >= n:
        return 1.0
    if k < 0:
        return 0.0
    if p >= 1.0:
        return 0.0
    if p <= 0.0:
        return 1.0
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        + i * math.log(p) + (n - i) * math.log1p(-p)
        for i in range(0, k + 1)
    ]  # fmt: skip
    top = max(terms)
    return float(min(1.0, math.exp(top + math.log(sum(math.exp(t - top) for t in terms)))))


def agreement_below_evidence(agreement: float, n_images: int, bound: float) -> float:
    """How strongly ``n_images`` say the true agreement is below ``bound``: the chance
    that a model agreeing at exactly ``bound`` agrees on this few images or fewer (the
    exact one-sided binomial test). Why: on 257 images one image is 0.4 points of
    agreement, and a model agreeing 0.96 on every photo reads under 0.95 on such a split
    about one time in five."""
    agreeing = int(round(agreement * n_images))
    return binomial_cdf(agreeing, int(n_images), float(bound))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class_accuracy(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall per class; NaN for a class with no images."""
    matrix = confusion_matrix(labels, predicted, n_classes)
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple:
    """95% Wilson score interval for a proportion (sound near 0 and 1, unlike ±1.96σ)."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    low, high = centre - half, centre + half
    # At p = 0 or 1 the exact bound is 0 or 1; float rounding must not move it.
    return (0.0 if successes == 0 else float(low), 1.0 if successes == total else float(high))


def disagreements(
    keras_probs: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    paths: Sequence[str],
    names: Sequence[str],
    limit: int = WORST_SHOWN,
) -> List[Dict[str, Any]]:
    """Images where the two top-1 differ, worst first (largest probability shift)."""
    keras_best, best = keras_probs.argmax(axis=1), probs.argmax(axis=1)
    shift = np.abs(keras_probs - probs).max(axis=1)
    found = [i for i in np.argsort(-shift, kind="stable") if keras_best[i] != best[i]]
    return [
        {
            "path": paths[i],
            "true": names[labels[i]],
            "keras": names[keras_best[i]],
            "keras_score": round(float(keras_probs[i, keras_best[i]]), 4),
            "tflite": names[best[i]],
            "tflite_score": round(float(probs[i, best[i]]), 4),
            "max_abs_prob_diff": round(float(shift[i]), 4),
        }
        for i in found[:limit]
    ]


CALIBRATION_BINS = 15  # the usual choice in the calibration literature, so figures compare


def bin_index(confidences: np.ndarray, bins: int = CALIBRATION_BINS) -> np.ndarray:
    """The equal-width bin of each confidence: bin i holds (i/bins, (i+1)/bins]; a
    confidence of exactly 0 goes to the first bin."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, bins - 1)


def reliability(
    confidences: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> List[Dict[str, float]]:
    """Equal-width confidence bins: count, mean confidence and accuracy of each non-empty
    one (what a reliability diagram draws and the calibration error sums)."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = bin_index(confidences, bins)
    rows = []
    for i in range(bins):
        mask = index == i
        if mask.any():
            rows.append(
                {
                    "low": float(edges[i]),
                    "high": float(edges[i + 1]),
                    "count": int(mask.sum()),
                    "confidence": float(confidences[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                }
            )
    return rows


def error_of_bins(rows: List[Dict[str, float]]) -> float:
    """The count-weighted gap between confidence and accuracy over ``reliability`` rows;
    NaN without rows."""
    total = sum(r["count"] for r in rows)
    if not total:
        return float("nan")
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / total)


def calibration_error(
    confidences: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """Expected calibration error over ``bins`` equal-width bins; NaN without rows. Small
    sets read high even for a calibrated model (a few hundred rows give ~0.03 from noise
    alone)."""
    return error_of_bins(reliability(confidences, correct, bins))


NOISE_DRAWS = 200  # outcome draws behind ``calibration_noise`` (its median varies by
# about 0.001 from seed to seed on 660 rows, 0.002 on 132: reported to 3 decimals)


def calibration_noise(
    confidences: np.ndarray, bins: int = CALIBRATION_BINS, draws: int = NOISE_DRAWS, seed: int = 0
) -> Dict[str, float]:
    """What a model whose scores were exactly right would read on these same scores: the
    median and 90th percentile of ``calibration_error`` over ``draws`` sets of outcomes,
    each image right with the probability its score says (NaN without rows).

    Why: the calibration error of a few hundred images is mostly sampling noise (a
    perfectly calibrated four-flower model at ~80% top-1 reads ~0.035 on 660 photos,
    ~0.07 on 132), so a figure
    means something only beside this floor: one under the 90th percentile is what a
    calibrated model could read; one far above it is a real miscalibration. Seeded, so
    a report is the same each time it is written.
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    if not len(confidences):
        return {"median": float("nan"), "p90": float("nan"), "draws": 0}
    rng = np.random.default_rng(seed)
    index = bin_index(confidences, bins)
    scored = np.bincount(index, weights=confidences, minlength=bins)
    errors = np.empty(draws)
    for draw in range(draws):  # the count-weighted |accuracy - confidence| of each bin
        right = np.bincount(
            index, weights=rng.random(len(confidences)) < confidences, minlength=bins
        )
        errors[draw] = np.abs(right - scored).sum() / len(confidences)
    return {
        "median": round(float(np.median(errors)), 3),
        "p90": round(float(np.percentile(errors, 90)), 3),
        "draws": draws,
    }


def top1_calibration_noise(probabilities: np.ndarray) -> Dict[str, float]:
    """``calibration_noise`` of the top score (see ``top1_calibration_error``)."""
    probabilities = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    return calibration_noise(probabilities.max(axis=1) if probabilities.size else [])


def top1_reliability(probabilities: np.ndarray, labels: np.ndarray) -> List[Dict[str, float]]:
    """``reliability`` of the top score: its bins, right when the top class is the label."""
    probabilities = np.asarray(probabilities)
    if not len(probabilities):
        return []
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    return reliability(probabilities.max(axis=1), correct)


def top1_calibration_error(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The calibration error of the top score: is a 0.8 right 80% of the time?"""
    return error_of_bins(top1_reliability(probabilities, labels))
