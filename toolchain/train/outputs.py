"""What a finished training run writes, into the staging folder before the commit.

    model.keras          float32, raw 0..255 RGB in, calibrated probabilities out, the
                         last one "unknown" (``toolchain.confidence.shipped``)
    history.json         per-epoch metrics of both phases, from their CSV logs
    splits.json          which files went where (the same as checkpoints/splits.json)
    labels.txt           class names in output order
    confusion_val.png    the Keras model on the val split
    reliability.png      the test split's scores before and after calibration (after: at
                         the temperature the val split fits alone, so held out)
    training_curves.png  accuracy and loss per epoch, the fine-tuning start marked
    train_report.json    how the run went: data, timings, epochs, accuracy
    config.json          what every later step reads: options, labels, input contract

The two reports share their numbers (options, counts, seconds, top-1), taken
here from one place so they cannot disagree. ``toolchain.train.runstate.commit``
then moves the set into the run folder, ``config.json`` last.
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edge import atomic
from edge.answer import UNKNOWN_ANSWER
from edge.image import DEFAULT_RESIZE, RESIZE_DESCRIPTION
from edge.metrics import confusion_matrix
from toolchain import __version__
from toolchain.core.options import TrainOptions
from toolchain.core.pixel_file import predict_in_batches
from toolchain.core.plots import confusion_matrices, reliability_diagram, training_curves
from toolchain.core.progress import Log
from toolchain.core.rundir import LOG_FILES, RunDir
from toolchain.train.confidence_fit import ConfidenceFit
from toolchain.train.data import SPLITS, TrainingData
from toolchain.train.phases import Timings

INPUT_CONTRACT = {
    "dtype": "float32 RGB pixels in 0..255 (uint8 for INT8 exports)",
    "normalization": {"mean": [0.0], "std": [1.0], "inside_model": "x / 127.5 - 1"},
    "resize": RESIZE_DESCRIPTION,
    "resize_filter": DEFAULT_RESIZE,  # read by edge.classifier: the device resizes the same way
    "color_order": "RGB",
}


@dataclass(frozen=True)
class Evaluation:
    """The saved (float32) Keras model on the held-out splits."""

    top1: Dict[str, float]  # val, test; NaN for an empty split
    val_predicted: np.ndarray  # the predicted class of each val image
    probabilities: Tuple[np.ndarray, ...] = ()  # val's and test's, checked finite before saving


def evaluate(model: Any, data: TrainingData) -> Evaluation:
    """Top-1 among the trained classes: the out-of-class answer is reported on its own
    (``train_report.json``'s ``confidence``), so these figures compare with older runs."""
    top1, predicted, outputs = {}, {}, []
    n = len(data.labels)
    for split_name in ("val", "test"):
        split = data.splits[split_name]
        probabilities = predict_in_batches(model, split.pixels)
        outputs.append(probabilities)
        predicted[split_name] = probabilities[:, :n].argmax(axis=1)
        y = split.class_indices
        top1[split_name] = float(np.mean(predicted[split_name] == y)) if len(y) else float("nan")
    return Evaluation(top1, predicted["val"], tuple(outputs))


def write_outputs(
    staged: Path,
    working_logs: Path,
    model: Any,
    options: TrainOptions,
    data: TrainingData,
    evaluation: Evaluation,
    timings: Timings,
    log: Log,
    confidence: Optional[ConfidenceFit] = None,
) -> None:
    """Every file of the new run, into ``staged``; the caller commits them."""
    staged.mkdir(parents=True, exist_ok=True)
    if len(data.splits["val"].class_indices):
        _plot_confusion(staged, data, evaluation.val_predicted)
    save_model(model, RunDir(staged).model)
    history, head_epochs = read_csv_history([working_logs / name for name in LOG_FILES])
    atomic.write_json(RunDir(staged).history, {"fine_tune_start_epoch": head_epochs, **history})
    atomic.write_json(RunDir(staged).splits, data.splits_json)
    in_model = confidence is not None and confidence.report["out_of_class"]["in_model"]
    outputs = data.labels + ([UNKNOWN_ANSWER] if in_model else [])  # in the model's output order
    atomic.write_text(RunDir(staged).labels_file, "\n".join(outputs) + "\n")
    try:
        training_curves(history, head_epochs, RunDir(staged).training_curves)
    except ImportError:
        log("note: matplotlib is not installed; training_curves.png not written")
    if confidence is not None and confidence.reliability:
        with contextlib.suppress(ImportError):
            reliability_diagram(confidence.reliability, RunDir(staged).reliability)
    _write_reports(staged, options, data, evaluation, timings, history, head_epochs, confidence)


def save_model(model: Any, path: Path) -> None:
    """Saved under a temporary name (which keeps the ``.keras`` suffix Keras insists on),
    synced and renamed: a kill never leaves half a model under the final name."""
    with atomic.atomic_path(path) as tmp:
        model.save(tmp)


def read_csv_history(paths: List[Path]) -> Tuple[Dict[str, List[float]], int]:
    """Per-epoch metrics from the phases' CSV logs; the last row of a repeated epoch wins
    (an epoch interrupted after its CSV row but before its checkpoint is redone)."""
    history: Dict[str, List[float]] = {}
    head_epochs = 0
    for index, path in enumerate(paths):
        if not path.is_file():
            continue
        rows: Dict[int, Dict[str, str]] = {}
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                rows[int(row["epoch"])] = row
        for epoch in sorted(rows):
            for key, value in rows[epoch].items():
                if key not in ("epoch", "learning_rate"):
                    history.setdefault(key, []).append(float(value))
        if index == 0:
            head_epochs = len(rows)
    return history, head_epochs


def _plot_confusion(staged: Path, data: TrainingData, predicted: np.ndarray) -> None:
    y = data.splits["val"].class_indices
    matrix = confusion_matrix(y, predicted, len(data.labels))
    # No matplotlib: the figure is optional, the numbers are in train_report.json.
    with contextlib.suppress(ImportError):
        confusion_matrices(
            {"validation split (Keras)": matrix}, data.labels, RunDir(staged).confusion_val
        )


def _write_reports(
    staged: Path,
    options: TrainOptions,
    data: TrainingData,
    evaluation: Evaluation,
    timings: Timings,
    history: Dict[str, List[float]],
    head_epochs: int,
    confidence: Optional[ConfidenceFit],
) -> None:
    """train_report.json and config.json, from the same numbers."""
    options_dict = options.to_dict()
    seconds = {k: round(v, 2) for k, v in {"data": data.seconds, **timings.seconds}.items()}
    top1 = evaluation.top1
    per_class = {
        split: {
            data.labels[i]: int(n)
            for i, n in enumerate(
                np.bincount(data.splits[split].class_indices, minlength=len(data.labels))
            )
        }
        for split in SPLITS
    }
    val_loss = history.get("val_loss", [])
    atomic.write_json(
        RunDir(staged).train_report,
        {
            "edgetl_version": __version__,
            "data": data.description,
            "counts": data.counts,
            "per_class": per_class,
            "skipped": [[path, reason] for path, reason in data.skipped],
            "options": options_dict,
            "seconds": seconds,
            "images_per_second": timings.images_per_second,
            # The median skips the first epoch's graph tracing.
            "epoch_seconds_median": {
                phase: round(float(np.median(values)), 3)
                for phase, values in timings.epoch_seconds.items()
                if values
            },
            "epochs_run": {
                "head": head_epochs,
                "fine_tune": len(history.get("loss", [])) - head_epochs,
            },
            "best_epoch": int(np.argmin(val_loss)) + 1 if val_loss else None,
            "val_top1": top1["val"],
            "test_top1": top1["test"],
            "confidence": confidence.report if confidence else None,
        },
    )
    atomic.write_json(
        RunDir(staged).config,
        {
            "edgetl_version": __version__,
            "options": options_dict,
            "labels": data.labels,
            "image_size": options.image_size,
            "input": INPUT_CONTRACT,
            "data": {
                "description": data.description,
                "root": str(data.root),
                "counts": data.counts,
            },
            "results": {"val_top1": top1["val"], "test_top1": top1["test"]},
            # The model's extra last output, when it has one: what every later step reads.
            "unknown": (
                {
                    "label": UNKNOWN_ANSWER,
                    "index": len(data.labels),
                    **confidence.report["out_of_class"],
                }
                if confidence and confidence.report["out_of_class"]["in_model"]
                else None
            ),
            "temperature": confidence.report["temperature"] if confidence else None,
            "seconds": seconds,
        },
    )
