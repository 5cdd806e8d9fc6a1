"""``edgetl export --qat``: quantization-aware fine-tuning for a better *pure* INT8 model.

Post-training quantization (PTQ) rounds a model trained in float; on flowers128 its
pure-INT8 agreement with Keras stays near 0.90 however many calibration images
it gets. QAT fine-tunes the model for a few epochs with INT8 rounding simulated
in the forward pass, against the float model's own probabilities (distillation),
so the INT8 model learns to make the float model's decisions.

The fine-tuning runs in ``qat_worker.py``, in a Python of its own (``.venv-qat``
or ``EDGETL_QAT_PYTHON``; the worker's docstring says why). This side writes the
work folder (weights by layer name, training pixels and the float model's
probabilities on them, calibration pixels), streams the worker's progress, and
returns the flatbuffer. Whether QAT's model or PTQ's ships is decided by the
export on the decision images (``budget``), never assumed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from edge import atomic
from edge.errors import MissingEnvironment
from edge.image import load_many
from toolchain import fallback
from toolchain.budget import Budget, Judge, evenly
from toolchain.pixel_file import predict_in_batches
from toolchain.progress import Log
from toolchain.rundir import RunDir

QAT_VENV = ".venv-qat"
QAT_PACKAGES = "'edgetl[qat-cpu]' (or [qat] on a GPU workstation)"
TRAIN_IMAGES = 2000  # most training images one QAT epoch sees
LEARNING_RATE = 1e-5
WORKER = Path(__file__).with_name("qat_worker.py")


EXIT_SETUP = 3  # the worker's code for a missing package (qat_worker.EXIT_SETUP)


def install_line() -> str:
    return (
        f"python3 -m venv {QAT_VENV} && {QAT_VENV}/bin/pip install {QAT_PACKAGES}, "
        "or set EDGETL_QAT_PYTHON"
    )


def qat_python() -> str:
    """The interpreter that runs the worker: ``EDGETL_QAT_PYTHON``, else ``.venv-qat``
    in the folder the user works in; exit 3 with the install line when neither exists."""
    given = os.environ.get("EDGETL_QAT_PYTHON")
    candidate = Path(given) if given else Path.cwd() / QAT_VENV / "bin" / "python"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    where = f"EDGETL_QAT_PYTHON={given}" if given else f"{QAT_VENV}/bin/python"
    raise MissingEnvironment(
        f"--qat needs its own Python with tensorflow-model-optimization and tf-keras, and "
        f"{where} is not there: {install_line()}"
    )


def layer_weights(model: Any) -> Dict[str, np.ndarray]:
    """Every layer's weights as ``name/index`` arrays, nested models flattened."""
    out: Dict[str, np.ndarray] = {}
    for layer in model.layers:
        if hasattr(layer, "layers"):
            out.update(layer_weights(layer))
            continue
        for index, array in enumerate(layer.get_weights()):
            out[f"{layer.name}/{index}"] = np.asarray(array)
    return out


