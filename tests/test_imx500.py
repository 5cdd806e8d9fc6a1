"""``edgetl export --target imx500``: what runs without Sony's converter here.

The converter's venv (TensorFlow 2.15, 2.3 GB) is built by ``make setup-imx500``
and exercised end to end by ``make accelerators``; these tests hold the parts a
user meets first (the one-line errors) and the parts edgetl owns: the rebuilt
graph the converter takes, and the verdict on what the worker wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.errors import GateFailed
from tests.conftest import assert_one_line_error, edgetl_here
from toolchain.core.budget import Budget
from toolchain.core.rundir import RunDir
from toolchain.export.imx500 import verdict
from toolchain.quantize.imx500 import process as imx500
from toolchain.quantize.imx500 import worker as imx500_worker
from toolchain.validate.decision import DecisionSet, Judge

WORKER_PYTHON = {"EDGETL_IMX500_PYTHON": sys.executable}


def test_a_missing_converter_venv_is_one_line_naming_the_make_target(micro_copy, tmp_path):
    env = {"EDGETL_IMX500_PYTHON": str(tmp_path / "nowhere" / "python")}
    result = edgetl_here("export", micro_copy, "--target", "imx500", env=env)
    assert_one_line_error(result, 3, "make setup-imx500", "nowhere")
    assert not (micro_copy / "imx500").exists()


def test_an_export_killed_between_its_renames_gets_the_earlier_one_back(micro_copy, tmp_path):
    """The kill left the earlier export set aside and the new one not in: the next export
    (here one that stops at the missing venv) puts the earlier one back first."""
    aside = micro_copy / ".imx500-previous"
    aside.mkdir()
    (aside / "packerOut.zip").write_bytes(b"earlier")
    env = {"EDGETL_IMX500_PYTHON": str(tmp_path / "nowhere" / "python")}
    assert edgetl_here("export", micro_copy, "--target", "imx500", env=env).returncode == 2
    assert (micro_copy / "imx500" / "packerOut.zip").read_bytes() == b"earlier"
    assert not aside.exists()


def test_missing_java_is_one_line_naming_the_package(micro_copy, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = edgetl_here(
        "export", micro_copy, "--target", "imx500", env={**WORKER_PYTHON, "PATH": str(empty)}
    )
    assert_one_line_error(result, 3, "Java 17", "openjdk-17-jre-headless")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--qat",), "drop --qat"),
        (("--no-validate",), "drop --no-validate"),
        (("--quant", "float16"), "drop --quant"),
        (("--io", "float32"), "drop --io"),
    ],
)
def test_what_the_sensor_cannot_honour_is_refused_up_front(micro_copy, flags, fragment):
    result = edgetl_here("export", micro_copy, "--target", "imx500", *flags, env=WORKER_PYTHON)
    assert_one_line_error(result, 2, fragment)


def test_an_earlier_imx500_export_needs_force(micro_copy):
    (micro_copy / "imx500").mkdir()
    result = edgetl_here("export", micro_copy, "--target", "imx500", env=WORKER_PYTHON)
    assert_one_line_error(result, 2, "--force")


@pytest.mark.parametrize(
    "shown, major",
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("no version here", 0),
    ],
)
def test_java_major_reads_both_version_styles(shown, major):
    assert imx500.java_major(shown) == major


def test_the_rebuilt_graph_the_converter_takes_is_the_run_model(tiny_run, tmp_path):
    """Same answers as the run's classes-only model, with the input scaling as the 1x1
    depthwise convolution the converter runs in place of Rescaling."""
    import tensorflow as tf

    from toolchain.confidence.shipped import classes_only
    from toolchain.export.qat.finetune import layer_weights

    run = RunDir(tiny_run)
    config = run.read_config()
    model = classes_only(run.load_keras_model())
    spec = {
        "image_size": int(config["image_size"]),
        "alpha": float(config["options"]["alpha"]),
        "num_classes": len(config["labels"]),
    }
    rebuilt = imx500_worker.build_float(tf, spec)
    np.savez(tmp_path / "weights.npz", **layer_weights(model))  # as the worker reads them
    assert imx500_worker.copy_weights(rebuilt, np.load(tmp_path / "weights.npz")) > 50
    size = spec["image_size"]
    pixels = np.random.default_rng(0).integers(0, 256, (8, size, size, 3)).astype(np.float32)
    expected = model.predict(pixels, verbose=0)
    got = rebuilt.predict(pixels, verbose=0)
    assert np.abs(expected - got).max() < 1e-4
    kinds = {type(layer).__name__ for layer in rebuilt.layers}
    assert "Rescaling" not in kinds and "DepthwiseConv2D" in kinds


# -- the verdict on what the worker wrote -------------------------------------------------


def worker_output(work: Path, fits: bool = True) -> None:
    """What the worker's quantize and convert steps leave: the files and its report."""
    out = work / "out"
    out.mkdir(parents=True)
    (out / "packerOut.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    memory = {"Memory Usage": "1.63MB", "Total Memory Available On Chip": "8.00MB"}
    (out / "model_q_MemoryReport.json").write_text(
        json.dumps({"Memory Report": {**memory, "Fit In Chip": fits}})
    )
    (work / "report.json").write_text(json.dumps({"tensorflow": "2.15.1"}))


def one_hot(indices, classes: int = 3) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[np.asarray(indices)] * 0.9 + 0.1 / classes


NAMES = ["a", "b", "c"]


@pytest.fixture
def judged(tmp_path):
    """A run folder, and Keras's answers on 200 test and 400 decision images."""
    run_path = tmp_path / "run"
    run_path.mkdir()
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 200)
    decision_truth = rng.integers(0, 3, 400)
    decision = DecisionSet(np.zeros((400, 1)), decision_truth, {"val": 100, "train": 300})
    judge = Judge(decision, one_hot(decision_truth))
    return RunDir(run_path), judge, truth


