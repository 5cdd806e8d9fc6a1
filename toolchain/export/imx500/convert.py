"""``edgetl export RUN --target imx500``: the Raspberry Pi AI Camera's network, held to the budget.

The IMX500 runs the network on the sensor. Sony's chain is MCT post-training
quantization for the IMX500, then ``imxconv-tf``, which writes ``packerOut.zip``
(and a memory report: does it fit the chip's 8 MB?); on the Pi, ``imx500-package``
turns that into the ``network.rpk`` the camera loads. The chain needs TensorFlow
2.15 / Keras 2 and Java 17, so it runs in a Python of its own
(``make setup-imx500``, ``toolchain.export.imx500.worker``); what it writes is
staged in the run and committed as ``RUN/imx500/`` only when it meets the budget.

Decisions:
- The same budget and the same images as a TFLite export: MCT's quantized model
  is a fake-quant Keras model, so the worker answers the test split and the
  decision images with it; the test split is gated as ``validate`` gates
  (``Budget.misses``), and the decision images (validation plus training
  images, ~1,200) by the same rule (``verdict.py``). There is no repair: nothing
  of the network can stay in float on the sensor. When plain PTQ misses, GPTQ is
  tried; when that misses too, exit 1 with the figures of both, and the files in
  ``RUN/rejected-imx500/``. Nothing is compiled before a model meets the budget.
- The network is the run's **classes only** (the calibrated head): the
  out-of-class distance is not compiled for the sensor yet, and the report says
  so. Labels are written beside it (``labels.txt``, the order of the output).
- A network that does not fit the chip is refused (exit 1), as the converter
  would leave the camera nothing to load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge.errors import BadInput
from edge.image import load_many
from toolchain.confidence.shipped import classes_only, has_out_of_class
from toolchain.core.budget import Budget
from toolchain.core.options import ExportOptions
from toolchain.core.pixel_file import predict_in_batches
from toolchain.core.progress import Log, stderr_log
from toolchain.core.rundir import IMX500_EXPORT, IMX500_STAGING, RunDir
from toolchain.export.imx500.verdict import (
    Attempt,
    commit,
    judge_answers,
    recover,
    reject,
    report_of,
)  # fmt: skip
from toolchain.export.qat.finetune import layer_weights
from toolchain.quantize.calibration import calibration_set, config_seed
from toolchain.quantize.imx500.process import imx500_python, require_java, run_worker
from toolchain.validate.decision import Judge

FOLDER = IMX500_EXPORT
# Plain PTQ first; GPTQ when it misses the budget (MCT's gradient-based refinement of
# the weights' rounding, several times slower). Mixed-precision weights are not tried:
# the network fits the chip at 8 bits everywhere, and fewer bits can only lose accuracy.
METHODS = ("ptq", "gptq")
GPTQ_EPOCHS = 10  # measured: 2 and 20 epochs kept fewer decisions on the five-flower run
REFERENCE_ROWS = 64  # Keras answers the worker checks its rebuild against


def check_options(options: ExportOptions) -> None:
    """What ``--target imx500`` cannot honour, before any work."""
    if options.io != "uint8":
        raise BadInput("--target imx500: the sensor takes uint8 pixels: drop --io")
    if options.quant not in ("int8",):
        raise BadInput("--target imx500 makes the sensor's 8-bit network: drop --quant")
    if options.qat:
        raise BadInput("--target imx500 quantizes with Sony's MCT: drop --qat")
    if not options.validate:
        raise BadInput(
            "--target imx500 is held to the accuracy budget, which --no-validate skips; "
            "drop --no-validate"
        )
    samples = options.calibration_samples
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise BadInput(f"--calibration-samples {samples}: give at least 1 training image")


def write_work(
    work: Path, run: RunDir, config: Dict[str, Any], model: Any, calibration: Any, sets: Dict
) -> None:
    spec = {
        "image_size": int(config["image_size"]),
        "alpha": float(config.get("options", {}).get("alpha", 1.0)),
        "num_classes": len(config["labels"]),
        "calibration_batch": 16,
        "gptq_epochs": GPTQ_EPOCHS,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    np.savez(work / "weights.npz", **layer_weights(model))
    np.save(work / "calibration.npy", np.asarray(calibration[0 : len(calibration)], np.uint8))
    np.savez(work / "sets.npz", **{name: pixels for name, (pixels, _) in sets.items()})
    np.save(work / "reference.npy", sets["test"][1][:REFERENCE_ROWS])


def export_imx500(run_dir: str | Path, options: ExportOptions, log: Log = stderr_log) -> Path:
    """Convert, judge and commit ``RUN/imx500/``; returns its ``packerOut.zip``."""
    check_options(options)
    budget = Budget.of(options.max_drop, options.min_agreement)
    run = RunDir(run_dir).require_trained()
    recover(run)
    target = run.path / FOLDER
    if target.exists() and not options.force:
        raise BadInput(f"{target} exists from an earlier export: pass --force to replace it")
    python = imx500_python()
    require_java()
    config = run.read_config()
    names: List[str] = list(config["labels"])
    size = int(config["image_size"])
    calibration, _ = calibration_set(
        run, options.calibration_samples, config_seed(run, config), size, log
    )
    model = run.load_keras_model()
    if has_out_of_class(config):
        model = classes_only(model)
        log(
            "imx500: the network is the calibrated classes; the out-of-class answer stays off the sensor"
        )
    judge = Judge.of(run, config, model, log)
    paths, labels = run.split_files("test", len(names))
    pixels, kept, _ = load_many(paths, size)
    if not kept:
        raise BadInput(f"{run.path}: none of the test split's images could be read")
    truth = np.array([labels[i] for i in kept])
    keras_test = predict_in_batches(model, pixels)
    sets = {"test": (pixels, keras_test), "decision": (judge.decision.pixels, judge.keras_probs)}
    work = run.path / IMX500_STAGING  # the run lock is held: a leftover is a killed export's
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        write_work(work, run, config, model, calibration, sets)
        calibration.close()
        attempts = quantize_until_within_budget(
            python, work, judge, budget, names, sets, truth, log
        )
        if not attempts[-1].passed:
            worker = json.loads((work / "report.json").read_text())
            reject(run, work, attempts, report_of(attempts, budget, names, work / "out", worker))
        run_worker(python, "convert", work, log)
        return commit(run, work, attempts, budget, names, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def quantize_until_within_budget(
    python: str,
    work: Path,
    judge: Judge,
    budget: Budget,
    names: List[str],
    sets: Dict,
    truth: np.ndarray,
    log: Log,
) -> List[Attempt]:
    """Each method of ``METHODS`` in turn until one meets the budget; the work folder
    holds the last one's model. Nothing is compiled before a model passes."""
    attempts: List[Attempt] = []
    for method in METHODS:
        spec = json.loads((work / "spec.json").read_text())
        (work / "spec.json").write_text(json.dumps({**spec, "method": method}))
        run_worker(python, "quantize", work, log)
        attempt = judge_answers(
            method, np.load(work / "probs.npz"), judge, budget, names, sets["test"][1], truth
        )
        attempts.append(attempt)
        log(attempt.text())
        if attempt.passed:
            break
        if method != METHODS[-1]:
            log(f"imx500: {method.upper()} missed the budget ({'; '.join(attempt.problems)})")
    return attempts
