"""toolchain.metrics: the numbers the parity gate is built on."""

import numpy as np

from edge import metrics

P = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3]])
Y = np.array([0, 1, 1, 1])


def test_topk_accuracy():
    assert metrics.topk_accuracy(P, Y, 1) == 0.5
    assert metrics.topk_accuracy(P, Y, 2) == 1.0
    assert metrics.topk_accuracy(P, Y, 10) == 1.0  # k beyond the class count is all classes


def test_agreement_and_drop():
    other = P.copy()
    other[1] = [0.1, 0.8, 0.1]
    assert metrics.top1_agreement(P, other) == 0.75
    assert np.isclose(metrics.drop_points(0.9, 0.885), 1.5)
    assert metrics.drop_points(0.5, 0.6) < 0


def test_confusion_and_per_class():
    predicted = P.argmax(axis=1)
    matrix = metrics.confusion_matrix(Y, predicted, 3)
    assert matrix.tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    per_class = metrics.per_class_accuracy(Y, predicted, 3)
    assert per_class[0] == 1.0 and np.isclose(per_class[1], 1 / 3) and np.isnan(per_class[2])


def test_wilson_interval_contains_estimate_and_stays_in_range():
    low, high = metrics.wilson_interval(95, 100)
    assert low < 0.95 < high <= 1.0
    low, high = metrics.wilson_interval(100, 100)
    assert high == 1.0 and low > 0.95
