"""toolchain.datasets and synthetic: deterministic splits, clear errors on bad folders."""

import hashlib

import pytest
from PIL import Image

from edge.errors import BadInput
from toolchain import synthetic
from toolchain.datasets import scan_class_folders, split_items


def _digest(paths):
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_synthetic_is_deterministic_and_has_five_classes_in_jpeg_and_png(tmp_path):
    a = synthetic.generate(tmp_path / "a", per_class=6, seed=3)
    b = synthetic.generate(tmp_path / "b", per_class=6, seed=3)
    c = synthetic.generate(tmp_path / "c", per_class=6, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)
    labels, items = scan_class_folders(tmp_path / "a")
    assert labels == sorted(synthetic.CLASSES) and len(items) == 30
    assert {p.suffix for p in a} == {".jpg", ".png"}


def test_split_is_stratified_seeded_and_disjoint():
    items = [(f"c{c}/{i}.jpg", c) for c in range(3) for i in range(20)]
    first = split_items(items, seed=1, val_fraction=0.1, test_fraction=0.2)
    again = split_items(items, seed=1, val_fraction=0.1, test_fraction=0.2)
    other = split_items(items, seed=2, val_fraction=0.1, test_fraction=0.2)
    assert first == again and first["test"] != other["test"]
    all_items = first["train"] + first["val"] + first["test"]
    assert sorted(all_items) == sorted(items)
    for c in range(3):  # every class in every split
        assert sum(1 for _, label in first["test"] if label == c) == 4
        assert sum(1 for _, label in first["val"] if label == c) == 2


def _folder(root, classes):
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8)).save(root / name / f"{i}.png")
    return root


def test_empty_class_folder_is_named(tmp_path):
    root = _folder(tmp_path / "d", {"cats": 3, "dogs": 0})
    with pytest.raises(BadInput, match="dogs"):
        scan_class_folders(root)


def test_single_class_is_an_error(tmp_path):
    root = _folder(tmp_path / "d", {"cats": 3})
    with pytest.raises(BadInput, match="at least two"):
        scan_class_folders(root)
