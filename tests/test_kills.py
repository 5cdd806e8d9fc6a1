"""SIGKILL mid-way through each writing command: what the user had is intact, no file
under a final name is half-written, and a plain rerun finishes the job.

Real processes, killed at a point the command itself announces (a progress
line), never after a sleep. Logs that are appended to by design (``export.log``)
and edgetl's own working folder (``checkpoints/``) are outside the comparison.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import pytest
from PIL import Image

from edge.atomic import is_partial_name
from tests.conftest import REPO, TINY, run_cli

WORKING = {"checkpoints", "export.log"}


def outputs(run: Path) -> Dict[str, str]:
    """What a user relies on in a folder: every file outside edgetl's working state and
    its temporary files (which ``no_half_written`` checks are the only unfinished ones)."""
    listing = {}
    for path in sorted(run.rglob("*")):
        relative = path.relative_to(run)
        if relative.parts[0] in WORKING or not path.is_file() or is_partial_name(path.name):
            continue
        listing[relative.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return listing


def no_half_written(folder: Path) -> None:
    """Only edgetl's temporary names may hold an unfinished file, never a final name."""
    for path in folder.rglob("*"):
        if path.is_file() and path.name.startswith("."):
            assert is_partial_name(path.name) or path.name.startswith(".edgetl"), path


