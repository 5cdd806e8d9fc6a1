"""``edgetl export --qat``: quantization-aware fine-tuning in its own Python, judged
against post-training quantization, never trusted blindly.

The fine-tuning runs for real (tensorflow-model-optimization in ``.venv-qat``,
which ``make test`` builds and names in ``EDGETL_QAT_PYTHON``) on the tiny run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edge.modelfile import read_embedded
from tests.conftest import assert_one_line_error, run_cli, without_out_of_class
from tests.test_faults import snapshot

QAT_PYTHON = os.environ.get("EDGETL_QAT_PYTHON")
needs_qat_python = pytest.mark.skipif(
    not (QAT_PYTHON and Path(QAT_PYTHON).is_file()),
    reason="EDGETL_QAT_PYTHON names no interpreter: `make test` builds .venv-qat and sets it",
)


def export_qat_without_its_python(run, tmp_path):
    return run_cli(
        "export",
        str(run),
        "--qat",
        "--force",
        env={"EDGETL_QAT_PYTHON": str(tmp_path / "no-such-python")},
    )


def test_qat_without_its_python_exits_3_before_any_work(micro_copy, tmp_path):
    without_out_of_class(micro_copy)  # a model QAT could take
    before = snapshot(micro_copy)
    result = export_qat_without_its_python(micro_copy, tmp_path)
    assert_one_line_error(result, 3, "--qat", "tensorflow-model-optimization", "EDGETL_QAT_PYTHON")
    assert snapshot(micro_copy) == before


def test_qat_on_a_model_with_the_out_of_class_output_is_refused_in_one_line(micro_copy, tmp_path):
    # Refused before the QAT Python is looked for: installing it would not help.
    result = export_qat_without_its_python(micro_copy, tmp_path)
    assert_one_line_error(result, 2, "--qat", "out-of-class", "--no-out-of-class")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--no-validate"], "--no-validate"),
        (["--quant", "float16"], "--quant int8"),
    ],
)
def test_qat_options_that_cannot_work_are_refused_up_front(micro_copy, args, fragment):
    before = snapshot(micro_copy)
    result = run_cli("export", str(micro_copy), "--qat", "--force", *args)
    assert_one_line_error(result, 2, "--qat", fragment)
    assert snapshot(micro_copy) == before


@pytest.mark.slow
@needs_qat_python
def test_qat_runs_is_compared_with_ptq_and_the_report_says_which_ships(run_copy):
    without_out_of_class(run_copy)  # QAT rebuilds the classes alone (README)
    result = run_cli(
        "export", str(run_copy), "--target", "accelerator", "--qat", "--qat-epochs", "1",
        "--force", "--max-drop", "5", "--min-agreement", "0.9",  # the fixture's budget
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "qat: epoch 1/1" in result.stderr  # progress from the worker process
    report = json.loads((run_copy / "export_report.json").read_text())
    qat = report["qat"]
    # the flat Keras 2 rebuild took every weighted layer of the Keras 3 model, exactly
    assert qat["layers_copied"] == 105 and qat["rebuild_max_probability_gap"] < 1e-3
    assert len(qat["history"]) == 1 and qat["exit_code"] == 0
    assert set(qat["decision"]) == {"ptq", "qat"} and qat["chosen"] in ("ptq", "qat")
    assert qat["why"]
    # QAT trained on the half of the training split the decision images left out
    splits = json.loads((run_copy / "splits.json").read_text())
    decision_train = qat["decision"]["qat"]["images"] - len(splits["val"])
    assert qat["decision"]["qat"]["unseen_images"] == len(splits["val"])
    assert qat["train_images"] + decision_train == len(splits["train"])
    assert report["shipped"]["int8"] == "model_int8.tflite"
    assert report["models"][0]["float_ops"] == {}  # pure INT8 either way
    card = read_embedded(run_copy / "model_int8.tflite")
    expected = "quantization-aware" if qat["chosen"] == "qat" else "post-training"
    assert card["quantization"].startswith(expected), card["quantization"]
    assert not list(run_copy.glob(".qat-work*")) and not list(run_copy.glob("*.partial*"))
