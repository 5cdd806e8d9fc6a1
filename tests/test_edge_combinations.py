"""The device runner where several things meet: a signal mid-session, files that change
under a folder being read, odd models, and text from someone else's model file.

Models are real TFLite files converted once per module from tiny TensorFlow
functions (a fixed batch of 2, an output of rank 3, four channels...), so no
test here waits for the tiny trained run. Signals go to a real ``edgetl``
process, sent once it has written a row (polled, never slept for).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
from PIL import Image

from edge import atomic
from edge.classify import classify_source
from edge.image import UnreadableImage, load_many, opened_image
from edge.modelfile import embed_metadata, printable
from edge.output import PredictionWriter
from edge.pipeline import Result
from edge.session import Reporter, run_session
from edge.sources import Source, open_source
from tests.conftest import REPO, assert_one_line_error, edgetl_here

SIZE = 16
LABELS = ["circle", "square", "triangle"]
HOSTILE_LABELS = ["\x1b[31mred", "a\rb", "\x07"]
CONTROL = [chr(c) for c in range(32) if chr(c) not in "\n"] + ["\x7f", "\x9b"]


def _convert(input_shape: List[int], head: Callable, out: Path, labels=None, card=None) -> Path:
    """A TFLite model of ``head(x)`` for a float32 input of ``input_shape``."""
    import tensorflow as tf

    module = tf.Module()
    module.model = tf.function(
        lambda x: head(tf, x), input_signature=[tf.TensorSpec(input_shape, tf.float32)]
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.model.get_concrete_function()], module
    )
    data = converter.convert()
    if labels is not None or card is not None:
        data = embed_metadata(data, card or {}, labels or [])
    out.write_bytes(data)
    return out


def _scores(tf, x, classes=3):
    """Mean colour times a fixed matrix, softmaxed: one score per class per image."""
    weights = tf.constant(np.arange(3 * classes, dtype=np.float32).reshape(3, classes) / 255.0)
    return tf.nn.softmax(tf.matmul(tf.reduce_mean(x[..., :3], axis=[1, 2]), weights))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    one = [1, SIZE, SIZE, 3]
    return {
        "good": _convert(one, _scores, folder / "good.tflite", LABELS),
        "plain": _convert(one, _scores, folder / "plain.tflite"),
        "hostile": _convert(
            one,
            _scores,
            folder / "hostile.tflite",
            HOSTILE_LABELS,
            {"quant": "\x1b]0;pwned\x07float32", "edgetl_version": "1\x1b[2J"},
        ),
        "batch of 2": _convert([2, SIZE, SIZE, 3], _scores, folder / "batch2.tflite"),
        "output of rank 3": _convert(
            one, lambda tf, x: tf.reshape(_scores(tf, x, 4), [1, 2, 2]), folder / "rank3.tflite"
        ),
        "four channels": _convert([1, SIZE, SIZE, 4], _scores, folder / "rgba.tflite"),
        "input of rank 3": _convert(
            [SIZE, SIZE, 3], lambda tf, x: _scores(tf, x[None]), folder / "rank3in.tflite"
        ),
        "labels not matching": _convert(one, _scores, folder / "fewer.tflite", LABELS[:2]),
    }


def _photos(folder: Path, count: int, size=(64, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, (40 * i % 256, 90, 30)).save(folder / f"{i:04d}.png")
    return folder


def _partials(folder: Path) -> List[Path]:
    return [p for p in folder.iterdir() if atomic.is_partial_name(p.name)]


def _rows(path: Path) -> List:
    """Every row of a CSV (header first) or every record of a JSONL, parsed strictly."""
    text = path.read_bytes().decode("utf-8")  # no newline translation: \r must show
    if path.suffix == ".csv":
        assert text.endswith("\r\n"), "the last row is cut off"
        rows = list(csv.reader(text.splitlines(keepends=True)))
        assert len({len(row) for row in rows}) == 1, "a row with missing cells"
        return rows
    assert text.endswith("\n"), "the last record is cut off"
    return [json.loads(line) for line in text.splitlines()]


# --- 1. Ctrl-C and SIGTERM keep what was classified -------------------------------------------


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str, limit=120):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"edgetl ended (exit {process.returncode}) before {what}")
        time.sleep(0.005)  # a polling interval, not a synchronisation
    raise AssertionError(f"no {what} within {limit} s")


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory) -> Path:
    """4,000 photos (hard links of 40 distinct ones): seconds of work at least."""
    folder = _photos(tmp_path_factory.mktemp("big") / "photos", 40, (320, 240))
    originals = sorted(folder.iterdir())
    for i in range(40, 4000):
        os.link(originals[i % 40], folder / f"{i:04d}.png")
    return folder


@pytest.mark.parametrize(
    "signum, suffix",
    [(signal.SIGINT, ".csv"), (signal.SIGINT, ".jsonl"), (signal.SIGTERM, ".csv")],
    ids=["sigint-csv", "sigint-jsonl", "sigterm-csv"],
)
def test_a_signal_mid_folder_keeps_every_finished_row_and_exits_130(
    models, big_folder, tmp_path, signum, suffix
):
    output = tmp_path / f"preds{suffix}"
    output.write_text("yesterday's predictions\n")
    command = [sys.executable, "-m", "toolchain.cli", "classify", str(models["good"])]
    command += ["--source", str(big_folder), "--output", str(output), "--threads", "1"]
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO)
        try:
            header = 1 if suffix == ".csv" else 0

            def a_row_written() -> bool:
                return any(
                    p.read_text(errors="replace").count("\n") > header for p in _partials(tmp_path)
                )

            _wait_for(a_row_written, process, "a row in the output")
            process.send_signal(signum)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    stderr = (tmp_path / "err.txt").read_text()
    assert code == 130, stderr
    assert "Traceback" not in stderr
    word = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"
    assert f"interrupted by {word}: {output} holds every image finished before it" in stderr
    assert stderr.strip().splitlines()[-1].startswith("edgetl: error: interrupted")
    rows = _rows(output)[1 if suffix == ".csv" else 0 :]
    assert 1 <= len(rows) < 4000, "the signal must land mid-folder"
    first = rows[0][0] if suffix == ".csv" else rows[0]["path"]
    assert first == str(big_folder / "0000.png")
    assert _partials(tmp_path) == []

    # The same --output again: a complete session replaces the interrupted one's rows.
    rerun = edgetl_here(
        "classify", models["good"], "--source", _photos(tmp_path / "few", 3), "--output", output
    )
    assert rerun.returncode == 0, rerun.stderr
    assert len(_rows(output)) == 3 + (1 if suffix == ".csv" else 0) and _partials(tmp_path) == []


class _FakeClassifier:
    """Just what a session uses of a Classifier; ``invoke`` can be made to raise."""

    image_size = 8
    resize = "bilinear"
    labels = ["cat", "dog"]
    unknown_index = None  # an older model: no out-of-class output, no answer floor
    floor = 0.0

    def __init__(self, fail_at: int = -1, failure: BaseException = KeyboardInterrupt()):
        self.calls, self.fail_at, self.failure = 0, fail_at, failure

    def set_input(self, pixels):
        pass

    def invoke(self):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.failure

    def output_probabilities(self):
        return np.array([0.75, 0.25], np.float32)


def test_a_keyboard_interrupt_anywhere_in_a_session_keeps_the_rows_before_it(tmp_path, capsys):
    """A Ctrl-C that is an exception (a second Ctrl-C, or where no handler could be
    set) rather than the handler's flag ends the session the same way."""
    folder = _photos(tmp_path / "photos", 6)
    output = tmp_path / "p.csv"
    reporter = Reporter(False, quiet=True)
    with pytest.raises(KeyboardInterrupt):
        run_session(_FakeClassifier(fail_at=4), open_source(str(folder)), reporter, output=output)
    assert [row[0] for row in _rows(output)[1:]] == [str(folder / f"{i:04d}.png") for i in range(3)]
    assert "interrupted by Ctrl-C (SIGINT)" in capsys.readouterr().err
    assert _partials(tmp_path) == []

    # Any other failure keeps the previous output and no partial file, as before.
    output.write_text("kept\n")
    with pytest.raises(RuntimeError):
        run_session(
            _FakeClassifier(2, RuntimeError("bug")),
            open_source(str(folder)),
            reporter,
            output=output,
        )
    assert output.read_text() == "kept\n" and _partials(tmp_path) == []


