"""Write predictions as CSV or JSON lines, one row per image, flushed as it goes.

Flushing each row means a kill or a power cut loses nothing already classified.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import IO, Optional

from edge.errors import BadInput
from edge.pipeline import Result

FORMATS = (".csv", ".jsonl")


class PredictionWriter:
    def __init__(self, path: str, k: int) -> None:
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in FORMATS:
            raise BadInput(f"--output {path}: use a .csv or .jsonl file name")
        if not self.path.parent.is_dir():
            raise BadInput(f"--output {path}: folder {self.path.parent} does not exist")
        self.k = k
        self._file: Optional[IO[str]] = self.path.open("w", encoding="utf-8", newline="")
        self._csv = None
        if self.format == ".csv":
            self._csv = csv.writer(self._file)
            header = ["path"]
            for i in range(1, k + 1):
                header += [f"label_{i}", f"score_{i}"]
            self._csv.writerow(
                header + ["decode_ms", "resize_ms", "invoke_ms", "post_ms", "label", "error"]
            )

    def write(self, result: Result) -> None:
        assert self._file is not None
        if self._csv is not None:
            row = [result.path]
            for i in range(self.k):
                if i < len(result.predictions):
                    row += [result.predictions[i].label, f"{result.predictions[i].score:.6f}"]
                else:
                    row += ["", ""]
            row += [
                f"{result.decode_ms:.3f}",
                f"{result.resize_ms:.3f}",
                f"{result.invoke_ms:.3f}",
                f"{result.post_ms:.3f}",
                result.label or "",
                result.error,
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
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
