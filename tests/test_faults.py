"""The fault suite: edgetl under bad paths, bad files, bad options, hostile model files
and careless hands, across all six commands.

Every case asserts the contract a user (and a CI job) relies on: the documented
exit code, one ``edgetl: error:`` line naming the problem, no traceback, and, where
user data is within reach, a before/after listing (names and bytes) proving
nothing was deleted or changed. The commands run in-process through Typer's test
runner, because a fresh process adds nothing here but TensorFlow's start-up;
interrupted runs are in ``test_kills.py`` with real processes and SIGKILL.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path
from typing import Dict

import pytest
from PIL import Image

from tests.conftest import assert_one_line_error, edgetl_here, with_hostile_int8


def snapshot(*folders: Path) -> Dict[str, str]:
    """Every file and folder under ``folders`` (hidden ones too) with a hash of its bytes."""
    listing = {}
    for folder in folders:
        if not folder.exists():
            listing[str(folder)] = "absent"
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                listing[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                listing[str(path)] = "folder"
    return listing


def write_image(path: Path, size=(40, 30), colour=(200, 30, 30), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def class_folders(root: Path, names=("cat", "dog"), per_class: int = 4) -> Path:
    for i, name in enumerate(names):
        for j in range(per_class):
            write_image(root / name / f"{j}.png", colour=(40 * i, 20 * j, 90))
    return root


def user_folder(path: Path) -> Path:
    """A folder a user keeps, with files named like edgetl's own."""
    (path / "logs").mkdir(parents=True)
    (path / "logs" / "head.csv").write_text("my own log\n")
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "notes.txt").write_text("keep me\n")
    (path / "config.json").write_text('{"mine": true}\n')
    (path / "labels.txt").write_text("a\nb\n")
    return path


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A real, tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


TINY_TRAIN = ["--image-size", "32", "--alpha", "0.35", "--weights", "none", "--epochs", "1"]


# -- train: nothing of the user's is touched -------------------------------------------


def test_train_typo_in_data_leaves_a_user_folder_alone(tmp_path):
    out = user_folder(tmp_path / "out")
    before = snapshot(out)
    assert_one_line_error(
        edgetl_here("train", "--data", tmp_path / "phtos", "--out", out, *TINY_TRAIN), 2, "phtos"
    )
    assert snapshot(out) == before


@pytest.mark.parametrize("force", [False, True])
def test_train_never_writes_into_a_folder_that_is_not_its_run(tmp_path, force):
    data = class_folders(tmp_path / "photos")
    out = user_folder(tmp_path / "out")
    before = snapshot(out, data)
    args = ["--force"] if force else []
    assert_one_line_error(
        edgetl_here("train", "--data", data, "--out", out, *TINY_TRAIN, *args),
        2,
        "not an edgetl run",
    )
    assert snapshot(out, data) == before


def test_a_folder_with_only_file_manager_litter_counts_as_empty(tmp_path):
    from toolchain.core.rundir import RunDir
    from toolchain.train.runstate import check_out_folder

    out = tmp_path / "new_run"
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    assert check_out_folder(RunDir(out), None, resume=False, force=False) is None
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not an edgetl run"):
        check_out_folder(RunDir(out), None, resume=False, force=False)


def test_train_force_needs_a_real_run_not_a_lookalike(tmp_path):
    """config.json, labels.txt and model.keras alone do not make a folder edgetl's."""
    data = class_folders(tmp_path / "photos")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("config.json", "labels.txt", "model.keras", "model_int8.tflite", "parity.md"):
        (out / name).write_text("user data\n")
    before = snapshot(out)
    assert_one_line_error(
        edgetl_here("train", "--data", data, "--out", out, "--force", *TINY_TRAIN), 2, "--out"
    )
    assert snapshot(out) == before