def kill_when(command, announced: Callable[[str], bool], stream: str = "stderr", timeout=300):
    """Start ``edgetl command``, SIGKILL it as soon as a line satisfies ``announced``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "toolchain.cli", *[str(c) for c in command]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    watched = process.stderr if stream == "stderr" else process.stdout
    other = process.stdout if stream == "stderr" else process.stderr
    selector = selectors.DefaultSelector()
    selector.register(watched, selectors.EVENT_READ)
    selector.register(other, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = []
    try:
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=deadline - time.monotonic()):
                line = key.fileobj.readline()
                if key.fileobj is watched:
                    seen.append(line)
                    if announced(line):
                        process.send_signal(signal.SIGKILL)
                        process.wait(timeout=30)
                        return seen
            if process.poll() is not None:
                break
        raise AssertionError(f"never announced; exit {process.poll()}; saw {seen[-5:]}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()


def csv_epochs(path: Path) -> List[int]:
    with path.open(newline="") as handle:
        return sorted({int(row["epoch"]) for row in csv.DictReader(handle)})


@pytest.mark.slow
def test_kill_train_force_keeps_the_previous_run(run_copy):
    """`train --force` over a finished run, killed mid fine-tuning: the old model, its
    exports and reports are untouched (the new run lives in checkpoints/ until it
    commits); --resume redoes at most the interrupted epoch, and only when the new
    model is saved are the old exports removed."""
    before = outputs(run_copy)
    fine_tune_epochs = 4
    options = {**TINY, "epochs": 2, "fine_tune_epochs": fine_tune_epochs, "image_size": 32}
    args = ["train", "--out", run_copy, "--force"]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", value]
    kill_when(args, lambda line: line.startswith(f"fine_tune epoch 2/{fine_tune_epochs}"))
    assert outputs(run_copy) == before
    no_half_written(run_copy)
    done_before = len(csv_epochs(run_copy / "checkpoints" / "logs" / "fine_tune.csv"))
    assert 2 <= done_before < fine_tune_epochs, "the kill must land mid fine-tuning"

    # A photo added after the start must not leak into the resumed run's splits.
    late = run_copy / "synthetic_data" / "circle" / "added_later.png"
    late.write_bytes((run_copy / "synthetic_data" / "circle" / "circle_0001.png").read_bytes())

    resumed = run_cli("train", "--out", str(run_copy), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "head phase already done" in resumed.stderr
    assert "reusing the run's splits" in resumed.stderr
    rerun = resumed.stderr.count("fine_tune epoch")
    assert fine_tune_epochs - done_before <= rerun <= fine_tune_epochs - done_before + 1
    history = json.loads((run_copy / "history.json").read_text())
    assert len(history["loss"]) == 2 + fine_tune_epochs and history["fine_tune_start_epoch"] == 2
    assert csv_epochs(run_copy / "logs" / "fine_tune.csv") == list(range(2, 2 + fine_tune_epochs))
    assert outputs(run_copy)["model.keras"] != before["model.keras"]
    assert not (run_copy / "model_int8.tflite").exists()  # stale once the model changed
    assert json.loads((run_copy / "config.json").read_text())["image_size"] == 32
    assert "added_later" not in (run_copy / "splits.json").read_text()
    no_half_written(run_copy)


def test_kill_after_fine_tuning_before_the_commit_resumes_without_retraining(tmp_path):
    """Keras deletes a phase's backups when it ends; a kill after fine-tuning, while the
    calibration is fitted, must not make --resume fine-tune again from the head."""
    run = tmp_path / "run"
    options = {**TINY, "epochs": 1, "fine_tune_epochs": 2, "image_size": 32}
    options["synthetic_per_class"] = 24
    args = ["train", "--out", run]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", value]
    seen = kill_when(args, lambda line: line.startswith("calibration: temperature"))
    assert sum(line.startswith("fine_tune epoch") for line in seen) == 2
    assert not (run / "config.json").exists()  # killed before the commit
    no_half_written(run)
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)

    resumed = run_cli("train", "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "fine-tune phase already done" in resumed.stderr
    assert "fine_tune epoch" not in resumed.stderr  # not one epoch trained again
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == 1 + 2 and history["fine_tune_start_epoch"] == 1
    assert csv_epochs(run / "logs" / "fine_tune.csv") == [1, 2]
    assert not list((run / "checkpoints").glob("*after_fine_tune*"))  # dropped at commit
    no_half_written(run)

    # Kept weights cut short (a disk that lost their end): fine-tune again, say so.
    kept = damaged / "checkpoints" / "after_fine_tune.weights.h5"
    kept.write_bytes(kept.read_bytes()[: kept.stat().st_size // 2])
    again = run_cli("train", "--out", str(damaged), "--resume")
    assert again.returncode == 0, again.stderr
    assert "could not read the fine-tuned weights" in again.stderr
    assert again.stderr.count("fine_tune epoch") == 2
    assert "Traceback" not in again.stderr


@pytest.mark.slow
def test_kill_export_keeps_the_previous_model(micro_copy):
    before = outputs(micro_copy)
    kill_when(
        ["export", micro_copy, "--force", "--no-validate"],
        lambda line: line.startswith("int8: calibrating"),
    )
    assert outputs(micro_copy) == before
    no_half_written(micro_copy)
    rerun = run_cli("export", str(micro_copy), "--force", "--no-validate")
    assert rerun.returncode == 0, rerun.stderr
    no_half_written(micro_copy)


@pytest.mark.slow
def test_kill_validate_keeps_the_previous_report(micro_copy):
    first = run_cli("validate", str(micro_copy))
    assert first.returncode == 0, first.stderr
    before = outputs(micro_copy)
    kill_when(["validate", micro_copy], lambda line: line.startswith("validating on"))
    assert outputs(micro_copy) == before
    no_half_written(micro_copy)
    rerun = run_cli("validate", str(micro_copy))
    assert rerun.returncode == 0, rerun.stderr


@pytest.fixture
def many_photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(400):
        Image.new("RGB", (64, 48), (i % 256, 90, 30)).save(folder / f"{i:04d}.png")
    return folder


def test_kill_classify_keeps_the_previous_output(micro_run, many_photos, tmp_path):
    previous = tmp_path / "out" / "preds.csv"
    previous.parent.mkdir()
    previous.write_text("path,label_1\nold.jpg,circle\n")
    before = outputs(previous.parent)
    model = micro_run / "model_int8.tflite"
    lines = []

    def tenth_image(line: str) -> bool:
        lines.append(line)
        return len(lines) >= 10

    args = ["classify", model, "--source", many_photos, "--output", previous, "--threads", "1"]
    kill_when(args, tenth_image, stream="stdout")
    assert outputs(previous.parent) == before
    no_half_written(previous.parent)
    # The rows classified before the kill are whole in the hidden partial file.
    (partial,) = [p for p in previous.parent.iterdir() if is_partial_name(p.name)]
    rows = list(csv.reader(partial.open(newline="")))
    assert len(rows) >= 11 and len({len(row) for row in rows}) == 1

    rerun = run_cli(*[str(a) for a in args], "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert len(previous.read_text().splitlines()) == 401
    assert [p.name for p in previous.parent.iterdir()] == ["preds.csv"]
