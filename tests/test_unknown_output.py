"""The out-of-class output inside a real exported model, end to end.

A small CNN with edgetl's head layout (``pool``, ``probabilities``), trained on
the micro run's generated images, gets its calibration and ``unknown`` output
(``toolchain.train.confidence_fit``), is converted to full INT8 by the real
converter with an answer floor in its card, and classifies known photos and
pixel noise: on ai-edge-litert in this process, and with tflite-runtime (the
legacy venv) through the real CLI. The out-of-class flag must agree with Keras's.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge.modelfile import read_embedded

REPO = Path(__file__).resolve().parents[1]
LEGACY_PYTHON = os.environ.get("EDGETL_LEGACY_PYTHON")


def _far_images(size: int) -> np.ndarray:
    """Saturated flat colours: far outside the generated classes' features."""
    colours = np.array(
        [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]],
        np.uint8,
    )
    flat = np.broadcast_to(colours[:, None, None, :], (6, size, size, 3))
    dimmer = (flat * 0.8).astype(np.uint8)
    return np.concatenate([flat, dimmer])


@pytest.fixture(scope="module")
def unknown_model(micro_run, tmp_path_factory):
    """The micro run's INT8 file (trained, calibrated, given its unknown output and
    exported like a user's run), the held-out photos and far images in a folder, and
    Keras's scores on them."""
    from PIL import Image

    from edge.image import load_many
    from toolchain.core.rundir import RunDir

    run = RunDir(micro_run)
    config = run.read_config()
    size, labels = int(config["image_size"]), list(config["labels"])
    paths, _ = run.split_files("test", len(labels))
    known, _, _ = load_many(paths, size)
    far = _far_images(size)
    folder = tmp_path_factory.mktemp("photos")
    names = []
    for prefix, images in (("known", known), ("far", far)):
        for i, image in enumerate(images):
            names.append(f"{prefix}_{i:03d}.png")
            Image.fromarray(image).save(folder / names[-1])
    model = run.load_keras_model()
    keras_probs = model.predict(np.concatenate([known, far]).astype("float32"), verbose=0)
    report = json.loads(run.train_report.read_text())
    return SimpleNamespace(
        path=run.tflite("int8"), folder=folder, names=names, keras=keras_probs,
        labels=labels, report=report, card=json.loads(json.dumps(config)),
    )  # fmt: skip


def _flags(rows, names):
    by_name = {Path(row["path"]).name: row for row in rows}
    return np.array([by_name[name]["out_of_class"] == "1" for name in names])