@pytest.mark.parametrize("where", ["inside", "equal"])
def test_train_out_inside_data_is_refused(tmp_path, where):
    data = class_folders(tmp_path / "photos")
    out = data / "run" if where == "inside" else data
    before = snapshot(data)
    assert_one_line_error(
        edgetl_here("train", "--data", data, "--out", out, *TINY_TRAIN), 2, "inside --data"
    )
    assert snapshot(data) == before


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--alpha", "0.7", "--alpha"),  # no ImageNet weights at 0.7
        ("--image-size", "16", "--image-size"),
        ("--fine-tune-at", "block_99", "--fine-tune-at"),
        ("--fine-tune-at", "no_such_layer", "--fine-tune-at"),
        ("--fine-tune-at", "block_3_x", "--fine-tune-at"),
        ("--strategy", "bogus", "--strategy"),
        ("--class-weights", "maybe", "--class-weights"),
        ("--batch-size", "0", "--batch-size"),
        ("--epochs", "-1", "--epochs"),
        ("--val-fraction", "0.95", "--val-fraction"),
        ("--learning-rate", "0", "--learning-rate"),
        ("--weights", "missing.h5", "missing.h5"),
        ("--seed", "-3", "--seed"),
        ("--data", "", "--data"),
    ],
)
def test_train_options_are_checked_before_any_file_is_written(tmp_path, option, value, fragment):
    """A bad option leaves no splits.json or labels.txt behind: the corrected command
    then runs instead of being refused as 'already holds a run'."""
    data = class_folders(tmp_path / "photos")
    out = tmp_path / "run"
    weights = ["--weights", "imagenet"] if option == "--alpha" else []
    args = [*TINY_TRAIN, *weights, option, value]
    assert_one_line_error(edgetl_here("train", "--data", data, "--out", out, *args), 2, fragment)
    assert not out.exists()


def test_train_val_and_test_fractions_that_leave_nothing_to_train(tmp_path):
    data = class_folders(tmp_path / "photos")
    out = tmp_path / "run"
    result = edgetl_here(
        "train", "--data", data, "--out", out, *TINY_TRAIN,
        "--val-fraction", "0.5", "--test-fraction", "0.5",
    )  # fmt: skip
    assert_one_line_error(result, 2, "below 1")
    assert not out.exists()


def test_train_out_is_a_file(tmp_path):
    data = class_folders(tmp_path / "photos")
    out = tmp_path / "run.txt"
    out.write_text("mine")
    assert_one_line_error(
        edgetl_here("train", "--data", data, "--out", out, *TINY_TRAIN), 2, "is a file"
    )
    assert out.read_text() == "mine"


def test_train_resume_without_a_run(tmp_path):
    data = class_folders(tmp_path / "photos")
    assert_one_line_error(
        edgetl_here("train", "--data", data, "--out", tmp_path / "run", "--resume", *TINY_TRAIN),
        2,
        "--resume",
    )


@pytest.mark.parametrize(
    "bad_name", ["rose ", " tulip", "sun\u2028flower", "dai\x1csy", "tab\there"]
)
def test_train_refuses_class_names_that_would_not_round_trip(tmp_path, bad_name):
    data = class_folders(tmp_path / "photos", names=("cat", bad_name))
    out = tmp_path / "run"
    before = snapshot(data)
    assert_one_line_error(
        edgetl_here("train", "--data", data, "--out", out, *TINY_TRAIN), 2, "rename the folder"
    )
    assert snapshot(data) == before
    assert not out.exists()


def test_train_empty_class_folder(tmp_path):
    data = class_folders(tmp_path / "photos")
    (data / "empty").mkdir()
    assert_one_line_error(
        edgetl_here("train", "--data", data, "--out", tmp_path / "run", *TINY_TRAIN), 2, "empty"
    )


def test_train_data_is_a_file(tmp_path):
    photo = write_image(tmp_path / "one.png")
    assert_one_line_error(
        edgetl_here("train", "--data", photo, "--out", tmp_path / "run", *TINY_TRAIN),
        2,
        "is a file",
    )


def test_train_resume_on_a_finished_run_does_nothing(micro_copy):
    before = snapshot(micro_copy)
    result = edgetl_here("train", "--out", micro_copy, "--resume")
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout + result.stderr
    assert snapshot(micro_copy) == before


def test_train_over_a_finished_run_without_force(micro_copy):
    before = snapshot(micro_copy)
    result = edgetl_here("train", "--data", "synthetic", "--out", micro_copy, *TINY_TRAIN)
    assert_one_line_error(result, 2, "already holds a run", "--force")
    assert snapshot(micro_copy) == before


def test_train_bad_tf_config_is_refused_before_any_file(tmp_path):
    data = class_folders(tmp_path / "photos")
    out = tmp_path / "run"
    for config in ("5", '{"cluster": 1}', '{"cluster": {"worker": ["a:1"]}, "task": {"index": 3}}'):
        result = edgetl_here(
            "train", "--data", data, "--out", out, "--strategy", "multiworker", *TINY_TRAIN,
            env={"TF_CONFIG": config},
        )  # fmt: skip
        assert_one_line_error(result, 2, "TF_CONFIG")
        assert not out.exists()


