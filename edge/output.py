"""Write predictions as CSV or JSON lines, one row per image, flushed as it goes.

Rows stream into a temporary file beside the output (``edge.atomic`` naming),
written per row, and ``close()`` renames it over the output: a previous file
of the same name stays whole until the new one is committed, and a run that
fails leaves it untouched (``abort()``). After a kill or a power cut, the rows
classified so far are in that temporary file.

CSV files are opened by spreadsheets, which run a cell starting with ``=``
as a formula: a file or class named ``=cmd|' /C calc'!A0`` must stay text
(``csv_cell``), and shown in terminals, where a control character in a file
name would act (``printable``). JSON lines keep every string exactly, with
JSON's own escapes for control characters.

An interrupted session (Ctrl-C, SIGTERM) ends at a row boundary and commits
the rows finished so far (``edge.session``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from pathlib import Path
from typing import List, Optional

from edge import atomic
from edge.errors import BadInput
from edge.modelfile import printable
from edge.pipeline import Result

FORMATS = (".csv", ".jsonl")
# OWASP "CSV Injection": a cell starting with one of these is a formula to Excel,
# LibreOffice or Google Sheets; a leading apostrophe makes it text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """``text`` as a spreadsheet will show it, never run it, and as a terminal will show
    it (``cat preds.csv``): control characters escaped (``printable``)."""
    text = printable(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_line(cells: List[str]) -> str:
    """One CSV record, quoted as the ``csv`` module does, ending in ``\\r\\n``."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)
    return buffer.getvalue()


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
    too_long = atomic.name_too_long(path)
    return f"--output: {too_long}" if too_long else None


class PredictionWriter:
    """Rows to a temporary file; ``close()`` commits it over ``path``, ``abort()`` drops it.

    Each row is encoded whole and handed to the file in one ``os.write``, and the
    writer counts the bytes of finished rows: an interruption that lands inside a
    write (a second Ctrl-C) leaves at most a cut-off row past that count, which
    ``close()`` cuts away. As a context manager it commits on a normal exit and
    aborts on any exception, Ctrl-C included. Both are idempotent, and each is a
    no-op after the other.
    """

    def __init__(self, path: str, k: int) -> None:
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        problem = output_problem(self.path)
        if problem:
            raise BadInput(problem)
        self.k = k
        self.rows = 0
        self._finished_bytes = 0
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
        self._descriptor: Optional[int] = descriptor
        if self.format == ".csv":
            header = ["path"]
            for i in range(1, k + 1):
                header += [f"label_{i}", f"score_{i}"]
            header += ["answer", "out_of_class"]
            header += ["decode_ms", "resize_ms", "invoke_ms", "post_ms", "label", "error"]
            try:  # a full disk fails here already: the temporary file must not stay
                self._append(csv_line(header))
            except BaseException:
                self.abort()
                raise

    def _append(self, text: str) -> None:
        """One finished row (or the header) onto the file, counted once it is all there.

        A file name that is not UTF-8 (a camera card's, another system's) is written
        with backslash escapes instead of failing the whole session.
        """
        assert self._descriptor is not None, "write after close() or abort()"
        encoded = text.encode("utf-8", errors="backslashreplace")
        data = memoryview(encoded)
        while data:
            data = data[os.write(self._descriptor, data) :]
        self._finished_bytes += len(encoded)

    def write(self, result: Result) -> None:
        if self.format == ".csv":
            row = [csv_cell(result.path)]
            for i in range(self.k):
                if i < len(result.predictions):
                    prediction = result.predictions[i]
                    row += [csv_cell(prediction.label), f"{prediction.score:.6f}"]
                else:
                    row += ["", ""]
            answer = result.answer
            row += [
                csv_cell(answer.answer) if answer else "",
                ("1" if answer.out_of_class else "0") if answer else "",
            ]
            row += [
                f"{result.decode_ms:.3f}",
                f"{result.resize_ms:.3f}",
                f"{result.invoke_ms:.3f}",
                f"{result.post_ms:.3f}",
                csv_cell(result.label or ""),
                csv_cell(result.error),
            ]
            self._append(csv_line(row))
        else:
            record = {
                "path": result.path,
                "top_k": [
                    {"label": p.label, "score": round(p.score, 6)} for p in result.predictions
                ],
                "answer": result.answer.answer if result.answer else None,
                "out_of_class": result.answer.out_of_class if result.answer else None,
                "decode_ms": round(result.decode_ms, 3),
                "resize_ms": round(result.resize_ms, 3),
                "invoke_ms": round(result.invoke_ms, 3),
                "post_ms": round(result.post_ms, 3),
            }
            if result.label is not None:
                record["label"] = result.label
            if result.error:
                record["error"] = result.error
            strict = json.dumps(atomic.finite_only(record)[0], allow_nan=False)
            self._append(strict + "\n")  # ASCII: json escapes every control
        self.rows += 1

    def close(self, supersede: bool = True) -> None:
        """Commit the finished rows: cut any row an interruption left half-written, sync,
        and rename over ``path``.

        ``supersede`` (a session that ran to its end) also removes what killed sessions
        of the same output left behind; an interrupted session leaves those alone.
        """
        if self._descriptor is None:
            return
        descriptor, self._descriptor = self._descriptor, None
        try:
            os.ftruncate(descriptor, self._finished_bytes)
            os.fsync(descriptor)
            os.close(descriptor)
            descriptor = None
            os.replace(self.partial, self.path)
            if supersede:  # what a killed session of the same --output left is stale now
                for stale in atomic.left_by_a_kill(self.path, self._started):
                    with contextlib.suppress(OSError):
                        stale.unlink()
            atomic.fsync_directory(self.path.parent)
        except BaseException:
            if descriptor is not None:
                with contextlib.suppress(OSError):
                    os.close(descriptor)
            with contextlib.suppress(FileNotFoundError):
                self.partial.unlink()
            raise

    def abort(self) -> None:
        """Drop the rows: remove the temporary file; a previous output stays as it was."""
        if self._descriptor is None:
            return
        descriptor, self._descriptor = self._descriptor, None
        with contextlib.suppress(OSError):
            os.close(descriptor)
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
