"""Classify a stream of frames with decoding overlapped with inference.

One background thread reads and decodes the next frames (files, video or
camera) and resizes them while the interpreter works on the current one:
Pillow and OpenCV release the GIL while decoding. Files and videos are decoded
a bounded few ahead, which keeps memory flat on a 1 GB Pi; a live camera hands
over only its newest frame, so results never fall behind the scene. Each result carries
per-stage times (decode, resize, invoke, postprocess) so a user can see where
the time goes.

A frame that cannot be decoded or resized becomes a result carrying ``error``
and the stream goes on; anything else that goes wrong in the decode thread
(a camera's driver, a source's bug) is raised again in the caller's thread,
so a stream never just ends early looking complete.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from edge.answer import Answer
from edge.classifier import Classifier, Prediction, top_k
from edge.image import describe_error, resize_filter, resize_rgb
from edge.imx500 import SensorModel
from edge.sources import Frame, file_frames

_DONE = object()
_EMPTY = object()


class _Failed(NamedTuple):
    """What the decode thread hands over instead of a frame when it dies."""

    error: BaseException


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
    skipped: int = 0  # live cameras: newer frames replaced this many since the last result
    answer: Optional[Answer] = None  # set by the session (edge.classify), once the floor is known


class Bounded:
    """Files and videos: every frame is classified, at most ``slots`` wait decoded.

    Two C-level ``SimpleQueue``s (frames, and the free slots that bound them)
    rather than ``queue.Queue``, whose Python-level locking was measured (2-core
    development VM, small model) at a few percent of one invoke per frame.
    """

    skipped = 0  # nothing is ever dropped

    def __init__(self, slots: int) -> None:
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(max(1, slots)):
            self._free.put(None)

    def put(self, item: Any) -> None:
        self._free.get()  # blocks the decoder while every slot is taken
        self._ready.put(item)

    def get(self) -> Any:
        item = self._ready.get()
        self._free.put(None)
        return item

    def finish(self) -> None:
        self._ready.put(_DONE)  # needs no slot: the end is never blocked

    def fail(self, error: BaseException) -> None:
        self._ready.put(_Failed(error))  # after the frames already waiting, needing no slot

    def release(self) -> None:
        """Wake a decoder waiting for a slot (it then sees the stop flag)."""
        self._free.put(None)


class Latest:
    """Live cameras: one slot, and a newer frame replaces one not yet taken.

    A camera does not wait for the model. With a queue, a model slower than the
    camera falls further behind it (plus the driver's own buffers): results and
    the ``--show`` window would lag by seconds. Here the decoder keeps draining
    the camera and the model always gets the newest frame; replaced frames are
    counted in ``skipped``. The end of the stream never replaces a frame.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._item: Any = _EMPTY
        self._finished = False
        self._failed: Optional[_Failed] = None
        self.skipped = 0

    def put(self, item: Any) -> None:
        with self._changed:
            if self._item is not _EMPTY:
                self.skipped += 1
            self._item = item
            self._changed.notify()

    def finish(self) -> None:
        with self._changed:
            self._finished = True
            self._changed.notify()

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error``, after the frame still waiting (never replacing it)."""
        with self._changed:
            self._failed = _Failed(error)
            self._finished = True
            self._changed.notify()

    def get(self) -> Any:
        with self._changed:
            while self._item is _EMPTY and not self._finished:
                self._changed.wait()
            if self._item is _EMPTY:
                return self._failed or _DONE
            item, self._item = self._item, _EMPTY
            return item

    def release(self) -> None:
        pass  # put never blocks


def prepare(frame: Frame, size: int, resize: str) -> Tuple[Frame, Optional[np.ndarray], float]:
    """Resize one decoded frame; a frame that will not resize becomes an unreadable one.

    A camera or video can hand over an odd frame (a mode or shape Pillow cannot
    resize): that frame is reported and skipped like a corrupt file, and the
    stream goes on.
    """
    if frame.image is None or frame.scores is not None:  # unreadable, or scored on the sensor
        return frame, None, 0.0
    start = time.perf_counter()
    try:
        pixels = resize_rgb(frame.image, size, resize)
        if pixels.shape != (size, size, 3):
            raise ValueError(f"resize gave shape {pixels.shape}, not {(size, size, 3)}")
    except Exception as error:
        problem = f"{frame.name}: could not be resized ({describe_error(error)})"
        return dataclasses.replace(frame, problem=problem), None, _ms_since(start)
    return frame, pixels, _ms_since(start)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _producer(
    frames: Iterable[Frame],
    size: int,
    resize: str,
    handoff: Bounded | Latest,
    stop: threading.Event,
) -> None:
    try:
        for frame in frames:
            if stop.is_set():
                break
            handoff.put(prepare(frame, size, resize))
            if stop.is_set():
                break
    except BaseException as error:  # handed to the caller's thread, raised there
        handoff.fail(error)
    finally:
        handoff.finish()


def classify_frames(
    classifier: Classifier | SensorModel,
    frames: Iterable[Frame],
    k: int = 3,
    prefetch: int = 4,
    live: bool = False,
) -> Iterator[Result]:
    """Yield one ``Result`` per frame, in order; unreadable frames carry ``error``.

    ``live`` (cameras): classify the newest frame each time instead of every
    frame; ``Result.skipped`` says how many were passed over before it. An
    exception in the decode thread is raised here, the same object, after the
    frames decoded before it.
    """
    resize_filter(classifier.resize)  # an unknown name fails every frame: say so once, here
    handoff: Bounded | Latest = Latest() if live else Bounded(prefetch)
    stop = threading.Event()
    worker = threading.Thread(
        target=_producer,
        args=(frames, classifier.image_size, classifier.resize, handoff, stop),
        daemon=True,
    )
    worker.start()
    seen_skipped = 0
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                break
            if isinstance(item, _Failed):
                raise item.error
            frame, pixels, resize_ms = item
            skipped, seen_skipped = handoff.skipped - seen_skipped, handoff.skipped
            if frame.scores is not None:
                yield sensor_result(classifier, frame, k, skipped)
                continue
            if pixels is None:
                yield Result(
                    frame.name,
                    error=frame.problem,
                    decode_ms=frame.decode_ms,
                    label=frame.label,
                    skipped=skipped,
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
                skipped,
            )
    finally:
        stop.set()
        # A decoder waiting for a slot gets one, sees the stop flag and exits.
        while worker.is_alive():
            handoff.release()
            worker.join(0.05)


def sensor_result(classifier: SensorModel, frame: Frame, k: int, skipped: int) -> Result:
    """A frame the AI Camera's sensor already classified: its scores, with the labels;
    the sensor's own network time stands as the invoke time."""
    start = time.perf_counter()
    probabilities = classifier.probabilities_from(frame.scores)
    predictions = top_k(probabilities, classifier.labels, k)
    post_ms = (time.perf_counter() - start) * 1000.0
    return Result(
        frame.name, predictions, probabilities, frame.decode_ms, 0.0, frame.sensor_ms, post_ms,
        "", frame.label, frame.image, skipped,
    )  # fmt: skip


def classify_files(
    classifier: Classifier, paths: Iterable[Path], k: int = 3, prefetch: int = 4
) -> Iterator[Result]:
    return classify_frames(classifier, file_frames(list(paths), classifier.image_size), k, prefetch)
