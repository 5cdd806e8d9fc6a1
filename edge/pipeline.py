"""Classify a stream of frames with decoding overlapped with inference.

One background thread reads and decodes the next frames (files, video or
camera) and resizes them, a bounded few ahead, while the interpreter
works on the current one: Pillow and OpenCV release the GIL while decoding,
and the bounded queue keeps memory flat on a 1 GB Pi. Each result carries
per-stage times (decode, resize, invoke, postprocess) so a user can see where
the time goes.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional

import numpy as np

from edge.classifier import Classifier, Prediction, top_k
from edge.image import resize_rgb
from edge.sources import Frame, file_frames

_DONE = object()


@dataclass
class Result:
    path: str
    predictions: List[Prediction] = field(default_factory=list)
    probabilities: Optional[np.ndarray] = None
    decode_ms: float = 0.0
    resize_ms: float = 0.0
    invoke_ms: float = 0.0
    post_ms: float = 0.0
    error: str = ""
    label: Optional[str] = None
    image: Any = None  # the frame as decoded (RGB Pillow image), for --show


def _producer(
    frames: Iterable[Frame],
    size: int,
    resize: str,
    ready: queue.SimpleQueue,
    free: queue.SimpleQueue,
    stop: threading.Event,
) -> None:
    try:
        for frame in frames:
            if stop.is_set():
                break
            pixels, resize_ms = None, 0.0
            if frame.image is not None:
                start = time.perf_counter()
                pixels = resize_rgb(frame.image, size, resize)
                resize_ms = (time.perf_counter() - start) * 1000.0
            free.get()  # wait for a slot: at most ``prefetch`` frames wait, decoded
            if stop.is_set():
                break
            ready.put((frame, pixels, resize_ms))
    finally:
        ready.put(_DONE)


def classify_frames(
    classifier: Classifier, frames: Iterable[Frame], k: int = 3, prefetch: int = 4
) -> Iterator[Result]:
    """Yield one ``Result`` per frame, in order; unreadable frames carry ``error``.

    The hand-over is two C-level ``SimpleQueue``s (frames, and free slots that
    bound them) rather than ``queue.Queue``, whose Python-level locking cost
    ~10 µs per frame: 5% of a 0.2 ms invoke, measured with the small model.
    """
    ready: queue.SimpleQueue = queue.SimpleQueue()
    free: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(max(1, prefetch)):
        free.put(None)
    stop = threading.Event()
    worker = threading.Thread(
        target=_producer,
        args=(frames, classifier.image_size, classifier.resize, ready, free, stop),
        daemon=True,
    )
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                break
            free.put(None)
            frame, pixels, resize_ms = item
            if pixels is None:
                yield Result(
                    frame.name, error=frame.problem, decode_ms=frame.decode_ms, label=frame.label
                )
                continue
            start = time.perf_counter()
            classifier.set_input(pixels)
            classifier.invoke()
            invoked = time.perf_counter()
            probabilities = classifier.output_probabilities()
            predictions = top_k(probabilities, classifier.labels, k)
            done = time.perf_counter()
            yield Result(
                frame.name,
                predictions,
                probabilities,
                frame.decode_ms,
                resize_ms,
                (invoked - start) * 1000.0,
                (done - invoked) * 1000.0,
                "",
                frame.label,
                frame.image,
            )
    finally:
        stop.set()
        # A producer waiting for a slot gets one, sees the stop flag and exits.
        while worker.is_alive():
            free.put(None)
            worker.join(0.05)


def classify_files(
    classifier: Classifier, paths: Iterable[Path], k: int = 3, prefetch: int = 4
) -> Iterator[Result]:
    return classify_frames(classifier, file_frames(list(paths), classifier.image_size), k, prefetch)