def attempt(judged, method, test, decision, budget=Budget.of(1.0, 0.95)):
    _, judge, truth = judged
    probs = {"test": test, "decision": decision}
    return verdict.judge_answers(method, probs, judge, budget, NAMES, one_hot(truth), truth)


def test_within_budget_the_files_are_committed_with_labels_and_report(judged, tmp_path):
    run, judge, truth = judged
    work = tmp_path / "work"
    flipped = truth.copy()
    flipped[:4] = (flipped[:4] + 1) % 3  # 4 of 200 differ: agreement 0.98, drop 2 pts
    budget = Budget.of(5.0, 0.95)
    tried = [attempt(judged, "ptq", one_hot(flipped), judge.keras_probs, budget)]
    assert tried[0].passed
    worker_output(work)
    packed = verdict.commit(run, work, tried, budget, NAMES, print)
    assert packed == run.path / "imx500" / "packerOut.zip" and packed.is_file()
    assert (run.path / "imx500" / "labels.txt").read_text().split() == NAMES
    report = json.loads((run.path / "imx500" / verdict.REPORT).read_text())
    assert report["test"]["agreement"] == pytest.approx(0.98)
    assert report["method"] == "ptq" and [a["passed"] for a in report["attempts"]] == [True]
    assert report["shipped"] is True
    assert report["out_of_class"].startswith("not on the sensor")


def test_the_report_keeps_every_attempt_and_ships_the_one_that_passed(judged, tmp_path):
    """PTQ missed, GPTQ passed: what ships is GPTQ's, and the report says what PTQ lost."""
    run, judge, truth = judged
    moved = truth.copy()
    moved[:40] = (moved[:40] + 1) % 3  # 40 of 200 lost: far past 1 point
    tried = [
        attempt(judged, "ptq", one_hot(moved), judge.keras_probs),
        attempt(judged, "gptq", one_hot(truth), judge.keras_probs),
    ]
    assert [a.passed for a in tried] == [False, True]
    worker_output(tmp_path / "work")
    verdict.commit(run, tmp_path / "work", tried, Budget.of(1.0, 0.95), NAMES, print)
    report = json.loads((run.path / "imx500" / verdict.REPORT).read_text())
    assert report["method"] == "gptq" and report["test"]["agreement"] == 1.0
    assert not (run.path / ".imx500-previous").exists()
    assert report["attempts"][0]["method"] == "ptq" and report["attempts"][0]["misses"]


@pytest.mark.parametrize("why", ["test split", "decision images", "chip"])
def test_a_miss_keeps_the_earlier_export_and_sets_the_files_aside(judged, tmp_path, why):
    run, judge, truth = judged
    earlier = run.path / "imx500"
    earlier.mkdir()
    (earlier / "packerOut.zip").write_bytes(b"earlier")
    test, decision = one_hot(truth), judge.keras_probs
    if why == "test split":
        test = one_hot((truth + 1) % 3)  # every answer moved
    if why == "decision images":
        decision = one_hot((judge.decision.labels + 1) % 3)
    work = tmp_path / "work"
    worker_output(work, fits=why != "chip")
    tried = [attempt(judged, "ptq", test, decision)]
    with pytest.raises(GateFailed, match="IMX500 budget missed") as failed:
        if tried[-1].passed:
            verdict.commit(run, work, tried, Budget.of(1.0, 0.95), NAMES, print)
        else:
            report = verdict.report_of(tried, Budget.of(1.0, 0.95), NAMES, work / "out", {})
            verdict.reject(run, work, tried, report)
    assert why.split()[0] in str(failed.value)
    assert (earlier / "packerOut.zip").read_bytes() == b"earlier"
    assert (run.path / "rejected-imx500" / "labels.txt").is_file()
    kept = json.loads((run.path / "rejected-imx500" / verdict.REPORT).read_text())
    assert kept["attempts"][-1]["passed"] is False and kept["shipped"] is False


