"""`edgetl classify network.rpk --source camera`: the AI Camera's sensor runs the
network and the runner reads its scores through Picamera2's IMX500 helper.

This machine has no AI Camera, so a stand-in ``picamera2`` package (the calls
Picamera2's own classification example makes, and nothing else) hands over
frames whose metadata carries scores the test chose; everything after it is
edgetl's real session: labels, rows, answers, summary, timings and errors.
"""

import json
import os
import re

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, run_cli

FAKE_PICAMERA2 = '''
"""Stands in for python3-picamera2 on a Pi with the AI Camera."""
import json
import os

import numpy as np


def log(event, **data):
    with open(os.environ["FAKE_IMX500_LOG"], "a") as file:
        file.write(json.dumps({"event": event, **data}) + "\\n")


class Request:
    def __init__(self, index):
        self.index = index

    def make_array(self, name):
        return np.full((480, 640, 3), self.index % 256, dtype=np.uint8)

    def get_metadata(self):
        return {"frame": self.index}

    def release(self):
        log("release", frame=self.index)


class Picamera2:
    def __init__(self, camera_num=0):
        self.frames = 0
        log("open camera", num=camera_num)

    def create_preview_configuration(self, main, buffer_count=4):
        return {"main": main}

    def start(self, config):
        if os.environ.get("FAKE_IMX500_BUSY"):
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        log("start", format=config["main"]["format"])

    def capture_request(self):
        if self.frames == int(os.environ["FAKE_IMX500_FRAMES"]):
            raise RuntimeError("Camera frontend has timed out!")  # what an unplugged camera does
        self.frames += 1
        return Request(self.frames - 1)

    def stop(self):
        pass

    def close(self):
        log("close")
'''

FAKE_DEVICES = """
import json
import os

from picamera2 import log

SCORES = json.loads(os.environ["FAKE_IMX500_SCORES"])
UPLOAD_FRAMES = int(os.environ.get("FAKE_IMX500_UPLOAD", "2"))


class IMX500:
    def __init__(self, network_file):
        if os.environ.get("FAKE_IMX500_ABSENT"):
            raise RuntimeError("IMX500: Requested camera dev-node not found")
        if os.environ.get("FAKE_IMX500_UNPARSABLE"):
            import struct

            struct.unpack(">4sI", b"9464")  # what picamera2 meets in a truncated file
        log("load network", path=network_file)
        self.camera_num = 1

    def get_outputs(self, metadata, add_batch=False):
        frame = metadata["frame"]
        if frame < UPLOAD_FRAMES:
            return None  # the network is still being uploaded to the sensor
        return [list(SCORES[(frame - UPLOAD_FRAMES) % len(SCORES)])]

    @staticmethod
    def get_kpi_info(metadata):
        return (4.25, 0.5)
"""

LABELS = ["daisy", "dandelion", "roses", "sunflowers"]
SCORES = [
    [0.05, 0.85, 0.05, 0.05],  # dandelion, sure
    [0.40, 0.10, 0.30, 0.20],  # daisy, unsure
    [0.02, 0.03, 0.05, 0.90],  # sunflowers, sure
]


@pytest.fixture
def camera(tmp_path):
    """The stand-in stack on PYTHONPATH, and an export as a user packages it on the Pi:
    ``imx500-package -o out`` inside the export folder, labels.txt one folder up."""
    package = tmp_path / "fake" / "picamera2"
    (package / "devices").mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_PICAMERA2)
    (package / "devices" / "__init__.py").write_text(FAKE_DEVICES)
    export = tmp_path / "imx500"
    (export / "out").mkdir(parents=True)
    (export / "labels.txt").write_text("\n".join(LABELS) + "\n")
    network = export / "out" / "network.rpk"
    network.write_bytes(b"9464 stand-in: the sensor never reads it here")
    env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")]),
        "FAKE_IMX500_LOG": str(tmp_path / "camera.log"),
        "FAKE_IMX500_FRAMES": "8",
        "FAKE_IMX500_SCORES": json.dumps(SCORES),
    }
    return network, env, tmp_path


def _events(tmp_path):
    return [json.loads(line) for line in (tmp_path / "camera.log").read_text().splitlines()]


