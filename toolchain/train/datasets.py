"""Where images come from, and which of them are train, val and test.

Every source ends as an image folder (``root/<class>/<file>``) so that the
same decoder (``edge.image.load_rgb``) serves training, calibration,
validation and the device:

- ``synthetic``: generated into the run directory (offline, seeded);
- ``tf_flowers`` / ``tfds:NAME``: tensorflow-datasets, written once to a cache
  folder as the dataset's original encoded bytes (no re-encoding loss);
- ``PATH``: the user's class folders.

Splits are stratified by class and seeded, and saved to ``splits.json``.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge.errors import BadInput, MissingEnvironment
from edge.image import is_image_name
from edge.modelfile import label_problem
from toolchain.core.quiet import tensorflow
from toolchain.train import synthetic

DEFAULT_TFDS = "tf_flowers"
# tfds downloads from Google Cloud Storage; probing it first turns tfds' ~200 s
# of retries on an offline machine into a clear error within seconds.
NETWORK_PROBE = ("storage.googleapis.com", 443)


def cache_root() -> Path:
    return Path(os.environ.get("EDGETL_CACHE", Path.home() / ".cache" / "edgetl"))


def check_data_spec(spec: str) -> None:
    """``--data`` names something edgetl can read (checked before anything is written)."""
    if not spec.strip():
        raise BadInput(
            "--data is empty; give a folder of class subfolders, 'synthetic' or 'tf_flowers'"
        )
    if spec == "synthetic" or spec == DEFAULT_TFDS:
        return
    if spec.startswith("tfds:"):
        if not spec[5:]:
            raise BadInput("--data tfds:NAME needs a dataset name, e.g. tfds:tf_flowers")
        return
    path = Path(spec)
    if not path.exists():
        raise BadInput(
            f"--data {spec}: no such folder; give a folder of class subfolders, "
            "'synthetic', 'tf_flowers' or 'tfds:NAME'"
        )
    if not path.is_dir():
        raise BadInput(f"--data {spec}: is a file; give a folder with one subfolder per class")


def data_folder(spec: str) -> Optional[Path]:
    """The user's own image folder named by ``--data``, or None for generated/tfds data."""
    if spec == "synthetic" or spec == DEFAULT_TFDS or spec.startswith("tfds:"):
        return None
    return Path(spec)


def resolve_data(spec: str, run_dir: Path, per_class: int, seed: int) -> Tuple[Path, str]:
    """Return the image-folder root for ``--data spec`` and a short description."""
    check_data_spec(spec)
    if spec == "synthetic":
        root = synthetic.folder_for(run_dir, per_class, seed)
        synthetic.generate(root, per_class=per_class, seed=seed)
        return root, f"synthetic ({per_class} images per class, seed {seed})"
    if spec == DEFAULT_TFDS or spec.startswith("tfds:"):
        name = spec.split(":", 1)[1] if spec.startswith("tfds:") else spec
        return materialize_tfds(name), f"tensorflow-datasets {name}"
    path = Path(spec)
    return path.resolve(), f"image folder {path}"


def class_name_problem(name: str) -> Optional[str]:
    """Why a class folder's name cannot be a label, or None. Labels travel through
    labels.txt (one per line), CSV and Markdown, and must come back byte for byte."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return label_problem(name)


def _real_path(path: Path, root: Path) -> Path:
    """Where ``path`` really is, refused in one line (exit 2) when it is a symbolic link
    that loops, leads nowhere, or leads outside ``root`` (the resolved ``--data``): a
    photo outside the folder would train a model on what the user never meant to give
    it, and a loop would list the same photos under every class."""
    try:
        real = path.resolve(strict=True)
    except RuntimeError:  # Python 3.11's "Symlink loop"
        raise BadInput(f"{path}: a symbolic link that loops; remove or fix it") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise BadInput(f"{path}: a symbolic link that loops; remove or fix it") from None
        raise BadInput(f"{path}: a symbolic link to nothing; remove or fix it") from None
    if real != root and root not in real.parents:
        raise BadInput(
            f"{path}: a symbolic link to {real}, outside --data {root}; copy the photos into "
            "the data folder or remove the link"
        )
    return real


def _image_files(folder: Path, root: Path, above: Tuple[Path, ...]) -> List[Tuple[Path, Path]]:
    """``(path under root, real path)`` of every image below ``folder``, links followed
    inside ``root``; ``above`` are the real folders walked down through, so a link back to
    one of them (or to the data folder itself) is refused as a loop."""
    found: List[Tuple[Path, Path]] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        # above[-1] is where ``folder`` really is, so a plain entry needs no resolving.
        real = _real_path(path, root) if entry.is_symlink() else above[-1] / entry.name
        if real.is_dir():
            if real in above or real == root:
                raise BadInput(
                    f"{path}: a symbolic link back to {real}, which holds it (a loop); remove it"
                )
            found += _image_files(path, root, (*above, real))
        elif real.is_file() and is_image_name(entry.name) and not entry.name.startswith("."):
            found.append((path, real))
    return found


def scan_class_folders(root: Path) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Class names (sorted folder names) and ``(relative path, label)`` of every image.

    Symbolic links are followed to real files inside ``root`` (see ``_real_path``),
    and each real file is listed once, under its first class and path in sorted
    order: the same photo reached by two names would otherwise land in two splits and
    be tested on what it trained on.
    """
    real_root = root.resolve()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BadInput(f"{root}: no class folders; put images in {root}/<class name>/")
    for name in classes:
        problem = class_name_problem(name)
        if problem:
            raise BadInput(
                f"{root}: class folder {name!r} {problem}, so its label would not survive "
                "labels.txt and the model file exactly; rename the folder"
            )
    items: List[Tuple[str, int]] = []
    empty = []
    seen: set = set()
    for label, name in enumerate(classes):
        folder = root / name
        real = _real_path(folder, real_root)
        if real == real_root:
            raise BadInput(
                f"{folder}: a symbolic link to the data folder itself (a loop: every photo "
                "would be in this class too); remove it"
            )
        files = []
        for path, real_file in _image_files(folder, real_root, (real,)):
            if real_file not in seen:
                seen.add(real_file)
                files.append(path)
        if not files:
            empty.append(name)
        items += [(p.relative_to(root).as_posix(), label) for p in files]
    if empty:
        raise BadInput(
            f"{root}: class folder(s) {', '.join(empty)} hold no images; add images or remove them"
        )
    if len(classes) < 2:
        raise BadInput(f"{root}: only one class ({classes[0]}); a classifier needs at least two")
    return classes, items


