"""The run directory: the unit a user moves between steps and machines.

Every step reads what earlier steps wrote here instead of re-guessing:

    .edgetl-run      marker: only edgetl writes it, so only a marked folder counts as a run
    config.json      every training option, labels, image size, input contract
    labels.txt       one class name per line, in output order
    splits.json      which image files are train / val / test (seeded)
    model.keras      the trained Keras model (raw 0–255 RGB in, probabilities out)
    history.json     per-epoch metrics of both phases
    model_<quant>.tflite, export_report.json, parity.json, parity.md

The names below are the only files edgetl ever removes from a run, and only
from a marked one: ``--force`` deletes by exact name, never by pattern, so a
file a user keeps in their run folder survives every edgetl command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edge.errors import BadInput
from toolchain.core import runjson
from toolchain.core.options import QUANT_MODES
from toolchain.core.quiet import keras as import_keras
from toolchain.core.runjson import read_json_object

MARKER = ".edgetl-run"
CONFIG = "config.json"  # the contract between steps; written last
# Written by training, replaced as a set when a run is trained again.
TRAINING_FILES = (
    CONFIG,
    "labels.txt",
    "splits.json",
    "model.keras",
    "history.json",
    "train_report.json",
    "training_curves.png",
    "confusion_val.png",
    "reliability.png",
)
EXPORT_LOG = "export.log"  # the converters' C++ output, kept rather than printed
PARITY_PICTURES = {
    "risk_coverage": "risk_coverage.png",
    "confusion": "parity_confusion.png",
    "per_class": "parity_per_class.png",
    "disagreements": "parity_disagreements.png",
}
# Derived from the trained model: stale (and removed) once the model is replaced.
MODEL_NAMES = tuple(f"model_{quant}.tflite" for quant in (*QUANT_MODES, "int8_mixed"))
DERIVED_FILES = (
    *MODEL_NAMES,
    *(f"{name}.rejected" for name in MODEL_NAMES),
    "export_report.json",
    EXPORT_LOG,
    "parity.json",
    "parity.md",
    "parity_reference.json",
    *PARITY_PICTURES.values(),
)
# Export's folders (toolchain/export/transaction.py): the one it stages in, and the
# files of the last export that shipped nothing. Derived too: removed whole with them.
EXPORT_STAGING = ".export-staging"
EXPORT_REJECTED = "rejected"
# `export --target imx500` (toolchain/export/imx500/): the AI Camera's files,
# and the folder the converter's worker writes in until they are judged.
IMX500_EXPORT = "imx500"
IMX500_STAGING = ".imx500-staging"
IMX500_REJECTED = "rejected-imx500"  # the files of the last IMX500 export that missed
IMX500_PREVIOUS = ".imx500-previous"  # the export being replaced, until the new one is in
DERIVED_FOLDERS = (
    EXPORT_STAGING, EXPORT_REJECTED, IMX500_EXPORT, IMX500_STAGING, IMX500_REJECTED,
    IMX500_PREVIOUS,
)  # fmt: skip
# Training's own working state: folders edgetl creates inside a run and owns whole.
CHECKPOINTS = "checkpoints"
LOGS = "logs"
LOG_FILES = ("head.csv", "fine_tune.csv")
TENSORBOARD = "tensorboard"
SETUP_FILES = ("options.json", "splits.json")  # in checkpoints/: what a resume starts from


class RunDir:
    """A run directory's layout: every file name of a run is spelled here only.

    Training writes its files into a staging folder with the same layout
    (``RunDir(staged)``) and commits them into the run at the end.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    # File names in one place.
    @property
    def marker(self) -> Path:
        return self.path / MARKER

    @property
    def config(self) -> Path:
        return self.path / CONFIG

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

    @property
    def parity_reference(self) -> Path:
        """Keras's answers per held-out image, for ``edgetl parity`` on the device."""
        return self.path / "parity_reference.json"

    @property
    def parity_markdown(self) -> Path:
        return self.path / "parity.md"

    @property
    def export_report(self) -> Path:
        return self.path / "export_report.json"

    @property
    def train_report(self) -> Path:
        return self.path / "train_report.json"

    @property
    def training_curves(self) -> Path:
        return self.path / "training_curves.png"

    @property
    def confusion_val(self) -> Path:
        return self.path / "confusion_val.png"

    @property
    def reliability(self) -> Path:
        """The reliability diagram of the test split, before and after calibration."""
        return self.path / "reliability.png"

    @property
    def export_log(self) -> Path:
        return self.path / EXPORT_LOG

    def parity_picture(self, name: str) -> Path:
        """``confusion``, ``per_class``, ``disagreements`` (``parity_<name>.png``) or
        ``risk_coverage`` (``validate --unknown-data``)."""
        return self.path / PARITY_PICTURES[name]

    @property
    def saved_options(self) -> Path:
        """The options a started run was given, for ``--resume``."""
        return self.checkpoints / SETUP_FILES[0]

    @property
    def saved_splits(self) -> Path:
        """The splits a started run drew, for ``--resume`` (new photos stay out)."""
        return self.checkpoints / SETUP_FILES[1]

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    def tflite(self, quant: str) -> Path:
        return self.path / f"model_{quant}.tflite"

    def tflite_models(self) -> List[Path]:
        """The run's exported models, by their exact names (nothing a user added)."""
        return [self.path / name for name in MODEL_NAMES if (self.path / name).is_file()]

    @property
    def retrain(self) -> str:
        """The fix for a damaged training file: train this run again."""
        return f"train again with `edgetl train --out {self.path} --force`"

    def is_marked(self) -> bool:
        return self.marker.is_file()

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
        if self.committing():
            raise BadInput(
                f"{self.path}: a training run was stopped while it put its files in place; "
                f"finish it first with `edgetl train --out {self.path} --resume`"
            )
        self.read_config()  # a damaged config is named now, not as a KeyError later
        return self

    def committing(self) -> bool:
        """A kill fell between a new run's renames: config and model may not match."""
        state = runjson.read_state(self.checkpoints / "state.json", self.path)
        return state.get("installing") is not None

    def read_config(self) -> Dict[str, Any]:
        """config.json, checked for the keys every later step reads."""
        config = read_json_object(self.config, self.retrain)
        labels = config.get("labels")
        options = config.get("options")
        size = config.get("image_size")
        problem = None
        if (
            not isinstance(labels, list)
            or len(labels) < 2
            or not all(isinstance(x, str) for x in labels)
        ):
            problem = "'labels' is not a list of at least two class names"
        elif not isinstance(size, int) or isinstance(size, bool) or not 32 <= size <= 4096:
            problem = "'image_size' is not a whole number of pixels from 32 to 4096"
        elif not isinstance(options, dict):
            problem = "'options' is not an object"
        if problem:
            raise BadInput(
                f"{self.config}: {problem}; it was not written by edgetl train or was edited: "
                f"train again with `edgetl train --out {self.path} --force`"
            )
        return config

    def read_splits(self, path: Optional[Path] = None) -> Dict[str, Any]:
        """splits.json (or the in-progress copy a resumed run reads), checked for shape."""
        path = path or self.splits
        return runjson.read_checked(path, runjson.check_splits, self.retrain)

    def labels(self) -> List[str]:
        return list(self.read_config()["labels"])

    def split_files(
        self, name: str, n_classes: Optional[int] = None
    ) -> Tuple[List[Path], List[int]]:
        """Absolute paths and label indices of one split (``train``, ``val``, ``test``).

        With ``n_classes``, each index must be a class of config.json: an index past
        the labels (splits.json from another run) would otherwise surface as an
        IndexError deep in the metrics.
        """
        splits = self.read_splits()
        root = self.data_root(splits)
        entries = splits[name]
        paths, indices = [root / rel for rel, _ in entries], [lab for _, lab in entries]
        bad = next((i for i in indices if n_classes is not None and not 0 <= i < n_classes), None)
        if bad is not None:
            raise BadInput(
                f"{self.splits}: split '{name}' has label index {bad}, but config.json has "
                f"{n_classes} classes; the two files are from different runs: train again with "
                f"`edgetl train --out {self.path} --force`"
            )
        return paths, indices

    def data_root(self, splits: Dict[str, Any]) -> Path:
        """The dataset folder: relative to the run first (a moved run keeps its data)."""
        relative = splits.get("root_relative")
        if isinstance(relative, str) and (self.path / relative).is_dir():
            return (self.path / relative).resolve()
        absolute = Path(splits["root"])
        if absolute.is_dir():
            return absolute
        raise BadInput(
            f"{self.path}: the dataset folder {absolute} is gone; restore it or pass --data PATH"
        )

    def load_keras_model(self) -> Any:
        """model.keras, or one line saying it is damaged (a truncated copy, a failed disk)."""
        keras = import_keras()
        try:
            return keras.models.load_model(self.model, compile=False)
        except Exception as error:  # Keras raises ValueError, OSError, zipfile errors, KeyError…
            reason = " ".join(str(error).split())[:160] or type(error).__name__
            raise BadInput(
                f"{self.model}: cannot be loaded ({type(error).__name__}: {reason}); the file is "
                f"damaged or not a Keras model: copy it again or retrain with "
                f"`edgetl train --out {self.path} --force`"
            ) from None
