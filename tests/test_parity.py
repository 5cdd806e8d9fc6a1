"""edgetl validate / export gates: measure, explain and repair INT8 accuracy loss."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from edge.metrics import disagreements
from tests.conftest import assert_one_line_error, run_cli
from toolchain.core.options import ValidateOptions


def test_disagreements_are_listed_worst_first():
    keras = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    tflite = np.array([[0.1, 0.9], [0.4, 0.6], [0.2, 0.8], [0.5, 0.5]])
    found = disagreements(keras, tflite, np.array([0, 0, 1, 0]), ["a", "b", "c", "d"], ["x", "y"])
    assert [d["path"] for d in found] == ["a", "b"]  # c agrees; d ties go to the first class
    assert (
        found[0]["keras"] == "x"
        and found[0]["tflite"] == "y"
        and found[0]["max_abs_prob_diff"] == 0.8
    )


def test_device_path_with_another_resize_moves_while_tensor_level_does_not(run_copy):
    from toolchain.validate.command import validate

    same = validate(run_copy, log=lambda m: None)["models"][0]
    other = validate(run_copy, ValidateOptions(device_resize="nearest"), log=lambda m: None)[
        "models"
    ][0]
    for key in ("top1", "agreement", "mean_abs_prob_diff"):
        assert other[key] == same[key]  # the converter's figures do not depend on the device
    assert (
        same["device_path"]["same_decoder_as_training"]
        and same["device_path"]["top1"] == same["top1"]
    )
    assert other["device_path"]["resize"] == "nearest"
    # Nearest-neighbour sampling of 112 px images to 96 px shifts the probabilities measurably.
    assert (
        other["device_path"]["mean_abs_prob_diff"]
        > 2 * same["device_path"]["mean_abs_prob_diff"] + 1e-4
    )
    assert other["device_path"]["agreement"] <= same["device_path"]["agreement"]


def _make_quantization_hostile(run):
    """Scale one output channel of block_16's projection by 1000 and undo it in Conv_1.

    The float model computes exactly the same function, but that channel now sets
    the per-tensor INT8 range of the projection output, so every other channel is
    rounded to a few levels: the classic outlier-channel failure of INT8.
    """
    from toolchain.core.quiet import keras

    model = keras().models.load_model(run / "model.keras", compile=False)
    base = model.get_layer("mobilenetv2_base")
    bn, conv = base.get_layer("block_16_project_BN"), base.get_layer("Conv_1")
    gamma, beta, mean, var = bn.get_weights()
    gamma[0] *= 1000.0
    beta[0] *= 1000.0
    bn.set_weights([gamma, beta, mean, var])
    (kernel,) = conv.get_weights()
    kernel[:, :, 0, :] /= 1000.0
    conv.set_weights([kernel])
    model.save(run / "model.keras")
    return model


@pytest.mark.slow
def test_damaged_model_fails_the_gate_is_diagnosed_and_repaired(run_copy):
    from toolchain.core.quiet import keras

    original = keras().models.load_model(run_copy / "model.keras", compile=False)
    probe = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3)).astype(np.float32)
    before = original.predict(probe, verbose=0)
    hostile = _make_quantization_hostile(run_copy)
    assert np.allclose(hostile.predict(probe, verbose=0), before, atol=1e-3)  # float is unharmed

    # Pure INT8 (--target accelerator) under the default budget: exit 1, one line
    # saying by how much and what to try, and the report says nothing ships.
    failed = run_cli("export", str(run_copy), "--target", "accelerator", "--force")
    assert_one_line_error(failed, 1, "INT8 budget missed", "model_int8.tflite", "--target cpu")
    # Nothing in the run changed; the failed export's files and reports are in rejected/.
    rejected = run_copy / "rejected"
    report = json.loads((rejected / "export_report.json").read_text())
    assert report["shipped"]["int8"] is None and report["budget"]["source"] == "default"
    assert (report["budget"]["max_drop"], report["budget"]["min_agreement"]) == (1.0, 0.95)
    parity = json.loads((rejected / "parity.json").read_text())
    assert parity["gate"]["passed"] is False and parity["models"][0]["top1_drop_pts"] > 1
    worst = [layer["layer"] for layer in parity["diagnosis"]["layers"][:2]]
    assert "block_16_project_BN" in worst, worst
    assert "block_16_project_BN" in (rejected / "parity.md").read_text()
    # the run's own model_int8.tflite predates the damage: validate the rejected one
    agreement = run_cli(
        "validate", str(run_copy), "--model", str(rejected / "model_int8.tflite.rejected"),
        "--min-agreement", "0.9",
    )  # fmt: skip
    assert_one_line_error(agreement, 1, "--min-agreement")
    # Every op of what was written is INT8: nothing an accelerator hands back to the CPU.
    assert report["models"][0]["float_ops"] == {} and report["target"] == "accelerator"

    # The default export (--target cpu) repairs it, under the fixture's budget
    # (conftest.py: on 40 test images one flip is 2.5 points, so the default's
    # 0.95 agreement is two flips from a fresh install's figures).
    repaired = run_cli(
        "export", str(run_copy), "--force", "--max-drop", "5", "--min-agreement", "0.9"
    )
    assert repaired.returncode == 0, repaired.stderr
    assert "fallback:" in repaired.stderr
    report = json.loads((run_copy / "export_report.json").read_text())
    assert report["shipped"]["int8"] == "model_int8_mixed.tflite", report["shipped"]
    assert "block_16_project_BN" in report["shipped"]["why"]
    fallback = report["fallback"]
    # measured sensitivity finds the damaged layer first, so one float layer repairs it
    assert fallback["ranking"][0]["layer"] == "block_16_project_BN", fallback["ranking"][:3]
    steps = fallback["steps"]
    assert steps[-1]["accepted"] and "block_16_project_BN" in steps[-1]["float_layers"]
    assert steps[-1]["drop_pts"] <= 5 and steps[-1]["agreement"] >= 0.92  # with headroom
    assert (
        sum(fallback["decision_images"].values()) > parity["n_images"]
    )  # more than the test split
    assert all({"size_bytes", "invoke_p50_ms", "agreement"} <= set(step) for step in steps)
    parity = json.loads((run_copy / "parity.json").read_text())
    mixed = next(m for m in parity["models"] if m["path"].endswith("model_int8_mixed.tflite"))
    assert mixed["top1_drop_pts"] <= 5 and mixed["agreement"] >= 0.9
    assert mixed["quant"] == "int8-mixed"
    entry = next(m for m in report["models"] if m["path"] == "model_int8_mixed.tflite")
    assert sum(entry["float_ops"].values()) >= 1  # the repair's float layers show as such
    # the full-INT8 file that failed is set aside, so validating the run gates what ships
    assert not (run_copy / "model_int8.tflite").exists() and not rejected.exists()
    assert (run_copy / "model_int8.tflite.rejected").is_file()
    gated = run_cli("validate", str(run_copy), "--max-drop", "5", "--min-agreement", "0.9")
    assert gated.returncode == 0, gated.stderr


def test_validate_on_a_labeled_folder(micro_copy, tmp_path):
    from toolchain.validate.command import validate

    folder = tmp_path / "new_photos"
    for name in ("circle", "square"):
        (folder / name).mkdir(parents=True)
        for source in sorted((micro_copy / "synthetic_data" / name).glob("*.png"))[:5]:
            shutil.copy(source, folder / name / source.name)
    report = validate(micro_copy, ValidateOptions(data=str(folder)), log=lambda m: None)
    assert report["n_images"] == 10 and report["data"].startswith("labeled folder")
    assert set(report["missing_classes"]) == {"cross", "stripes", "triangle"}
    (folder / "hexagon").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "hexagon" / "h.png")
    result = run_cli("validate", str(micro_copy), "--data", str(folder))
    assert_one_line_error(result, 2, "hexagon")


def test_parity_report_for_people(micro_copy):
    from toolchain.validate.command import validate

    validate(micro_copy, log=lambda m: None)
    text = (micro_copy / "parity.md").read_text()
    assert "## Per class" in text and "95%" in text and "device-path" in text
    for picture in ("parity_confusion.png", "parity_per_class.png"):
        assert (micro_copy / picture).stat().st_size > 1000
    saved = json.loads((micro_copy / "parity.json").read_text())
    per_class = saved["models"][0]["per_class"]
    assert set(per_class) == set(saved["labels"]) and all(
        "change_pts" in v for v in per_class.values()
    )
    assert (
        len(saved["keras"]["top1_ci95"]) == 2
        and saved["keras"]["top1_ci95"][0] <= saved["keras"]["top1"]
    )
