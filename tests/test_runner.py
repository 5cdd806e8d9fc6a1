"""The device runner on what users point it at: labeled folders, videos, cameras, kills."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, assert_one_line_error, run_cli


def _labeled_test_folder(micro_run, target):
    from toolchain.core.rundir import RunDir

    labels = (micro_run / "labels.txt").read_text().split()
    paths, indices = RunDir(micro_run).split_files("test")
    for path, index in zip(paths, indices):
        (target / labels[index]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / labels[index] / path.name)
    (target / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return target


def test_labeled_folder_accuracy_equals_validate_device_path(micro_run, tmp_path):
    from toolchain.core.options import ValidateOptions
    from toolchain.validate.command import validate

    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    folder = _labeled_test_folder(micro_run, tmp_path / "photos")
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
    report = validate(run, ValidateOptions(data=str(folder)), log=lambda m: None)
    assert accuracy == pytest.approx(report["models"][0]["device_path"]["top1"], abs=1e-4)
    assert "broken.jpg" in result.stderr and "1 unreadable" in result.stderr  # skipped and listed


def test_video_file_is_classified_frame_by_frame(micro_run, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from edge.image import list_images, load_rgb

    frames = list_images(micro_run / "synthetic_data" / "stripes")[:12]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (112, 112))
    for path in frames:
        writer.write(cv2.cvtColor(load_rgb(path, 112), cv2.COLOR_RGB2BGR))  # OpenCV wants BGR
    writer.release()
    out = tmp_path / "frames.jsonl"
    result = run_cli(
        "classify",
        str(micro_run / "model_int8.tflite"),
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


def test_missing_camera_with_a_real_model_is_exit_3(micro_run):
    pytest.importorskip("cv2")
    result = run_cli("classify", str(micro_run / "model_int8.tflite"), "--source", "camera:7")
    assert_one_line_error(result, 3, "camera 7")


def test_runner_writes_the_input_tensor_in_place(micro_run):
    from edge.classifier import Classifier

    classifier = Classifier(micro_run / "model_int8.tflite")
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    first = classifier.probabilities(pixels)
    assert np.array_equal(classifier.interpreter.tensor(classifier._input["index"])()[0], pixels)
    assert np.array_equal(classifier.probabilities(pixels), first)


FAKE_PICAMERA2 = '''
"""Stands in for the Pi camera stack (python3-picamera2): this machine has no camera module."""
import json
import os

import numpy as np
from PIL import Image

FRAME = np.asarray(Image.open(os.environ["FAKE_PICAMERA_FRAME"]).convert("RGB"))


def _log(event, **data):
    with open(os.environ["FAKE_PICAMERA_LOG"], "a") as log:
        log.write(json.dumps({"event": event, **data}) + "\\n")


class Picamera2:
    @staticmethod
    def global_camera_info():
        return [{"Model": "imx708", "Num": 0}]

    def __init__(self, camera_num=0):
        self.frames = 0
        _log("open", index=camera_num)

    def create_preview_configuration(self, main):
        return {"main": main}

    def configure(self, config):
        _log("configure", format=config["main"]["format"])

    def start(self):
        pass

    def capture_array(self, name="main"):
        if self.frames == 5:
            raise RuntimeError("Camera frontend has timed out!")  # what an unplugged module does
        self.frames += 1
        return FRAME  # libcamera's BGR888 is [R, G, B] per pixel in numpy

    def stop(self):
        pass

    def close(self):
        _log("close")
'''


def _top_scores(jsonl: Path):
    """Each row's (label, score) pairs: a swap can move a photo to another label (the
    out-of-class one included) at the same saturated score."""
    return [
        [(p["label"], p["score"]) for p in json.loads(line)["top_k"]]
        for line in jsonl.read_text().splitlines()
    ]


def test_pi_camera_module_through_picamera2(micro_run, tmp_path):
    """camera:0 on a Pi with picamera2 reads the camera module in RGB, frame by frame,
    and ends cleanly when it stops answering."""
    fake = tmp_path / "fake" / "picamera2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_PICAMERA2)
    frame = sorted((micro_run / "synthetic_data" / "triangle").glob("*.png"))[0]
    swapped = tmp_path / "swapped.png"
    Image.fromarray(np.asarray(Image.open(frame).convert("RGB"))[:, :, ::-1]).save(swapped)
    model = str(micro_run / "model_int8.tflite")
    log = tmp_path / "camera.log"
    env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")]),
        "FAKE_PICAMERA_FRAME": str(frame),
        "FAKE_PICAMERA_LOG": str(log),
    }
    out = tmp_path / "camera.jsonl"
    result = run_cli("classify", model, "--source", "camera", "--output", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert "camera 0 via picamera2" in result.stderr
    # Live: the model takes the newest frame, so this instant fake camera's five frames
    # are each either classified or counted as skipped, never lost, and the last is kept.
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    classified = int(re.search(r"classified (\d+) image", result.stderr).group(1))
    skipped = re.search(r"(\d+) older camera frame\(s\) skipped", result.stderr)
    assert (
        1 <= classified == len(rows) and classified + int(skipped.group(1) if skipped else 0) == 5
    )
    assert rows[-1]["path"] == "camera#000004"
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"event": "configure", "format": "BGR888"} in events and events[-1]["event"] == "close"

    expected = {}
    for name, image in (("direct", frame), ("swapped", swapped)):
        run_cli(
            "classify", model, "--source", str(image), "--output", str(tmp_path / f"{name}.jsonl")
        )
        expected[name] = _top_scores(tmp_path / f"{name}.jsonl")[0]
    assert expected["direct"] != expected["swapped"]  # a channel swap would show
    assert _top_scores(out) == [expected["direct"]] * classified


def test_live_handoff_gives_the_newest_frame_and_counts_the_rest():
    from edge.pipeline import _DONE, Latest

    mailbox = Latest()
    for frame in ("a", "b", "c"):
        mailbox.put(frame)
    assert mailbox.get() == "c" and mailbox.skipped == 2
    mailbox.put("d")
    mailbox.finish()  # the camera stopped: the frame waiting is still delivered
    assert mailbox.get() == "d" and mailbox.get() is _DONE and mailbox.skipped == 2


def test_show_without_a_display_is_one_line_and_exit_3(micro_run, tmp_path):
    result = run_cli(
        "classify",
        str(micro_run / "model_int8.tflite"),
        "--source",
        str(micro_run / "synthetic_data"),
        "--show",
        env={"DISPLAY": "", "WAYLAND_DISPLAY": ""},
    )
    assert_one_line_error(result, 3, "--show needs a display")


def test_annotate_draws_the_labels_and_keeps_the_frame():
    from edge.display import annotate

    frame = Image.new("RGB", (160, 120), (40, 160, 90))
    drawn = annotate(frame, ["daisy 0.91", "12.5 FPS"])
    assert drawn.shape == (120, 160, 3) and drawn.dtype == np.uint8
    assert (drawn[2:30, 2:60] != (40, 160, 90)).any()  # text band at the top left
    assert (drawn[100:, 100:] == (40, 160, 90)).all()  # the rest of the frame untouched
    assert np.asarray(frame)[0, 0].tolist() == [40, 160, 90]  # the frame itself is not modified


def _result(path, *scored, error=""):
    from edge.classifier import Prediction
    from edge.pipeline import Result

    predictions = [Prediction(i, label, score) for i, (label, score) in enumerate(scored)]
    return Result(path, predictions, error=error, image=Image.new("RGB", (64, 48)))


def test_session_reports_a_line_per_image_and_skipped_files():
    import io

    from edge.answer import Answer
    from edge.session import Reporter

    out, err = io.StringIO(), io.StringIO()
    reporter = Reporter(live=False, out=out, err=err)
    assert reporter(_result("a.jpg", ("daisy", 0.9123), ("tulips", 0.05)))
    unsure = _result("b.jpg", ("daisy", 0.4), ("tulips", 0.35))
    unsure.answer = Answer("unknown", 0.4, False)  # under the answer floor
    assert reporter(unsure)
    outside = _result("d.jpg", ("unknown", 0.9), ("daisy", 0.05))
    outside.answer = Answer("daisy", 0.05, True)  # --threshold 0: a class, flagged
    assert reporter(outside)
    assert reporter(_result("c.jpg", error="c.jpg: not a readable image"))
    assert out.getvalue().splitlines() == [
        "a.jpg: daisy 0.912, tulips 0.050",
        "b.jpg: unknown (daisy 0.400, tulips 0.350)",
        "d.jpg: daisy out-of-class (unknown 0.900, daisy 0.050)",
    ]
    assert err.getvalue() == "skipped: c.jpg: not a readable image\n"
    quiet_out = io.StringIO()
    Reporter(live=False, quiet=True, out=quiet_out, err=err)(_result("a.jpg", ("daisy", 0.9)))
    assert quiet_out.getvalue() == ""


def test_live_session_redraws_one_line_with_the_fps_and_draws_the_window():
    import io

    from edge.session import Reporter

    class FakeWindow:
        def __init__(self):
            self.frames, self.open = [], True

        def show(self, rgb):
            self.frames.append(rgb)
            return self.open

    ticks = iter([0.0, 0.5, 1.0, 2.0])  # the start, then one reading per frame
    out, err, window = io.StringIO(), io.StringIO(), FakeWindow()
    reporter = Reporter(live=True, window=window, out=out, err=err, clock=lambda: next(ticks))
    assert reporter(_result("camera#000000", ("daisy", 0.5)))
    assert reporter(_result("camera#000001", ("rose", 0.75)))
    window.open = False  # the user closed it: the session ends
    assert reporter(_result("camera#000002", ("rose", 0.75))) is False
    reporter.end()
    assert out.getvalue() == ""  # nothing per frame on stdout
    assert err.getvalue() == (
        "\r   2.0 FPS  daisy 0.500\033[K\r   2.0 FPS  rose 0.750\033[K"
        "\r   1.5 FPS  rose 0.750\033[K\n"
    )
    assert len(window.frames) == 3 and window.frames[0].shape == (48, 64, 3)


def test_session_closing_lines():
    from edge.classify import Summary
    from edge.session import closing_lines

    summary = Summary(classified=8, unreadable=["x.jpg"], seconds=2.0, labeled=4, correct=3)
    summary.stage_ms = {"decode": 1.0, "invoke": 2.5}
    summary.unknown_labels = {"cats": 2}
    notes, results = closing_lines(summary, Path("p.csv"), count_labels=True)
    assert notes == [
        "classified 8 image(s), 1 unreadable, 4.0 images/s (decode 1.00 ms  invoke 2.50 ms)"
        "; wrote p.csv",
        "note: folders not among the model's labels: cats",
    ]
    assert results == ["top-1 accuracy 0.7500 (3/4 labeled images)"]
    summary = Summary(classified=2, seconds=1.0, skipped=3)
    notes, results = closing_lines(summary, None, count_labels=True)
    assert notes == [
        "classified 2 image(s), 0 unreadable, 2.0 images/s ()"
        ", 3 older camera frame(s) skipped to stay live",
        "note: no image sat in a folder named like a label",
    ]
    assert results == [] and closing_lines(summary).results == []


def test_session_output_is_kept_only_when_the_session_ends_normally(micro_run, tmp_path):
    """A session that fails half-way leaves no --output file, and its window is closed;
    one that ends normally commits the file."""
    from edge.classifier import Classifier
    from edge.session import Reporter, run_session
    from edge.sources import open_source

    class FailingWindow:
        shown, closed = 0, False

        def show(self, rgb):
            self.shown += 1
            if self.shown == 2:
                raise RuntimeError("the display went away")
            return True

        def close(self):
            self.closed = True

    classifier = Classifier(micro_run / "model_int8.tflite")
    folder = str(micro_run / "synthetic_data" / "circle")
    output = tmp_path / "out" / "p.jsonl"
    output.parent.mkdir()
    window = FailingWindow()
    with pytest.raises(RuntimeError, match="display went away"):
        run_session(classifier, open_source(folder), Reporter(False, True, window), output=output)
    assert window.closed and list(output.parent.iterdir()) == []
    summary = run_session(classifier, open_source(folder), Reporter(False, True), output=output)
    assert len(output.read_text().splitlines()) == summary.classified > 0
