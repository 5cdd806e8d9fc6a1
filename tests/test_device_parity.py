"""Parity on the device: validate's reference, carried to a TensorFlow-free runner.

``edgetl validate`` leaves ``parity_reference.json``; ``edgetl parity`` on the
device finds the same images by content and must report the figures validate
reported for the same runtime, gate them, and refuse bad input in one line.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, run_cli

EDGE_PYTHON = os.environ.get("EDGETL_EDGE_PYTHON")  # the TF-free venv `make test` builds
REPO_LEGACY = Path(__file__).resolve().parents[1] / ".venv-legacy" / "bin" / "python"


def device_cli(*args: str):
    """``edgetl`` as a device runs it: the TensorFlow-free venv when there is one."""
    if EDGE_PYTHON and Path(EDGE_PYTHON).is_file():
        return run_cli(*args, python=EDGE_PYTHON, env={"PYTHONPATH": ""})
    return run_cli(*args)


@pytest.fixture(scope="module")
def validated(tmp_path_factory, micro_run):
    """A validated copy of the micro run and its test images copied as a device would get
    them: renamed, flattened into one folder, with a stranger among them."""
    from toolchain.core.rundir import RunDir
    from toolchain.validate.command import validate

    base = tmp_path_factory.mktemp("device")
    run = base / "run"
    shutil.copytree(micro_run, run)
    report = validate(run, log=lambda m: None)
    paths, _ = RunDir(run).split_files("test")
    photos = base / "photos"
    photos.mkdir()
    for i, path in enumerate(paths):
        shutil.copy2(path, photos / f"copy_{i:04d}{path.suffix}")
    shutil.copy2(paths[0], photos / "nested_duplicate.png")  # the same bytes twice: counted once
    (photos / "other").mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (9, 99, 199)).save(photos / "other" / "stranger.png")
    return run, photos, report


def test_device_parity_reports_what_validate_reported(validated, tmp_path):
    run, photos, report = validated
    reference = json.loads((run / "parity_reference.json").read_text())
    assert len(reference["images"]) == report["n_images"]
    assert reference["labels"] == report["labels"]
    out = tmp_path / "device.json"
    result = device_cli(
        "parity", str(run / "model_int8.tflite"), "--reference", str(run / "parity_reference.json"),
        "--source", str(photos), "--json", str(out), "--runtime", "ai_edge_litert",
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    device = json.loads(out.read_text())
    validated_path = report["models"][0]["device_path"]
    # Same images (found by content after renaming), same decoder, same runtime:
    # the device's figures are validate's device-path figures exactly.
    assert device["n_images"] == validated_path["n_images"] == report["n_images"]
    assert device["agreement"] == pytest.approx(validated_path["agreement"], abs=1e-12)
    assert device["top1"] == pytest.approx(validated_path["top1"], abs=1e-12)
    assert device["top1_drop_pts"] == pytest.approx(validated_path["top1_drop_pts"], abs=1e-9)
    assert device["missing"] == 0 and device["unknown_files_ignored"] == 1
    assert device["device"]["runtime"].startswith("ai_edge_litert")
    assert len(device["images"]) == device["n_images"]
    assert "agreement" in result.stdout and "drop" in result.stdout


def test_device_parity_gate_exits_1_in_one_line(validated, tmp_path):
    """A reference whose Keras answers disagree with the model everywhere fails the gate."""
    run, photos, _ = validated
    reference = json.loads((run / "parity_reference.json").read_text())
    for entry in reference["images"]:
        entry["keras"] = entry["keras"][1:] + entry["keras"][:1]  # every top-1 moves
    tampered = tmp_path / "parity_reference.json"
    tampered.write_text(json.dumps(reference))
    result = device_cli(
        "parity", str(run / "model_int8.tflite"), "--reference", str(tampered),
        "--source", str(photos), "--min-agreement", "0.9",
    )  # fmt: skip
    assert_one_line_error(result, 1, "device parity gate failed", "agreement")


def test_device_parity_gate_defaults_to_the_budget_validate_recorded(validated):
    run, _, _ = validated
    budget = json.loads((run / "parity_reference.json").read_text())["budget"]
    export_budget = json.loads((run / "export_report.json").read_text()).get("budget")
    if export_budget:
        assert budget["max_drop"] == export_budget["max_drop"]
        assert budget["min_agreement"] == export_budget["min_agreement"]
    else:
        assert budget is None


@pytest.mark.parametrize(
    "case, code, fragment",
    [
        ("missing_reference", 2, "no such file"),
        ("not_json", 2, "not valid JSON"),
        ("other_json", 2, "not an edgetl parity reference"),
        ("folder_reference", 2, "is a folder"),
        ("no_matching_images", 2, "none of its images is in the reference"),
        ("missing_source", 2, "no such folder"),
        ("other_labels", 2, "are not the model's"),
        ("damaged_entry", 2, "damaged"),
        ("nan_budget", 2, "NaN"),
        ("float_label", 2, "integer label"),
        ("probability_past_one", 2, "not a number from 0 to 1"),
        ("labels_not_a_list", 2, "damaged"),
        ("some_images_missing", 2, "--allow-missing"),
    ],
)
def test_device_parity_bad_input_is_one_line(validated, tmp_path, case, code, fragment):
    run, photos, _ = validated
    reference = run / "parity_reference.json"
    source = photos
    data = json.loads(reference.read_text())
    given = tmp_path / "parity_reference.json"
    if case == "missing_reference":
        given = tmp_path / "absent.json"
    elif case == "not_json":
        given.write_text("{ this is not json")
    elif case == "other_json":
        given.write_text(json.dumps({"labels": ["a"]}))
    elif case == "folder_reference":
        given = tmp_path
    elif case == "no_matching_images":
        given = reference
        source = tmp_path / "empty"
        source.mkdir()
        from PIL import Image

        Image.new("RGB", (20, 20)).save(source / "x.png")
    elif case == "missing_source":
        given, source = reference, tmp_path / "nowhere"
    elif case == "other_labels":
        data["labels"] = [f"x{i}" for i in range(len(data["labels"]))]
        given.write_text(json.dumps(data))
    elif case == "damaged_entry":
        del data["images"][0]["sha256"]
        given.write_text(json.dumps(data))
    elif case == "nan_budget":  # NaN compares false: a gate that would pass every model
        data["budget"] = {"max_drop": 1.0, "min_agreement": float("nan")}
        given.write_text(json.dumps(data))
    elif case == "float_label":
        data["images"][0]["label"] = 1.5
        given.write_text(json.dumps(data))
    elif case == "probability_past_one":
        data["images"][0]["keras"][0] = 7.0
        given.write_text(json.dumps(data))
    elif case == "labels_not_a_list":
        data["labels"] = "abcde"
        given.write_text(json.dumps(data))
    elif case == "some_images_missing":  # a verdict on part of the split is refused
        given = reference
        source = tmp_path / "some"
        source.mkdir()
        for image in sorted(photos.glob("copy_*"))[:5]:
            shutil.copy2(image, source / image.name)
    before = sorted(p.name for p in run.iterdir())
    result = device_cli(
        "parity", str(run / "model_int8.tflite"), "--reference", str(given), "--source", str(source)
    )
    assert_one_line_error(result, code, fragment)
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written or removed


LEGACY_PYTHON = os.environ.get("EDGETL_LEGACY_PYTHON") or str(REPO_LEGACY)


@pytest.mark.skipif(
    not Path(LEGACY_PYTHON).is_file(), reason="no tflite-runtime venv (make setup-edge builds it)"
)
def test_validate_measures_a_runtime_this_process_lacks_in_its_own_environment(run_copy):
    """tflite-runtime needs numpy<2 and cannot share TensorFlow's process: validate runs
    the device command in the legacy venv and records which runtime produced the figures."""
    result = run_cli(
        "validate", str(run_copy), "--runtime", "tflite_runtime",
        env={"EDGETL_RUNTIME_PYTHONS": LEGACY_PYTHON},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((run_copy / "parity.json").read_text())
    entry = report["models"][0]
    assert entry["runtime"].startswith("tflite_runtime 2.14")
    assert entry["environment"] == LEGACY_PYTHON
    assert entry["device_path"]["n_images"] == report["n_images"]
    # Another runtime's INT8 kernels round differently, but the model is the same one:
    # on the tiny model both runtimes agree with Keras on most images.
    assert entry["agreement"] > 0.8
    assert not [p for p in run_copy.iterdir() if ".partial" in p.name]


def test_validate_runtime_nowhere_is_exit_3_in_one_line(micro_copy):
    result = run_cli(
        "validate",
        str(micro_copy),
        "--runtime",
        "tflite_runtime",
        env={"EDGETL_RUNTIME_PYTHONS": ""},
    )
    assert_one_line_error(result, 3, "--runtime tflite_runtime", "make setup-edge")


def test_allow_missing_measures_the_images_found(validated, tmp_path):
    run, photos, _ = validated
    source = tmp_path / "some"
    source.mkdir()
    for image in sorted(photos.glob("copy_*"))[:6]:
        shutil.copy2(image, source / image.name)
    out = tmp_path / "device.json"
    result = device_cli(
        "parity", str(run / "model_int8.tflite"), "--reference", str(run / "parity_reference.json"),
        "--source", str(source), "--allow-missing", "--json", str(out),
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    device = json.loads(out.read_text())
    assert device["n_images"] == 6 and device["missing"] > 0
    assert "not found" in result.stdout + result.stderr
