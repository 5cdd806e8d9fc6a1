"""The fine-tuned weights, averaged over the last epochs (stochastic weight averaging).

Why not the epoch early stopping keeps: it is the epoch whose weights flattered
~130 validation photos the most, so the validation split then reads 2-9 points
above new photos, and the temperature and the answer floor fitted on it promise
more than new photos give (README, *Training recipe*). The last epoch instead is
one noisy step of many, and it quantized worse. The mean of the weights of the
last epochs (Izmailov et al., 2018) is chosen by nothing that looks at the
validation split. With the stronger augmentation it made the default export ship on
three four-flower folds of three (without it, one fold shipped nothing), and the
full-INT8 file agreed with Keras on 0.918-0.953 of new photos against 0.908-0.921
for the early-stopped model of the earlier recipe.

Only a pretrained base is averaged: its BatchNorm stays frozen while fine-tuning
(``toolchain.train.model``), so the averaged weights keep valid statistics. A base
trained from scratch (``--weights none``) trains its BatchNorm statistics too, and
the last epoch's statistics would not match averaged weights.

The running sum is saved after every averaged epoch, *before* the phase's
``BackupAndRestore`` backup (``toolchain.train.phases._callbacks``): a kill between
the two saves redoes that epoch from the previous sum, which is kept, so
``--resume`` averages the same epochs as an uninterrupted run.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from edge import atomic
from edge.errors import BadInput
from toolchain.core.options import TrainOptions

SUM_FILE = "average_sum_{epoch}.npz"  # the running sum after this epoch (0-based)
FOLDER = "fine_tune_average"  # under the run's checkpoints/


def window(requested: int, fine_tune_epochs: int) -> int:
    """How many final epochs are averaged: at most the last half of the phase, so that
    a short phase does not average weights from before it settled; 0 or 1 means the
    last epoch's weights as they are."""
    return max(0, min(requested, fine_tune_epochs // 2))


def phase_averaging(
    keras: Any, options: TrainOptions, checkpoints: Path, last_epoch: int, log: Callable
) -> List[Any]:
    """The fine-tuning phase's averaging callback (a list of at most one), or none with
    the reason logged when averaging was asked for but does not apply."""
    averaged = window(options.average_epochs, options.fine_tune_epochs)
    if averaged < 2:
        return []
    if options.patience > 0:
        log("fine-tune: --patience turns weight averaging off")
        return []
    if not options.pretrained:
        log("fine-tune: a base trained from scratch is not averaged (its BatchNorm trains too)")
        return []
    return [averaging_callback(keras, checkpoints / FOLDER, last_epoch + 1 - averaged, log)]


def averaging_callback(keras: Any, folder: Path, first: int, log: Callable[[str], None]) -> Any:
    """A Keras callback that replaces the weights at the end of the phase by their mean
    over the epochs from ``first`` (0-based, counted over both phases) on."""

    class WeightAverage(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.total: Optional[List[np.ndarray]] = None
            self.count = 0
            self.started = False

        def take_up(self, done: int) -> None:
            """After a resume: the sum over the epochs already done, up to ``done``."""
            self.started = True
            if done >= first:
                self.total, self.count = load_sum(
                    folder, done, done - first + 1, self.model.trainable_variables
                )

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            if not self.started:
                self.take_up(epoch - 1)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch < first:
                return
            weights = [np.asarray(v.numpy(), np.float64) for v in self.model.trainable_variables]
            if self.total is None:
                self.total = weights
            else:
                self.total = [a + b for a, b in zip(self.total, weights)]
            self.count += 1
            save_sum(folder, epoch, self.total, self.count)

        def on_train_end(self, logs: Any = None) -> None:
            if not self.started:  # resumed after the phase's last epoch: nothing ran
                self.take_up(int(self.params["epochs"]) - 1)
            if self.count < 2 or self.total is None:
                return
            for variable, summed in zip(self.model.trainable_variables, self.total):
                variable.assign((summed / self.count).astype(variable.dtype))
            log(f"fine-tune: weights averaged over the last {self.count} epochs")

    return WeightAverage()


def save_sum(folder: Path, epoch: int, total: List[np.ndarray], count: int) -> None:
    """Written whole or not at all; files older than the previous epoch's are removed
    (the previous one is what a kill between this save and the backup resumes from)."""
    path = folder / SUM_FILE.format(epoch=epoch)
    with atomic.atomic_path(path) as partial, partial.open("wb") as handle:
        np.savez(handle, *total, count=np.int64(count))
    for old in folder.glob(SUM_FILE.format(epoch="*")):
        if old.name not in (path.name, SUM_FILE.format(epoch=epoch - 1)):
            old.unlink(missing_ok=True)


def load_sum(folder: Path, epoch: int, count: int, variables: Any) -> Tuple[List[Any], int]:
    """The sum saved after ``epoch`` over ``count`` epochs, checked against the model's
    ``variables``; a missing or damaged one is a clear error, not a silent restart."""
    path = folder / SUM_FILE.format(epoch=epoch)
    fix = "start over with --force"
    if not path.is_file():
        raise BadInput(
            f"--resume: the weight average up to epoch {epoch + 1} ({path}) is missing; {fix}"
        )
    try:
        with np.load(path) as saved:
            saved_count = int(saved["count"])
            total = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise BadInput(f"--resume: {path} is damaged ({error}); {fix}") from None
    shapes = [tuple(v.shape) for v in variables]
    if saved_count != count or [a.shape for a in total] != shapes:
        raise BadInput(f"--resume: {path} does not belong to this run's model; {fix}")
    return total, saved_count
