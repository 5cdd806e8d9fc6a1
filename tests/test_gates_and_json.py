"""The gates edgetl applies and the JSON it reads back.

- the device reference always carries the whole budget, and ``edgetl parity``
  never falls back to "no gate";
- a model that outputs NaN fails validate and device parity (exit 1) instead of
  agreeing with itself through ``argmax(NaN) == 0``;
- every JSON file edgetl writes is strict, and every one it reads back is bounded
  (size, depth), strict (no NaN/Infinity) and type-checked: one line, exit 2.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from edge import atomic, jsonfile
from edge.errors import BadInput, NotFinite
from edge.gate import DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT, device_gate
from edge.metrics import require_finite
from tests.conftest import assert_one_line_error, edgetl_here

DEEP = "[" * 100_000 + "]" * 100_000


def snapshot(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def reference_of(run: Path) -> dict:
    return json.loads((run / "parity_reference.json").read_text())


def device_parity(model: Path, reference: Path, source: Path, *flags: str):
    return edgetl_here("parity", model, "--reference", reference, "--source", source, *flags)


def model_of(run: Path) -> Path:
    """The run's exported model (which names the export ships is the export's business)."""
    from toolchain.core.rundir import RunDir

    return RunDir(run).tflite_models()[0]


def dataset_of(run: Path) -> Path:
    return Path(json.loads((run / "splits.json").read_text())["root"])


# -- 1. the device gate is never looser than the budget ---------------------------------


def test_the_edge_defaults_are_the_export_defaults():
    """Declared once for the device (edge cannot import the toolchain): the same numbers."""
    from toolchain.core.options import DEFAULT_MAX_DROP as EXPORT_DROP
    from toolchain.core.options import DEFAULT_MIN_AGREEMENT as EXPORT_AGREEMENT

    assert (DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT) == (EXPORT_DROP, EXPORT_AGREEMENT)


def test_device_gate_precedence_flag_then_reference_then_default():
    none = {"max_drop": None, "min_agreement": None}
    assert device_gate(none, None, None) == {
        "max_drop": DEFAULT_MAX_DROP,
        "min_agreement": DEFAULT_MIN_AGREEMENT,
        "sources": {"max_drop": "default", "min_agreement": "default"},
    }
    gate = device_gate({"max_drop": 5.0, "min_agreement": None}, None, 0.5)
    assert (gate["max_drop"], gate["min_agreement"]) == (5.0, 0.5)
    assert gate["sources"] == {"max_drop": "reference", "min_agreement": "flag"}


def test_validate_with_one_flag_writes_the_whole_budget_into_the_reference(micro_copy):
    result = edgetl_here("validate", micro_copy, "--max-drop", "5")
    assert result.returncode == 0, result.stderr
    budget = reference_of(micro_copy)["budget"]
    held = json.loads((micro_copy / "export_report.json").read_text())["budget"]
    assert budget["max_drop"] == 5.0 and budget["sources"]["max_drop"] == "validate"
    # The bound not given keeps the one the export held (the fixture's, conftest.py).
    assert budget["min_agreement"] == held["min_agreement"] is not None
    assert budget["sources"]["min_agreement"] == "export"


def test_after_an_export_without_validation_the_reference_carries_the_default(micro_copy):
    """``export --no-validate`` records ``"budget": null``; the reference still gates."""
    report_path = micro_copy / "export_report.json"
    report = json.loads(report_path.read_text())
    report["budget"] = None
    report_path.write_text(json.dumps(report))
    result = edgetl_here("validate", micro_copy)
    assert result.returncode == 0, result.stderr
    budget = reference_of(micro_copy)["budget"]
    assert (budget["max_drop"], budget["min_agreement"]) == (
        DEFAULT_MAX_DROP,
        DEFAULT_MIN_AGREEMENT,
    )
    assert set(budget["sources"].values()) == {"default"}


def test_validate_with_both_bounds_does_not_read_the_export_report(micro_copy):
    """Export's own validate gives both bounds: a damaged earlier report (which export
    replaces) must not stop it."""
    (micro_copy / "export_report.json").write_text("[" * 1000)
    result = edgetl_here("validate", micro_copy, "--max-drop", "100", "--min-agreement", "0")
    assert result.returncode == 0, result.stderr
    budget = reference_of(micro_copy)["budget"]
    assert (budget["max_drop"], budget["min_agreement"]) == (100.0, 0.0)


@pytest.mark.parametrize(
    "budget, flags, code",
    [
        (None, (), 1),  # no budget in the reference: the defaults, never "no gate"
        ({"max_drop": 100.0}, (), 1),  # a partial budget: the missing bound defaults
        ({"max_drop": 100.0, "min_agreement": 0.5}, (), 0),  # the reference's budget
        (None, ("--max-drop", "100", "--min-agreement", "0.5"), 0),  # flags on the device
        ({"max_drop": 100.0, "min_agreement": 0.5}, ("--min-agreement", "0.99"), 1),
    ],
)
def test_device_parity_applies_the_whole_budget(micro_run, tmp_path, budget, flags, code):
    """The reference's Keras answers moved on every eighth image: agreement about 0.87,
    which passes only a gate looser than the default 0.95."""
    reference = reference_of(micro_run)
    for entry in reference["images"][::8]:
        entry["keras"] = entry["keras"][1:] + entry["keras"][:1]  # its top-1 moves
    reference["budget"] = budget
    tampered = tmp_path / "parity_reference.json"
    tampered.write_text(json.dumps(reference))
    out = tmp_path / "device.json"
    result = device_parity(
        model_of(micro_run), tampered, dataset_of(micro_run), "--json", out, *flags
    )
    assert result.returncode == code, result.stdout + result.stderr
    gate = json.loads(out.read_text())["gate"]
    assert gate["max_drop"] is not None and gate["min_agreement"] is not None
    if code == 1:
        assert_one_line_error(result, 1, "agreement")


# -- 2. a model that outputs NaN fails every gate ---------------------------------------


def test_require_finite_counts_and_names():
    probs = np.full((4, 3), 1 / 3)
    assert require_finite(probs, "m.tflite") is probs
    probs[2, 1] = np.nan
    probs[3, 0] = np.inf
    with pytest.raises(NotFinite) as error:
        require_finite(probs, "m.tflite")
    message = str(error.value)
    assert "m.tflite" in message and "2 of 4" in message and "#3" in message
    assert "\n" not in message and error.value.exit_code == 1


@pytest.fixture(scope="module")
def nan_models(micro_run, tmp_path_factory):
    """A Keras model and its float32 TFLite twin whose Dense weights are all NaN: the
    run's input and classes, NaN probabilities for every image (no Lambda, so the
    .keras file loads without unsafe deserialization)."""
    from toolchain.core.quiet import keras, tensorflow

    tf, keras = tensorflow(), keras()
    config = json.loads((micro_run / "config.json").read_text())
    size = config["image_size"]
    labels = config["labels"] + ([config["unknown"]["label"]] if config.get("unknown") else [])
    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(len(labels), activation="softmax")
    model = keras.Model(inputs, dense(pooled))
    dense.set_weights([np.full(w.shape, np.nan, np.float32) for w in dense.get_weights()])
    folder = tmp_path_factory.mktemp("nan")
    model.save(folder / "model.keras")
    tflite = folder / "model_nan.tflite"
    tflite.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    return folder / "model.keras", tflite


def test_validate_refuses_a_tflite_model_that_outputs_nan(micro_copy, nan_models):
    _, tflite = nan_models
    before = snapshot(micro_copy)
    result = edgetl_here("validate", micro_copy, "--model", tflite)
    assert_one_line_error(result, 1, "model_nan.tflite", "NaN")
    assert snapshot(micro_copy) == before  # no parity.json, no reference, nothing partial


def test_validate_refuses_a_keras_model_that_outputs_nan(micro_copy, nan_models):
    keras_model, _ = nan_models
    shutil.copy2(keras_model, micro_copy / "model.keras")
    before = snapshot(micro_copy)
    assert_one_line_error(edgetl_here("validate", micro_copy), 1, "Keras model", "NaN")
    assert snapshot(micro_copy) == before


def test_device_parity_refuses_a_model_that_outputs_nan(micro_run, nan_models, tmp_path):
    _, tflite = nan_models
    out = tmp_path / "device.json"
    result = device_parity(
        tflite, micro_run / "parity_reference.json", dataset_of(micro_run), "--json", out
    )
    assert_one_line_error(result, 1, "model_nan.tflite", "NaN")
    assert not out.exists()


# -- 3. every JSON file edgetl writes is strict -----------------------------------------


def test_write_json_writes_null_and_says_where(tmp_path):
    path = tmp_path / "report.json"
    atomic.write_json(path, {"loss": [0.5, math.nan], "best": {"x": math.inf}, "n": 3})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    written = jsonfile.read_json(path, "fix")  # the strict reader takes it back
    assert written["loss"] == [0.5, None] and written["best"] == {"x": None}
    assert written["non_finite_as_null"] == ["loss[1] was nan", "best.x was inf"]


def test_write_json_of_a_finite_object_is_unchanged(tmp_path):
    value = {"a": [1, 2.5, None, "x"], "b": {"c": True}}
    atomic.write_json(tmp_path / "v.json", value)
    assert json.loads((tmp_path / "v.json").read_text()) == value


# -- 4. JSON read back: bounded, strict, checked ----------------------------------------


@pytest.mark.parametrize(
    "text, fragment",
    [
        (DEEP, "nested"),
        ('{"a": NaN}', "NaN"),
        ("[Infinity]", "Infinity"),
        ("[-Infinity]", "-Infinity"),
        ("[1e999]", "too large"),
        ("{not json", "not valid JSON"),
        ("1" * 5000, "not valid JSON"),
    ],
)
def test_strict_parse_reasons(text, fragment):
    with pytest.raises(jsonfile.NotStrictJSON) as error:
        jsonfile.parse(text)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_read_json_size_cap(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + " " * 2000 + "]")
    with pytest.raises(BadInput, match="over"):
        jsonfile.read_json(path, "fix", max_bytes=1000)


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(change(data) if callable(change) else change)


def _infinity_label(splits: dict) -> str:
    splits["test"][0][1] = 1e999  # json.dumps writes Infinity
    return json.dumps(splits)


RUN_FILES = {
    "splits Infinity": ("splits.json", _infinity_label, ("splits.json", "Infinity")),
    "splits deep": ("splits.json", DEEP, ("splits.json", "nested")),
    "splits label string": (
        "splits.json",
        lambda s: json.dumps({**s, "test": [[s["test"][0][0], "2"]]}),
        ("splits.json", "'2'"),
    ),
    "state deep": ("checkpoints/state.json", DEEP, ("state.json", "nested", "--force")),
    "state not a flag": ("checkpoints/state.json", '{"done": "yes"}', ("state.json", "'done'")),
    "export report string": (
        "export_report.json",
        lambda r: json.dumps({**r, "budget": {**r["budget"], "max_drop": "5"}}),
        ("export_report.json", "budget max_drop", "'5'"),
    ),
    "export report NaN": (
        "export_report.json",
        lambda r: json.dumps({**r, "budget": {"max_drop": math.nan}}),
        ("export_report.json", "NaN"),
    ),
    "export report deep": ("export_report.json", DEEP, ("export_report.json", "nested")),
}


@pytest.mark.parametrize("case", sorted(RUN_FILES))
def test_validate_refuses_a_damaged_run_file_in_one_line(micro_copy, case):
    name, change, fragments = RUN_FILES[case]
    path = micro_copy / name
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        path.write_text("{}")
    _edit_json(path, change)
    before = snapshot(micro_copy)
    assert_one_line_error(edgetl_here("validate", micro_copy), 2, *fragments)
    assert snapshot(micro_copy) == before


def _no_labels(reference: dict) -> str:
    del reference["labels"]
    return json.dumps(reference)


def _infinite_probability(reference: dict) -> str:
    reference["images"][0]["keras"][0] = math.inf
    return json.dumps(reference)


def _string_label(reference: dict) -> str:
    reference["images"][0]["label"] = "0"
    return json.dumps(reference)


def _string_budget(reference: dict) -> str:
    reference["budget"] = {"max_drop": "1", "min_agreement": 0.95}
    return json.dumps(reference)


REFERENCES = {
    "no labels": (_no_labels, "'labels'"),
    "Infinity": (_infinite_probability, "Infinity"),
    "deep": (DEEP, "nested"),
    "string label": (_string_label, "integer label"),
    "string budget": (_string_budget, "budget max_drop"),
    "oversized": (None, "over 64 MiB"),
}


@pytest.mark.parametrize("case", sorted(REFERENCES))
def test_device_parity_refuses_a_damaged_reference_in_one_line(micro_run, tmp_path, case):
    change, fragment = REFERENCES[case]
    reference = tmp_path / "parity_reference.json"
    shutil.copy2(micro_run / "parity_reference.json", reference)
    if change is None:  # past the cap: refused before it is parsed
        with open(reference, "ab") as handle:
            handle.truncate(jsonfile.MAX_BYTES + 1)
    else:
        _edit_json(reference, change)
    result = device_parity(model_of(micro_run), reference, dataset_of(micro_run))
    assert_one_line_error(result, 2, "--reference", fragment)


def test_parity_json_with_a_string_for_a_figure_is_one_line(micro_run, tmp_path):
    """What export's repair reads back after its validate (``runjson.read_parity``)."""
    from toolchain.core.runjson import read_parity

    parity = json.loads((micro_run / "parity.json").read_text())
    assert read_parity(micro_run / "parity.json", micro_run)["n_images"] == parity["n_images"]
    parity["models"][0]["device_path"]["agreement"] = "0.99"
    path = tmp_path / "parity.json"
    path.write_text(json.dumps(parity))
    with pytest.raises(BadInput) as error:
        read_parity(path, micro_run)
    assert "device_path agreement" in str(error.value) and "\n" not in str(error.value)


def test_the_card_reader_can_use_the_strict_parser():
    """``edge.modelfile.parse_card`` catches ValueError: ``NotStrictJSON`` is one."""
    assert issubclass(jsonfile.NotStrictJSON, ValueError)
    assert jsonfile.parse('{"labels": ["a", "b"]}') == {"labels": ["a", "b"]}