def test_train_that_failed_in_its_setup_does_not_lock_its_folder(tmp_path):
    """A weights file that does not fit is found only when the model is built; the
    corrected command must then run, not be refused as 'an interrupted run'."""
    from toolchain.core.rundir import RunDir
    from toolchain.train.runstate import check_out_folder

    data = class_folders(tmp_path / "photos")
    out = tmp_path / "run"
    weights = tmp_path / "wrong.h5"
    weights.write_bytes(b"not an HDF5 file")
    result = edgetl_here(
        "train", "--data", data, "--out", out, *TINY_TRAIN[:4], "--weights", weights
    )
    assert_one_line_error(result, 2, "--weights")
    assert check_out_folder(RunDir(out), data, resume=False, force=False) is None


def test_train_resume_with_damaged_saved_options(micro_copy):
    (micro_copy / "checkpoints" / "state.json").write_text('{"head_done": true}')
    (micro_copy / "checkpoints" / "options.json").write_text('{"image_size": "big"}')
    before = snapshot(micro_copy)
    assert_one_line_error(
        edgetl_here("train", "--out", micro_copy, "--resume"), 2, "options.json", "--force"
    )
    assert snapshot(micro_copy) == before


def test_export_refuses_a_run_stopped_in_the_middle_of_its_commit(micro_copy):
    """A kill between the renames of a new run: model and config may not match."""
    (micro_copy / "checkpoints" / "state.json").write_text('{"installing": ["model.keras"]}')
    before = snapshot(micro_copy)
    assert_one_line_error(edgetl_here("export", micro_copy, "--force"), 2, "--resume")
    assert snapshot(micro_copy) == before


# -- export --------------------------------------------------------------------------


def test_export_of_a_user_folder(tmp_path):
    folder = user_folder(tmp_path / "mine")
    before = snapshot(folder)
    assert_one_line_error(edgetl_here("export", folder), 2, "splits.json")
    assert snapshot(folder) == before


def test_export_truncated_model_keras(micro_copy):
    model = micro_copy / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    before = snapshot(micro_copy)
    assert_one_line_error(
        edgetl_here("export", micro_copy, "--force", "--no-validate"), 2, "model.keras"
    )
    assert snapshot(micro_copy) == before


@pytest.mark.parametrize(
    "text, fragment",
    [("[1, 2]", "not an object"), ("{not json", "not valid JSON"), ('{"labels": 3}', "labels")],
)
def test_export_damaged_config(micro_copy, text, fragment):
    (micro_copy / "config.json").write_text(text)
    before = snapshot(micro_copy)
    assert_one_line_error(edgetl_here("export", micro_copy, "--force"), 2, "config.json", fragment)
    assert snapshot(micro_copy) == before


def test_export_config_not_utf8(micro_copy):
    (micro_copy / "config.json").write_bytes(b"\xff\xfe\x00{")
    assert_one_line_error(edgetl_here("export", micro_copy, "--force"), 2, "config.json")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--quant", "int4"], "--quant"),
        (["--io", "int16"], "--io"),
        (["--calibration-samples", "0"], "--calibration-samples"),
        (["--min-agreement", "2"], "--min-agreement"),
        (["--max-drop", "-1"], "--max-drop"),
        (["--target", "tpu"], "--target"),
    ],
)
def test_export_bad_options_touch_nothing(micro_copy, args, fragment):
    before = snapshot(micro_copy)
    assert_one_line_error(edgetl_here("export", micro_copy, "--force", *args), 2, fragment)
    assert snapshot(micro_copy) == before


def test_export_refuses_to_replace_a_model_without_force(micro_copy):
    before = snapshot(micro_copy)
    assert_one_line_error(edgetl_here("export", micro_copy), 2, "model_int8.tflite", "--force")
    assert snapshot(micro_copy) == before


# -- validate ------------------------------------------------------------------------


def test_validate_bogus_device_resize_is_refused_before_work(micro_copy):
    """It used to kill the decode thread and report 'device path 1.0000', exit 0."""
    before = snapshot(micro_copy)
    assert_one_line_error(
        edgetl_here("validate", micro_copy, "--device-resize", "bogus"), 2, "--device-resize"
    )
    assert snapshot(micro_copy) == before


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--max-drop", "-0.5"], "--max-drop"),
        (["--min-agreement", "1.5"], "--min-agreement"),
        (["--runtime", "onnx"], "--runtime"),
    ],
)
def test_validate_bad_options(micro_copy, args, fragment):
    before = snapshot(micro_copy)
    assert_one_line_error(edgetl_here("validate", micro_copy, *args), 2, fragment)
    assert snapshot(micro_copy) == before


