"""The device's answer: a class, or ``unknown``.

A model exported by edgetl since the out-of-class output existed has one more
output than classes, labelled ``unknown`` (its card's ``unknown``), and a card
``answer`` floor chosen at export for a promised precision. The answer is the
best trained class when the model does not call the photo out-of-class and
that class scores at least the floor; otherwise ``unknown``. A floor of 0 always
answers with the best class, and the out-of-class flag still says when the model
thinks the photo is none of them. An older model (no ``unknown`` output, no
floor) always answers, as it did.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np

UNKNOWN_ANSWER = "unknown"


class Answer(NamedTuple):
    answer: str  # a class label, or "unknown"
    score: float  # the best trained class's score
    out_of_class: bool  # the model's own unknown output is its top score


def card_unknown_index(card: Dict[str, Any], outputs: int) -> Optional[int]:
    """The index of the model's ``unknown`` output, from its card; None when it has none
    (or the card names one the model does not have)."""
    unknown = card.get("unknown")
    if not isinstance(unknown, dict):
        return None
    index = unknown.get("index")
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < outputs:
        return index
    return None


def card_floor(card: Dict[str, Any]) -> float:
    """The answer floor the card records; 0 (always answer) without one."""
    answer = card.get("answer")
    floor = answer.get("floor") if isinstance(answer, dict) else None
    if isinstance(floor, (int, float)) and not isinstance(floor, bool) and floor == floor:
        return float(min(max(floor, 0.0), 1.000001))
    return 0.0


def best_classes(
    probabilities: np.ndarray, unknown_index: Optional[int]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row (one image's scores, or a batch): the best trained class, its score, and
    whether the model's own ``unknown`` output came first (ties go to the class)."""
    scores = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    flagged = np.zeros(len(scores), dtype=bool)
    if unknown_index is not None:
        flagged = scores.argmax(axis=1) == unknown_index
        scores = scores.copy()
        scores[:, unknown_index] = -np.inf
    best = scores.argmax(axis=1)
    return best, scores[np.arange(len(scores)), best], flagged


def is_answered(score: np.ndarray, flagged: np.ndarray, floor: float) -> np.ndarray:
    """Answered with a class: always at a floor of 0, else when the model does not call
    the photo out of class and its best class reaches the floor."""
    if floor <= 0.0:
        return np.ones(np.shape(score), dtype=bool)
    return ~np.asarray(flagged) & (np.asarray(score) >= floor)


def floor_score(score: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """What a floor compares: the best class's score, 0 for a photo called out of class
    (no floor answers it)."""
    return np.where(flagged, 0.0, score)


def decide(
    probabilities: np.ndarray, labels: list, unknown_index: Optional[int], floor: float
) -> Answer:
    """The answer for one image's scores."""
    best, score, flagged = best_classes(probabilities, unknown_index)
    answered = bool(is_answered(score, flagged, floor)[0])
    label = labels[int(best[0])] if answered else UNKNOWN_ANSWER
    return Answer(label, float(score[0]), bool(flagged[0]))
