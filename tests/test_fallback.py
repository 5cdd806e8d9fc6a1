"""``fallback.repair`` as plain Python: fake quantize/predict callbacks, no TensorFlow.

The loop's promises, each checkable on made-up numbers: groups are ranked by
measured gain, only helpful groups go to float, the first mix within budget is
returned, the layer cap is respected, and a budget never met returns no model.
"""

from __future__ import annotations

import numpy as np

from toolchain.core.budget import Budget
from toolchain.quantize.fallback import ranking_subset, repair
from toolchain.validate.decision import estimate

LABELS = np.array([0, 1, 0, 1, 0, 1, 0, 1])
KERAS = np.eye(2, dtype=np.float32)[LABELS] * 0.9 + 0.05  # Keras is right on every image
# How many of the 8 images each float tensor fixes (the rest stay flipped by INT8).
FIXES = {"stem": 3, "block_1": 1, "useless": 0, "head": 2}


def fake_quantize(float_layers):
    """A "flatbuffer" that just records which tensors stayed in float."""
    return ",".join(sorted(float_layers)).encode()


def predictor(fixed_by):
    """A fake ``predict``: INT8 flips images 0..5, and ``fixed_by(tensors in float)`` of
    them are un-flipped, in a fixed order."""

    def predict(flatbuffer: bytes, pixels: np.ndarray) -> np.ndarray:
        fixed = fixed_by([name for name in flatbuffer.decode().split(",") if name])
        probs = KERAS.copy()
        for i in range(fixed, 6):  # images not yet fixed are predicted as the other class
            probs[i] = probs[i][::-1]
        return probs[: len(pixels)]

    return predict


# each float tensor un-flips its share of FIXES
fake_predict = predictor(lambda in_float: sum(FIXES.get(name, 0) for name in in_float))


def judge_by_points(max_drop, min_agreement):
    """A judge on point estimates (8 images are too few for the export's lower bound)."""

    def judge(probs):
        figures = estimate(probs, KERAS, LABELS)
        accepted = figures.drop_pts <= max_drop and figures.agreement >= min_agreement
        return 2 * accepted, figures.json()

    return judge


