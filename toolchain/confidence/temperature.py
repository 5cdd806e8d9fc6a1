"""Temperature scaling: one number that makes the softmax's scores calibrated.

``softmax(logits / T)`` keeps every image's ranking (so accuracy is unchanged)
and only sharpens (T < 1) or softens (T > 1) the scores; T is the one that
gives the held-out images the highest likelihood. One parameter is all a few
hundred held-out images can fit without fitting their noise: per-class
(vector) scaling has K times as many. In the exported graph it costs nothing:
the last dense layer's weights are divided by T (``toolchain.confidence.shipped``).
"""

from __future__ import annotations

import numpy as np

# Outside this a temperature is a broken model or a validation split with no mistake to
# learn from (its likelihood then grows without end as T shrinks), not a calibration.
SEARCH = (0.2, 10.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(log_norm - shifted[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature of least held-out NLL: a log-spaced scan, then golden-section
    refinement around its best point (NLL is smooth and has one minimum in T).
    No held-out images, or no minimum inside ``SEARCH``: 1.0, the scores as trained."""
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return 1.0
    grid = np.exp(np.linspace(np.log(SEARCH[0]), np.log(SEARCH[1]), 121))
    losses = [negative_log_likelihood(logits, labels, t) for t in grid]
    best = int(np.argmin(losses))
    if best in (0, len(grid) - 1):
        # No minimum inside the range: a split with no mistake (its likelihood grows
        # without end as T shrinks) or a degenerate model. Keep the scores as trained.
        return 1.0
    low, high = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if negative_log_likelihood(logits, labels, np.exp(a)) < negative_log_likelihood(
            logits, labels, np.exp(b)
        ):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))
