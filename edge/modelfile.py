"""What a ``.tflite`` file says about itself: labels, input size, normalisation.

edgetl appends a small zip archive to the TFLite flatbuffer (interpreters
ignore trailing bytes; ``zipfile`` finds an archive at the end of any file).
It holds ``labels.txt`` and ``edgetl.json``, so a device needs the one file
and the standard library to know what the model's outputs mean. Entries are
*stored*, not deflated: MediaPipe refuses compressed associated files.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from edge.errors import BadInput

METADATA_NAME = "edgetl.json"
LABELS_NAME = "labels.txt"


@dataclass
class ModelCard:
    """Everything the runner needs besides the interpreter."""

    labels: List[str]
    labels_source: str  # "embedded", "labels.txt beside the model" or "class indices"
    metadata: Dict[str, Any] = field(default_factory=dict)


def embed_metadata(tflite_bytes: bytes, metadata: Dict[str, Any], labels: List[str]) -> bytes:
    """Return ``tflite_bytes`` with ``labels.txt`` and ``edgetl.json`` appended as a zip."""
    buffer = io.BytesIO(tflite_bytes)
    buffer.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buffer, mode="a", compression=zipfile.ZIP_STORED) as archive:
        names = set(archive.namelist())
        if LABELS_NAME not in names:  # a second labels.txt would silently replace the first
            archive.writestr(LABELS_NAME, "\n".join(labels) + "\n")
        archive.writestr(METADATA_NAME, json.dumps(metadata, indent=2, sort_keys=True))
    return buffer.getvalue()


def read_embedded(path: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """The archive's ``edgetl.json`` plus ``labels`` from ``labels.txt``; None if absent."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            found: Dict[str, Any] = {}
            if METADATA_NAME in names:
                found.update(json.loads(archive.read(METADATA_NAME).decode("utf-8")))
            if LABELS_NAME in names:
                text = archive.read(LABELS_NAME).decode("utf-8")
                found["labels"] = [line.strip() for line in text.splitlines() if line.strip()]
            return found or None
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def read_labels_file(path: str | os.PathLike) -> List[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def read_model_card(model_path: str | os.PathLike, num_outputs: Optional[int] = None) -> ModelCard:
    """Labels and metadata: embedded first, then ``labels.txt`` beside, then indices."""
    embedded = read_embedded(model_path) or {}
    if embedded.get("labels"):
        card = ModelCard(list(embedded["labels"]), "embedded", embedded)
    else:
        beside = Path(model_path).with_name(LABELS_NAME)
        if beside.is_file():
            card = ModelCard(read_labels_file(beside), f"{beside}", embedded)
        elif num_outputs:
            card = ModelCard([str(i) for i in range(num_outputs)], "class indices", embedded)
        else:
            card = ModelCard([], "class indices", embedded)
    if num_outputs is not None and card.labels and len(card.labels) != num_outputs:
        raise BadInput(
            f"{model_path}: {len(card.labels)} labels ({card.labels_source}) but the model has "
            f"{num_outputs} outputs; export it again or fix {LABELS_NAME}"
        )
    return card
