"""One classification session over a source: predictions out, a summary back.

Shared by ``edgetl classify`` and tests. With labeled folders
(``root/<class>/…``) it also counts top-1 accuracy, so a user can check the
model on the device itself with photos they collected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np

from edge.answer import decide, is_answered
from edge.classifier import Classifier
from edge.errors import BadInput
from edge.output import PredictionWriter
from edge.pipeline import Result, classify_frames
from edge.sources import Source


@dataclass
class Summary:
    classified: int = 0
    unreadable: List[str] = field(default_factory=list)
    seconds: float = 0.0
    labeled: int = 0
    correct: int = 0
    unknown_labels: Dict[str, int] = field(default_factory=dict)
    stage_ms: Dict[str, float] = field(default_factory=dict)
    interrupted: bool = False  # ended early: a closed window, Ctrl-C or SIGTERM
    stopped_by: str = ""  # "SIGINT" or "SIGTERM" when a signal ended it
    skipped: int = 0  # live camera frames passed over because a newer one had arrived
    answered: int = 0  # images answered with a class (not "unknown")
    out_of_class: int = 0  # images the model's own unknown output called out of class
    labeled_answered: int = 0  # labeled images answered with a class
    answered_correct: int = 0  # ... and the class was their label
    floor: float = 0.0  # the score an answer needed
    answers: bool = False  # the model can answer unknown (an out-of-class output or a floor)

    @property
    def images_per_s(self) -> float:
        return self.classified / self.seconds if self.seconds > 0 else 0.0

    @property
    def accuracy(self) -> Optional[float]:
        return self.correct / self.labeled if self.labeled else None

    @property
    def coverage(self) -> Optional[float]:
        """The share of classified images answered with a class."""
        return self.answered / self.classified if self.classified else None

    @property
    def answered_precision(self) -> Optional[float]:
        """Of the labeled images answered with a class, the share answered right."""
        return self.answered_correct / self.labeled_answered if self.labeled_answered else None


def answer_floor(classifier: Classifier, threshold: Optional[float]) -> float:
    """``--threshold`` when given, else the floor in the model's card."""
    return classifier.floor if threshold is None else float(threshold)


def nothing_classified(source: Source, summary: Summary) -> Optional[str]:
    """A folder where not one image could be read is a failed run, not an empty result.

    Otherwise the command would exit 0 with an empty prediction file, and a
    script would carry on as if the folder had been classified.
    """
    if source.kind != "folder" or summary.classified or summary.interrupted:
        return None
    if not summary.unreadable:  # an empty folder is refused earlier, by open_source
        return None
    return (
        f"{source.name}: none of the {len(summary.unreadable)} image(s) could be read "
        f"(first: {summary.unreadable[0]}); give a folder of JPEG/PNG images"
    )


def classify_source(
    classifier: Classifier,
    source: Source,
    k: int = 3,
    threshold: Optional[float] = None,
    writer: Optional[PredictionWriter] = None,
    on_result: Callable[[Result], Optional[bool]] = lambda result: None,
    count_labels: bool = False,
    stop_requested: Callable[[], str] = lambda: "",
) -> Summary:
    """Classify every frame of ``source``; ``on_result`` returning False ends the session
    (a closed preview window).

    ``stop_requested`` is asked after each result is written and reported: a signal's
    name ends the session there, at a row boundary (``edge.session`` sets it on Ctrl-C
    or SIGTERM). A KeyboardInterrupt raised anywhere in the loop ends it too. Either
    way the summary comes back with ``stopped_by`` set, so the caller can keep the
    rows finished before it and say so.
    """
    floor = answer_floor(classifier, threshold)
    summary = Summary(floor=floor, answers=classifier.unknown_index is not None or floor > 0)
    stages: Dict[str, List[float]] = {"decode": [], "resize": [], "invoke": [], "post": []}
    start = time.perf_counter()
    results: Optional[Iterator[Result]] = None
    try:
        frames = source.frames(classifier.image_size, stop_requested)
        live = source.kind == "camera"
        results = classify_frames(classifier, frames, k, live=live)
        for result in results:
            summary.skipped += result.skipped
            if result.error:
                if source.kind == "file":
                    raise BadInput(f"{result.error}; give a JPEG/PNG image or a folder of them")
                summary.unreadable.append(result.error)
            else:
                summary.classified += 1
                for stage in stages:
                    stages[stage].append(getattr(result, f"{stage}_ms"))
                answer = decide(
                    result.probabilities, classifier.labels, classifier.unknown_index, summary.floor
                )
                result.answer = answer
                answered = bool(is_answered(answer.score, answer.out_of_class, summary.floor))
                summary.answered += int(answered)
                summary.out_of_class += int(answer.out_of_class)
                if count_labels and result.label is not None:
                    if result.label in classifier.labels:
                        summary.labeled += 1
                        summary.correct += int(result.predictions[0].label == result.label)
                        if answered:
                            summary.labeled_answered += 1
                            summary.answered_correct += int(answer.answer == result.label)
                    else:
                        summary.unknown_labels[result.label] = (
                            summary.unknown_labels.get(result.label, 0) + 1
                        )
            if writer:
                writer.write(result)
            if on_result(result) is False:
                summary.interrupted = True
                break
            summary.stopped_by = stop_requested()
            if summary.stopped_by:
                summary.interrupted = True
                break
        if not summary.stopped_by and stop_requested():  # ended while waiting for a frame
            summary.interrupted, summary.stopped_by = True, stop_requested()
    except KeyboardInterrupt:  # a second signal, or Ctrl-C where no handler was set
        summary.interrupted, summary.stopped_by = True, stop_requested() or "SIGINT"
    finally:
        if results is not None:
            results.close()  # stops the decode thread now, not when garbage-collected
    summary.seconds = time.perf_counter() - start
    problem = nothing_classified(source, summary)
    if problem:
        raise BadInput(problem)
    summary.stage_ms = {s: round(float(np.mean(v)), 3) for s, v in stages.items() if v}
    return summary