def fine_tune(
    run: RunDir,
    model: Any,
    calibration: np.ndarray,
    config: Dict[str, Any],
    io: str,
    epochs: int,
    log: Log,
    exclude: Sequence[Any] = (),
    python: Optional[str] = None,
) -> Tuple[Optional[bytes], Dict[str, Any]]:
    """QAT in the worker process on the training images not in ``exclude`` (the
    decision images): ``(flatbuffer, report)``, or ``(None, report)`` with the reason
    when the worker could not produce a usable model."""
    python = python or qat_python()
    options = config.get("options", {})
    size = int(config["image_size"])
    paths, labels = run.split_files("train", len(config["labels"]))
    excluded = set(exclude)
    paths = [p for p in paths if p not in excluded]
    paths, _ = evenly(paths, [0] * len(paths), TRAIN_IMAGES)
    pixels, kept, _ = load_many(paths, size)
    if not kept:
        return None, {"error": "no training image could be read"}
    teacher = predict_in_batches(model, pixels)
    work = run.path / ".qat-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        spec = {
            "image_size": size,
            "alpha": float(options.get("alpha", 1.0)),
            "num_classes": len(config["labels"]),
            "dropout": float(options.get("dropout", 0.2)),
            "epochs": int(epochs),
            "batch_size": int(options.get("batch_size", 32)),
            "learning_rate": LEARNING_RATE,
            "seed": int(options.get("seed", 0)),
            "io": io,
        }
        (work / "spec.json").write_text(json.dumps(spec))
        np.savez(work / "weights.npz", **layer_weights(model))
        np.save(work / "train.npy", pixels)
        np.save(work / "teacher.npy", teacher.astype(np.float32))
        np.save(work / "calibration.npy", calibration)
        log(
            f"qat: {epochs} epoch(s) of quantization-aware distillation on {len(kept)} training images"
        )
        code = run_worker(python, work, log)
        report: Dict[str, Any] = {"exit_code": code, "python": python, "train_images": len(kept)}
        if (work / "qat.json").is_file():
            report.update(json.loads((work / "qat.json").read_text()))
        if code != 0 or not (work / "model.tflite").is_file():
            report["error"] = f"the QAT worker exited {code}; see the qat: lines above"
            return None, report
        return (work / "model.tflite").read_bytes(), report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_worker(python: str, work: Path, log: Log) -> int:
    """The worker in an isolated interpreter (``-I``: no user site, no script folder on
    the path), its ``qat:`` lines passed through as progress."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        process = subprocess.Popen(
            [python, "-I", str(WORKER), str(work)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
        )
    except OSError as error:
        raise MissingEnvironment(
            f"--qat: {python} does not start ({error.strerror or error}); {install_line()}"
        ) from None
    tail = []
    assert process.stderr is not None
    for line in process.stderr:
        line = line.rstrip()
        if line.startswith("qat: "):
            log(line)
        elif line:
            tail = (tail + [line])[-5:]
    code = process.wait()
    if code != 0 and tail:
        log("qat: worker output: " + " | ".join(tail))
    if code == EXIT_SETUP:
        raise MissingEnvironment(f"--qat: {python} lacks a package QAT needs; {install_line()}")
    sys.stderr.flush()
    return code


def qat_or_ptq(
    run: RunDir,
    model: Any,
    calibration: np.ndarray,
    config: Dict[str, Any],
    io: str,
    epochs: int,
    ptq: bytes,
    card: Dict[str, Any],
    judge: Judge,
    budget: Budget,
    log: Log,
) -> Tuple[bytes, Dict[str, Any]]:
    """Run QAT, then measure it and PTQ's model on the decision images (none of which
    QAT trained on); QAT's model is returned only when it agrees with Keras more often
    without losing more top-1 than PTQ or the budget allows. The card says which."""
    flatbuffer, report = fine_tune(
        run, model, calibration, config, io, epochs, log, exclude=judge.decision.train_paths
    )
    scratch = run.path / atomic.partial_name(run.tflite("int8"))  # a kill leaves a temp name
    predict, _ = fallback.interpreter_callbacks(scratch, card)
    figures = {}
    try:
        for name, candidate in (("ptq", ptq), ("qat", flatbuffer)):
            if candidate is not None:
                figures[name] = judge.figures(predict(candidate, judge.decision.pixels))
    finally:
        scratch.unlink(missing_ok=True)
    report["decision"] = {name: f.json() for name, f in figures.items()}
    qat, ptq_figures = figures.get("qat"), figures["ptq"]
    wins = (
        qat is not None
        and qat.agreement > ptq_figures.agreement
        and (qat.drop_pts <= ptq_figures.drop_pts or qat.drop_pts <= budget.max_drop)
    )
    report["chosen"] = "qat" if wins else "ptq"
    if qat is None:
        report["why"] = f"QAT produced no model ({report.get('error', 'unknown')}); keeping PTQ"
    elif wins:
        report["why"] = f"QAT {qat.text()}; PTQ {ptq_figures.text()}"
    else:
        report["why"] = (
            f"QAT did not beat post-training quantization on the decision images "
            f"(QAT {qat.text()}; PTQ {ptq_figures.text()}); keeping PTQ"
        )
    log(f"qat: {'shipping the QAT model' if wins else 'keeping PTQ'}: {report['why']}")
    card["quantization"] = (
        f"quantization-aware training ({epochs} epoch(s), distilled from the float model)"
        if wins
        else "post-training"
    )
    return (flatbuffer if wins and flatbuffer is not None else ptq), report
