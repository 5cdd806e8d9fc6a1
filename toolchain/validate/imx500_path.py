"""The AI Camera's network in ``validate``, beside the TFLite files, with the same figures.

``RUN/imx500/model_q.keras`` is MCT's quantized model: a fake-quant Keras model
that computes what the sensor computes, so it answers the held-out images on
this CPU, in the IMX500 venv (``toolchain.quantize.imx500``). It is measured
against the model it was made from, the run's calibrated classes (the sensor
network has no out-of-class output): both sides get a zero ``unknown`` column
when the run has one, so its entry has the report's labels, and a photo Keras
would call unknown is not counted against the network. Its figures are gated
like a TFLite file's. The sensor crops and scales the camera's frame itself, so
its "device path" is edgetl's decode and resize of the same files: what can be
measured off the camera.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edge import metrics
from edge.errors import MissingEnvironment
from edge.metrics import disagreements
from toolchain.confidence.shipped import classes_only, has_out_of_class
from toolchain.core.pixel_file import predict_in_batches
from toolchain.core.progress import Log
from toolchain.core.rundir import IMX500_EXPORT, RunDir
from toolchain.quantize.imx500.process import imx500_python, run_worker
from toolchain.validate.evalset import EvalSet
from toolchain.validate.figures import compare, measured_elsewhere

MODEL = "model_q.keras"
BATCH = 64
DECODE = "edgetl's decode (the sensor scales its own frame)"


def export_figures(folder: Path) -> Dict[str, Any]:
    """The export's own report, read leniently: it only names the method in the entry."""
    try:
        report = json.loads((folder / "imx500_report.json").read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def has_network(run: RunDir) -> bool:
    """Whether ``run`` holds an IMX500 export to measure."""
    return (run.path / IMX500_EXPORT / MODEL).is_file()


def with_unknown_column(probs: np.ndarray, width: int) -> np.ndarray:
    """Class scores widened to the report's labels (a zero ``unknown`` column)."""
    if probs.shape[1] == width:
        return probs
    return np.concatenate([probs, np.zeros((len(probs), width - probs.shape[1]), probs.dtype)], 1)


def size_of(pixels: Any) -> tuple:
    """One image's shape in a pixel set (an array or validate's disk-backed rows)."""
    return tuple(np.asarray(pixels[0:1]).shape[1:])


def network_answers(python: str, model: Path, pixels: np.ndarray, scratch: Path, log: Log):
    """The quantized network's probabilities on ``pixels``, from the IMX500 venv."""
    work = Path(tempfile.mkdtemp(prefix=".imx500-validate-", dir=scratch))
    try:
        (work / "spec.json").write_text(json.dumps({"model": str(model.resolve())}))
        rows = np.lib.format.open_memmap(
            work / "pixels.npy", mode="w+", dtype=np.uint8, shape=(len(pixels), *size_of(pixels))
        )
        for start in range(0, len(pixels), BATCH):  # a batch at a time: the set stays on disk
            rows[start : start + BATCH] = pixels[start : start + BATCH]
        rows.flush()
        del rows
        run_worker(python, "predict", work, log, who="validate")
        return np.load(work / "probs.npz")["test"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def imx500_entry(
    run: RunDir,
    config: Dict[str, Any],
    keras_model: Any,
    keras_probs: np.ndarray,
    eval_set: EvalSet,
    labels: List[str],
    log: Log,
    required: bool = False,
) -> Optional[Dict[str, Any]]:
    """The IMX500 network's model entry, or None when the run has none (or, with a note,
    when the IMX500 venv is not here to run it, unless ``required``: the run has
    nothing else to validate)."""
    folder = run.path / IMX500_EXPORT
    model = folder / MODEL
    if not has_network(run):
        return None
    try:
        python = imx500_python()
    except MissingEnvironment as error:
        if required:  # nothing else to validate: measuring nothing must not pass
            raise
        log(f"note: {folder} is not measured: {error}")
        return None
    start = time.perf_counter()
    keras = keras_probs
    if has_out_of_class(config):
        keras = with_unknown_column(
            predict_in_batches(classes_only(keras_model), eval_set.pixels), len(labels)
        )
    answers = network_answers(python, model, eval_set.pixels, run.path, log)
    probs = with_unknown_column(metrics.require_finite(answers, str(model)), len(labels))
    figures = compare(keras, probs, eval_set.labels, labels)
    method = str(export_figures(folder).get("method", "?")).upper()
    packed = folder / "packerOut.zip"
    return {
        "path": str(packed),
        "quant": f"imx500 (MCT {method})",
        "runtime": "MCT's quantized Keras model (the sensor's arithmetic) in the IMX500 venv",
        "size_bytes": packed.stat().st_size if packed.is_file() else 0,
        **figures,
        "reference": "the run's calibrated classes (the network has no out-of-class output)",
        "device_path": measured_elsewhere(figures, DECODE, len(eval_set.labels), []),
        "disagreements": disagreements(keras, probs, eval_set.labels, eval_set.paths, labels),
        "seconds": round(time.perf_counter() - start, 3),
    }
