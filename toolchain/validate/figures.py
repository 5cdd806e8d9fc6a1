"""The figures of one model against Keras on the same images.

Pure functions over probabilities (``compare``, ``gate_failures``; the worst
disagreements are ``edge.metrics.disagreements``, shared with the device) and
the device path: the image *files* through the edge
runner's own decode-and-resize, driven by what the model file says, exactly
as ``edgetl classify`` on a Pi. Device-path figures cover only the images it
classified (against Keras on the same ones); any it could not are listed with
their reasons, never counted as class 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edge import metrics
from edge.classifier import Classifier, probabilities_of
from edge.errors import BadInput
from edge.image import DEFAULT_RESIZE
from edge.pipeline import classify_files
from toolchain.core.budget import Budget
from toolchain.core.text import single_line
from toolchain.validate.evalset import EvalSet


def device_probabilities(classifier: Classifier, eval_set: EvalSet) -> tuple:
    """The files through the device runner's decode (with the classifier's resize).

    Returns the probabilities of the images the device path classified, their
    indices into ``eval_set``, and ``[path, reason]`` for each it did not.
    """
    if classifier.resize == DEFAULT_RESIZE:
        everything = np.arange(len(eval_set.paths), dtype=np.int64)
        return probabilities_of(classifier, eval_set.pixels), everything, []
    results = classify_files(classifier, [Path(p) for p in eval_set.paths], k=1)
    return match_results(eval_set.paths, results, len(classifier.labels))


def match_results(paths: Sequence[str], results: Any, n_classes: int) -> tuple:
    """Pair device results with ``paths`` by path, never by position.

    A result with an error, or a path with no result at all (a decoder that
    stopped early), is skipped with its reason instead of leaving a row of
    zeros that would read as class 0.
    """
    found: Dict[str, np.ndarray] = {}
    errors: Dict[str, str] = {}
    for result in results:
        key = str(Path(result.path))
        if result.error or result.probabilities is None:
            errors[key] = result.error or "no probabilities"
        else:
            found[key] = result.probabilities
    kept, skipped = [], []
    for i, path in enumerate(paths):
        key = str(Path(path))
        if key in found:
            kept.append(i)
        else:
            reason = errors.get(key, "the device path returned no result for it")
            skipped.append([str(path), single_line(reason)])
    probs = np.zeros((len(kept), n_classes), dtype=np.float32)
    for row, i in enumerate(kept):
        probs[row] = found[str(Path(paths[i]))]
    return probs, np.array(kept, dtype=np.int64), skipped


def device_path_figures(
    classifier: Classifier, model_path: Path, keras_probs: np.ndarray, eval_set: EvalSet
) -> Dict[str, Any]:
    """Device-path figures over the images it classified, against Keras on that subset."""
    probs, kept, skipped = device_probabilities(classifier, eval_set)
    if not len(kept):
        first = skipped[0] if skipped else ["(none)", "no images"]
        raise BadInput(
            f"{single_line(model_path)}: the device path (resize {classifier.resize}) classified "
            f"none of the {len(eval_set.paths)} images; first: {single_line(first[0])}: {first[1]}; "
            "check that the edge runner reads them: `edgetl classify MODEL IMAGE`"
        )
    probs = metrics.require_finite(probs, f"{single_line(model_path)} (device path)")
    keras_subset, truth = keras_probs[kept], eval_set.labels[kept]
    top1 = metrics.topk_accuracy(probs, truth, 1)
    return {
        "resize": classifier.resize,
        "same_decoder_as_training": classifier.resize == DEFAULT_RESIZE,
        "top1": top1,
        "top1_drop_pts": metrics.drop_points(metrics.topk_accuracy(keras_subset, truth, 1), top1),
        "worse_than_keras": metrics.worse_evidence(keras_subset, probs, truth),
        "agreement": metrics.top1_agreement(keras_subset, probs),
        "mean_abs_prob_diff": float(np.abs(keras_subset - probs).mean()),
        "n_images": int(len(kept)),
        "skipped": skipped,
    }


def measured_elsewhere(
    figures: Dict[str, Any], resize: Any, n_images: int, skipped: List[List[str]]
) -> Dict[str, Any]:
    """The ``device_path`` of a runtime whose only path is the device's (another
    environment, or MediaPipe): its figures are ``compare``'s on the files it read."""
    keys = ("top1", "top1_drop_pts", "worse_than_keras", "agreement", "mean_abs_prob_diff")
    return {
        "resize": resize,
        "same_decoder_as_training": resize == DEFAULT_RESIZE,
        **{key: figures[key] for key in keys},
        "n_images": int(n_images),
        "skipped": skipped,
    }


