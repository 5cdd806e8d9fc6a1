"""The accuracy budget as one value (``toolchain/core/budget.py``) and the one-line
gate messages built from it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.errors import BadInput
from edge.gate import DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT, device_gate, failures
from edge.metrics import agreement_below_evidence, binomial_cdf, sign_test, worse_evidence
from toolchain.core.budget import Budget
from toolchain.validate.figures import gate_failures, gated


def test_the_export_budget_is_always_whole_and_says_where_it_came_from():
    default = Budget.of(None, None)
    assert (default.max_drop, default.min_agreement) == (DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT)
    assert default.defaulted and default.whole and default.json()["source"] == "default"
    half = Budget.of(2, None)  # one bound given: the other keeps its default
    assert (half.max_drop, half.min_agreement) == (2.0, DEFAULT_MIN_AGREEMENT)
    assert not half.defaulted and half.json()["source"] == "options"
    assert half.flags() == f"--max-drop 2 --min-agreement {DEFAULT_MIN_AGREEMENT:g}"


def test_validate_gates_only_the_bounds_it_is_given():
    gate = Budget.given(None, 0.9)
    assert not gate.whole and gate.max_drop is None
    assert gate.misses(50.0, 0.95, 0.0) == []  # no drop bound: any drop passes
    assert gate.misses(0.0, 0.85, 1.0) == ["agreement 0.8500 < --min-agreement 0.9"]
    assert Budget.given(None, None).misses(100.0, 0.0, 0.0) == []


@pytest.mark.parametrize(
    "max_drop, min_agreement, flag",
    [(-1, None, "--max-drop"), (math.nan, None, "--max-drop"), (math.inf, None, "--max-drop"),
     (None, 1.5, "--min-agreement"), (None, math.nan, "--min-agreement"), (True, None, "--max-drop")],
)  # fmt: skip
def test_a_bound_out_of_range_is_refused_naming_its_flag(max_drop, min_agreement, flag):
    for make in (Budget.of, Budget.given):
        with pytest.raises(BadInput, match=flag):
            make(max_drop, min_agreement)


def test_gate_failures_name_the_model_the_bound_and_the_figures():
    entry = {
        "path": "/run/model_int8.tflite",
        "top1": 0.85,
        "top1_drop_pts": 2.5,
        "agreement": 0.96,
        "device_path": {"top1": 0.85, "top1_drop_pts": 2.5, "agreement": 0.9},
    }
    drop, agreement = gate_failures([entry], Budget.of(1, 0.95))
    # the worse of tensor level and device path is held to each bound
    assert drop == (
        "model_int8.tflite top-1 drop 2.50 pts > --max-drop 1 (worse than Keras beyond "
        "chance: p = 0) (tflite 0.8500, device path 0.8500, agreement 0.9600)"
    )  # figures without the sign test (an older report) are judged by the point rule
    assert agreement == "model_int8.tflite agreement 0.9000 < --min-agreement 0.95"
    assert gate_failures([entry], Budget.of(5, 0.9)) == []


def test_sign_test_is_the_exact_binomial_tail():
    assert sign_test(0, 0) == 1.0  # no image tells the two apart
    assert sign_test(2, 0) == pytest.approx(0.25)  # both lost: a coin does that 1 in 4
    assert sign_test(5, 0) == pytest.approx(1 / 32)
    assert sign_test(3, 3) == pytest.approx(42 / 64)  # P(at least 3 of 6 fair flips)
    assert sign_test(0, 4) == pytest.approx(1.0)
    assert sign_test(60, 40) == pytest.approx(0.028444, abs=1e-6)  # exact binomial tail


def test_worse_evidence_counts_the_images_only_one_model_gets_right():
    labels = np.array([0, 1, 2, 0, 1])
    keras = np.eye(3)[[0, 1, 2, 1, 0]]  # right on images 0-2
    model = np.eye(3)[[0, 2, 2, 0, 0]]  # loses image 1, gains image 3
    evidence = worse_evidence(keras, model, labels)
    assert (evidence["lost"], evidence["gained"]) == (1, 1)
    assert evidence["p_worse"] == pytest.approx(0.75)
    assert worse_evidence(keras[:0], model[:0], labels[:0])["p_worse"] == 1.0


@pytest.mark.parametrize(
    "drop, p_worse, fails",
    [
        (1.17, 0.25, False),  # two images of 171 lost: the split cannot tell
        (2.92, 1 / 32, True),  # five of five lost: worse beyond chance
        (0.5, 0.001, False),  # within the bound, however sure
        (1.0, 0.0, False),  # the bound itself passes
    ],
)
def test_the_drop_bound_fails_only_past_the_bound_and_beyond_chance(drop, p_worse, fails):
    budget = Budget.of(1.0, 0.0)
    assert bool(budget.misses(drop, 1.0, p_worse)) is fails
    device = device_gate({}, 1.0, 0.0)
    assert bool(failures(drop, 1.0, device, p_worse)) is fails  # the device's gate agrees


def test_binomial_cdf_is_the_exact_lower_tail():
    assert binomial_cdf(3, 10, 0.5) == pytest.approx(176 / 1024)
    assert binomial_cdf(10, 10, 0.3) == 1.0 and binomial_cdf(-1, 10, 0.3) == 0.0
    assert binomial_cdf(9, 10, 1.0) == 0.0  # a bound of 1: any difference is conclusive
    assert binomial_cdf(0, 5, 0.2) == pytest.approx(0.8**5)


@pytest.mark.parametrize(
    "differing, n, fails",
    [
        (14, 257, False),  # 0.9455 where 12.85 differ at the bound: the split cannot tell
        (13, 171, False),  # 0.924, p = 0.089
        (14, 171, True),  # 0.918, p = 0.049: below the bound beyond chance
        (16, 158, True),  # 0.899: the four-flower file the point rule also failed
        (1, 500, False),  # above the bound
    ],
)
def test_the_agreement_bound_fails_only_below_it_beyond_chance(differing, n, fails):
    agreement = 1 - differing / n
    budget = Budget.of(100.0, 0.95)
    assert bool(budget.misses(0.0, agreement, 1.0, n)) is fails
    device = device_gate({}, 100.0, 0.95)
    assert bool(failures(0.0, agreement, device, 1.0, n)) is fails  # the device's gate agrees
    if fails:
        p = agreement_below_evidence(agreement, n, 0.95)
        assert f"(below it beyond chance: p = {p:.3g})" in budget.misses(0.0, agreement, 1.0, n)[0]


def test_an_agreement_bound_of_one_fails_any_difference_and_old_figures_keep_the_point_rule():
    assert Budget.of(100.0, 1.0).misses(0.0, 0.999, 1.0, 1000)  # one image of 1,000 differs
    # no image count (a report written before edgetl judged agreement by chance): point rule
    assert Budget.of(100.0, 0.95).misses(0.0, 0.9455, 1.0, None)
    assert not Budget.of(100.0, 0.95).misses(0.0, 0.9455, 1.0, 257)


def test_the_gate_holds_the_side_that_misses():
    """Tensor level within chance, device path past it: the device path decides."""
    entry = {
        "path": "/run/model_int8.tflite",
        "top1": 0.85,
        "top1_drop_pts": 3.0,
        "worse_than_keras": {"lost": 3, "gained": 0, "p_worse": 0.125},
        "agreement": 0.97,
        "device_path": {
            "top1": 0.84,
            "top1_drop_pts": 2.0,
            "worse_than_keras": {"lost": 6, "gained": 0, "p_worse": 1 / 64},
            "agreement": 0.96,
        },
    }
    figures = gated(entry, Budget.of(1.0, 0.95))
    assert (figures["top1_drop_pts"], figures["p_worse"]) == (2.0, 1 / 64)
    assert len(gate_failures([entry], Budget.of(1.0, 0.95))) == 1
