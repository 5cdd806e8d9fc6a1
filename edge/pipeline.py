"""Classify a stream of image files with decoding overlapped with inference.

A single background thread decodes the next images into a small bounded
queue while the interpreter works on the current one: Pillow releases the
GIL while decoding, and a bounded queue keeps memory flat on a 1 GB Pi.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

import numpy as np

from edge.classifier import Classifier, Prediction, top_k
from edge.image import UnreadableImage, load_rgb

_DONE = object()


@dataclass
class Result:
    path: str
    predictions: List[Prediction] = field(default_factory=list)
    probabilities: Optional[np.ndarray] = None
    decode_ms: float = 0.0
    invoke_ms: float = 0.0
    error: str = ""


def _decode_worker(
    paths: Iterable[Path], size: int, resize: str, out: queue.Queue, stop: threading.Event
):
    for path in paths:
        if stop.is_set():
            break
        start = time.perf_counter()
        try:
            pixels, problem = load_rgb(path, size, resize), ""
        except UnreadableImage as error:
            pixels, problem = None, str(error)
        out.put((str(path), pixels, problem, (time.perf_counter() - start) * 1000.0))
    out.put(_DONE)


def classify_files(
    classifier: Classifier, paths: Iterable[Path], k: int = 3, prefetch: int = 4
) -> Iterator[Result]:
    """Yield one ``Result`` per path, in order; unreadable files carry ``error``."""
    pending: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    worker = threading.Thread(
        target=_decode_worker,
        args=(paths, classifier.image_size, classifier.resize, pending, stop),
        daemon=True,
    )
    worker.start()
    try:
        while True:
            item = pending.get()
            if item is _DONE:
                break
            path, pixels, problem, decode_ms = item
            if pixels is None:
                yield Result(path, error=problem, decode_ms=decode_ms)
                continue
            start = time.perf_counter()
            classifier.set_input(pixels)
            classifier.invoke()
            invoke_ms = (time.perf_counter() - start) * 1000.0
            probabilities = classifier.output_probabilities()
            yield Result(
                path,
                top_k(probabilities, classifier.labels, k),
                probabilities,
                decode_ms,
                invoke_ms,
            )
    finally:
        stop.set()
        # Drain so a blocked producer can see the stop flag and exit.
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                pending.get(timeout=0.05)
