"""One TFLite file in ``validate``: opened on the run's labels, measured, logged.

Every figure ``validate`` reports for a file comes from here: the tensor-level
comparison with Keras on the decoded images, the device path (the file's own
decode and resize, as ``edgetl classify`` runs it) and the worst disagreements.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edge import metrics
from edge.classifier import Classifier, probabilities_of
from edge.errors import BadInput
from edge.gate import drop_text
from edge.metrics import disagreements
from toolchain.core.progress import Log
from toolchain.core.text import few, single_line
from toolchain.validate.evalset import EvalSet
from toolchain.validate.figures import compare, device_path_figures


def label_mismatch(path: Path, found: Sequence[Any], expected: Sequence[str]) -> str:
    """One line however long the label lists: the first label that differs, and counts."""
    i = next(
        (i for i, (a, b) in enumerate(zip(found, expected)) if a != b),
        min(len(found), len(expected)),
    )
    mine = single_line(repr(found[i]))[:40] if i < len(found) else "none"
    theirs = single_line(repr(expected[i]))[:40] if i < len(expected) else "none"
    return (
        f"{single_line(path)}: its labels are not the run's (label #{i + 1}: {mine} vs {theirs}; "
        f"{len(found)} vs {len(expected)} classes; its labels {few(found)}); validate it "
        "with the run it was exported from, or export it again from this run"
    )


def open_classifier(
    path: Path, runtime: Optional[str], labels: List[str], device_resize: Optional[str]
) -> Classifier:
    """The model's interpreter, checked to classify into the run's labels."""
    classifier = Classifier(path, runtime=runtime)
    if classifier.labels != labels:
        raise BadInput(label_mismatch(path, classifier.labels, labels))
    if device_resize:
        classifier.set_resize(device_resize)
    return classifier


def model_entry(
    path: Path,
    classifier: Classifier,
    keras_probs: np.ndarray,
    eval_set: EvalSet,
    labels: List[str],
) -> Dict[str, Any]:
    """Every figure of one model: tensor level, device path, worst disagreements."""
    tflite_start = time.perf_counter()
    probs = metrics.require_finite(probabilities_of(classifier, eval_set.pixels), str(path))
    device = device_path_figures(classifier, path, keras_probs, eval_set)
    return {
        "path": str(path),
        "quant": str(classifier.card.metadata.get("quant", path.stem.replace("model_", ""))),
        "runtime": f"{classifier.runtime.name} {classifier.runtime.version}",
        "size_bytes": path.stat().st_size,
        **compare(keras_probs, probs, eval_set.labels, labels),
        "device_path": device,
        "disagreements": disagreements(keras_probs, probs, eval_set.labels, eval_set.paths, labels),
        "seconds": round(time.perf_counter() - tflite_start, 3),
    }


def log_model(entry: Dict[str, Any], keras_top1: float, n_images: int, log: Log) -> None:
    """One line of figures per model, and a warning when the device path left images out."""
    name = Path(entry["path"]).name
    device = entry["device_path"]
    log(
        f"{name}: top-1 {entry['top1']:.4f} vs keras {keras_top1:.4f} "
        f"({drop_text(entry['top1_drop_pts'], entry['worse_than_keras'])}), "
        f"agreement {entry['agreement']:.4f}, "
        f"device path {device['top1']:.4f} [{entry['runtime']}]"
    )
    if "edgetl_runner_agreement" in entry:
        log(
            f"{name}: MediaPipe decides as edgetl's runner does on "
            f"{entry['edgetl_runner_agreement']:.4f} of the files (its own JPEG decode and resize)"
        )
    if device["skipped"]:
        path, reason = device["skipped"][0]
        log(
            f"warning: {name}: the device path could not classify {len(device['skipped'])} of "
            f"{n_images} images (first: {single_line(path)}: {reason}); its figures cover the "
            f"{device['n_images']} it classified"
        )