def split_items(
    items: Sequence[Tuple[str, int]], seed: int, val_fraction: float, test_fraction: float
) -> Dict[str, List[Tuple[str, int]]]:
    """Stratified, seeded split: every class is represented in every split when it can be."""
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise BadInput("val and test fractions must be in [0, 1) and sum to less than 1")
    rng = np.random.default_rng(seed)
    by_class: Dict[int, List[Tuple[str, int]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    splits: Dict[str, List[Tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        members = sorted(by_class[label])
        order = rng.permutation(len(members))
        members = [members[i] for i in order]
        n = len(members)
        n_test = max(1, int(round(n * test_fraction))) if n >= 3 else 0
        n_val = max(1, int(round(n * val_fraction))) if n >= 3 and val_fraction > 0 else 0
        splits["test"] += members[:n_test]
        splits["val"] += members[n_test : n_test + n_val]
        splits["train"] += members[n_test + n_val :]
    return splits


def network_reachable(address: Tuple[str, int] = NETWORK_PROBE, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def _suffix_for(encoded: bytes) -> str:
    if encoded[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if encoded[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if encoded[:4] == b"RIFF":
        return ".webp"
    if encoded[:2] == b"BM":
        return ".bmp"
    return ".png"


def materialize_tfds(name: str, data_dir: str | None = None) -> Path:
    """Write a tfds image-classification dataset to ``<cache>/tfds/<name>/<class>/``.

    Images are written as the dataset's original encoded bytes (SkipDecoding),
    into a temporary folder renamed into place, so an interrupted run never
    leaves a half dataset that looks complete.
    """
    target = cache_root() / "tfds" / name
    if (target / ".complete").is_file():
        return target

    tensorflow()
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise MissingEnvironment(
            f"tensorflow-datasets is not installed ({error}): pip install 'edgetl[train]'"
        ) from error
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises DatasetNotFoundError (a ValueError) and others
        raise BadInput(
            f"--data tfds:{name}: tensorflow-datasets has no dataset {name!r}"
        ) from error
    features = builder.info.features
    if (
        "image" not in features
        or "label" not in features
        or not hasattr(features["label"], "names")
    ):
        raise BadInput(f"--data tfds:{name}: not an image classification dataset (image + label)")
    class_names = list(features["label"].names)

    # Every split the dataset has (tf_flowers has only "train"); edgetl makes its own.
    split_names = list(builder.info.splits.keys()) or ["train"]

    def load():
        datasets = tfds.load(
            name,
            data_dir=data_dir,
            split=split_names,
            download=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        return dict(zip(split_names, datasets))

    try:
        splits = load()
    except AssertionError:  # tfds' way of saying "not downloaded yet"
        if not network_reachable():
            raise MissingEnvironment(
                f"--data {name}: the dataset is not in the tfds cache and the network is "
                f"unreachable; run `tfds build {name}` on a connected machine and copy "
                "~/tensorflow_datasets here, or pass --data PATH (a folder of class folders)"
            ) from None
        builder.download_and_prepare()
        splits = load()

    staging = target.with_name(f".{name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    for label_name in class_names:
        (staging / label_name).mkdir(parents=True, exist_ok=True)
    count = 0
    for split_name in sorted(splits):
        for index, example in enumerate(tfds.as_numpy(splits[split_name])):
            encoded = bytes(example["image"])
            label_name = class_names[int(example["label"])]
            path = staging / label_name / f"{split_name}_{index:06d}{_suffix_for(encoded)}"
            path.write_bytes(encoded)
            count += 1
    if count == 0:
        raise BadInput(f"--data tfds:{name}: the dataset has no examples")
    (staging / ".complete").write_text(f"{count} images\n")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    return target
