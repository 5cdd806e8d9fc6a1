"""Calibration, the out-of-class score, the answer floor and the device's answer.

Pure numpy pieces are checked on generated numbers whose truth is known; the
shipped Keras graph on a small real model, against the numpy formulas and
through a real TFLite conversion and interpreter.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge import metrics
from edge.answer import UNKNOWN_ANSWER, card_floor, card_unknown_index, decide
from toolchain.confidence import outofclass
from toolchain.confidence.floor import choose_floor, lower_promises, precision_lower_bound
from toolchain.confidence.temperature import fit_temperature, softmax


def test_temperature_recovers_the_one_that_generated_the_labels():
    """Labels drawn from softmax(z / 2) make T = 2 the likeliest; a few thousand draws
    pin it within 10%."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 5))
    probabilities = softmax(logits, 2.0)
    labels = np.array([rng.choice(5, p=p) for p in probabilities])
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature(logits[:0], labels[:0]) == 1.0  # nothing held out: as trained
    # No mistake to learn from: the likelihood grows as T shrinks, without a minimum.
    right = np.array([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0]])
    assert fit_temperature(right, np.array([0, 1, 0])) == 1.0


def test_calibration_error_is_small_for_calibrated_and_large_for_overconfident_scores():
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.3, 1.0, 20000)
    correct = rng.random(20000) < confidence
    assert metrics.calibration_error(confidence, correct) < 0.02
    overconfident = np.clip(confidence + 0.2, 0, 1)
    assert metrics.calibration_error(overconfident, correct) > 0.15
    assert np.isnan(metrics.calibration_error(np.zeros(0), np.zeros(0, bool)))
    rows = metrics.reliability(confidence, correct)
    assert sum(r["count"] for r in rows) == 20000


def test_calibration_noise_is_what_exactly_right_scores_read_and_shrinks_with_more_images():
    """Outcomes drawn from the scores themselves read about the noise median and stay
    under its 90th percentile nine times in ten; a real miscalibration reads far past
    it; the floor falls with the number of images as 1/sqrt(n)."""
    rng = np.random.default_rng(2)
    scores = rng.uniform(0.3, 1.0, 660)
    noise = metrics.calibration_noise(scores)
    assert 0.015 < noise["median"] < noise["p90"] < 0.08  # a few hundred images: ~0.03
    honest = [metrics.calibration_error(scores, rng.random(660) < scores) for _ in range(200)]
    assert np.median(honest) == pytest.approx(noise["median"], rel=0.15)
    assert 0.8 <= np.mean(np.array(honest) <= noise["p90"]) <= 0.97
    overconfident = metrics.calibration_error(np.clip(scores + 0.1, 0, 1), rng.random(660) < scores)
    assert overconfident > 2 * noise["p90"]
    big = metrics.calibration_noise(rng.uniform(0.3, 1.0, 6600))["median"]
    assert big == pytest.approx(noise["median"] / np.sqrt(10), rel=0.35)
    assert metrics.calibration_noise(scores) == noise  # seeded: a report reads the same
    assert np.isnan(metrics.top1_calibration_noise(np.zeros((0, 3)))["median"])


def test_clopper_pearson_bound_matches_known_values():
    # 95 of 100 right: the one-sided 90% lower bound is 0.909 (textbook value 0.9092).
    assert precision_lower_bound(95, 100, 0.9) == pytest.approx(0.9092, abs=5e-4)
    # All of n right: (1 - c) ** (1 / n).
    assert precision_lower_bound(22, 22, 0.9) == pytest.approx(0.1 ** (1 / 22), abs=1e-6)
    assert precision_lower_bound(0, 10, 0.9) == 0.0


def test_floor_mostly_keeps_its_promise_on_new_draws_of_the_same_scores():
    """Scores whose chance of being right is known (P(right | s) = s): the floor chosen on
    300 held-out draws gives new draws a precision of at least the promise in most
    trials, and answers some. "Most", not 90%: the rule keeps the lowest passing floor
    of many, which the bound does not correct for (toolchain.confidence.floor measured
    72% on these scores); this pins that it does not get worse."""
    rng = np.random.default_rng(2)
    promise, held, kept, coverages = 0.9, 300, 0, []
    trials = 60
    for _ in range(trials):
        scores = rng.beta(5, 1.5, held)
        floor = choose_floor(scores, rng.random(held) < scores, promise, 0.9)
        new = rng.beta(5, 1.5, 5000)
        answered = new >= floor.floor
        precision = float(np.mean(rng.random(answered.sum()) < new[answered]))
        kept += precision >= promise
        coverages.append(answered.mean())
    assert kept / trials >= 0.6
    assert np.median(coverages) > 0.1


def test_floor_that_no_score_reaches_answers_nothing():
    scores = np.full(50, 0.6)
    floor = choose_floor(scores, np.arange(50) % 2 == 0, 0.9, 0.9)
    assert floor.answered == 0 and floor.floor > 1.0