def _classify(python, model, folder, out, *extra):
    command = [python, "-m", "toolchain.cli", "classify", str(model), "--source", str(folder)]
    done = subprocess.run(
        [*command, "--output", str(out), "--quiet", "--top-k", "2", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out, newline="") as handle:
        return list(csv.DictReader(handle)), done.stdout


def test_train_report_figures_and_the_unknown_output_in_keras(unknown_model):
    report = unknown_model.report["confidence"]
    assert 0.2 <= report["temperature"] <= 10
    assert report["out_of_class"]["in_model"] is True
    assert report["out_of_class"]["test_kept"] >= 0.9  # the threshold was set on val
    assert set(report["test_calibration_error"]) == {"before", "after", "noise"}
    keras = unknown_model.keras
    assert keras.shape[1] == len(unknown_model.labels) + 1
    assert np.allclose(keras.sum(axis=1), 1.0, atol=1e-4)  # still a distribution
    far = np.array([n.startswith("far") for n in unknown_model.names])
    flagged = keras.argmax(axis=1) == len(unknown_model.labels)
    assert flagged[far].mean() >= 0.9  # flat colours are out of class
    assert flagged[~far].mean() <= 0.1


def test_answer_column_and_summary_on_ai_edge_litert(unknown_model, tmp_path):
    rows, stdout = _classify(
        sys.executable, unknown_model.path, unknown_model.folder, tmp_path / "p.csv"
    )
    keras_flags = unknown_model.keras.argmax(axis=1) == len(unknown_model.labels)
    flags = _flags(rows, unknown_model.names)
    assert np.mean(flags == keras_flags) >= 0.95
    for row in rows:
        assert row["answer"] in (*unknown_model.labels, "unknown")
        if row["out_of_class"] == "1":
            assert row["answer"] == "unknown"  # the card's floor is > 0 here
    answered = sum(row["answer"] != "unknown" for row in rows)
    assert f"answered {answered}/{len(rows)}" in stdout
    # --threshold 0 always answers with a class and still flags out-of-class photos
    always, _ = _classify(
        sys.executable, unknown_model.path, unknown_model.folder, tmp_path / "a.csv",
        "--threshold", "0",
    )  # fmt: skip
    assert all(row["answer"] in unknown_model.labels for row in always)
    assert (_flags(always, unknown_model.names) == flags).all()


def test_int8_calibration_reaches_past_the_threshold_where_scrambled_copies_do_not(micro_run):
    """The four-layer CNN sees scrambled copies as near its classes: without rows past the
    threshold, the INT8 range would rest on the training photos alone, and whether the
    file can flag anything would hang on one odd photo among them. Export measured
    that and calibrated with the flat colours too."""
    report = json.loads((micro_run / "export_report.json").read_text())
    calibration = report["models"][0]["calibration"]
    reached = calibration["out_of_class_reach"]
    assert reached["scrambled copies"] < 2.0 <= reached["flat colours"]
    far = calibration["far_images"]
    assert far["kind"] == "flat colours" and far["count"] == 4 and far["largest_logit"] >= 2.0


def test_the_far_row_lines_say_what_was_added_or_that_nothing_reached():
    from toolchain.confidence.far_rows import describe

    assert describe({"out_of_class_reach": {"scrambled copies": 8.2}}) is None  # not needed
    added = describe(
        {
            "out_of_class_reach": {"scrambled copies": -6.8, "flat colours": 372.6},
            "far_images": {"kind": "flat colours", "count": 4, "largest_logit": 181.6},
        }
    )
    assert "-6.8" in added and "4 flat colours" in added and "181.6" in added
    short = describe(
        {"out_of_class_reach": {"scrambled copies": -0.4, "x": 0.3}, "far_images": None}
    )
    assert short.startswith("warning:") and "the largest 0.3" in short and "--unknown-data" in short
    none = describe({"out_of_class_reach": {"scrambled copies": None}, "far_images": None})
    assert "none finite" in none


@pytest.mark.skipif(not LEGACY_PYTHON, reason="EDGETL_LEGACY_PYTHON unset: `make test` builds it")
def test_out_of_class_flags_agree_on_tflite_runtime(unknown_model, tmp_path):
    rows, _ = _classify(LEGACY_PYTHON, unknown_model.path, unknown_model.folder, tmp_path / "p.csv")
    keras_flags = unknown_model.keras.argmax(axis=1) == len(unknown_model.labels)
    assert np.mean(_flags(rows, unknown_model.names) == keras_flags) >= 0.95
    json.dumps(rows)  # every cell is plain text


def test_validate_unknown_data_reports_rejection_auroc_and_the_risk_coverage_curve(
    micro_copy, tmp_path
):
    from conftest import edgetl_here
    from PIL import Image

    config = json.loads((micro_copy / "config.json").read_text())
    far = tmp_path / "far"
    far.mkdir()
    for i, image in enumerate(_far_images(int(config["image_size"]))):
        Image.fromarray(image).save(far / f"{i}.png")
    result = edgetl_here("validate", str(micro_copy), "--unknown-data", str(far))
    assert result.returncode == 0, result.stderr
    section = json.loads((micro_copy / "parity.json").read_text())["out_of_class"]
    assert section["n_images"] == 12
    for figures in [section["keras"], *section["models"].values()]:
        assert figures["unknown_answered"] >= 0.9
        assert figures["auroc"] >= 0.9
        coverage = [point[0] for point in figures["risk_coverage"]]
        assert coverage == sorted(coverage) and coverage[-1] == 1.0
    assert (micro_copy / "risk_coverage.png").is_file()
    assert "answered unknown" in result.stderr


def test_validate_unknown_data_that_is_not_a_folder_is_one_line_exit_2(micro_copy, tmp_path):
    from conftest import assert_one_line_error, edgetl_here

    result = edgetl_here("validate", str(micro_copy), "--unknown-data", str(tmp_path / "none"))
    assert_one_line_error(result, 2, "--unknown-data")


def test_a_class_folder_named_unknown_is_refused_before_anything_is_written(tmp_path):
    from conftest import assert_one_line_error, edgetl_here
    from PIL import Image

    for name in ("daisy", "unknown"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (40 * i, 90, 160)).save(
                tmp_path / "photos" / name / f"{i}.png"
            )
    out = tmp_path / "run"
    command = ["train", "--data", str(tmp_path / "photos"), "--out", str(out)]
    result = edgetl_here(*command)  # the output is on by default
    assert_one_line_error(result, 2, "'unknown'", "--no-out-of-class")
    assert not out.exists()


def test_export_without_readable_held_out_photos_writes_no_floor_and_says_so(micro_copy):
    import shutil

    from conftest import edgetl_here

    splits = json.loads((micro_copy / "splits.json").read_text())
    root = micro_copy / splits["root_relative"]
    for rel, _ in splits["val"] + splits["test"]:  # the floor is chosen on both
        (root / rel).write_bytes(b"not an image")
    result = edgetl_here(
        "export", str(micro_copy), "--quant", "float32", "--no-validate", "--force"
    )
    assert result.returncode == 0, result.stderr
    assert "no validation or test photo could be read" in result.stderr
    card = read_embedded(micro_copy / "model_float32.tflite")
    assert "unknown" in card and "answer" not in card  # answers unless out-of-class
    shutil.rmtree(root)  # the dataset gone: a float export needs no photos
    result = edgetl_here(
        "export", str(micro_copy), "--quant", "float32", "--no-validate", "--force"
    )
    assert result.returncode == 0, result.stderr


def test_a_model_and_config_from_different_runs_are_refused_in_one_line(micro_copy):
    from conftest import assert_one_line_error, edgetl_here

    config = json.loads((micro_copy / "config.json").read_text())
    config["unknown"] = None  # the model still has its unknown output
    (micro_copy / "config.json").write_text(json.dumps(config))
    result = edgetl_here("export", str(micro_copy), "--quant", "float32", "--force")
    assert_one_line_error(result, 2, "outputs", "labels", "--force")
