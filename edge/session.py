"""What a person running ``edgetl classify`` sees while it runs and when it ends.

A line per image, or for a camera or video in a terminal one line redrawn in
place with the frames per second; each frame in a window with ``--show``; and
the closing lines (throughput per stage, unreadable files, accuracy against
labeled folders). The CLI only parses options and calls these.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, NamedTuple, Optional, TextIO

from edge.classifier import Classifier
from edge.classify import Summary, classify_source
from edge.display import annotate
from edge.errors import BadInput
from edge.imx500 import SensorModel, is_sensor_network, open_sensor_model
from edge.modelfile import printable
from edge.output import PredictionWriter
from edge.pipeline import Result
from edge.sources import Source, open_sensor_source, open_source

LIVE_KINDS = ("camera", "video")
# A camera never ends by itself: Ctrl-C (or a service manager's SIGTERM) is its normal end.
LIVE_ENDS_BY_SIGNAL = ("camera",)


def best_classes(result: Result) -> str:
    """``daisy (daisy 0.912, tulips 0.051)``: the answer, then the top classes; the answer
    is ``unknown`` when the best class is below the floor or the photo out of class."""
    scores = ", ".join(f"{p.label} {p.score:.3f}" for p in result.predictions)
    if result.answer is None:
        return scores
    flag = " out-of-class" if result.answer.out_of_class else ""
    return f"{result.answer.answer}{flag} ({scores})"


class Reporter:
    """The per-result callback of a session (``classify_source``'s ``on_result``).

    Unreadable images are one ``skipped:`` line on ``err``. A camera or a video in a
    terminal gets one live line on ``err``, redrawn with ``\\r``, since a line per frame
    would scroll faster than anyone reads; otherwise each image is a line on ``out``
    (none with ``quiet``). With a ``window`` each frame is drawn with its top classes
    and the FPS, and closing the window returns False, which ends the session.
    """

    def __init__(
        self,
        live: bool,
        quiet: bool = False,
        window: Any = None,
        out: Optional[TextIO] = None,
        err: Optional[TextIO] = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.live = live
        self.quiet = quiet
        self.window = window
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.clock = clock
        self.started = clock()
        self.classified = 0

    @classmethod
    def for_source(cls, source: Source, quiet: bool = False, window: Any = None) -> Reporter:
        """Live redraw only for a camera or a video, and only when stderr is a terminal:
        in a log file the ``\\r`` lines would pile up as one unreadable line."""
        live = source.kind in LIVE_KINDS and sys.stderr.isatty()
        return cls(live, quiet, window)

    def fps(self) -> float:
        return self.classified / max(1e-9, self.clock() - self.started)

    def __call__(self, result: Result) -> bool:
        if result.error:
            print(f"skipped: {printable(result.error)}", file=self.err)
            return True
        self.classified += 1
        fps = self.fps()
        best = best_classes(result)
        if self.live:
            print(f"\r{fps:6.1f} FPS  {best}\033[K", end="", file=self.err, flush=True)
        elif not self.quiet:
            print(f"{printable(result.path)}: {best}", file=self.out, flush=True)
        if self.window is not None:
            lines = [f"{p.label} {p.score:.2f}" for p in result.predictions] + [f"{fps:.1f} FPS"]
            if result.answer is not None:
                lines.insert(0, result.answer.answer)
            return self.window.show(annotate(result.image, lines))
        return True

    def end(self) -> None:
        """End the live line, so what is printed next starts on a line of its own."""
        if self.live:
            print(file=self.err)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM during a session: finish the image in hand, then stop.

    The handler only records the signal; the session checks it between rows, so
    no row is ever cut in half and the rows so far can be kept. A second signal
    raises KeyboardInterrupt at once, for a session stuck waiting on a camera or a
    slow disk (the writer still cuts any half row away).
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.signal_name = ""

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signal_name:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def requested(self) -> str:
        return self.signal_name


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """A ``StopRequest`` installed for SIGINT and SIGTERM, the previous handlers put back
    after. Only the main thread may set handlers; elsewhere (a test's thread) Ctrl-C
    stays a KeyboardInterrupt, which the session handles the same way."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    numbers = [getattr(signal, name) for name in StopRequest.SIGNALS if hasattr(signal, name)]
    previous = {number: signal.signal(number, request) for number in numbers}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def open_model(
    model: Path, runtime: Optional[str], threads: Optional[int]
) -> Classifier | SensorModel:
    """The model argument decides what runs it: a ``.rpk`` is the AI Camera's network
    (the sensor runs it), anything else a TFLite file for an interpreter here."""
    if not is_sensor_network(model):
        return Classifier(model, runtime=runtime, threads=threads)
    for name, given in (("--runtime", runtime), ("--threads", threads)):
        if given is not None:
            raise BadInput(f"{name} picks a TFLite interpreter; {model.name} runs on the sensor")
    return open_sensor_model(model)


def open_source_for(model: Classifier | SensorModel, source: str) -> Source:
    """``--source``, opened; for the AI Camera's network only its own camera."""
    if isinstance(model, SensorModel):
        return open_sensor_source(source, model.network)
    return open_source(source)


def run_session(
    classifier: Classifier,
    source: Source,
    reporter: Reporter,
    top_k: int = 3,
    threshold: Optional[float] = None,
    output: Optional[Path] = None,
    count_labels: bool = False,
) -> Summary:
    """``classify_source`` with ``reporter`` called per result and the predictions
    written to ``output`` (.csv or .jsonl).

    Rows stream into a temporary file beside ``output``, renamed over it when the
    session ends: a crash or a kill never leaves a half-written ``output``, and a
    failed session leaves the previous one as it was. Ctrl-C or SIGTERM ends the
    session at a row boundary: on a camera that is how a session ends (a normal
    return); on a file, folder or video the rows finished so far are committed to
    ``output``, the closing lines say the session was interrupted, and
    KeyboardInterrupt is raised for the CLI's exit 130. The reporter's window is
    closed however the session ends.
    """
    writer = PredictionWriter(str(output), top_k) if output else None
    try:
        with stop_on_signals() as stop:  # also over the commit: one Ctrl-C cannot cut it short
            summary = classify_source(
                classifier, source, top_k, threshold, writer, reporter, count_labels,
                stop.requested,
            )  # fmt: skip
            interrupted = bool(summary.stopped_by) and source.kind not in LIVE_ENDS_BY_SIGNAL
            if writer:
                writer.close(supersede=not interrupted)
    except BaseException:
        if writer:
            writer.abort()  # nothing to do once committed
        raise
    finally:
        if reporter.window is not None:
            reporter.window.close()
    reporter.end()
    if interrupted:
        closing = closing_lines(summary, output, count_labels)
        for line in closing.notes:
            print(line, file=reporter.err, flush=True)
        for line in closing.results:
            print(line, file=reporter.out, flush=True)
        raise KeyboardInterrupt
    return summary


SIGNAL_WORDS = {"SIGINT": "Ctrl-C (SIGINT)", "SIGTERM": "SIGTERM"}


class Closing(NamedTuple):
    notes: List[str]  # for stderr: what happened
    results: List[str]  # for stdout: what a script reads (the accuracy)


def closing_lines(
    summary: Summary, output: Optional[Path] = None, count_labels: bool = False
) -> Closing:
    """The lines that end a session: throughput and stage times, unreadable and skipped
    frames, the output file, and with labeled folders the top-1 accuracy."""
    stages = "  ".join(f"{k} {v:.2f} ms" for k, v in summary.stage_ms.items())
    skipped = (
        f", {summary.skipped} older camera frame(s) skipped to stay live" if summary.skipped else ""
    )
    notes = [
        f"classified {summary.classified} image(s), {len(summary.unreadable)} unreadable, "
        f"{summary.images_per_s:.1f} images/s ({stages})"
        + skipped
        + (f"; wrote {output}" if output else "")
    ]
    if summary.stopped_by:
        what = SIGNAL_WORDS.get(summary.stopped_by, summary.stopped_by)
        notes.insert(
            0,
            f"interrupted by {what}"
            + (f": {output} holds every image finished before it" if output else ""),
        )
    results: List[str] = []
    if summary.answers and summary.coverage is not None:
        results.append(
            f"answered {summary.answered}/{summary.classified} (coverage {summary.coverage:.4f}) "
            f"at floor {summary.floor:.3f}; {summary.out_of_class} called out-of-class"
        )
    if summary.answers and count_labels and summary.answered_precision is not None:
        results.append(
            f"answered precision {summary.answered_precision:.4f} "
            f"({summary.answered_correct}/{summary.labeled_answered} labeled images answered)"
        )
    if count_labels:
        if summary.unknown_labels:
            notes.append(
                "note: folders not among the model's labels: "
                + ", ".join(printable(name) for name in summary.unknown_labels)
            )
        if summary.accuracy is None:
            notes.append("note: no image sat in a folder named like a label")
        else:
            results.append(
                f"top-1 accuracy {summary.accuracy:.4f} "
                f"({summary.correct}/{summary.labeled} labeled images)"
            )
    return Closing(notes, results)
