"""The run directory: the unit a user moves between steps and machines.

Every step reads what earlier steps wrote here instead of re-guessing:

    config.json      every training option, labels, image size, input contract
    labels.txt       one class name per line, in output order
    splits.json      which image files are train / val / test (seeded)
    model.keras      the trained Keras model (raw 0–255 RGB in, probabilities out)
    history.json     per-epoch metrics of both phases
    model_<quant>.tflite, export_report.json, parity.json, parity.md
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

from edge.errors import BadInput


class RunDir:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    # File names in one place.
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def labels_file(self) -> Path:
        return self.path / "labels.txt"

    @property
    def splits(self) -> Path:
        return self.path / "splits.json"

    @property
    def model(self) -> Path:
        return self.path / "model.keras"

    @property
    def history(self) -> Path:
        return self.path / "history.json"

    @property
    def parity(self) -> Path:
        return self.path / "parity.json"

    def tflite(self, quant: str) -> Path:
        return self.path / f"model_{quant}.tflite"

    def tflite_models(self) -> List[Path]:
        return sorted(self.path.glob("model_*.tflite"))

    def require_trained(self) -> RunDir:
        """Fail with one line when this is not a finished training run."""
        if not self.path.is_dir():
            raise BadInput(
                f"{self.path}: no such run directory; run `edgetl train --out {self.path}` first"
            )
        for needed in (self.config, self.splits, self.model):
            if not needed.is_file():
                raise BadInput(
                    f"{self.path}: {needed.name} is missing, so this is not a finished training run; "
                    f"run `edgetl train --out {self.path}`"
                )
        return self

    def read_config(self) -> Dict[str, Any]:
        return _read_json(self.config)

    def read_splits(self) -> Dict[str, Any]:
        return _read_json(self.splits)

    def labels(self) -> List[str]:
        return list(self.read_config()["labels"])

    def split_files(self, name: str) -> Tuple[List[Path], List[int]]:
        """Absolute paths and label indices of one split (``train``, ``val``, ``test``)."""
        splits = self.read_splits()
        root = self.data_root(splits)
        entries = splits[name]
        return [root / rel for rel, _ in entries], [int(label) for _, label in entries]

    def data_root(self, splits: Dict[str, Any]) -> Path:
        """The dataset folder: relative to the run first (a moved run keeps its data)."""
        relative = splits.get("root_relative")
        if relative is not None and (self.path / relative).is_dir():
            return (self.path / relative).resolve()
        absolute = Path(splits["root"])
        if absolute.is_dir():
            return absolute
        raise BadInput(
            f"{self.path}: the dataset folder {absolute} is gone; restore it or pass --data PATH"
        )


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise BadInput(f"{path}: missing") from error
    except json.JSONDecodeError as error:
        raise BadInput(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
