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
for the early-stopped model of the earlier recipe. BatchNorm stays frozen while fine-tuning (``toolchain.train.model``), so
the averaged weights need no new statistics.

The running sum is saved beside the phase's backups after every averaged epoch,
so ``--resume`` after a kill averages the same epochs as an uninterrupted run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np

SUM_FILE = "average_sum_{epoch}.npz"  # the running sum after this epoch (0-based)


def window(requested: int, fine_tune_epochs: int) -> int:
    """How many final epochs are averaged: at most the last half of the phase, so that
    a short phase does not average weights from before it settled; 0 or 1 means the
    last epoch's weights as they are."""
    return max(0, min(requested, fine_tune_epochs // 2))


def averaging_callback(keras: Any, folder: Path, first: int, log: Callable[[str], None]) -> Any:
    """A Keras callback that replaces the weights at the end of the phase by their mean
    over the epochs from ``first`` (0-based, counted over both phases) on."""

    class WeightAverage(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.total: Optional[List[np.ndarray]] = None
            self.count = 0
            self.started = False

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            if not self.started:  # a resumed phase starts later: take up its sum
                self.started = True
                if epoch - 1 >= first:
                    self.total, self.count = load_sum(folder, epoch - 1)

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
            if self.count < 2 or self.total is None:
                return
            for variable, summed in zip(self.model.trainable_variables, self.total):
                variable.assign((summed / self.count).astype(variable.dtype))
            log(f"fine-tune: weights averaged over the last {self.count} epochs")

    return WeightAverage()


def save_sum(folder: Path, epoch: int, total: List[np.ndarray], count: int) -> None:
    """Written whole or not at all (a kill mid-write leaves the previous epoch's file);
    files older than the previous epoch's are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SUM_FILE.format(epoch=epoch)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        np.savez(handle, *total, count=np.int64(count))
    os.replace(partial, path)
    for old in folder.glob(SUM_FILE.format(epoch="*")):
        if old.name not in (path.name, SUM_FILE.format(epoch=epoch - 1)):
            old.unlink(missing_ok=True)


def load_sum(folder: Path, epoch: int) -> tuple:
    """``(sum, count)`` saved after ``epoch``, or ``(None, 0)`` when there is none."""
    path = folder / SUM_FILE.format(epoch=epoch)
    if epoch < 0 or not path.is_file():
        return None, 0
    with np.load(path) as saved:
        count = int(saved["count"])
        total = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
    return total, count