def accuracy_with_interval(probabilities: np.ndarray, labels: np.ndarray, k: int) -> tuple:
    accuracy = metrics.topk_accuracy(probabilities, labels, k)
    hits = int(round(accuracy * len(labels)))
    return accuracy, list(metrics.wilson_interval(hits, len(labels)))


def compare(
    keras_probs: np.ndarray, probs: np.ndarray, labels: np.ndarray, names: Sequence[str]
) -> Dict[str, Any]:
    """Every figure of one model against Keras on the same images."""
    keras_top1 = metrics.topk_accuracy(keras_probs, labels, 1)
    top1, top1_ci = accuracy_with_interval(probs, labels, 1)
    top5, top5_ci = accuracy_with_interval(probs, labels, 5)
    difference = np.abs(keras_probs - probs)
    n_classes = len(names)
    keras_per_class = metrics.per_class_accuracy(labels, keras_probs.argmax(axis=1), n_classes)
    per_class = metrics.per_class_accuracy(labels, probs.argmax(axis=1), n_classes)
    return {
        "top1": top1,
        "top1_ci95": top1_ci,
        "top5": top5,
        "top5_ci95": top5_ci,
        "top1_drop_pts": metrics.drop_points(keras_top1, top1),
        "worse_than_keras": metrics.worse_evidence(keras_probs, probs, labels),
        "agreement": metrics.top1_agreement(keras_probs, probs),
        "n_images": int(len(labels)),
        "calibration_error": metrics.top1_calibration_error(probs, labels),
        "keras_calibration_error": metrics.top1_calibration_error(keras_probs, labels),
        "calibration_noise": metrics.top1_calibration_noise(probs),
        "mean_abs_prob_diff": float(difference.mean()) if difference.size else 0.0,
        "max_abs_prob_diff": float(difference.max()) if difference.size else 0.0,
        "per_class": {
            name: {
                "n": int(np.sum(labels == i)),
                "keras": _nan_to_none(keras_per_class[i]),
                "tflite": _nan_to_none(per_class[i]),
                "change_pts": _nan_to_none(100 * (per_class[i] - keras_per_class[i])),
            }
            for i, name in enumerate(names)
        },
        "confusion": metrics.confusion_matrix(labels, probs.argmax(axis=1), n_classes).tolist(),
    }


def _nan_to_none(value: float) -> Optional[float]:
    return None if np.isnan(value) else float(value)


def p_worse(figures: Dict[str, Any]) -> float:
    """The sign test's p of one set of figures; 0 (the point rule) for figures written
    before edgetl measured it, so an older report is never judged more leniently."""
    evidence = figures.get("worse_than_keras")
    return float(evidence["p_worse"]) if isinstance(evidence, dict) else 0.0


def gated(measured: Dict[str, Any], budget: Budget) -> Dict[str, Any]:
    """The figures a budget is checked on: the worse of tensor level and device path
    (the drop of whichever side misses, else the larger; the lower agreement)."""
    sides = [measured, measured["device_path"]]
    drop_side = max(
        sides,
        key=lambda f: (
            bool(budget.misses(f["top1_drop_pts"], 1.0, p_worse(f))),
            f["top1_drop_pts"],
        ),
    )
    agreement_side = min(sides, key=lambda f: f["agreement"])
    return {
        "top1_drop_pts": drop_side["top1_drop_pts"],
        "p_worse": p_worse(drop_side),
        "agreement": agreement_side["agreement"],
        "agreement_images": agreement_side.get("n_images"),
    }


def gate_failures(models: List[Dict[str, Any]], budget: Budget) -> List[str]:
    """One phrase per model past a bound; the worse of tensor-level and device-path counts."""
    problems = []
    for m in models:
        detail = (
            f" (tflite {m['top1']:.4f}, device path {m['device_path']['top1']:.4f}, "
            f"agreement {m['agreement']:.4f})"
        )
        figures = gated(m, budget)
        for miss in budget.misses(
            figures["top1_drop_pts"],
            figures["agreement"],
            figures["p_worse"],
            figures["agreement_images"],
        ):
            problems.append(f"{Path(m['path']).name} {miss}" + (detail if "drop" in miss else ""))
    return problems
