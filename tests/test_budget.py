"""The accuracy budget as one value (``toolchain/core/budget.py``) and the one-line
gate messages built from it."""

from __future__ import annotations

import math

import pytest

from edge.errors import BadInput
from edge.gate import DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT
from toolchain.core.budget import Budget
from toolchain.validate.figures import gate_failures


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
    assert gate.misses(50.0, 0.95) == []  # no drop bound: any drop passes
    assert gate.misses(0.0, 0.85) == ["agreement 0.8500 < --min-agreement 0.9"]
    assert Budget.given(None, None).misses(100.0, 0.0) == []


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
        "model_int8.tflite top-1 drop 2.50 pts > --max-drop 1 "
        "(tflite 0.8500, device path 0.8500, agreement 0.9600)"
    )
    assert agreement == "model_int8.tflite agreement 0.9000 < --min-agreement 0.95"
    assert gate_failures([entry], Budget.of(5, 0.9)) == []
