"""Progress lines that read well in a terminal and in a CI log alike.

One line per epoch (not a redrawn bar), so a log stays short and greppable.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, Optional

from toolchain.core.quiet import keras as import_keras

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def epoch_logger(
    phase: str, total_epochs: int, log: Log, offset: int = 0, durations: Optional[list] = None
) -> Any:
    """A Keras callback printing ``phase epoch i/n  loss … acc …  val_acc …  (s)``.

    On a terminal, a bar redrawn in place shows progress within the epoch;
    in a CI log (stderr not a TTY) only the one line per epoch is written.
    Each epoch's wall time is also appended to ``durations`` when given.
    """

    keras = import_keras()

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Optional[Dict[str, float]] = None) -> None:
            self._start = time.perf_counter()
            self._epoch = epoch + 1 - offset
            self._live = sys.stderr.isatty()
            self._steps = (self.params or {}).get("steps") or 0

        def on_train_batch_end(self, batch: int, logs: Optional[Dict[str, float]] = None) -> None:
            if not self._live or not self._steps:
                return
            done = (batch + 1) / self._steps
            bar = "#" * int(24 * done)
            sys.stderr.write(
                f"\r{phase} epoch {self._epoch}/{total_epochs} [{bar:<24}] "
                f"{batch + 1}/{self._steps}"
            )
            sys.stderr.flush()

        def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, float]] = None) -> None:
            logs = logs or {}
            parts = [f"{phase} epoch {epoch + 1 - offset}/{total_epochs}"]
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                if key in logs:
                    parts.append(f"{key.replace('accuracy', 'acc')} {logs[key]:.3f}")
            seconds = time.perf_counter() - self._start
            if durations is not None:
                durations.append(seconds)
            parts.append(f"{seconds:.1f}s")
            if self._live and self._steps:
                sys.stderr.write("\r\033[K")  # clear the bar before the epoch line
            log("  ".join(parts))

    return EpochLogger()
