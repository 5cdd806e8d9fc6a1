"""tfds sources: the real loading code, fed by tfds' own mock_data (no network here)."""

import pytest

from edge.image import list_images, load_rgb


def test_tfds_dataset_is_written_as_a_class_folder_of_original_bytes(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    from toolchain.train.datasets import materialize_tfds, scan_class_folders

    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    with tfds.testing.mock_data(num_examples=60):
        root = materialize_tfds("tf_flowers")
    labels, items = scan_class_folders(root)
    assert labels == sorted(["dandelion", "daisy", "tulips", "sunflowers", "roses"])
    assert len(items) == 60
    images = list_images(root)
    assert load_rgb(images[0], 32).shape == (32, 32, 3)
    assert (root / ".complete").is_file()
    # A second call reuses the cache instead of touching tfds again.
    assert materialize_tfds("tf_flowers") == root
