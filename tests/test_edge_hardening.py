"""The device side under hostile files and faults: bounded work, exact labels, no silent loss."""

import csv
import io
import json
import os
import struct
import subprocess
import sys
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge import atomic
from edge.classify import classify_source
from edge.errors import BadInput
from edge.image import MAX_PIXELS, UnreadableImage, decode_rgb, load_many, load_rgb
from edge.modelfile import (
    check_card,
    embed_metadata,
    label_problem,
    read_embedded,
    read_model_card,
)
from edge.output import PredictionWriter, csv_cell
from edge.pipeline import Result, classify_frames
from edge.sources import Frame, Source
from tests.conftest import REPO, assert_one_line_error, run_cli

FLATBUFFER = b"TFL3" + bytes(range(256)) * 4  # stands in for a model where only the zip is read


def _partials(folder: Path):
    return [p.name for p in folder.iterdir() if atomic.is_partial_name(p.name)]


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A real 1x1 PNG whose IHDR (with a correct CRC) claims ``width``x``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    path.write_bytes(bytes(data))
    return path


def _with_member(model: bytes, name: str, write) -> bytes:
    """``model`` with one more archive member; a repeated name wins over the earlier one."""
    buffer = io.BytesIO(model)
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with archive.open(name, "w") as member:
            write(member)
    return buffer.getvalue()


def _card_model(path: Path, card_text: str, model: bytes = FLATBUFFER) -> Path:
    path.write_bytes(_with_member(model, "edgetl.json", lambda m: m.write(card_text.encode())))
    return path


class FakeClassifier:
    """Just what ``classify_frames`` uses of a Classifier: no interpreter needed."""

    image_size = 8
    resize = "bilinear"
    labels = ["cat", "dog"]
    unknown_index = None  # an older model: no out-of-class output, no answer floor
    floor = 0.0

    def set_input(self, pixels):
        assert pixels.shape == (8, 8, 3)

    def invoke(self):
        pass

    def output_probabilities(self):
        return np.array([0.75, 0.25], np.float32)


def _frame(name: str, image=None) -> Frame:
    return Frame(name, Image.new("RGB", (20, 20), (9, 9, 9)) if image is None else image)


# --- edge.atomic -------------------------------------------------------------------------------


def test_atomic_files_get_the_umask_mode_and_nothing_partial_is_left(tmp_path):
    previous = os.umask(0o022)
    try:
        written = [
            atomic.write_bytes(tmp_path / "model.tflite", b"model"),
            atomic.write_json(tmp_path / "report.json", {"a": 1}, durable=False),
            atomic.write_text(tmp_path / "labels.txt", "a\n"),
        ]
        with pytest.raises(RuntimeError), atomic.atomic_path(tmp_path / "report.json") as tmp:
            assert atomic.is_partial_name(tmp.name) and tmp.name.endswith(".json")
            tmp.write_text("half")
            raise RuntimeError("disk full")
    finally:
        os.umask(previous)
    assert [oct(p.stat().st_mode & 0o777) for p in written] == ["0o644"] * 3
    assert json.loads((tmp_path / "report.json").read_text()) == {"a": 1}  # the old one stays
    assert _partials(tmp_path) == []


def test_partial_names_are_recognised_and_final_names_are_not():
    final = Path("build/model_int8.tflite")
    made = atomic.partial_name(final)
    assert made.startswith(".model_int8.tflite.") and made.endswith(".partial.tflite")
    assert atomic.is_partial_name(made) and atomic.is_partial_name(atomic.partial_name(Path("x")))
    for name in ("model_int8.tflite", ".model.tflite.partial", ".bashrc", "a.partial.csv"):
        assert not atomic.is_partial_name(name), name
    # every suffix stays last: Keras's save_weights refuses a name not ending ".weights.h5"
    weights = atomic.partial_name(Path("checkpoints/after_fine_tune.weights.h5"))
    assert weights.endswith(".partial.weights.h5") and atomic.is_partial_name(weights)
    # what a kill left when only the last suffix was kept is still recognised as a partial
    assert atomic.is_partial_name(".after_fine_tune.weights.h5.0123456789ab.partial.h5")
    assert not atomic.is_partial_name(".after_fine_tune.weights.h5.0123456789ab.partial.csv")
    # a long dotted name the user chose still gets a temporary name the disk accepts
    for name in ("a." + "b" * 120 + ".csv", "c" * 200 + ".weights.h5", "run.2026.12.07.csv"):
        made = atomic.partial_name(Path(name))
        assert len(made.encode()) <= atomic.NAME_MAX and atomic.is_partial_name(made), made
        assert made.endswith(".csv") or made.endswith(".h5")
        assert atomic.name_too_long(Path(name)) is None
    # one no temporary name can fit beside is refused up front, saying how long it may be
    problem = atomic.name_too_long(Path("d" * 240 + ".csv"))
    assert problem and "at most 233 bytes" in problem