def test_validate_model_is_a_folder(micro_copy, tmp_path):
    before = snapshot(micro_copy)
    assert_one_line_error(
        edgetl_here("validate", micro_copy, "--model", tmp_path), 2, str(tmp_path)
    )
    assert snapshot(micro_copy) == before


def test_validate_model_is_not_a_tflite(micro_copy, tmp_path):
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"\x00" * 64)
    before = snapshot(micro_copy)
    assert_one_line_error(edgetl_here("validate", micro_copy, "--model", fake), 2, "model.tflite")
    assert snapshot(micro_copy) == before


def test_validate_data_with_a_folder_that_is_no_label(micro_copy, tmp_path):
    data = class_folders(tmp_path / "photos", names=("circle", "kangaroo"))
    before = snapshot(micro_copy, data)
    assert_one_line_error(edgetl_here("validate", micro_copy, "--data", data), 2, "kangaroo")
    assert snapshot(micro_copy, data) == before


def test_validate_when_the_dataset_is_gone(micro_copy):
    splits = json.loads((micro_copy / "splits.json").read_text())
    splits["root"], splits["root_relative"] = "/nonexistent/photos", None
    (micro_copy / "splits.json").write_text(json.dumps(splits))
    assert_one_line_error(edgetl_here("validate", micro_copy), 2, "gone")


def test_validate_skips_and_lists_a_decompression_bomb(micro_copy, tmp_path):
    """A 70000 x 70000 PNG of a few bytes is skipped and named; the rest is validated."""
    data = tmp_path / "photos"
    for label in ("circle", "square"):
        for i, image in enumerate(sorted((micro_copy / "synthetic_data" / label).iterdir())[:6]):
            (data / label).mkdir(parents=True, exist_ok=True)
            (data / label / f"{i}{image.suffix}").write_bytes(image.read_bytes())
    png_declaring(data / "circle" / "bomb.png", 70000, 70000)
    result = edgetl_here("validate", micro_copy, "--data", data)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    parity = json.loads((micro_copy / "parity.json").read_text())
    assert parity["n_images"] == 12
    assert any("bomb.png" in path and "too large" in reason for path, reason in parity["skipped"])


def test_a_failed_gate_stays_1_when_the_diagnosis_cannot_run(micro_copy, tmp_path):
    """The diagnosis reads the training split; with that dataset gone, the verdict on
    a labeled folder must still be the gate's exit 1 (it was 2), with its reports."""
    data = tmp_path / "photos"  # the run's own test split, where INT8 misses the budget
    with_hostile_int8(micro_copy)
    splits = json.loads((micro_copy / "splits.json").read_text())
    labels = json.loads((micro_copy / "config.json").read_text())["labels"]
    for relative, label in splits["test"]:
        image = micro_copy / "synthetic_data" / relative
        (data / labels[label]).mkdir(parents=True, exist_ok=True)
        (data / labels[label] / image.name).write_bytes(image.read_bytes())
    splits["root"], splits["root_relative"] = "/nonexistent/photos", None
    (micro_copy / "splits.json").write_text(json.dumps(splits))
    result = edgetl_here(
        "validate", micro_copy, "--data", data, "--max-drop", "1", "--min-agreement", "0.95"
    )
    assert_one_line_error(result, 1, "gate failed")
    parity = json.loads((micro_copy / "parity.json").read_text())
    assert "not possible" in parity["diagnosis"]["note"]


# -- classify --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--top-k", "0"], "--top-k"),
        (["--threads", "-1"], "--threads"),
        (["--threshold", "2"], "--threshold"),
        (["--runtime", "bogus"], "--runtime"),
    ],
)
def test_classify_bad_options(micro_run, tmp_path, args, fragment):
    photo = write_image(tmp_path / "x.png")
    assert_one_line_error(
        edgetl_here("classify", micro_run / "model_int8.tflite", "--source", photo, *args),
        2,
        fragment,
    )


def test_classify_output_is_a_folder(micro_run, tmp_path):
    photo = write_image(tmp_path / "in" / "x.png")
    target = tmp_path / "out.csv"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    before = snapshot(target)
    result = edgetl_here(
        "classify", micro_run / "model_int8.tflite", "--source", photo, "--output", target
    )
    assert_one_line_error(result, 2, "folder")
    assert snapshot(target) == before


