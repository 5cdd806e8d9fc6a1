"""``validate --unknown-data DIR``: how the models treat photos of none of the classes.

For Keras and each model file: the share of the out-of-class photos answered
``unknown`` (the model's own out-of-class output, or a best class below the
card's answer floor: what ``classify`` answers), the AUROC of the out-of-class
score between them and the held-out photos of the known classes (the
``unknown`` output where the model has one, else one minus the top score), and
on the known photos the risk-coverage curve: the share of answers that are
wrong against the share answered, as the floor drops (``risk_coverage.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edge.answer import best_classes, floor_score, is_answered
from edge.errors import BadInput
from edge.image import list_images, load_many

CURVE_POINTS = 200  # points kept of each risk-coverage curve


def unknown_photos(folder: str, size: int) -> Tuple[np.ndarray, List[str]]:
    """The folder's images (recursive), decoded as the model sees them."""
    path = Path(folder)
    if not path.is_dir():
        raise BadInput(
            f"--unknown-data {folder}: not a folder; give a folder of photos of none of the classes"
        )
    paths = list_images(path)
    if not paths:
        raise BadInput(
            f"--unknown-data {folder}: no images in it; give a folder of JPEG/PNG photos"
        )
    pixels, kept, _ = load_many(paths, size)
    if not kept:
        raise BadInput(f"--unknown-data {folder}: none of its {len(paths)} images could be read")
    return pixels, [str(paths[i]) for i in kept]


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney)."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if not len(positive) or not len(negative):
        return float("nan")
    values = np.concatenate([positive, negative])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):  # average ranks over ties
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    n_pos = len(positive)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * len(negative)))


def risk_coverage(scores: np.ndarray, correct: np.ndarray) -> List[List[float]]:
    """``[coverage, risk]`` as the floor drops through every score (thinned)."""
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    right = np.asarray(correct, bool)[order]
    n = len(right)
    if not n:
        return []
    answered = np.arange(1, n + 1)
    risk = 1.0 - np.cumsum(right) / answered
    picks = np.unique(np.linspace(0, n - 1, min(CURVE_POINTS, n)).round().astype(int))
    return [[round(float(answered[i] / n), 4), round(float(risk[i]), 4)] for i in picks]


def figures(
    known_probs: np.ndarray,
    known_labels: np.ndarray,
    unknown_probs: np.ndarray,
    unknown_index: Optional[int],
    floor: float,
) -> Dict[str, Any]:
    """One model's out-of-class figures (pure), by ``edge.answer``'s rule."""
    best, score, flagged = best_classes(known_probs, unknown_index)
    _, outside_score, outside_flagged = best_classes(unknown_probs, unknown_index)
    answered = is_answered(score, flagged, floor)
    outside_answered = is_answered(outside_score, outside_flagged, floor)
    right = best == np.asarray(known_labels)  # the best class, answered or not
    if unknown_index is not None:
        score_known, score_unknown = known_probs[:, unknown_index], unknown_probs[:, unknown_index]
    else:
        score_known, score_unknown = 1 - known_probs.max(axis=1), 1 - unknown_probs.max(axis=1)
    return {
        "floor": floor,
        "unknown_answered": float(np.mean(~outside_answered)),
        "out_of_class_flagged": float(np.mean(outside_flagged)),
        "auroc": auroc(score_unknown, score_known),
        "known_coverage": float(answered.mean()) if len(answered) else float("nan"),
        "known_answered_precision": float(right[answered].mean()) if answered.any() else None,
        # ranked by what the floor compares, the best class counted right or wrong
        "risk_coverage": risk_coverage(floor_score(score, flagged), right),
    }
