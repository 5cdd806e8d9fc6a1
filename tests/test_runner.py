"""The device runner on what users point it at: labeled folders, videos, cameras, kills."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, assert_one_line_error, run_cli


def _labeled_test_folder(tiny_run, target):
    from toolchain.rundir import RunDir

    labels = (tiny_run / "labels.txt").read_text().split()
    paths, indices = RunDir(tiny_run).split_files("test")
    for path, index in zip(paths, indices):
        (target / labels[index]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / labels[index] / path.name)
    (target / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return target


def test_labeled_folder_accuracy_equals_validate_device_path(tiny_run, tmp_path):
    from toolchain.parity import validate

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    folder = _labeled_test_folder(tiny_run, tmp_path / "photos")
    result = run_cli(
        "classify",
        str(run / "model_int8.tflite"),
        "--source",
        str(folder),
        "--data-labels",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("top-1 accuracy"))
    accuracy = float(line.split()[2])
    report = validate(run, data=str(folder), log=lambda m: None)
    assert accuracy == pytest.approx(report["models"][0]["device_path"]["top1"], abs=1e-4)
    assert "broken.jpg" in result.stderr and "1 unreadable" in result.stderr  # skipped and listed


def test_video_file_is_classified_frame_by_frame(tiny_run, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from edge.image import list_images, load_rgb

    frames = list_images(tiny_run / "synthetic_data" / "stripes")[:12]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (112, 112))
    for path in frames:
        writer.write(cv2.cvtColor(load_rgb(path, 112), cv2.COLOR_RGB2BGR))  # OpenCV wants BGR
    writer.release()
    out = tmp_path / "frames.jsonl"
    result = run_cli(
        "classify",
        str(tiny_run / "model_int8.tflite"),
        "--source",
        str(video),
        "--output",
        str(out),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == [f"{video}#{i:06d}" for i in range(12)]
    # Colour order matters: stripes are yellow, so a BGR mix-up would read as another class.
    assert sum(r["top_k"][0]["label"] == "stripes" for r in records) >= 9


def test_missing_model_is_checked_before_the_camera():
    assert_one_line_error(
        run_cli("classify", str(REPO / "missing.tflite"), "--source", "camera"), 2, "missing.tflite"
    )


def test_missing_camera_with_a_real_model_is_exit_3(tiny_run):
    pytest.importorskip("cv2")
    result = run_cli("classify", str(tiny_run / "model_int8.tflite"), "--source", "camera:7")
    assert_one_line_error(result, 3, "camera 7")


def test_output_is_complete_up_to_the_last_image_after_a_kill(tiny_run, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    source = sorted((tiny_run / "synthetic_data" / "circle").glob("*.png"))[0]
    for i in range(4000):
        os.symlink(source, folder / f"{i:05d}.png")
    out = tmp_path / "preds.jsonl"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toolchain.cli",
            "classify",
            str(tiny_run / "model_int8.tflite"),
            "--source",
            str(folder),
            "--output",
            str(out),
            "--quiet",
            "--threads",
            "1",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while (
        (not out.exists() or out.stat().st_size < 20_000)
        and process.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    lines = out.read_text().splitlines()
    assert 50 < len(lines) < 4000, "the kill must land mid-run"
    records = [json.loads(line) for line in lines]  # every written line is whole
    assert [r["path"] for r in records] == [
        str(folder / f"{i:05d}.png") for i in range(len(records))
    ]


def test_runner_writes_the_input_tensor_in_place(tiny_run):
    from edge.classifier import Classifier

    classifier = Classifier(tiny_run / "model_int8.tflite")
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    first = classifier.probabilities(pixels)
    assert np.array_equal(classifier.interpreter.tensor(classifier._input["index"])()[0], pixels)
    assert np.array_equal(classifier.probabilities(pixels), first)
