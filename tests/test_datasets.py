"""toolchain.train.datasets and synthetic: deterministic splits, clear errors on bad folders."""

import hashlib

import pytest
from PIL import Image

from edge.errors import BadInput
from toolchain.train import synthetic
from toolchain.train.datasets import scan_class_folders, split_items


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


def _photos(root, classes):
    """Tiny real image files under root/<class>/ (what the links below point at)."""
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_a_class_folder_linked_to_the_data_folder_is_refused_as_a_loop(tmp_path):
    root = _photos(tmp_path / "d", ["cats", "dogs"])
    (root / "zebras").symlink_to(root, target_is_directory=True)
    with pytest.raises(BadInput, match="zebras.*loop"):
        scan_class_folders(root)


def test_a_link_back_up_a_class_folder_is_refused_as_a_loop(tmp_path):
    root = _photos(tmp_path / "d", ["cats", "dogs"])
    (root / "cats" / "again").symlink_to(root / "cats", target_is_directory=True)
    with pytest.raises(BadInput, match="loop"):
        scan_class_folders(root)
    (root / "cats" / "again").unlink()
    (root / "cats" / "self.png").symlink_to(root / "cats" / "self.png")  # loops on itself
    with pytest.raises(BadInput, match="loops"):
        scan_class_folders(root)


def test_links_outside_the_data_folder_or_to_nothing_are_refused(tmp_path):
    outside = _photos(tmp_path / "elsewhere", ["birds"])
    root = _photos(tmp_path / "d", ["cats", "dogs"])
    (root / "birds").symlink_to(outside / "birds", target_is_directory=True)
    with pytest.raises(BadInput, match="outside --data"):
        scan_class_folders(root)
    (root / "birds").unlink()
    (root / "cats" / "x.png").symlink_to(outside / "birds" / "0.png")
    with pytest.raises(BadInput, match="outside --data"):
        scan_class_folders(root)
    (root / "cats" / "x.png").unlink()
    (root / "cats" / "gone.png").symlink_to(root / "nowhere.png")
    with pytest.raises(BadInput, match="to nothing"):
        scan_class_folders(root)


def test_links_inside_the_data_folder_are_followed_and_each_real_file_is_listed_once(tmp_path):
    root = _photos(tmp_path / "d", ["cats", "dogs"])
    (root / "dogs" / "more").symlink_to(root / "cats", target_is_directory=True)  # cats twice
    (root / "dogs" / "alias.png").symlink_to(root / "dogs" / "0.png")
    (root / "shared").mkdir()
    (root / "shared" / "0.png").symlink_to(root / "cats" / "1.png")
    Image.new("RGB", (8, 8)).save(root / "shared" / "1.png")
    labels, items = scan_class_folders(root)
    assert labels == ["cats", "dogs", "shared"]
    real = [(root / rel).resolve() for rel, _ in items]
    assert len(real) == len(set(real)) == 9  # 4 cats (again under dogs/more) + 4 dogs + 1
    assert [rel for rel, label in items if label == 2] == ["shared/1.png"]
    for split_seed in range(5):  # so no photo is in two splits, whatever the seed
        splits = split_items(items, split_seed, 0.2, 0.2)
        paths = [(root / rel).resolve() for part in splits.values() for rel, _ in part]
        assert len(paths) == len(set(paths))


def test_train_refuses_a_looping_class_folder_in_one_line_before_training(tmp_path):
    from tests.conftest import assert_one_line_error, run_cli

    root = _photos(tmp_path / "d", ["cats", "dogs"])
    (root / "zebras").symlink_to(root, target_is_directory=True)
    result = run_cli("train", "--data", str(root), "--out", str(tmp_path / "run"), timeout=120)
    assert_one_line_error(result, 2, "zebras", "loop")
    assert not (tmp_path / "run").exists()