def test_a_row_cut_off_by_an_interruption_is_cut_from_the_committed_file(tmp_path, monkeypatch):
    from edge import output as output_module

    real_write = os.write
    rows = [Result(f"{i}.png", [], error=f"{i}.png: not a readable image") for i in range(3)]
    for name in ("p.csv", "p.jsonl"):
        writer = PredictionWriter(str(tmp_path / name), 1)
        writer.write(rows[0])
        writer.write(rows[1])

        def half_then_interrupt(descriptor, data):
            real_write(descriptor, bytes(data[: len(data) // 2]))
            raise KeyboardInterrupt

        monkeypatch.setattr(output_module.os, "write", half_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            writer.write(rows[2])
        monkeypatch.setattr(output_module.os, "write", real_write)
        writer.close(supersede=False)
        parsed = _rows(tmp_path / name)
        paths = (
            [row[0] for row in parsed[1:]] if name.endswith(".csv") else [r["path"] for r in parsed]
        )
        assert paths == ["0.png", "1.png"]
    assert _partials(tmp_path) == []


# --- 2. files that vanish or change after the folder was listed -------------------------------


def _spoil(paths: List[Path]) -> Dict[str, str]:
    """Delete one file, truncate one, replace one by garbage and one by a folder; return
    each spoiled path with a fragment of the reason it must be skipped for."""
    gone, cut, garbage, folder = paths[:4]
    gone.unlink()
    cut.write_bytes(cut.read_bytes()[:60])
    garbage.write_bytes(b"\x00not an image at all" * 10)
    folder.unlink()
    folder.mkdir()
    return {
        str(gone): "no such file",
        str(cut): "not a readable image",
        str(garbage): "not a readable image",
        str(folder): "not a readable image",
    }


def test_load_many_and_decode_to_file_skip_and_list_files_spoiled_after_listing(tmp_path):
    from toolchain.core.pixel_file import decode_to_file

    paths = sorted(_photos(tmp_path / "photos", 7).iterdir())
    spoiled = _spoil(paths)
    pixels, kept, skipped = load_many(paths, SIZE)
    rows, kept_rows, skipped_rows = decode_to_file(paths, SIZE, tmp_path)
    try:
        assert kept == kept_rows == [4, 5, 6] and len(pixels) == len(rows) == 3
        assert skipped == skipped_rows
        assert [path for path, _ in skipped] == list(spoiled)
        for path, reason in skipped:
            assert reason.startswith(f"{path}: {spoiled[path]}"), reason
    finally:
        rows.close()


def test_a_folder_spoiled_after_listing_is_classified_with_those_files_listed(
    models, tmp_path, monkeypatch
):
    """``classify --source DIR``: the listing is taken, then files go bad before they are
    decoded; each is one ``skipped:`` line and an error row, and the session exits 0."""
    import edge.sources

    folder = _photos(tmp_path / "photos", 7)
    real_list = edge.sources.list_images
    spoiled: Dict[str, str] = {}

    def list_then_spoil(root):
        listed = real_list(root)
        spoiled.update(_spoil(listed))
        return listed

    monkeypatch.setattr(edge.sources, "list_images", list_then_spoil)
    output = tmp_path / "p.csv"
    result = edgetl_here("classify", models["good"], "--source", folder, "--output", output)
    assert result.returncode == 0, result.stderr
    skipped_lines = [line for line in result.stderr.splitlines() if line.startswith("skipped:")]
    assert len(skipped_lines) == 4 and "classified 3 image(s), 4 unreadable" in result.stderr
    rows = _rows(output)
    errors = {row[0]: row[-1] for row in rows[1:] if row[-1]}
    assert sorted(errors) == sorted(spoiled)

    spoiled.clear()
    bench = edgetl_here(
        "bench", models["good"], "--runs", "2", "--source", _photos(tmp_path / "b", 7)
    )
    assert bench.returncode == 0, bench.stderr
    assert bench.stdout.count("skipped: ") == 4 and "folder: 3 images" in bench.stdout


# pytest resets warning filters around each test, dropping edge.image's module-level one.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bench_skips_a_decompression_bomb_as_classify_does(models, tmp_path):
    from tests.test_edge_hardening import _png_declaring

    folder = _photos(tmp_path / "photos", 3)
    bomb = _png_declaring(folder / "bomb.png", 70000, 70000)
    _png_declaring(folder / "just_over.png", 9500, 9500)
    with pytest.raises(UnreadableImage, match="too large to decode safely"), opened_image(bomb):
        pass
    for command in ("classify", "bench"):
        extra = ["--runs", "2"] if command == "bench" else []
        result = edgetl_here(command, models["good"], "--source", folder, *extra)
        assert result.returncode == 0, (command, result.stderr)
        shown = result.stdout + result.stderr
        assert shown.count("too large to decode safely") == 2, (command, shown)
    figures = tmp_path / "bench.json"
    edgetl_here("bench", models["good"], "--runs", "2", "--source", folder, "--json", figures)
    folder_figures = json.loads(figures.read_text())["folder"]
    assert folder_figures["images"] == 3 and folder_figures["unreadable"] == 2
    assert json.loads(figures.read_text())["label_image_loop"]["images"] == 3

    only_bombs = tmp_path / "bombs"
    only_bombs.mkdir()
    _png_declaring(only_bombs / "bomb.png", 70000, 70000)
    assert_one_line_error(
        edgetl_here("bench", models["good"], "--source", only_bombs), 2, "none of the 1 image(s)"
    )


# --- 4. models that are not one image in, one row of scores out -------------------------------


ODD = ["batch of 2", "output of rank 3", "four channels", "input of rank 3", "labels not matching"]
EXPECTED = {
    "batch of 2": "takes a batch of 2 images",
    "output of rank 3": "its output has shape [1, 2, 2], rank 3",
    "four channels": "its input has 4 channels",
    "input of rank 3": "its input has shape [16, 16, 3], rank 3",
    "labels not matching": "2 labels (embedded) but the model has 3 outputs",
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A well-formed parity reference, so parity gets as far as loading the model."""
    from edge.reference import FORMAT

    path = tmp_path_factory.mktemp("reference") / "parity_reference.json"
    image = {"keras": [0.5, 0.25, 0.25], "label": 0, "sha256": "0" * 64, "name": "a.png"}
    path.write_text(json.dumps({"format": FORMAT, "labels": LABELS, "images": [image]}))
    return path


@pytest.mark.parametrize("kind", ODD)
def test_an_odd_model_is_one_line_naming_it_and_what_is_expected(models, reference, tmp_path, kind):
    model = models[kind]
    photo = _photos(tmp_path / "photos", 1)
    commands = {
        "classify": ["classify", model, "--source", photo],
        "bench": ["bench", model, "--runs", "1"],
        "info": ["info", model],
        "parity": ["parity", model, "--reference", reference, "--source", photo],
    }
    for name, args in commands.items():
        line = assert_one_line_error(edgetl_here(*args), 2, str(model), EXPECTED[kind])
        if kind != "labels not matching":
            assert "input [1, H, H, 3]" in line and "output [1, N]" in line, (name, line)


# --- 5. text from someone else's model never drives the terminal ------------------------------


def test_printable_escapes_every_control_character_and_keeps_the_rest():
    assert printable("\x1b[31mred") == "\\x1b[31mred" and printable("a\rb") == "a\\rb"
    assert printable("\x07") == "\\x07" and printable("\x9b2J") == "\\x9b2J"
    assert printable("tulip\u2028red") == "tulip\\u2028red"
    assert printable("Löwenzahn 🌼 =cmd") == "Löwenzahn 🌼 =cmd"
    for char in CONTROL:
        assert not any(c in printable(f"x{char}y") for c in CONTROL)


def _assert_no_control(text: str, where: str) -> None:
    """No control character but the line ends (CSV's are ``\\r\\n``)."""
    found = sorted({repr(c) for c in text.replace("\r\n", "\n") if c in CONTROL})
    assert not found, f"{where} holds {found}"


def test_labels_and_card_text_from_a_model_reach_no_terminal_or_csv_raw(models, tmp_path):
    folder = _photos(tmp_path / "photos", 3)
    for suffix in (".csv", ".jsonl"):
        output = tmp_path / f"p{suffix}"
        result = edgetl_here("classify", models["hostile"], "--source", folder, "--output", output)
        assert result.returncode == 0, result.stderr
        _assert_no_control(result.stdout + result.stderr, f"classify's terminal ({suffix})")
        assert "\\x1b[31mred" in result.stdout
        _assert_no_control(output.read_bytes().decode("utf-8"), output.name)
    labels = {entry["label"] for row in _rows(tmp_path / "p.jsonl") for entry in row["top_k"]}
    assert labels == {"\\x1b[31mred", "a\\rb", "\\x07"}

    info = edgetl_here("info", models["hostile"])
    assert info.returncode == 0, info.stderr
    _assert_no_control(info.stdout + info.stderr, "info")
    assert "labels (embedded): \\x1b[31mred, a\\rb, \\x07" in info.stdout
    assert "quant: \\x1b]0;pwned\\x07float32" in info.stdout

    # The same labels in a labels.txt beside the model, and file names that carry them.
    beside = tmp_path / "beside"
    beside.mkdir()
    plain = beside / "m.tflite"
    plain.write_bytes(models["plain"].read_bytes())
    (beside / "labels.txt").write_text("\n".join(HOSTILE_LABELS) + "\n", encoding="utf-8")
    named = _photos(tmp_path / "named", 1)
    (named / "0000.png").rename(named / "\x1b[2Jevil.png")
    result = edgetl_here("classify", plain, "--source", named, "--output", tmp_path / "b.csv")
    assert result.returncode == 0, result.stderr
    _assert_no_control(result.stdout + result.stderr, "classify with labels.txt beside")
    _assert_no_control((tmp_path / "b.csv").read_bytes().decode("utf-8"), "b.csv")


def test_a_session_in_process_counts_the_interrupted_rows(tmp_path):
    """``classify_source`` ends at the row where ``stop_requested`` names a signal."""
    folder = _photos(tmp_path / "photos", 5)
    asked = []

    def stop_after_two() -> str:
        asked.append(1)
        return "SIGTERM" if len(asked) == 2 else ""

    summary = classify_source(
        _FakeClassifier(), Source("folder", str(folder), sorted(folder.iterdir())),
        stop_requested=stop_after_two,
    )  # fmt: skip
    assert summary.classified == 2 and summary.stopped_by == "SIGTERM" and summary.interrupted