def test_out_of_class_distance_separates_far_features_and_keeps_the_share_promised():
    rng = np.random.default_rng(3)
    means = rng.normal(0, 1, (4, 64))
    labels = rng.integers(0, 4, 4000)
    train = means[labels] + rng.normal(0, 0.3, (4000, 64))
    held = means[labels[:1000]] + rng.normal(0, 0.3, (1000, 64))
    fitted_means, scales = outofclass.fit_classes(train, labels, 4)
    ooc = outofclass.fit(fitted_means, scales, held)
    new_known = means[labels[:2000]] + rng.normal(0, 0.3, (2000, 64))
    far = rng.normal(0, 1, (2000, 64)) * 2
    assert np.mean(ooc.distances(new_known) <= ooc.threshold) >= 0.98
    assert np.mean(ooc.distances(far) > ooc.threshold) >= 0.99
    u = ooc.probability(np.concatenate([new_known, far]))
    assert np.median(u[:2000]) < 0.01 and np.median(u[2000:]) > 0.99


def test_conformal_threshold_rank():
    values = np.arange(1, 101, dtype=float)  # n = 100: rank ceil(101 * 0.99) = 100
    assert outofclass.conformal_threshold(values) == 100.0
    assert outofclass.conformal_threshold(values[:10]) == 10.0  # too few: the largest


def test_the_answer_is_a_class_unknown_below_the_floor_and_always_a_class_at_zero():
    labels = ["daisy", "rose", "unknown"]
    confident = np.array([0.9, 0.08, 0.02])
    unsure = np.array([0.5, 0.45, 0.05])
    outside = np.array([0.1, 0.05, 0.85])
    assert decide(confident, labels, 2, 0.7) == ("daisy", pytest.approx(0.9), False)
    assert decide(unsure, labels, 2, 0.7).answer == UNKNOWN_ANSWER
    flagged = decide(outside, labels, 2, 0.7)
    assert flagged.answer == UNKNOWN_ANSWER and flagged.out_of_class
    # --threshold 0: always a class, and the flag still says out-of-class
    assert decide(outside, labels, 2, 0.0) == ("daisy", pytest.approx(0.1), True)
    # an older model: no unknown output, no floor
    assert decide(np.array([0.3, 0.7]), ["a", "b"], None, 0.0) == ("b", pytest.approx(0.7), False)


@pytest.mark.parametrize(
    "card, index, floor",
    [
        ({}, None, 0.0),
        ({"unknown": {"index": 2}, "answer": {"floor": 0.8}}, 2, 0.8),
        ({"unknown": {"index": 7}}, None, 0.0),  # past the outputs: ignored
        ({"unknown": {"index": True}, "answer": {"floor": "high"}}, None, 0.0),
        ({"answer": {"floor": float("nan")}}, None, 0.0),
        ({"answer": {"floor": 5}}, None, 1.000001),
    ],
)
def test_hostile_cards_never_break_the_answer(card, index, floor):
    assert card_unknown_index(card, 3) == index
    assert card_floor(card) == pytest.approx(floor)


def test_the_floor_is_the_lowest_whose_bound_reaches_the_promise():
    """The shortcut (one binomial tail per candidate) picks what bounding every candidate
    by bisection picks, and reports the chosen floor's bound."""
    rng = np.random.default_rng(5)
    for _ in range(5):
        scores = rng.beta(5, 1.5, 200)
        correct = rng.random(200) < scores
        floor = choose_floor(scores, correct, 0.9, 0.7)
        order = np.argsort(-scores, kind="stable")
        hits = np.cumsum(correct[order])
        passing = [
            scores[order][i]
            for i in range(200)
            if precision_lower_bound(int(hits[i]), i + 1, 0.7) >= 0.9
        ]
        assert floor.floor == pytest.approx(min(passing)) if passing else floor.answered == 0
        assert floor.precision_lower_bound >= 0.9 or floor.answered == 0


def test_lower_promises_answer_more_and_keep_their_own_bound():
    """A promise that answers few photos is priced against lower ones on the same
    photos: each lower promise answers at least as many, at a floor no higher, and its
    bound reaches what it promises; nothing below a promise of 0."""
    rng = np.random.default_rng(6)
    scores = rng.uniform(0.3, 1.0, 400)
    correct = rng.random(400) < scores
    strict = choose_floor(scores, correct, 0.95, 0.9)
    lower = lower_promises(scores, correct, 0.95, 0.9)
    assert [f.min_precision for f in lower] == [0.9, 0.85]
    coverages = [strict.coverage] + [f.coverage for f in lower]
    assert coverages == sorted(coverages) and coverages[-1] > coverages[0]
    assert all(
        f.floor <= strict.floor and f.precision_lower_bound >= f.min_precision for f in lower
    )
    assert [f.min_precision for f in lower_promises(scores, correct, 0.08, 0.9)] == [0.03]
