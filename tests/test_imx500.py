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
from toolchain.export.imx500 import convert as imx500
from toolchain.export.imx500 import worker as imx500_worker
from toolchain.validate.decision import DecisionSet, Judge

WORKER_PYTHON = {"EDGETL_IMX500_PYTHON": sys.executable}


def test_a_missing_converter_venv_is_one_line_naming_the_make_target(micro_copy, tmp_path):
    env = {"EDGETL_IMX500_PYTHON": str(tmp_path / "nowhere" / "python")}
    result = edgetl_here("export", micro_copy, "--target", "imx500", env=env)
    assert_one_line_error(result, 3, "make setup-imx500", "nowhere")
    assert not (micro_copy / "imx500").exists()


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


def worker_output(work: Path, test: np.ndarray, decision: np.ndarray, fits: bool = True) -> None:
    """What the worker leaves: the files, its answers and its report."""
    out = work / "out"
    out.mkdir(parents=True)
    (out / "packerOut.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    memory = {"Memory Usage": "1.63MB", "Total Memory Available On Chip": "8.00MB"}
    (out / "model_q_MemoryReport.json").write_text(
        json.dumps({"Memory Report": {**memory, "Fit In Chip": fits}})
    )
    np.savez(work / "probs.npz", test=test, decision=decision)
    (work / "report.json").write_text(json.dumps({"tensorflow": "2.15.1"}))


def one_hot(indices, classes: int = 3) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[np.asarray(indices)] * 0.9 + 0.1 / classes


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


def test_within_budget_the_files_are_committed_with_labels_and_report(judged, tmp_path):
    run, judge, truth = judged
    work = tmp_path / "work"
    flipped = truth.copy()
    flipped[:4] = (flipped[:4] + 1) % 3  # 4 of 200 differ: agreement 0.98, drop 2 pts
    worker_output(work, one_hot(flipped), judge.keras_probs)
    names = ["a", "b", "c"]
    packed = imx500.commit(
        run, work, judge, Budget.of(5.0, 0.95), names, one_hot(truth), truth, print
    )
    assert packed == run.path / "imx500" / "packerOut.zip" and packed.is_file()
    assert (run.path / "imx500" / "labels.txt").read_text().split() == names
    report = json.loads((run.path / "imx500" / imx500.REPORT).read_text())
    assert report["test"]["agreement"] == pytest.approx(0.98)
    assert report["out_of_class"].startswith("not on the sensor")


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
    worker_output(work, test, decision, fits=why != "chip")
    with pytest.raises(GateFailed, match="IMX500 budget missed") as failed:
        imx500.commit(
            run, work, judge, Budget.of(1.0, 0.95), list("abc"), one_hot(truth), truth, print
        )
    assert why.split()[0] in str(failed.value)
    assert (earlier / "packerOut.zip").read_bytes() == b"earlier"
    assert (run.path / "rejected-imx500" / "packerOut.zip").is_file()
