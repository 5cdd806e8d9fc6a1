"""``edgetl validate``: is the ``.tflite`` as accurate as the Keras model, and if not, where?

Two comparisons per model, on the same held-out images (the run's test
split, or any labeled folder given with ``--data``):

- **tensor level**: the images decoded once with the training preprocessing;
  the same pixels go through Keras (batched) and through the ``.tflite``
  (one reused interpreter). Differences here are the converter's doing.
- **device path**: the image *files* through the ``edge`` runner's own
  decode-and-resize, driven by what the model file says (``resize_filter`` in
  its card), exactly as ``edgetl classify`` on a Pi. A preprocessing mismatch
  between training and device shows up as the gap between the two figures.
  When the device would resize exactly as training did, the decoded pixels
  are reused instead of decoding every file twice. Its figures cover only the
  images it classified (against Keras on the same ones); any it could not are
  listed with their reasons, never counted as class 0.

``--max-drop`` / ``--min-agreement`` turn the figures into an exit code;
``--diagnose`` (or a failed gate) ranks INT8 layers by quantization error.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from edge import atomic, metrics
from edge.classifier import probabilities_of
from edge.errors import BadInput, GateFailed
from edge.image import RESIZE_FILTERS
from edge.reference import reference_json
from toolchain.confidence.far_rows import calibrated_as_export_does
from toolchain.confidence.shipped import has_out_of_class, output_labels
from toolchain.core import runjson
from toolchain.core.budget import Budget
from toolchain.core.failures import describe_failure
from toolchain.core.options import VALIDATE_RUNTIMES, ValidateOptions
from toolchain.core.pixel_file import predict_in_batches
from toolchain.core.plots import risk_coverage
from toolchain.core.progress import Log, stderr_log
from toolchain.core.rundir import RunDir
from toolchain.core.text import single_line
from toolchain.quantize.calibration import config_seed, representative_images
from toolchain.quantize.diagnose import layer_errors, short_name
from toolchain.validate import mediapipe_path, unknown
from toolchain.validate.elsewhere import environment_with, installed_here, model_entry_elsewhere
from toolchain.validate.evalset import EvalSet, check_model_paths, load_eval_set
from toolchain.validate.figures import (
    accuracy_with_interval,
    gate_failures,
)
from toolchain.validate.imx500_path import has_network, imx500_entry
from toolchain.validate.model_entry import log_model, model_entry, open_classifier
from toolchain.validate.report import parity_markdown, write_pictures


def check_validate_options(options: ValidateOptions) -> List[Path]:
    """Every option of ``edgetl validate``, checked before an image is read or a file
    written (a bad one must not leave a half-true parity.json); returns the model paths."""
    Budget.given(options.max_drop, options.min_agreement)  # its ranges, before any work
    resize, runtime = options.device_resize, options.runtime
    if resize is not None and resize not in RESIZE_FILTERS:
        raise BadInput(
            f"--device-resize {single_line(resize)!r}: choose one of {', '.join(RESIZE_FILTERS)}"
        )
    if runtime is not None and runtime not in VALIDATE_RUNTIMES:
        choices = ", ".join(VALIDATE_RUNTIMES)
        raise BadInput(f"--runtime {single_line(runtime)!r}: choose one of {choices}")
    if runtime == mediapipe_path.NAME and resize is not None:
        raise BadInput("--device-resize: MediaPipe decodes and resizes its own way; drop one")
    return check_model_paths(options.models)


def validate(
    run_dir: str | Path,
    options: ValidateOptions = ValidateOptions(),
    log: Log = stderr_log,
    out: Optional[RunDir] = None,
    budget: Optional[Budget] = None,
) -> Dict[str, Any]:
    """Write ``parity.json``, ``parity.md`` and plots (into ``out``, the run unless an
    export stages them elsewhere); raise ``GateFailed`` past a gate. The gate is
    ``budget`` (the export's, whole) or else the bounds given in ``options``."""
    given = check_validate_options(options)
    gate = budget or Budget.given(options.max_drop, options.min_agreement)
    run = RunDir(run_dir).require_trained()
    out = out or run
    config = run.read_config()
    classes = list(config["labels"])  # what the photos are labelled with
    labels = output_labels(config)  # what the model answers: the classes, then unknown
    size = int(config["image_size"])
    device = device_budget(run, gate)  # a damaged report: before any work
    model_paths = given or run.tflite_models()
    if not model_paths and (given or options.runtime or not has_network(run)):
        raise BadInput(f"{run.path}: no .tflite model; run `edgetl export {run.path}` first")
    if options.runtime not in (None, mediapipe_path.NAME) and not installed_here(options.runtime):
        environment_with(options.runtime, Path(model_paths[0]))  # nowhere: exit 3 before work

    start = time.perf_counter()
    eval_set = load_eval_set(run, options.data, size, classes)
    if len(eval_set.labels) == 0:
        raise BadInput(f"{run.path}: no readable images to validate on")
    log(f"validating on {len(eval_set.labels)} images ({eval_set.description})")
    if eval_set.missing_classes:
        log(f"note: no images for {', '.join(eval_set.missing_classes)}")

    # A typo in --unknown-data fails here, before any model is measured.
    outside = unknown.unknown_photos(options.unknown_data, size) if options.unknown_data else None
    keras_model = run.load_keras_model()
    keras_start = time.perf_counter()
    keras_probs = metrics.require_finite(
        predict_in_batches(keras_model, eval_set.pixels), f"the Keras model {run.model}"
    )
    report = base_report(eval_set, labels, keras_probs, time.perf_counter() - keras_start)
    reference = reference_json(
        eval_set.paths,
        eval_set.labels,
        keras_probs,
        labels,
        size,
        device,
        eval_set.description,
    )

    def measure_model(path: Path, reference_path: Path) -> Dict[str, Any]:
        """In this process, or through ``edgetl parity`` where the runtime lives."""
        if options.runtime == mediapipe_path.NAME:
            return mediapipe_path.model_entry(path, keras_probs, eval_set, labels)
        if options.runtime is not None and not installed_here(options.runtime):
            if options.device_resize:
                raise BadInput(
                    f"--device-resize needs --runtime {options.runtime} in this process; "
                    "here it runs in another environment"
                )
            digests = [image["sha256"] for image in reference["images"]]
            return model_entry_elsewhere(
                path, options.runtime, reference_path, digests, keras_probs, eval_set, labels
            )
        classifier = open_classifier(path, options.runtime, labels, options.device_resize)
        return model_entry(path, classifier, keras_probs, eval_set, labels)

    # The reference is committed with parity.json: a runtime in another environment
    # measures against its temporary copy, and a refused model leaves nothing behind.
    with atomic.atomic_path(out.parity_reference) as reference_path:
        atomic.write_json(reference_path, reference, durable=False)

        def entries() -> Iterator[Optional[Dict[str, Any]]]:
            """Each model measured when asked for, so each is logged as it is measured."""
            for path in model_paths:
                yield measure_model(path, Path(reference_path))
            if not given and options.runtime is None:  # the run's own: the AI Camera's too
                yield imx500_entry(
                    run, config, keras_model, keras_probs, eval_set, labels, log, not model_paths
                )

        for entry in filter(None, entries()):
            report["models"].append(entry)
            log_model(entry, report["keras"]["top1"], len(eval_set.paths), log)
        report["seconds"] = round(time.perf_counter() - start, 2)
        failing = gate_failures(report["models"], gate)
        report["gate"] = {
            "max_drop": gate.max_drop,
            "min_agreement": gate.min_agreement,
            "passed": not failing,
        }
        if failing or options.diagnose:
            report["diagnosis"] = diagnosis_or_note(run, keras_model, report, failing, log)
        if outside is not None:
            report["out_of_class"] = out_of_class_section(
                run, options, outside, keras_model, keras_probs, eval_set, labels, model_paths,
                out, log,
            )  # fmt: skip
        write_pictures(out, report, keras_probs, eval_set)
        atomic.write_text(out.parity_markdown, parity_markdown(report))
        atomic.write_json(out.parity, report)  # last: parity.json and the reference go together
    log(f"wrote {out.parity} and parity.md ({report['seconds']:.1f}s)")
    if failing:
        raise GateFailed("parity gate failed: " + "; ".join(failing))
    return report


def out_of_class_section(
    run: RunDir,
    options: ValidateOptions,
    outside: Tuple[np.ndarray, List[str]],
    keras_model: Any,
    keras_probs: np.ndarray,
    eval_set: EvalSet,
    labels: List[str],
    model_paths: Sequence[Path],
    out: RunDir,
    log: Log,
) -> Dict[str, Any]:
    """``--unknown-data``: Keras and every model on photos of none of the classes, each
    answering with its own card's floor (Keras with the files'). Measured in this
    process, with ``--runtime`` when it is installed here."""
    pixels, paths = outside
    runtime = options.runtime if options.runtime and installed_here(options.runtime) else None
    classes = len(run.read_config()["labels"])
    index = classes if len(labels) > classes else None
    section: Dict[str, Any] = {"data": options.unknown_data, "n_images": len(paths)}
    curves: Dict[str, Any] = {}
    section["models"] = {}
    floors = []
    for path in model_paths:
        classifier = open_classifier(Path(path), runtime, labels, options.device_resize)
        known = probabilities_of(classifier, eval_set.pixels)
        outside = probabilities_of(classifier, pixels)
        figures = unknown.figures(
            known, eval_set.labels, outside, classifier.unknown_index, classifier.floor
        )
        section["models"][Path(path).name] = figures
        curves[Path(path).name] = figures["risk_coverage"]
        floors.append(classifier.floor)
        log(
            f"{Path(path).name} on {len(paths)} out-of-class photos: "
            f"{figures['unknown_answered']:.1%} answered unknown, AUROC {figures['auroc']:.4f}; "
            f"known photos answered {figures['known_coverage']:.1%} at floor {classifier.floor:.3f}"
        )
    # Keras answers with the floor the files carry (one export writes the same into each).
    keras_unknown = predict_in_batches(keras_model, pixels)
    section["keras"] = unknown.figures(
        keras_probs, eval_set.labels, keras_unknown, index, floors[0] if floors else 0.0
    )
    curves = {"Keras": section["keras"]["risk_coverage"], **curves}
    with contextlib.suppress(ImportError):
        risk_coverage(curves, out.parity_picture("risk_coverage"))
    return section


def diagnosis_or_note(
    run: RunDir, keras_model: Any, report: Dict[str, Any], failing: List[str], log: Log
) -> Dict[str, Any]:
    """The INT8 diagnosis; when a gate failed, a diagnosis that cannot run is a note,
    so the verdict (exit 1) stands without it."""
    int8 = [m for m in report["models"] if m["quant"] == "int8"]
    try:
        return diagnosis(run, keras_model, int8, log)
    except Exception as error:
        if not failing:
            raise
        note = f"diagnosis not possible: {describe_failure(error)[1]}"
        log(f"note: {note}")
        return {"note": note}


def device_budget(run: RunDir, gate: Budget) -> Dict[str, Any]:
    """The gate ``edgetl parity`` applies on the device unless told otherwise, always
    whole. Bound by bound: this validate's flag, else the budget the export held
    (export_report.json), else the export's default (``Budget.of``). A bound left out
    would let the device pass a model at any agreement the export refused."""
    held = {} if gate.whole else runjson.read_export_budget(run.export_report, run.path) or {}
    chosen: Dict[str, Optional[float]] = {}
    sources: Dict[str, str] = {}
    for key, given in (("max_drop", gate.max_drop), ("min_agreement", gate.min_agreement)):
        for source, value in (("validate", given), ("export", held.get(key)), ("default", None)):
            if value is not None or source == "default":
                chosen[key], sources[key] = value, source
                break
    budget = Budget.of(chosen["max_drop"], chosen["min_agreement"])
    return {
        "max_drop": budget.max_drop,
        "min_agreement": budget.min_agreement,
        "sources": sources,
    }


def base_report(
    eval_set: EvalSet, labels: List[str], keras_probs: np.ndarray, keras_seconds: float
) -> Dict[str, Any]:
    """The report's Keras half: the reference every model is measured against."""
    keras_top1, keras_top1_ci = accuracy_with_interval(keras_probs, eval_set.labels, 1)
    keras_top5, keras_top5_ci = accuracy_with_interval(keras_probs, eval_set.labels, 5)
    return {
        "n_images": int(len(eval_set.labels)),
        "data": eval_set.description,
        "labels": labels,
        "missing_classes": eval_set.missing_classes,
        "keras": {
            "top1": keras_top1,
            "top1_ci95": keras_top1_ci,
            "top5": keras_top5,
            "top5_ci95": keras_top5_ci,
            "calibration_error": metrics.top1_calibration_error(keras_probs, eval_set.labels),
            "calibration_noise": metrics.top1_calibration_noise(keras_probs),
            "confusion": metrics.confusion_matrix(
                eval_set.labels, keras_probs.argmax(axis=1), len(labels)
            ).tolist(),
            "seconds": round(keras_seconds, 3),
        },
        "models": [],
        "skipped": [list(item) for item in eval_set.skipped],
    }


def diagnosis(
    run: RunDir, keras_model: Any, int8_models: List[Dict[str, Any]], log: Log
) -> Dict[str, Any]:
    """Rank INT8 layers by quantization error (TFLite's QuantizationDebugger)."""
    if not int8_models:
        return {"note": "no INT8 model to diagnose"}
    config = run.read_config()
    seed = config_seed(run, config)
    calibration, _ = representative_images(run, 64, seed, int(config["image_size"]))
    if not len(calibration):
        return {"note": "no readable training images to run the debugger on"}
    if has_out_of_class(config):
        calibration = calibrated_as_export_does(keras_model, calibration, seed)
    start = time.perf_counter()
    layers = layer_errors(keras_model, calibration, run.export_log, limit=10)
    for layer in layers:
        layer["layer"] = short_name(layer["tensor_name"])
    log(
        "largest INT8 error per channel (rmse / channel spread; well under 0.1 is healthy): "
        + ", ".join(f"{layer['layer']} {layer['channel_error']:.2f}" for layer in layers[:5])
    )
    return {
        "method": "tf.lite.experimental.QuantizationDebugger on 64 training images "
        "(and, for a model with the unknown output, their scrambled copies and any far rows)",
        "seconds": round(time.perf_counter() - start, 2),
        "layers": layers,
    }
