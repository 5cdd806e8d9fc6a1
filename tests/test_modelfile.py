"""edge.modelfile: labels and metadata travel inside the .tflite, readable with zipfile."""

import json
import zipfile

from edge.modelfile import embed_metadata, read_model_card


def test_embedded_metadata_round_trip_with_zipfile_only(tmp_path):
    flatbuffer = b"TFL3" + bytes(range(256)) * 4
    path = tmp_path / "m.tflite"
    path.write_bytes(embed_metadata(flatbuffer, {"quant": "int8", "image_size": 96}, ["a", "b"]))
    assert path.read_bytes().startswith(flatbuffer)  # the model bytes are untouched
    with zipfile.ZipFile(path) as archive:
        assert archive.read("labels.txt").decode() == "a\nb\n"
        assert json.loads(archive.read("edgetl.json"))["quant"] == "int8"
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
    card = read_model_card(path, 2)
    assert card.labels == ["a", "b"] and card.labels_source == "embedded"


def test_labels_txt_beside_then_indices(tmp_path):
    path = tmp_path / "plain.tflite"
    path.write_bytes(b"TFL3 no archive")
    assert read_model_card(path, 3).labels == ["0", "1", "2"]
    (tmp_path / "labels.txt").write_text("x\ny\nz\n")
    card = read_model_card(path, 3)
    assert card.labels == ["x", "y", "z"] and "labels.txt" in card.labels_source
