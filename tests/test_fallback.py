"""``fallback.repair`` as plain Python: fake quantize/predict callbacks, no TensorFlow.

The loop's promises, each checkable on made-up numbers: groups are ranked by
measured gain, only helpful groups go to float, the first mix within budget is
returned, the layer cap is respected, and a budget never met returns no model.
"""

from __future__ import annotations

import numpy as np

from toolchain.budget import Budget, estimate
from toolchain.fallback import ranking_subset, repair

LABELS = np.array([0, 1, 0, 1, 0, 1, 0, 1])
KERAS = np.eye(2, dtype=np.float32)[LABELS] * 0.9 + 0.05  # Keras is right on every image
# How many of the 8 images each float tensor fixes (the rest stay flipped by INT8).
FIXES = {"stem": 3, "block_1": 1, "useless": 0, "head": 2}


def fake_quantize(float_layers):
    """A "flatbuffer" that just records which tensors stayed in float."""
    return ",".join(sorted(float_layers)).encode()


def fake_predict(flatbuffer: bytes, pixels: np.ndarray) -> np.ndarray:
    """INT8 flips images 0..5; each float tensor un-flips its share, in a fixed order."""
    in_float = [name for name in flatbuffer.decode().split(",") if name]
    fixed = sum(FIXES[name] for name in in_float if name in FIXES)
    probs = KERAS.copy()
    for i in range(fixed, 6):  # images not yet fixed are predicted as the other class
        probs[i] = probs[i][::-1]
    return probs[: len(pixels)]


def judge_by_points(max_drop, min_agreement):
    """A judge on point estimates (8 images are too few for the export's lower bound)."""

    def judge(probs):
        figures = estimate(probs, KERAS, LABELS)
        accepted = figures.drop_pts <= max_drop and figures.agreement >= min_agreement
        return accepted, figures.json()

    return judge


def run_repair(max_drop, max_layers=32, min_agreement=0.0, groups=None):
    groups = groups or {name: [name] for name in FIXES}
    pixels = np.zeros((len(LABELS), 2, 2, 3), np.uint8)
    return repair(
        fake_quantize,
        groups,
        fake_predict,
        lambda flatbuffer: 1.0,
        pixels,
        KERAS,
        judge_by_points(max_drop, min_agreement),
        max_layers,
    )


def test_most_sensitive_group_goes_first_and_the_first_mix_in_budget_is_kept():
    outcome = run_repair(max_drop=25.0)  # 8 images: at most 2 may stay wrong
    assert [r["layer"] for r in outcome.ranking][:2] == ["stem", "head"]
    assert outcome.float_tensors == ["stem", "head"]  # 3 + 2 fixed, 1 of 6 still wrong
    assert outcome.flatbuffer == fake_quantize(["stem", "head"])
    assert outcome.steps[0].float_layers == [] and outcome.steps[0].figures["drop_pts"] == 75.0
    assert outcome.steps[-1].figures["drop_pts"] == 12.5 and outcome.steps[-1].accepted
    assert not any(step.accepted for step in outcome.steps[:-1])


def test_a_group_that_does_not_help_is_never_kept_in_float():
    outcome = run_repair(max_drop=0.0)
    assert outcome.flatbuffer is not None
    assert "useless" not in outcome.float_tensors
    assert sorted(outcome.float_tensors) == ["block_1", "head", "stem"]


def test_the_layer_cap_stops_the_search_without_a_model():
    outcome = run_repair(max_drop=0.0, max_layers=2)
    assert outcome.flatbuffer is None and outcome.float_tensors == []
    assert len(outcome.steps) == 3  # full INT8, +stem, +head; block_1 would pass the cap


def test_consumers_of_a_tensor_go_to_float_with_it_and_count_against_the_cap():
    groups = {"stem": ["stem", "head"], "block_1": ["block_1"], "head": ["head"]}
    outcome = run_repair(max_drop=25.0, groups=groups)
    assert outcome.float_tensors == ["stem", "head"]  # one step, both ops


def test_agreement_gate_is_judged_too():
    outcome = run_repair(max_drop=100.0, min_agreement=1.0)
    assert outcome.steps[-1].figures["agreement"] == 1.0


def test_the_export_judges_agreement_by_its_lower_bound_on_enough_images():
    """0.96 agreement on 100 images is not evidence of 0.95 (its 95% lower bound is
    ~0.90); on 2,000 images it is. The drop is judged as measured."""
    budget = Budget.of(None, None)
    assert (budget.max_drop, budget.min_agreement, budget.defaulted) == (1.0, 0.95, True)
    assert Budget.of(2.0, None).min_agreement == 0.95 and not Budget.of(2.0, None).defaulted
    for n, expected in ((100, False), (2000, True)):
        labels = np.arange(n) % 2
        keras = np.eye(2, dtype=np.float32)[labels]
        flipped = keras.copy()
        flipped[: n * 4 // 100] = flipped[: n * 4 // 100, ::-1]  # 4% flipped
        figures = estimate(flipped, keras, labels)
        assert figures.agreement == 0.96 and figures.drop_pts == 4.0
        assert figures.agreement_lower < 0.96
        assert Budget.of(5.0, 0.95).max_drop == 5.0
        assert figures.meets(Budget.of(5.0, 0.95)) is expected, (n, figures)


def test_ranking_subset_spreads_over_the_whole_split():
    assert list(ranking_subset(5, limit=10)) == [0, 1, 2, 3, 4]
    subset = ranking_subset(1000, limit=4)
    assert list(subset) == [0, 333, 666, 999]