# -- validate: the AI Camera's network beside the TFLite files -------------------------------


@pytest.fixture
def exported_network(micro_copy, monkeypatch):
    """A run with an IMX500 export, whose network answers as ``answers(keras)`` says
    (the IMX500 venv's MCT is 2.3 GB: the predict step itself runs in ``make accelerators``)."""
    from toolchain.validate import imx500_path

    folder = micro_copy / "imx500"
    folder.mkdir()
    (folder / "model_q.keras").write_bytes(b"stand-in")
    (folder / "packerOut.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (folder / verdict.REPORT).write_text(json.dumps({"method": "gptq"}))
    monkeypatch.setenv("EDGETL_IMX500_PYTHON", sys.executable)
    seen = {}

    def install(answers):
        def network_answers(python, model, pixels, scratch, log):
            from toolchain.confidence.shipped import classes_only
            from toolchain.core.pixel_file import predict_in_batches

            keras = predict_in_batches(classes_only(RunDir(micro_copy).load_keras_model()), pixels)
            seen["keras"] = keras
            return answers(keras)

        monkeypatch.setattr(imx500_path, "network_answers", network_answers)

    return micro_copy, install, seen


def test_validate_measures_the_network_against_the_classes_it_was_made_from(exported_network):
    """Scored against the calibrated classes (not the unknown output it does not have),
    with the report's labels, and listed after the TFLite files."""
    from toolchain.core.options import ValidateOptions
    from toolchain.validate.command import validate

    run, install, seen = exported_network
    install(lambda keras: keras)  # the sensor's arithmetic agreeing with Keras everywhere
    report = validate(run, ValidateOptions(), log=lambda m: None)
    entry = report["models"][-1]
    assert entry["quant"] == "imx500 (MCT GPTQ)" and entry["path"].endswith("packerOut.zip")
    assert entry["agreement"] == 1.0 and entry["top1_drop_pts"] == 0.0
    assert set(entry["per_class"]) == set(report["labels"])  # unknown column included
    assert [Path(m["path"]).suffix for m in report["models"][:-1]] == [".tflite"]
    assert report["gate"]["passed"]


def test_validate_fails_loudly_on_a_network_past_the_budget(exported_network):
    from toolchain.core.options import ValidateOptions
    from toolchain.validate.command import validate

    run, install, _ = exported_network
    install(lambda keras: np.roll(keras, 1, axis=1))  # every answer moved to another class
    with pytest.raises(GateFailed, match="packerOut.zip"):
        validate(run, ValidateOptions(min_agreement=0.9), log=lambda m: None)
    report = json.loads((run / "parity.json").read_text())
    assert report["models"][-1]["agreement"] < 0.5


def test_without_the_imx500_venv_validate_notes_it_and_measures_the_rest(
    exported_network, monkeypatch
):
    from toolchain.core.options import ValidateOptions
    from toolchain.validate.command import validate

    run, _, _ = exported_network
    monkeypatch.setenv("EDGETL_IMX500_PYTHON", str(run / "nowhere" / "python"))
    lines = []
    report = validate(run, ValidateOptions(), log=lines.append)
    assert [Path(m["path"]).suffix for m in report["models"]] == [".tflite"]
    assert any("is not measured" in line and "make setup-imx500" in line for line in lines)


def test_a_run_with_only_the_network_and_no_imx500_venv_is_exit_3(exported_network, monkeypatch):
    """Nothing else to measure: a pass with nothing measured would be a lie."""
    from edge.errors import MissingEnvironment
    from toolchain.core.options import ValidateOptions
    from toolchain.validate.command import validate

    run, _, _ = exported_network
    for model in run.glob("model_*.tflite"):
        model.unlink()
    monkeypatch.setenv("EDGETL_IMX500_PYTHON", str(run / "nowhere" / "python"))
    before = (run / "parity.json").read_bytes()  # the export's
    with pytest.raises(MissingEnvironment, match="make setup-imx500"):
        validate(run, ValidateOptions(), log=lambda m: None)
    assert (run / "parity.json").read_bytes() == before
