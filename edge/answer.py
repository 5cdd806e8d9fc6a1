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

from typing import Any, Dict, NamedTuple, Optional

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


def decide(
    probabilities: np.ndarray, labels: list, unknown_index: Optional[int], floor: float
) -> Answer:
    """The answer for one image's scores."""
    scores = np.asarray(probabilities, dtype=np.float64)
    out_of_class = False
    if unknown_index is not None:
        out_of_class = int(np.argmax(scores)) == unknown_index
        scores = scores.copy()
        scores[unknown_index] = -np.inf
    best = int(np.argmax(scores))
    score = float(scores[best])
    if floor <= 0.0:
        return Answer(labels[best], score, out_of_class)
    if out_of_class or score < floor:
        return Answer(UNKNOWN_ANSWER, score, out_of_class)
    return Answer(labels[best], score, out_of_class)
