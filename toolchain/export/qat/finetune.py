"""``edgetl export --qat``: quantization-aware fine-tuning for a better *pure* INT8 model.

Post-training quantization (PTQ) rounds a model trained in float; on flowers128 its
pure-INT8 agreement with Keras stays near 0.90 however many calibration images
it gets. QAT fine-tunes the model for a few epochs with INT8 rounding simulated
in the forward pass, against the float model's own probabilities (distillation),
so the INT8 model learns to make the float model's decisions.

The fine-tuning runs in ``worker.py``, in a Python of its own (``.venv-qat``
or ``EDGETL_QAT_PYTHON``; the worker's docstring says why). Whether QAT's model
or PTQ's ships is decided by the export on the decision images (``budget``),
never assumed.

How the worker is supervised (no leftovers, no hang, no silent crash) is
``supervisor``'s docstring.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge import atomic
from toolchain.core.budget import Budget
from toolchain.core.pixel_file import (
    Rows,
    batches,
    check_free_space,
    decode_to_file,
    predict_in_batches,
)
from toolchain.core.progress import Log
from toolchain.core.rundir import RunDir
from toolchain.core.venvs import own_python
from toolchain.export.qat.supervisor import (
    EXIT_FAILED,
    QAT_VENV,
    WorkerCrashed,
    install_line,
    run_worker,
    stall_seconds,
)
from toolchain.quantize import fallback
from toolchain.validate.decision import Judge, evenly

# Most training images QAT fine-tunes on. QAT only nudges a trained model toward
# its own INT8 rounding, so a few thousand images suffice, and the count bounds
# the decoded pixels on disk (2,000 at 224 px: 300 MB) and one epoch's time. The
# worker reads them back a batch at a time, so memory does not grow with it.
TRAIN_IMAGES = 2000
LEARNING_RATE = 1e-5


def qat_python() -> str:
    """The interpreter that runs the worker: ``EDGETL_QAT_PYTHON``, else ``.venv-qat``
    in the folder the user works in; exit 3 with the install line when neither exists.
    The stall limit is checked here too, before any work."""
    stall_seconds()
    return own_python(
        "EDGETL_QAT_PYTHON",
        QAT_VENV,
        "--qat needs its own Python with tensorflow-model-optimization and tf-keras",
        install_line(),
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


def spill(rows: Rows, folder: Path, dtype: Any) -> IO[bytes]:
    """``rows`` as raw bytes in an unlinked temporary file in ``folder``, a batch at a
    time: the worker maps it by descriptor, and no kill leaves it behind."""
    handle = tempfile.TemporaryFile(dir=folder, prefix=".edgetl-qat-")  # noqa: SIM115 (the caller closes it)
    for batch in batches(rows, 256):
        handle.write(np.ascontiguousarray(batch, dtype=dtype).tobytes())
    handle.flush()
    return handle


def fine_tune(
    run: RunDir,
    model: Any,
    calibration: Rows,
    config: Dict[str, Any],
    io: str,
    epochs: int,
    log: Log,
    exclude: Sequence[Any] = (),
    python: Optional[str] = None,
) -> Tuple[Optional[bytes], Dict[str, Any]]:
    """QAT in the worker process on the training images not in ``exclude`` (the
    decision images): ``(flatbuffer, report)``, or ``(None, report)`` with the reason
    when the worker judged its own model unusable. A crash or a stall raises."""
    python = python or qat_python()
    options = config.get("options", {})
    size = int(config["image_size"])
    paths, labels = run.split_files("train", len(config["labels"]))
    excluded = set(exclude)
    paths = [p for p in paths if p not in excluded]
    paths, _ = evenly(paths, [0] * len(paths), TRAIN_IMAGES)
    pixels, kept, _ = decode_to_file(paths, size, run.path, "--qat")
    handles: List[IO[bytes]] = []
    try:
        if not kept:
            return None, {"error": "no training image could be read"}
        teacher = predict_in_batches(model, pixels)
        check_free_space(run.path, (len(pixels) + len(calibration)) * size * size * 3, "--qat")
        weights = tempfile.TemporaryFile(dir=run.path, prefix=".edgetl-qat-")  # noqa: SIM115
        handles.append(weights)
        np.savez(weights, **layer_weights(model))
        weights.flush()
        handles += [
            spill(pixels, run.path, np.uint8),
            spill(teacher, run.path, np.float32),
            spill(calibration, run.path, np.uint8),
        ]
        output = tempfile.TemporaryFile(dir=run.path, prefix=".edgetl-qat-")  # noqa: SIM115
        handles.append(output)
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
            "train_images": len(pixels),
            "calibration_images": len(calibration),
            "fds": dict(
                zip(
                    ("weights", "train", "teacher", "calibration", "model"),
                    [handle.fileno() for handle in handles],
                )
            ),
            "scratch": str(run.path / ".qat-work"),
        }
        log(
            f"qat: {epochs} epoch(s) of quantization-aware distillation on {len(kept)} training images"
        )
        report = run_worker(python, spec, log)
        report.update({"python": python, "train_images": len(kept)})
        if report["exit_code"] == EXIT_FAILED:
            report["error"] = f"the QAT worker judged its model unusable: {report.get('said', '')}"
            return None, report
        output.seek(0)
        flatbuffer = output.read()
        if not flatbuffer:
            raise WorkerCrashed(
                f"--qat: the QAT worker ({python}) exited 0 without writing a model; this is a "
                "bug in edgetl: please report it with the output of `edgetl --debug …`"
            )
        return flatbuffer, report
    finally:
        pixels.close()
        for handle in handles:
            handle.close()


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