def test_sensor_scores_become_the_same_rows_answers_and_summary(camera):
    network, env, tmp_path = camera
    out = tmp_path / "rows.jsonl"
    result = run_cli(
        "classify", str(network), "--source", "camera", "--threshold", "0.5",
        "--output", str(out), env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "IMX500 sensor runs" in result.stderr and "AI Camera (IMX500)" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    classified = int(re.search(r"classified (\d+) image", result.stderr).group(1))
    skipped = re.search(r"(\d+) older camera frame\(s\) skipped", result.stderr)
    # 8 frames, the first 2 before the network was on the sensor (no output): 6 scored
    # frames, each classified or passed over for a newer one (live), never lost.
    assert 1 <= classified == len(rows)
    assert classified + int(skipped.group(1) if skipped else 0) == 6
    assert rows[-1]["path"] == "camera#000005"
    for row in rows:
        scores = SCORES[int(row["path"].rsplit("#", 1)[1]) % len(SCORES)]
        best = int(np.argmax(scores))
        assert row["top_k"][0]["label"] == LABELS[best]
        assert row["top_k"][0]["score"] == pytest.approx(scores[best], abs=1e-6)
        # --threshold 0.5: the unsure daisy frame is answered unknown, the others by class
        assert row["answer"] == (LABELS[best] if scores[best] >= 0.5 else "unknown")
    events = _events(tmp_path)
    names = [e["event"] for e in events]
    # As Picamera2's example: the network goes to the sensor before the camera opens,
    # on the camera the helper names; every request is released; the camera is closed.
    assert names.index("load network") < names.index("open camera")
    assert {"event": "open camera", "num": 1} in events
    assert names.count("release") == 8 and names[-1] == "close"
    assert {"event": "start", "format": "BGR888"} in events


def test_sensor_network_time_is_the_invoke_timing(camera):
    network, env, tmp_path = camera
    result = run_cli("classify", str(network), "--source", "camera", env=env)
    assert result.returncode == 0, result.stderr
    # the closing line's per-stage means: invoke is the sensor's own 4.25 ms per frame
    assert re.search(r"invoke 4\.25 ms", result.stderr), result.stderr


def test_labels_that_do_not_match_the_sensor_output_are_one_line(camera):
    network, env, tmp_path = camera
    (network.parent.parent / "labels.txt").write_text("daisy\ntulips\n")
    result = run_cli("classify", str(network), "--source", "camera", env=env)
    assert_one_line_error(result, 2, "4 scores", "2 classes", "labels.txt")


@pytest.mark.parametrize(
    "change, args, code, fragments",
    [
        ("zip", [], 2, ("zip archive", "imx500-package")),
        ("no labels", [], 2, ("labels.txt",)),
        ("missing", [], 2, ("no such file",)),
        (None, ["--source", "photos"], 2, ("--source camera",)),
        (None, ["--runtime", "tflite_runtime"], 2, ("--runtime", "sensor")),
        ("no camera", [], 3, ("did not take it",)),
        ("busy", [], 3, ("could not be started", "close other camera programs")),
        ("not a package", [], 2, ("not an IMX500 network package",)),
        ("folder", [], 2, ("a folder",)),
        ("unparsable", [], 2, ("not a network the AI Camera can load", "error")),
        ("no picamera2", [], 3, ("apt install imx500-all",)),
    ],
)
def test_mistakes_on_the_ai_camera_path_are_one_line(camera, change, args, code, fragments):
    network, env, tmp_path = camera
    if change == "zip":
        network.write_bytes(b"PK\x03\x04 packerOut.zip given as the network")
    elif change == "no labels":
        (network.parent.parent / "labels.txt").unlink()
    elif change == "missing":
        network.unlink()
    elif change == "no camera":
        env["FAKE_IMX500_ABSENT"] = "1"
    elif change == "busy":
        env["FAKE_IMX500_BUSY"] = "1"
    elif change == "not a package":
        network.write_bytes(b"\x00" * 64)
    elif change == "folder":
        network.unlink()
        network.mkdir()
    elif change == "unparsable":
        env["FAKE_IMX500_UNPARSABLE"] = "1"
    elif change == "no picamera2":
        env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    source = [] if "--source" in args else ["--source", "camera"]
    result = run_cli("classify", str(network), *source, *args, env=env)
    assert_one_line_error(result, code, *fragments)


def test_a_stop_request_ends_the_wait_for_the_sensors_first_output(tmp_path, monkeypatch):
    """Ctrl-C while the network is still uploading (no output yet) ends the stream there,
    and the camera is closed: the wait is not 5 minutes of frames."""
    from edge import sources

    events = []

    class Request:
        def make_array(self, name):
            return np.zeros((4, 4, 3), np.uint8)

        def get_metadata(self):
            return {}

        def release(self):
            events.append("release")

    class Camera:
        def __init__(self, num):
            pass

        def create_preview_configuration(self, main, buffer_count):
            return {}

        def start(self, config):
            pass

        def capture_request(self):
            return Request()

        def stop(self):
            pass

        def close(self):
            events.append("close")

    class Sensor:
        camera_num = 0

        def __init__(self, path):
            pass

        def get_outputs(self, metadata):
            return None  # still uploading, for ever

    monkeypatch.setattr(sources, "_imx500_helper", lambda: (Camera, Sensor))
    asked = []

    def stop_requested():
        asked.append(1)
        return "SIGINT" if len(asked) > 5 else ""

    network = tmp_path / "network.rpk"
    assert list(sources.sensor_frames(network, "camera", stop_requested)) == []
    assert events.count("release") == 5 and events[-1] == "close"


@pytest.mark.parametrize("command", ["bench", "info"])
def test_the_network_given_to_an_interpreter_command_names_classify(camera, command):
    """bench and info run a TFLite interpreter (as parity does, after its reference is
    read): a .rpk there is one line, exit 2, saying where it does run."""
    network, env, tmp_path = camera
    result = run_cli(command, str(network), env=env)
    assert_one_line_error(result, 2, "runs on its sensor", "--source camera")