# --- edge.image --------------------------------------------------------------------------------


# pytest resets warning filters around each test, dropping edge.image's module-level one;
# the subprocess test below checks that a user never sees the warning.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_images_declaring_huge_sizes_are_skipped_and_listed_in_bounded_time(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (30, 30), (200, 0, 0)).save(good)
    hostile = [
        _png_declaring(tmp_path / "bomb.png", 70000, 70000),  # Pillow's own limit trips first
        _png_declaring(tmp_path / "just_over.png", 9500, 9500),  # 90.25 MP: ours
        _png_declaring(tmp_path / "long.png", 70000, 1),  # few pixels, absurd side
    ]
    start = time.perf_counter()
    pixels, kept, skipped = load_many([good, *hostile], 16)
    assert time.perf_counter() - start < 5
    assert kept == [0] and pixels.shape == (1, 16, 16, 3)
    assert [path for path, _ in skipped] == [str(p) for p in hostile]
    for path, problem in skipped:
        assert problem.startswith(f"{path}: too large to decode safely"), problem
        assert "resize it first" in problem and "\n" not in problem
    assert f"over the {MAX_PIXELS} pixel limit" in skipped[1][1]


def test_an_oversized_image_is_one_line_on_stderr_without_pillows_warning(tmp_path):
    bomb = _png_declaring(tmp_path / "big.png", 9500, 9500)
    code = (
        "import sys; from edge.image import load_many; "
        f"_, kept, skipped = load_many([{str(bomb)!r}], 16); print(len(skipped))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "1", result.stderr
    assert result.stderr == ""  # no DecompressionBombWarning paragraph


def test_any_decoder_exception_becomes_unreadable_naming_the_file(tmp_path, monkeypatch):
    from edge import image as edge_image

    path = tmp_path / "odd.jpg"
    Image.new("RGB", (10, 10)).save(path)

    def broken_exif(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(edge_image.ImageOps, "exif_transpose", broken_exif)
    with pytest.raises(
        UnreadableImage, match=r"odd.jpg: not a readable image \(struct.error: unpack"
    ):
        load_rgb(path, 8)
    _, kept, skipped = load_many([path], 8)
    assert kept == [] and skipped[0][0] == str(path)
    with pytest.raises(BadInput, match="no such file"):
        load_rgb(tmp_path / "gone.jpg", 8)


def test_a_large_jpeg_under_the_bound_still_decodes_at_reduced_scale(tmp_path):
    path = tmp_path / "large.jpg"
    Image.new("RGB", (9000, 9000), (10, 200, 30)).save(path, quality=80)  # 81 MP
    assert max(decode_rgb(path, 96).size) <= 9000 // 8  # JPEG draft: never a full decode
    pixels = load_rgb(path, 96)
    assert pixels.shape == (96, 96, 3) and abs(int(pixels[..., 1].mean()) - 200) < 6


# --- edge.modelfile: the card and the labels ---------------------------------------------------


@pytest.mark.parametrize(
    "card_text, fragment",
    [
        ("[]", "a JSON list, not an object"),
        ('{"labels": 3}', "labels is not a list of strings"),
        ('{"input": {"resize_filter": "bogus"}}', "resize_filter 'bogus'"),
        ('{"image_size": "96"}', "image_size '96'"),
        ("{not json", "not JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_a_bad_card_is_one_line_bad_input_naming_the_model(tmp_path, card_text, fragment):
    model = _card_model(tmp_path / "their.tflite", card_text)
    with pytest.raises(BadInput) as caught:
        read_model_card(model, 2)
    message = str(caught.value)
    assert message.startswith(f"{model}: its embedded card edgetl.json is not valid (")
    assert fragment in message and "edgetl export" in message and "\n" not in message


def test_check_card_accepts_what_export_writes_and_names_what_it_does_not():
    exported = {
        "quant": "int8",
        "io": "uint8",
        "labels": ["daisy", "rose"],
        "image_size": 96,
        "input": {"resize_filter": "bilinear", "range": [0, 255]},
        "train": {},
        "calibration": {"samples": 100},
        "parity": {"top1_drop_pts": 0.4},
        "float_layers": ["conv"],
        "edgetl_version": "0.1.0",
    }
    assert check_card(exported) is None and check_card({}) is None
    assert check_card({"image_size": 0}) == "image_size 0 is not a positive whole number"
    assert check_card({"image_size": True}) is not None
    assert check_card({"labels": ["a", 1]}) == "labels is not a list of strings"
    assert check_card({"quant": 8}) == "quant is not a string"
    assert check_card({"input": []}) == "input is not an object"
    assert check_card({"float_layers": "conv"}) == "float_layers is not a list"
    assert check_card({"parity": 1}) == "parity is not an object"
    assert "is not one of bilinear" in check_card({"input": {"resize_filter": ["x"]}})


def test_a_deflate_bomb_member_is_refused_fast(tmp_path):
    def hundred_megabytes_of_zeros(member):
        for _ in range(100):
            member.write(bytes(2**20))

    model = tmp_path / "bomb.tflite"
    model.write_bytes(_with_member(FLATBUFFER, "labels.txt", hundred_megabytes_of_zeros))
    assert model.stat().st_size < 2**20
    start = time.perf_counter()
    with pytest.raises(BadInput) as caught:
        read_model_card(model)
    assert time.perf_counter() - start < 2
    message = str(caught.value)
    assert (
        message
        == f"{model}: its embedded labels.txt is over 4 MiB; this is not a card edgetl wrote"
    )


def test_archives_with_many_entries_or_undecodable_text_are_refused(tmp_path):
    crowded = io.BytesIO(FLATBUFFER)
    crowded.seek(0, io.SEEK_END)
    with zipfile.ZipFile(crowded, "a") as archive:
        for i in range(65):
            archive.writestr(f"f{i}.txt", "x")
    path = tmp_path / "crowded.tflite"
    path.write_bytes(crowded.getvalue())
    with pytest.raises(BadInput, match="65 entries, over 64; this is not a card edgetl wrote"):
        read_embedded(path)
    latin = _with_member(FLATBUFFER, "labels.txt", lambda m: m.write("café\n".encode("latin-1")))
    (tmp_path / "latin.tflite").write_bytes(latin)
    with pytest.raises(BadInput, match="latin.tflite: its embedded labels.txt is not UTF-8"):
        read_embedded(tmp_path / "latin.tflite")
    (tmp_path / "plain.tflite").write_bytes(FLATBUFFER)
    assert read_embedded(tmp_path / "plain.tflite") is None  # no archive: a plain model


def test_labels_round_trip_exactly_and_label_problem_names_the_unsafe_ones(tmp_path):
    labels = ["daisy ", " rose", "tulip\u2028red", "x\x1cy", "", "sun\x85flower", "=cmd"]
    model = tmp_path / "m.tflite"
    model.write_bytes(embed_metadata(FLATBUFFER, {"quant": "int8"}, labels))
    card = read_model_card(model, len(labels))
    # Exact, except that what would break a line or drive a terminal comes back escaped.
    escaped = ["daisy ", " rose", "tulip\\u2028red", "x\\x1cy", "", "sun\\x85flower", "=cmd"]
    assert card.labels == escaped and card.labels_source == "embedded"

    problems = {name: label_problem(name) for name in labels}
    assert problems["=cmd"] is None  # CSV neutralises it; it round-trips
    assert "whitespace" in problems["daisy "] and "whitespace" in problems[" rose"]
    assert "U+2028 (LINE SEPARATOR)" in problems["tulip\u2028red"]
    assert "U+001C" in problems["x\x1cy"] and "U+0085" in problems["sun\x85flower"]
    assert problems[""] == "the name is empty"
    assert label_problem("tab\there") and label_problem("two\r\nlines")
    assert label_problem("Löwenzahn") is None and label_problem("sun flower") is None

    beside = tmp_path / "plain.tflite"
    beside.write_bytes(FLATBUFFER)
    (tmp_path / "labels.txt").write_bytes("café \r\n\r\nrose\u2028x\r\n\n\n".encode())
    assert read_model_card(beside, 3).labels == ["café ", "", "rose\\u2028x"]
    (tmp_path / "labels.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(BadInput, match="labels.txt: not UTF-8 text"):
        read_model_card(beside, 1)


# --- edge.output -------------------------------------------------------------------------------


def _result(path="a.jpg", label="cat", error=""):
    from edge.classifier import Prediction

    predictions = [] if error else [Prediction(0, label, 0.75)]
    return Result(path, predictions, error=error, label=label if not error else None)


def test_csv_cells_that_spreadsheets_would_run_are_neutralised_and_jsonl_is_exact(tmp_path):
    attack = "=cmd|' /C calc'!A0"
    rows = [_result(attack, "+SUM(1)"), _result("@x.jpg", error="-bad\tfile")]
    for name in ("p.csv", "p.jsonl"):
        with PredictionWriter(str(tmp_path / name), 1) as writer:
            for row in rows:
                writer.write(row)
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as file:
        header, first, second = list(csv.reader(file))
    assert first[0] == "'" + attack and first[1] == "'+SUM(1)" and first[2] == "0.750000"
    assert first[header.index("label")] == "'+SUM(1)"
    # Control characters are escaped too: a cell must not drive a terminal that shows it.
    assert second[0] == "'@x.jpg" and second[header.index("error")] == "'-bad\\tfile"
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert records[0]["path"] == attack and records[0]["top_k"][0]["label"] == "+SUM(1)"
    assert records[1]["error"] == "-bad\tfile"
    assert csv_cell("\rx") == "\\rx" and csv_cell("cat") == "cat" and csv_cell("") == ""


def test_an_existing_output_survives_an_aborted_run_and_is_replaced_on_close(tmp_path):
    out = tmp_path / "preds.jsonl"
    out.write_text("yesterday's predictions\n")
    writer = PredictionWriter(str(out), 3)
    writer.write(_result())
    (partial,) = _partials(tmp_path)
    assert '"a.jpg"' in (tmp_path / partial).read_text()  # flushed per row, beside the output
    assert out.read_text() == "yesterday's predictions\n"  # never truncated at open
    writer.abort()
    writer.close()  # after abort: nothing to commit
    writer.abort()
    assert out.read_text() == "yesterday's predictions\n" and _partials(tmp_path) == []

    with pytest.raises(KeyboardInterrupt), PredictionWriter(str(out), 3) as writer:
        writer.write(_result())
        raise KeyboardInterrupt
    assert out.read_text() == "yesterday's predictions\n" and _partials(tmp_path) == []

    previous = os.umask(0o022)
    try:
        with PredictionWriter(str(out), 3) as writer:
            writer.write(_result("b.jpg"))
        writer.close()
        writer.abort()  # after close: the committed file stays
    finally:
        os.umask(previous)
    assert json.loads(out.read_text())["path"] == "b.jpg" and _partials(tmp_path) == []
    assert out.stat().st_mode & 0o777 == 0o644


def test_output_paths_are_checked_before_anything_is_created(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "results": "is a folder; give a file name such as",
        tmp_path / "preds.txt": "use a .csv or .jsonl file name",
        tmp_path / "missing" / "preds.csv": "does not exist",
        tmp_path / "file" / "preds.csv": "is a file, not a folder",
    }
    for path, fragment in cases.items():
        with pytest.raises(BadInput, match=fragment) as caught:
            PredictionWriter(str(path), 3)
        assert str(caught.value).startswith(f"--output {path}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "results"]


# --- edge.pipeline and edge.classify -----------------------------------------------------------


@pytest.mark.parametrize("live", [False, True])
def test_an_error_in_the_decode_thread_is_raised_in_the_caller(live):
    failure = BadInput("camera:0: the camera stopped answering; check the cable")

    def frames():
        yield _frame("f0")
        yield _frame("f1")
        raise failure

    seen = []
    with pytest.raises(BadInput) as caught:
        for result in classify_frames(FakeClassifier(), frames(), k=1, live=live):
            seen.append(result.path)
    assert caught.value is failure and caught.value.exit_code == 2
    if not live:  # every frame decoded before the failure is delivered first
        assert seen == ["f0", "f1"]


class _Unresizable:
    """A frame object whose resize fails as a driver's odd buffer might."""

    size = (20, 20)

    def resize(self, *args):
        raise MemoryError("cannot allocate")


@pytest.mark.parametrize("odd", [_Unresizable(), Image.new("L", (20, 20))], ids=["raises", "gray"])
def test_a_frame_that_will_not_resize_is_an_error_row_and_the_stream_goes_on(odd):
    frames = [_frame("f0"), _frame("odd", odd), _frame("f2")]
    results = list(classify_frames(FakeClassifier(), iter(frames), k=1))
    assert [r.path for r in results] == ["f0", "odd", "f2"]
    assert results[1].error.startswith("odd: could not be resized (")
    assert results[1].predictions == [] and results[2].predictions[0].label == "cat"


def test_an_unknown_resize_filter_fails_once_before_any_frame():
    classifier = FakeClassifier()
    classifier.resize = "bogus"
    with pytest.raises(BadInput, match="resize 'bogus'"):
        next(classify_frames(classifier, iter([_frame("f0")]), k=1))


def test_a_folder_where_nothing_could_be_read_is_an_error_not_an_empty_result(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    _png_declaring(tmp_path / "b.png", 70000, 70000)
    paths = sorted(tmp_path.iterdir())
    with pytest.raises(BadInput) as caught:
        classify_source(FakeClassifier(), Source("folder", str(tmp_path), paths))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}: none of the 2 image(s) could be read (first: ")
    assert str(paths[0]) in message
    Image.new("RGB", (20, 20)).save(tmp_path / "c.png")
    summary = classify_source(
        FakeClassifier(), Source("folder", str(tmp_path), sorted(tmp_path.iterdir()))
    )
    assert summary.classified == 1 and len(summary.unreadable) == 2


# --- the real model ----------------------------------------------------------------------------


def test_a_tampered_real_model_is_refused_before_the_interpreter_runs(micro_run, tmp_path):
    from edge.classifier import Classifier

    real = (micro_run / "model_int8.tflite").read_bytes()

    def zeros(member):
        for _ in range(100):
            member.write(bytes(2**20))

    bomb = tmp_path / "bomb.tflite"
    bomb.write_bytes(_with_member(real, "labels.txt", zeros))
    start = time.perf_counter()
    with pytest.raises(BadInput, match="bomb.tflite: its embedded labels.txt is over 4 MiB"):
        Classifier(bomb)
    assert time.perf_counter() - start < 2

    bogus = _card_model(tmp_path / "bogus.tflite", '{"input": {"resize_filter": "bogus"}}', real)
    with pytest.raises(BadInput, match="bogus.tflite: its embedded card edgetl.json"):
        Classifier(bogus)

    classifier = Classifier(micro_run / "model_int8.tflite")
    assert classifier.resize == "bilinear"
    classifier.set_resize("nearest")
    assert classifier.resize == "nearest"
    with pytest.raises(BadInput, match="resize filter 'cubic' is not one edgetl knows"):
        classifier.set_resize("cubic")
    assert classifier.resize == "nearest"


def test_classify_on_a_folder_of_only_hostile_images_exits_2_in_one_line(micro_run, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _png_declaring(folder / "bomb.png", 70000, 70000)
    (folder / "empty.jpg").write_bytes(b"")
    result = run_cli("classify", str(micro_run / "model_int8.tflite"), "--source", str(folder))
    assert_one_line_error(result, 2, "none of the 2 image(s) could be read", "bomb.png")
