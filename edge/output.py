"""Write predictions as CSV or JSON lines, one row per image, flushed as it goes.

Rows stream into a temporary file beside the output (``edge.atomic`` naming),
flushed per row, and ``close()`` renames it over the output: a previous file
of the same name stays whole until the new one is complete, and a run that
fails or is interrupted leaves it untouched (``abort()``). After a kill or a
power cut, the rows classified so far are in that temporary file.

CSV files are opened by spreadsheets, which run a cell starting with ``=``
as a formula: a file or class named ``=cmd|' /C calc'!A0`` must stay text
(``csv_cell``). JSON lines keep every string exactly.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from pathlib import Path
from typing import IO, Optional

from edge import atomic
from edge.errors import BadInput
from edge.pipeline import Result

FORMATS = (".csv", ".jsonl")
# OWASP "CSV Injection": a cell starting with one of these is a formula to Excel,
# LibreOffice or Google Sheets; a leading apostrophe makes it text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """``text`` as a spreadsheet will show it, never run it."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def output_problem(path: Path) -> Optional[str]:
    """Why predictions cannot be written to ``path`` (checked before anything is created)."""
    if path.is_dir():
        return f"--output {path}: is a folder; give a file name such as {path / 'predictions.csv'}"
    if path.suffix.lower() not in FORMATS:
        return f"--output {path}: use a .csv or .jsonl file name"
    if not path.parent.exists():
        return f"--output {path}: folder {path.parent} does not exist; create it first"
    if not path.parent.is_dir():
        return f"--output {path}: {path.parent} is a file, not a folder; give another path"
    return None


class PredictionWriter:
    """Rows to a temporary file; ``close()`` commits it over ``path``, ``abort()`` drops it.

    As a context manager it commits on a normal exit and aborts on any
    exception, Ctrl-C included. Both are idempotent, and each is a no-op after
    the other.
    """

    def __init__(self, path: str, k: int) -> None:
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        problem = output_problem(self.path)
        if problem:
            raise BadInput(problem)
        self.k = k
        self._started = time.time()
        try:
            self.partial, descriptor = atomic.open_partial(self.path)
        except OSError as error:
            if error.errno in atomic.ENVIRONMENT_ERRNOS:
                raise  # a full disk or a read-only card: the environment's, exit 3
            raise BadInput(
                f"--output {path}: cannot be written there ({error.strerror}); "
                "choose a file in a folder you can write to"
            ) from None
        atomic.hold(descriptor)
        # A file name that is not UTF-8 (a camera card's, another system's) is written
        # with backslash escapes instead of failing the whole session.
        self._file: Optional[IO[str]] = os.fdopen(
            descriptor, "w", encoding="utf-8", errors="backslashreplace", newline=""
        )
        self._csv = None
        if self.format == ".csv":
            self._csv = csv.writer(self._file)
            header = ["path"]
            for i in range(1, k + 1):
                header += [f"label_{i}", f"score_{i}"]
            try:  # a full disk fails here already: the temporary file must not stay
                self._csv.writerow(
                    header + ["decode_ms", "resize_ms", "invoke_ms", "post_ms", "label", "error"]
                )
                self._file.flush()
            except BaseException:
                self.abort()
                raise

    def write(self, result: Result) -> None:
        assert self._file is not None, "write after close() or abort()"
        if self._csv is not None:
            row = [csv_cell(result.path)]
            for i in range(self.k):
                if i < len(result.predictions):
                    prediction = result.predictions[i]
                    row += [csv_cell(prediction.label), f"{prediction.score:.6f}"]
                else:
                    row += ["", ""]
            row += [
                f"{result.decode_ms:.3f}",
                f"{result.resize_ms:.3f}",
                f"{result.invoke_ms:.3f}",
                f"{result.post_ms:.3f}",
                csv_cell(result.label or ""),
                csv_cell(result.error),
            ]
            self._csv.writerow(row)
        else:
            record = {
                "path": result.path,
                "top_k": [
                    {"label": p.label, "score": round(p.score, 6)} for p in result.predictions
                ],
                "decode_ms": round(result.decode_ms, 3),
                "resize_ms": round(result.resize_ms, 3),
                "invoke_ms": round(result.invoke_ms, 3),
                "post_ms": round(result.post_ms, 3),
            }
            if result.label is not None:
                record["label"] = result.label
            if result.error:
                record["error"] = result.error
            self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Commit: sync the rows and rename them over ``path``."""
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.flush()
            os.fsync(file.fileno())
            file.close()
            os.replace(self.partial, self.path)
            # What a killed session of the same --output left is superseded now.
            for stale in atomic.left_by_a_kill(self.path, self._started):
                with contextlib.suppress(OSError):
                    stale.unlink()
            atomic.fsync_directory(self.path.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                file.close()
            with contextlib.suppress(FileNotFoundError):
                self.partial.unlink()
            raise

    def abort(self) -> None:
        """Drop the rows: remove the temporary file; a previous output stays as it was."""
        if self._file is None:
            return
        file, self._file = self._file, None
        with contextlib.suppress(OSError):
            file.close()
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
