"""validate / export refuse bad options before any work, never report partial figures as
whole ones, and write a parity.md that quoted names cannot break."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.errors import BadInput
from edge.pipeline import Result
from tests.conftest import assert_one_line_error, run_cli
from toolchain.core.options import ExportOptions, ValidateOptions
from toolchain.core.text import markdown_cell
from toolchain.validate.command import check_validate_options
from toolchain.validate.figures import match_results
from toolchain.validate.model_entry import label_mismatch
from toolchain.validate.report import parity_markdown

QUIET = lambda message: None  # noqa: E731


def snapshot(folder: Path) -> dict:
    """Every file's relative name and bytes: 'byte-identical' made checkable."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def truncate_model(run: Path) -> None:
    model = run / "model.keras"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])


def table_cells(line: str) -> int:
    """Cells of one Markdown table row: pipes not escaped by a backslash separate them."""
    count, escaped = 0, False
    for char in line.strip():
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            count += 1
    return count - 1


BAD_VALIDATE_OPTIONS = {
    "device_resize": (dict(device_resize="bogus"), "--device-resize"),
    "negative max_drop": (dict(max_drop=-1.0), "--max-drop"),
    "nan max_drop": (dict(max_drop=math.nan), "--max-drop"),
    "min_agreement 2": (dict(min_agreement=2.0), "--min-agreement"),
    "runtime": (dict(runtime="tflite-nope"), "--runtime"),
    "folder model": (dict(models=["{run}"]), "is a folder"),
    "keras model": (dict(models=["{run}/model.keras"]), "not a .tflite"),
    "missing model": (dict(models=["{run}/nothing.tflite"]), "no such file"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALIDATE_OPTIONS))
def test_bad_validate_option_is_refused_and_the_run_is_untouched(micro_copy, case):
    from toolchain.validate.command import validate

    kwargs, fragment = BAD_VALIDATE_OPTIONS[case]
    if "models" in kwargs:
        kwargs = {"models": tuple(m.format(run=micro_copy) for m in kwargs["models"])}
    before = snapshot(micro_copy)
    with pytest.raises(BadInput) as error:
        validate(micro_copy, ValidateOptions(**kwargs), log=QUIET)
    assert fragment in str(error.value) and "\n" not in str(error.value)
    assert snapshot(micro_copy) == before


def test_bogus_device_resize_exits_2_from_the_command_line(micro_run):
    before = snapshot(micro_run)
    result = run_cli("validate", str(micro_run), "--device-resize", "bogus")
    assert_one_line_error(result, 2, "--device-resize", "bilinear")
    assert snapshot(micro_run) == before


def test_option_checks_accept_what_a_passing_run_uses(micro_run, tmp_path):
    model = micro_run / "model_int8.tflite"
    given = ValidateOptions(
        models=(str(model),),
        max_drop=0.0,
        min_agreement=1.0,
        device_resize="nearest",
        runtime="ai_edge_litert",
    )
    assert check_validate_options(given) == [model]
    assert check_validate_options(ValidateOptions()) == []
    rejected = tmp_path / "model_int8.tflite.rejected"  # what --auto-fallback sets aside
    shutil.copy(model, rejected)
    assert check_validate_options(ValidateOptions(models=(str(rejected),))) == [rejected]


def test_device_path_with_another_resize_covers_every_image(micro_copy):
    from toolchain.validate.command import validate

    for resize in (None, "nearest"):
        report = validate(micro_copy, ValidateOptions(device_resize=resize), log=QUIET)
        device = report["models"][0]["device_path"]
        assert device["skipped"] == [] and device["n_images"] == report["n_images"]
        assert 0 <= device["agreement"] <= 1 and device["resize"] == (resize or "bilinear")
    assert "could not classify" not in (micro_copy / "parity.md").read_text()


def test_device_results_are_matched_by_path_and_failures_are_skipped():
    paths = ["a.png", "b.png", "c.png", "d.png"]
    results = [  # out of order, one error, and no result at all for d.png
        Result("c.png", probabilities=np.array([0.1, 0.9], np.float32)),
        Result("b.png", error="b.png: not an image"),
        Result("a.png", probabilities=np.array([0.8, 0.2], np.float32)),
    ]
    probs, kept, skipped = match_results(paths, results, 2)
    assert kept.tolist() == [0, 2]
    assert np.allclose(probs, [[0.8, 0.2], [0.1, 0.9]])
    assert [s[0] for s in skipped] == ["b.png", "d.png"]
    assert skipped[0][1] == "b.png: not an image" and "no result" in skipped[1][1]


