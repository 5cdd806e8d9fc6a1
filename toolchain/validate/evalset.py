"""The held-out images ``edgetl validate`` measures on, decoded once.

The run's test split by default, or any labeled folder (``--data``); both go
through the training decoder (``edge.image.load_many``), so Keras and the
tensor-level TFLite figures see the same pixels. They are decoded to a file
(``toolchain.core.pixel_file``), so a folder of any size validates in bounded
memory. Files that cannot be read are listed, never counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from edge.errors import BadInput
from edge.image import list_images
from toolchain.core.pixel_file import Rows, decode_to_file
from toolchain.core.rundir import RunDir
from toolchain.core.text import few, single_line

# What --model accepts: exported models, and the full-INT8 one --auto-fallback set aside.
MODEL_SUFFIXES = (".tflite", ".tflite.rejected")


@dataclass
class EvalSet:
    paths: List[str]
    labels: np.ndarray
    pixels: Rows  # decoded to a file in the run folder, read back a batch at a time
    description: str
    skipped: List[Any]
    missing_classes: List[str]


def check_model_paths(models: Sequence[str | Path]) -> List[Path]:
    """Each ``--model`` names an existing .tflite file (a folder or a .keras is a typo).

    ``.tflite.rejected`` counts too: export validates the full-INT8 model that
    ``--auto-fallback`` set aside beside the mixed one.
    """
    paths = []
    for model in models:
        path = Path(model)
        shown = single_line(path)
        if path.is_dir():
            raise BadInput(
                f"--model {shown}: is a folder; give a .tflite file, e.g. {shown}/model_int8.tflite"
            )
        if not path.exists():
            raise BadInput(f"--model {shown}: no such file; give the path of an exported .tflite")
        if not path.is_file():
            raise BadInput(f"--model {shown}: not a regular file; give an exported .tflite file")
        if not path.name.lower().endswith(MODEL_SUFFIXES):
            raise BadInput(
                f"--model {shown}: not a .tflite file; give a model written by `edgetl export`"
            )
        paths.append(path)
    return paths


def labeled_folder(folder: Path, labels: Sequence[str]) -> tuple:
    """Paths and label indices of ``folder/<class>/…``, matching class folders by name.

    A folder that names no label is an error (a typo would silently shrink the
    test); a label with no folder is only reported (a user's photos may cover
    a few classes).
    """
    shown = single_line(folder)
    if not folder.is_dir():
        raise BadInput(f"--data {shown}: no such folder of class folders")
    try:
        classes = sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
    except OSError as error:
        raise BadInput(
            f"--data {shown}: cannot be listed ({error.strerror}); check its permissions"
        ) from None
    unknown = [name for name in classes if name not in labels]
    if unknown:
        raise BadInput(
            f"--data {shown}: folder(s) {few(unknown)} match no label of the model "
            f"{few(labels)}; rename or remove them"
        )
    paths, indices = [], []
    for name in classes:
        for path in list_images(folder / name):
            paths.append(path)
            indices.append(labels.index(name))
    if not paths:
        raise BadInput(f"--data {shown}: no images in its class folders")
    missing = [name for name in labels if name not in classes]
    return paths, indices, missing


def load_eval_set(run: RunDir, data: Optional[str], size: int, labels: List[str]) -> EvalSet:
    """The held-out images, decoded once with the training preprocessing."""
    missing: List[str] = []
    if data:
        paths, indices, missing = labeled_folder(Path(data), labels)
        description = f"labeled folder {data}"
    else:
        paths, indices = run.split_files("test", len(labels))
        description = "test split of the run"
    pixels, kept, skipped = decode_to_file(paths, size, run.path, "validate")
    return EvalSet(
        [str(paths[i]) for i in kept],
        np.array([indices[i] for i in kept], dtype=np.int64),
        pixels,
        description,
        skipped,
        missing,
    )
