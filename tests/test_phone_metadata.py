"""Standard TFLite metadata: MediaPipe Tasks' ImageClassifier takes the exported file as is."""

import json
import zipfile

import numpy as np
import pytest

from edge.classifier import Classifier
from edge.image import list_images, load_rgb


def test_exported_int8_carries_standard_metadata_and_edgetl_card(micro_run):
    with zipfile.ZipFile(micro_run / "model_int8.tflite") as archive:
        names = [info.filename for info in archive.infolist()]
        assert names.count("labels.txt") == 1  # one labels file, the metadata's own
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        card = json.loads(archive.read("edgetl.json"))
    assert card["standard_metadata"] is True
    assert {"top1", "top1_drop_pts", "agreement"} <= set(card["parity"])  # validated at export


def test_mediapipe_image_classifier_agrees_with_the_edgetl_runner(tiny_run):
    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import BaseOptions, vision

    model = tiny_run / "model_int8.tflite"
    ours = Classifier(model)
    # 24 images across all five classes, already at the model's size so both
    # runners see identical pixels (MediaPipe would otherwise resize its own way).
    paths = list_images(tiny_run / "synthetic_data")[::16][:24]
    assert len(paths) == 24
    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(model)), max_results=1
    )
    matches = 0
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for path in paths:
            pixels = np.ascontiguousarray(load_rgb(path, ours.image_size))
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
            matches += (
                result.classifications[0].categories[0].category_name
                == ours.classify(pixels, 1)[0].label
            )
    assert matches == len(paths)


def test_mediapipe_names_the_out_of_class_answer_like_the_edgetl_runner(micro_run):
    """The micro run has the ``unknown`` output (trained with the default): MediaPipe
    reads the same K+1 labels from the standard metadata and ranks ``unknown`` the same
    way on flat colours far from every class."""
    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import BaseOptions, vision

    model = micro_run / "model_int8.tflite"
    ours = Classifier(model)
    assert ours.labels[-1] == "unknown" and ours.unknown_index == len(ours.labels) - 1
    size = ours.image_size
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 255)]
    frames = [np.full((size, size, 3), c, np.uint8) for c in colours]
    frames += [
        np.ascontiguousarray(load_rgb(p, size))
        for p in list_images(micro_run / "synthetic_data")[::40][:8]
    ]
    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(model)), max_results=1
    )
    names = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for pixels in frames:
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
            name = result.classifications[0].categories[0].category_name
            assert name == ours.classify(pixels, 1)[0].label
            names.append(name)
    assert names[:4] == ["unknown"] * 4  # far from every class, by name, in MediaPipe too


def test_validate_runtime_mediapipe_gates_a_phone_apps_decisions(micro_copy):
    """``validate --runtime mediapipe``: the held-out files through MediaPipe Tasks, in
    parity.json beside Keras with the same figures and gate, and how often MediaPipe
    decides as edgetl's own runner does on the same files."""
    pytest.importorskip("mediapipe")
    from conftest import edgetl_here

    result = edgetl_here("validate", micro_copy, "--runtime", "mediapipe")
    assert result.returncode == 0, result.stderr
    assert "MediaPipe decides as edgetl's runner does" in result.stderr
    parity = json.loads((micro_copy / "parity.json").read_text())
    (entry,) = parity["models"]
    assert entry["runtime"].startswith("mediapipe ")
    assert entry["device_path"]["n_images"] == parity["n_images"]  # every file read
    assert 0.0 <= entry["edgetl_runner_agreement"] <= 1.0
    assert entry["agreement"] >= 0.9 and parity["gate"]["passed"]  # the export's budget
    assert set(entry["worse_than_keras"]) == {"lost", "gained", "p_worse"}
    assert "as edgetl's runner does" in (micro_copy / "parity.md").read_text()


def test_validate_runtime_mediapipe_refuses_a_device_resize_in_one_line(micro_copy):
    from conftest import assert_one_line_error, edgetl_here

    result = edgetl_here(
        "validate", micro_copy, "--runtime", "mediapipe", "--device-resize", "nearest"
    )
    assert_one_line_error(result, 2, "--device-resize", "MediaPipe")
