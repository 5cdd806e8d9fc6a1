"""The answer floor: the lowest score at which answers can still promise a precision.

A device answers with its top class when that class's (calibrated) score reaches
the floor, and says "unknown" below it. The floor is chosen on held-out photos
of the known classes with a bound, not a point estimate: on a few hundred
photos, a threshold whose measured precision is 0.90 gave 0.84-0.89 on new
photos (measured by hand before this existed), because the point estimate
rides on the photos' luck.

The rule: every held-out score is a candidate floor (thinned to
``CANDIDATES``, evenly in the number answered); the chosen one is the lowest
whose one-sided Clopper-Pearson lower bound on the precision of the photos it
answers, at ``confidence`` (export's ``--precision-confidence``), reaches the
promise. Keeping the lowest of many passing floors is a selection the bound does
not correct for, so the promise holds less often than the confidence says:
``tests/test_confidence.py`` measures it on generated scores of known
precision. Corrections that make it exact (Bonferroni over a few floors, or
fixed-sequence testing, which one early wrong answer stops) answered nothing in
about half of those trials with a validation split of a few hundred photos.
When no floor holds, the model answers nothing, and export says so.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List

import numpy as np

CANDIDATES = 400  # floors looked at: a bound is a bisection over a binomial sum
BOUND = "one-sided Clopper-Pearson lower bound, lowest passing floor"


@functools.lru_cache(maxsize=16)
def log_factorials(n: int) -> np.ndarray:
    """log(k!) for k = 0..n (cached: a floor's bounds all share one n)."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def binomial_tail(successes: int, n: int, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(n, p), summed in log space."""
    if successes <= 0 or p >= 1.0:
        return 1.0
    if p <= 0.0:
        return 0.0
    k = np.arange(successes, n + 1)
    table = log_factorials(n)
    terms = table[n] - table[k] - table[n - k] + k * math.log(p) + (n - k) * math.log1p(-p)
    top = float(terms.max())
    return min(1.0, math.exp(top) * float(np.exp(terms - top).sum()))


def precision_lower_bound(successes: int, n: int, confidence: float) -> float:
    """The Clopper-Pearson lower bound: the smallest p under which seeing ``successes``
    or more right answers of ``n`` still has probability ``1 - confidence``."""
    if n <= 0 or successes <= 0:
        return 0.0
    alpha = 1.0 - confidence
    low, high = 0.0, 1.0
    for _ in range(40):  # 1e-12 of precision
        mid = (low + high) / 2
        if binomial_tail(successes, n, mid) < alpha:
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class Floor:
    """The chosen floor and what it was measured at, for the report and the card."""

    floor: float  # answer when the top class's score is at least this (>1: never)
    min_precision: float  # what was promised
    confidence: float
    bound: str
    precision_lower_bound: float  # at the chosen floor, on the held-out photos
    precision: float  # measured there (a point estimate, for reference)
    coverage: float  # the share of held-out photos answered: what to expect on new ones
    answered: int
    images: int

    def json(self) -> Dict[str, Any]:
        """Rounded for the card; the floor rounded *down*, so the photo it was chosen at
        is still answered."""
        values = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        values["floor"] = math.floor(self.floor * 1e6) / 1e6
        return values


NEVER = 1.000001  # a floor no score reaches


def choose_floor(
    scores: np.ndarray,
    correct: np.ndarray,
    min_precision: float,
    confidence: float,
) -> Floor:
    """The lowest candidate floor whose bound holds. ``scores``: each held-out photo's top
    score (0 for a photo the model already calls out-of-class); ``correct``: whether
    its top class is its label."""
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], np.cumsum(correct[order])
    ends = set()
    for i in np.linspace(0, n - 1, min(CANDIDATES, n)).round().astype(int).tolist() if n else []:
        while i + 1 < n and sorted_scores[i + 1] == sorted_scores[i]:
            i += 1  # a floor inside a tie answers the whole tie
        if sorted_scores[i] > 0.0:
            ends.add(i)
    chosen = None
    # The bound reaches the promise exactly when the promise itself leaves seeing this
    # many right answers less likely than 1 - confidence (the tail rises with p): one
    # tail per candidate, the lowest floor first, and the bisection only for the chosen.
    for i in sorted(ends, reverse=True):
        answered = int(i + 1)
        if hits[i] < min_precision * answered:
            continue  # below the promise already: no bound can pass
        if binomial_tail(int(hits[i]), answered, min_precision) < 1.0 - confidence:
            chosen = (i, precision_lower_bound(int(hits[i]), answered, confidence))
            break
    if chosen is None:
        return Floor(NEVER, min_precision, confidence, BOUND, 0.0, float("nan"), 0.0, 0, n)
    i, bound = chosen
    answered = int(i + 1)
    return Floor(
        float(sorted_scores[i]),
        min_precision,
        confidence,
        BOUND,
        bound,
        float(hits[i] / answered),
        answered / n,
        answered,
        n,
    )


LOW_COVERAGE = 0.5  # a promise that answers fewer held-out photos than this gets a note
LOWER_STEPS = (0.05, 0.10)  # the promises below it that the note prices


def lower_promises(
    scores: np.ndarray, correct: np.ndarray, min_precision: float, confidence: float
) -> List[Floor]:
    """The floors of promises ``LOWER_STEPS`` below ``min_precision``, on the same photos
    at the same confidence. Why: a promise the model can keep only on its surest photos
    answers few (one five-class run answered 12% at 0.9), and the user choosing a lower
    one should see what it buys before exporting again."""
    promises = [round(min_precision - step, 4) for step in LOWER_STEPS]
    return [choose_floor(scores, correct, p, confidence) for p in promises if p > 0]