def test_markdown_cell_escapes_what_would_break_a_table():
    cell = markdown_cell("a|b `code` <script>alert(1)</script>\n[x](http://e) *_#\\")
    assert "\n" not in cell and "<script>" not in cell and "[x](" not in cell
    assert cell.count("|") == cell.count("\\|") == 1
    assert "\\`code\\`" in cell and "\\<script\\>" in cell and "\\*\\_\\#\\\\" in cell
    assert markdown_cell("tab\there\r\x00") == "tab here  "
    # Between letters or digits an underscore is never emphasis: names stay greppable.
    assert markdown_cell("block_16_project_BN") == "block_16_project_BN"
    assert markdown_cell("_x_ a_*") == "\\_x\\_ a\\_\\*"


def _report(names, path):
    """A small report as validate writes it, with hostile class and file names."""
    per_class = {n: {"n": 1, "keras": 1.0, "tflite": 0.5, "change_pts": -50.0} for n in names}
    figures = {"top1": 0.5, "top1_ci95": [0.1, 0.9], "top5": 1.0}
    return {
        "n_images": 2,
        "data": "labeled folder x|y",
        "labels": names,
        "missing_classes": [names[1]],
        "keras": {**figures, "top1": 1.0, "confusion": [[1, 0], [0, 1]]},
        "skipped": [[path, "not | an image"]],
        "models": [
            {
                **figures,
                "path": "model_a|b.tflite",
                "top1_drop_pts": 50.0,
                "agreement": 0.5,
                "mean_abs_prob_diff": 0.2,
                "per_class": per_class,
                "device_path": {
                    "top1": 0.0,
                    "resize": "nearest",
                    "n_images": 1,
                    "skipped": [[path, "bad\nfile"]],
                },
                "disagreements": [
                    {
                        "path": path,
                        "true": names[0],
                        "keras": names[0],
                        "keras_score": 0.9,
                        "tflite": names[1],
                        "tflite_score": 0.6,
                        "max_abs_prob_diff": 0.5,
                    }
                ],
            }
        ],
        "gate": {"max_drop": 1.0, "min_agreement": None, "passed": False},
        "diagnosis": {
            "layers": [
                {"layer": "block|1", "op": "CONV_2D", "channel_error": 0.5, "rmse_over_scale": 3}
            ]
        },
    }


def test_every_table_row_has_as_many_cells_as_its_header():
    text = parity_markdown(_report(["a|b", "`c`<img>"], "photos/x`y|z.png"))
    assert "| layer | op | error / channel spread | rmse / scale |" in text
    assert "<img>" not in text and "`c`" not in text and "`photos" not in text
    header = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
        elif header is None:
            header = table_cells(line)
        else:
            assert table_cells(line) == header, line
    assert "could not classify 1 of 2 images" in text and "1 of 2 images)" in text


def test_label_mismatch_is_one_line_however_many_labels():
    labels = [f"class {i}" for i in range(1000)]
    message = label_mismatch(Path("m.tflite"), labels[:999] + ["x\ny"], labels)
    assert "\n" not in message and len(message) < 400 and "#1000" in message


def test_export_with_a_truncated_model_is_bad_input_and_writes_nothing(micro_copy):
    from toolchain.export.command import export

    truncate_model(micro_copy)
    before = snapshot(micro_copy)
    options = ExportOptions(calibration_samples=20, force=True)
    with pytest.raises(BadInput) as error:
        export(micro_copy, options, log=QUIET)
    assert "model.keras" in str(error.value) and "\n" not in str(error.value)
    assert snapshot(micro_copy) == before


@pytest.mark.parametrize(
    "options, fragment",
    [
        (ExportOptions(calibration_samples=0, force=True), "--calibration-samples"),
        (ExportOptions(max_drop=-2.0, force=True), "--max-drop"),
        (ExportOptions(min_agreement=1.5, force=True), "--min-agreement"),
        (ExportOptions(io="uint16", force=True), "--io"),
        (ExportOptions(max_drop=1.0, validate=False, force=True), "--no-validate"),
        (ExportOptions(target="tpu", force=True), "--target"),
    ],
)
def test_bad_export_option_is_refused_before_the_model_is_loaded(micro_copy, options, fragment):
    from toolchain.export.command import export

    truncate_model(micro_copy)  # loading it would fail with another message
    before = snapshot(micro_copy)
    with pytest.raises(BadInput) as error:
        export(micro_copy, options, log=QUIET)
    assert fragment in str(error.value)
    assert snapshot(micro_copy) == before


def test_existing_mixed_model_is_refused_up_front_without_force(micro_copy):
    from toolchain.export.command import export

    shutil.move(micro_copy / "model_int8.tflite", micro_copy / "model_int8_mixed.tflite")
    truncate_model(micro_copy)  # proves the refusal comes before the model is loaded
    before = snapshot(micro_copy)
    options = ExportOptions(max_drop=1.0, auto_fallback=True)
    with pytest.raises(BadInput) as error:
        export(micro_copy, options, log=QUIET)
    assert "model_int8_mixed.tflite exists" in str(error.value) and "--force" in str(error.value)
    assert snapshot(micro_copy) == before