@pytest.mark.parametrize("name", ["preds.txt", "missing_folder/preds.csv"])
def test_classify_output_bad_name(micro_run, tmp_path, name):
    photo = write_image(tmp_path / "x.png")
    result = edgetl_here(
        "classify", micro_run / "model_int8.tflite", "--source", photo, "--output", tmp_path / name
    )
    assert_one_line_error(result, 2, "--output")


def test_classify_failure_keeps_the_previous_output(micro_run, tmp_path):
    """--output used to truncate the file the moment it opened."""
    previous = tmp_path / "preds.csv"
    previous.write_text("path,label_1\nold.jpg,circle\n")
    before = snapshot(tmp_path)
    result = edgetl_here(
        "classify", micro_run / "model_int8.tflite",
        "--source", tmp_path / "no_such_folder", "--output", previous,
    )  # fmt: skip
    assert_one_line_error(result, 2, "no_such_folder")
    assert snapshot(tmp_path) == before


def test_classify_a_folder_where_nothing_can_be_read(micro_run, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    output = tmp_path / "p.csv"
    result = edgetl_here(
        "classify", micro_run / "model_int8.tflite", "--source", folder, "--output", output
    )
    assert_one_line_error(result, 2, "none of the 3")
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "broken"] == []


def test_classify_skips_and_lists_a_decompression_bomb(micro_run, tmp_path):
    folder = tmp_path / "photos"
    write_image(folder / "a.png")
    png_declaring(folder / "bomb.png", 80000, 80000)
    output = tmp_path / "p.csv"
    result = edgetl_here(
        "classify", micro_run / "model_int8.tflite", "--source", folder, "--output", output,
        "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "1 unreadable" in result.stderr
    rows = output.read_text().splitlines()
    assert len(rows) == 3 and "too large" in rows[1] + rows[2]


def test_classify_neutralises_spreadsheet_formulas(micro_run, tmp_path):
    """A file name is user data: '=HYPERLINK(…)' must not become a live formula."""
    folder = tmp_path / "photos"
    write_image(folder / "=cmd.png")
    write_image(folder / "+sum.png")
    output = tmp_path / "p.csv"
    result = edgetl_here(
        "classify", micro_run / "model_int8.tflite", "--source", folder, "--output", output,
        "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    import csv

    rows = list(csv.reader(output.open()))
    for row in rows[1:]:
        assert not row[0].startswith(("=", "+", "-", "@")), row


def test_classify_a_file_name_that_is_not_utf8(micro_run, tmp_path):
    """A name from another system must not end the session (it used to, exit 2)."""
    folder = tmp_path / "photos"
    write_image(folder / "good.png")
    odd = os.fsdecode(bytes(folder) + b"/caf\xe9.png")
    write_image(Path(odd))
    output = tmp_path / "p.csv"
    result = edgetl_here(
        "classify", micro_run / "model_int8.tflite", "--source", folder, "--output", output,
        "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(output.read_text(encoding="utf-8").splitlines()) == 3


def test_classify_model_is_the_output(micro_run, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes((micro_run / "model_int8.tflite").read_bytes())
    before = snapshot(tmp_path)
    photo = write_image(tmp_path / "in" / "x.png")
    before = snapshot(tmp_path)
    assert_one_line_error(
        edgetl_here("classify", model, "--source", photo, "--output", model), 2, "--output"
    )
    assert snapshot(tmp_path) == before


def test_classify_bad_camera_spec(micro_run):
    assert_one_line_error(
        edgetl_here("classify", micro_run / "model_int8.tflite", "--source", "camera:x"),
        2,
        "camera",
    )


# -- hostile model files: classify, info, bench ------------------------------------------


def hostile(micro_run, tmp_path, members: Dict[str, bytes], deflate: bool = False) -> Path:
    buffer = io.BytesIO()
    compression = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path = tmp_path / "hostile.tflite"
    path.write_bytes(model_bytes_without_card(micro_run) + buffer.getvalue())
    return path


def model_bytes_without_card(micro_run) -> bytes:
    """The model's bytes before edgetl's appended zip (zipfile reports where it starts)."""
    path = micro_run / "model_int8.tflite"
    with zipfile.ZipFile(path) as archive:
        start = min(info.header_offset for info in archive.infolist())
    return path.read_bytes()[:start]


HOSTILE_CARDS = {
    "card is a list": ({"edgetl.json": b"[1, 2, 3]"}, False, "edgetl.json"),
    "labels not a list": ({"edgetl.json": b'{"labels": 5}'}, False, "edgetl.json"),
    "unknown resize filter": (
        {"edgetl.json": b'{"input": {"resize_filter": "sinc9000"}}'},
        False,
        "sinc9000",
    ),
    "card not utf-8": ({"edgetl.json": b"\xff\xfe{}"}, False, "edgetl.json"),
    "card nested too deep": ({"edgetl.json": b"[" * 100000 + b"]" * 100000}, False, "edgetl.json"),
    "oversized card": ({"edgetl.json": b'{"x": "' + b"a" * (5 * 2**20) + b'"}'}, False, "4 MiB"),
    "zip bomb labels": ({"labels.txt": b"\0" * (60 * 2**20)}, True, "labels.txt"),
    "too many entries": ({f"f{i}.txt": b"x" for i in range(200)}, False, "entries"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CARDS))
@pytest.mark.parametrize("command", ["classify", "info"])
def test_hostile_model_card(micro_run, tmp_path, case, command):
    members, deflate, fragment = HOSTILE_CARDS[case]
    model = hostile(micro_run, tmp_path, members, deflate)
    photo = write_image(tmp_path / "in" / "x.png")
    before = snapshot(tmp_path)
    args = ["--source", photo] if command == "classify" else []
    assert_one_line_error(edgetl_here(command, model, *args), 2, "hostile.tflite", fragment)
    assert snapshot(tmp_path) == before


def test_info_on_a_folder_and_on_garbage(tmp_path):
    assert_one_line_error(edgetl_here("info", tmp_path), 2, str(tmp_path))
    garbage = tmp_path / "x.tflite"
    garbage.write_bytes(os.urandom(256))
    assert_one_line_error(edgetl_here("info", garbage), 2, "x.tflite")


# -- bench -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment", [(["--runs", "0"], "--runs"), (["--threads", "0"], "--threads")]
)
def test_bench_bad_options(micro_run, args, fragment):
    assert_one_line_error(edgetl_here("bench", micro_run / "model_int8.tflite", *args), 2, fragment)


def test_bench_json_cannot_overwrite_the_model(micro_run, tmp_path):
    model = tmp_path / "m.json"  # a model named like a report: --json must still refuse it
    model.write_bytes((micro_run / "model_int8.tflite").read_bytes())
    before = snapshot(tmp_path)
    assert_one_line_error(edgetl_here("bench", model, "--runs", "2", "--json", model), 2, "--json")
    assert snapshot(tmp_path) == before


def test_bench_json_is_a_folder(micro_run, tmp_path):
    folder = tmp_path / "report.json"
    folder.mkdir()
    assert_one_line_error(
        edgetl_here("bench", micro_run / "model_int8.tflite", "--json", folder), 2, "folder"
    )


# -- usage and environment ---------------------------------------------------------------


def test_unknown_option_is_one_line(tmp_path):
    assert_one_line_error(
        edgetl_here("classify", "m.tflite", "--source", tmp_path, "--colour"), 2, "--colour"
    )


def test_unknown_command_is_one_line():
    assert_one_line_error(edgetl_here("trian"), 2, "trian")


def mount_tmpfs(path: Path, size: str = "16k") -> bool:
    path.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture
def full_disk(tmp_path):
    """A real filesystem with no space left (a tiny tmpfs, filled up)."""
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk):
        pytest.skip("needs root to mount a small tmpfs (the disk-full case)")
    try:
        filler = os.open(disk / "filler", os.O_CREAT | os.O_WRONLY)
        try:
            while os.write(filler, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(filler)
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=10)


def test_disk_full_is_the_environment_not_a_gate(micro_run, tmp_path, full_disk):
    photo = write_image(tmp_path / "x.png")
    result = edgetl_here(
        "classify", micro_run / "model_int8.tflite", "--source", photo,
        "--output", full_disk / "p.csv",
    )  # fmt: skip
    assert_one_line_error(result, 3, "disk is full")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_resume_of_a_run_saved_before_the_out_of_class_option_keeps_it_off(micro_copy):
    """options.json from before --out-of-class existed: that run trained without it
    (the default then), so resuming it must not add the output now that it is on."""
    from toolchain.core.rundir import RunDir
    from toolchain.train.runstate import resumed_options

    options = json.loads((micro_copy / "config.json").read_text())["options"]
    saved = micro_copy / "checkpoints" / "options.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps({k: v for k, v in options.items() if k != "out_of_class"}))
    assert resumed_options(RunDir(micro_copy)).out_of_class is False
    saved.write_text(json.dumps({**options, "out_of_class": True}))
    assert resumed_options(RunDir(micro_copy)).out_of_class is True