def run_repair(max_drop, max_layers=32, min_agreement=0.0, groups=None, predict=fake_predict):
    groups = groups or {name: [name] for name in FIXES}
    pixels = np.zeros((len(LABELS), 2, 2, 3), np.uint8)
    return repair(
        fake_quantize,
        groups,
        predict,
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


def test_a_group_that_stops_helping_once_others_are_in_float_goes_back_to_int8():
    """ "clash" fixes two images alone (so it ranks second), but undoes two of stem's
    fixes when stem is in float too: the whole-set check sends it back to INT8."""

    def fixed_by(in_float):
        fixed = sum({"stem": 3, "clash": 2, "head": 1}.get(n, 0) for n in in_float)
        return fixed - 2 * ("stem" in in_float and "clash" in in_float)

    groups = {name: [name] for name in ("stem", "clash", "head")}
    outcome = run_repair(25.0, groups=groups, predict=predictor(fixed_by))
    assert [r["layer"] for r in outcome.ranking] == ["stem", "clash", "head"]
    assert outcome.float_tensors == ["stem", "head"]
    assert [(s.float_layers, s.kept) for s in outcome.steps[1:]] == [
        (["stem"], True),
        (["stem", "clash"], False),
        (["stem", "head"], True),
    ]


def test_consumers_of_a_tensor_go_to_float_with_it_and_count_against_the_cap():
    groups = {"stem": ["stem", "head"], "block_1": ["block_1"], "head": ["head"]}
    outcome = run_repair(max_drop=25.0, groups=groups)
    assert outcome.float_tensors == ["stem", "head"]  # one step, both ops


def test_when_the_headroom_is_never_reached_the_closest_mix_within_budget_is_kept():
    """Level 1 (within budget, no headroom) does not stop the search; at the end the
    latest such mix, the one closest to Keras, is the answer."""

    def within_budget_only(probs):
        figures = estimate(probs, KERAS, LABELS)
        return int(figures.drop_pts <= 25.0), figures.json()

    pixels = np.zeros((len(LABELS), 2, 2, 3), np.uint8)
    groups = {name: [name] for name in FIXES}
    outcome = repair(
        fake_quantize, groups, fake_predict, lambda f: 1.0, pixels, KERAS, within_budget_only, 32
    )
    assert outcome.float_tensors == ["stem", "head", "block_1"]  # searched to the end
    assert outcome.flatbuffer == fake_quantize(["stem", "head", "block_1"])
    assert [step.accepted for step in outcome.steps] == [False, False, False, True]
    assert [step.level for step in outcome.steps] == [0, 0, 1, 1]


def test_agreement_gate_is_judged_too():
    outcome = run_repair(max_drop=100.0, min_agreement=1.0)
    assert outcome.steps[-1].figures["agreement"] == 1.0


def test_the_export_needs_headroom_and_the_validation_images_to_agree():
    """Agreement on all decision images must clear the budget by HEADROOM (training
    images overstate it), and the validation images alone must meet it too."""
    budget = Budget.of(None, None)
    assert (budget.max_drop, budget.min_agreement, budget.defaulted) == (1.0, 0.95, True)
    assert Budget.of(2.0, None).min_agreement == 0.95 and not Budget.of(2.0, None).defaulted
    labels = np.arange(1000) % 2
    keras = np.eye(2, dtype=np.float32)[labels]

    def flipped(rows):
        probs = keras.copy()
        probs[rows] = probs[rows, ::-1]
        return estimate(probs, keras, labels, unseen=200)

    # 4% flipped among the training images only: 0.968 overall, validation perfect
    train_only = flipped(np.arange(200, 232))
    assert train_only.agreement == 0.968 and train_only.unseen_agreement == 1.0
    assert train_only.meets(Budget.of(5.0, 0.94))  # 0.968 >= 0.94 + HEADROOM
    assert not train_only.meets(Budget.of(5.0, 0.95))  # 0.968 < 0.95 + HEADROOM
    assert train_only.level(Budget.of(5.0, 0.95)) == 1  # within the budget itself
    assert (
        train_only.level(Budget.of(5.0, 0.94)) == 2 and train_only.level(Budget.of(1.0, 0.9)) == 0
    )
    # 12 of 200 validation images flipped (0.94) fail, however well the rest agree
    val_flips = flipped(np.arange(0, 12))
    assert val_flips.agreement == 0.988 and val_flips.unseen_agreement == 0.94
    assert val_flips.level(Budget.of(5.0, 0.95)) == 0
    assert val_flips.meets(Budget.of(10.0, 0.9))


def test_ranking_subset_spreads_over_the_whole_split():
    assert list(ranking_subset(5, limit=10)) == [0, 1, 2, 3, 4]
    subset = ranking_subset(1000, limit=4)
    assert list(subset) == [0, 333, 666, 999]


def test_a_group_masked_by_a_louder_one_is_found_by_re_ranking():
    """ "masked" fixes nothing while "stem" is INT8 (its gain ranks at zero, so the first
    ranking skips it) but two images once "stem" is float: the re-ranking finds it and
    the budget is met. Without re-ranking the search would end one step short."""

    masking = predictor(
        lambda in_float: (
            3 * ("stem" in in_float) + 3 * ("stem" in in_float and "masked" in in_float)
        )
    )

    groups = {name: [name] for name in ("stem", "masked", "useless")}
    outcome = run_repair(0.0, min_agreement=1.0, groups=groups, predict=masking)
    first = {r["layer"]: r["gain"] for r in outcome.ranking}
    assert first["masked"] <= 0 < first["stem"]  # invisible to the first ranking
    assert outcome.float_tensors == ["stem", "masked"]
    assert outcome.flatbuffer == fake_quantize(["stem", "masked"])
    assert outcome.steps[-1].accepted and outcome.steps[-1].level == 2
