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
  images, ~1,200) by the same rule. There is no repair: nothing of the network can stay in float on the sensor.
  A miss exits 1 with the figures and keeps the files in ``RUN/rejected-imx500/``.
- The network is the run's **classes only** (the calibrated head): the
  out-of-class distance is not compiled for the sensor yet, and the report says
  so. Labels are written beside it (``labels.txt``, the order of the output).
- A network that does not fit the chip is refused (exit 1), as the converter
  would leave the camera nothing to load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import deque
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge import atomic
from edge.errors import INTERNAL, BadInput, EdgetlError, GateFailed, MissingEnvironment
from edge.image import load_many
from toolchain.confidence.shipped import classes_only, has_out_of_class
from toolchain.core.budget import Budget
from toolchain.core.options import ExportOptions
from toolchain.core.pixel_file import predict_in_batches
from toolchain.core.progress import Log, stderr_log
from toolchain.core.rundir import IMX500_EXPORT, IMX500_REJECTED, IMX500_STAGING, RunDir
from toolchain.core.venvs import own_python
from toolchain.export.qat.finetune import layer_weights
from toolchain.quantize.calibration import calibration_set, config_seed
from toolchain.validate.decision import Judge
from toolchain.validate.figures import compare, p_worse

IMX500_VENV = ".venv-imx500"
FOLDER = IMX500_EXPORT
REPORT = "imx500_report.json"
INSTALL = "make setup-imx500 (a venv with imx500-converter[tf] and model-compression-toolkit)"
JAVA_INSTALL = "sudo apt install openjdk-17-jre-headless"
WORKER = Path(__file__).with_name("worker.py")
REFERENCE_ROWS = 64  # Keras answers the worker checks its rebuild against
EXIT_SETUP, EXIT_REFUSED, EXIT_ENVIRONMENT = 3, 5, 6  # the worker's codes (worker.py)


class WorkerFailed(EdgetlError):
    """The IMX500 worker failed in a way that is edgetl's bug (exit 4)."""

    exit_code = INTERNAL


PI_STEPS = (
    "on the Pi: sudo apt install imx500-all imx500-tools; imx500-package -i {zip} -o OUT "
    "(writes OUT/network.rpk, what the camera loads)"
)


def imx500_python() -> str:
    """The interpreter that runs the worker: ``EDGETL_IMX500_PYTHON``, else
    ``.venv-imx500`` in the folder the user works in; exit 3 with the install line."""
    return own_python(
        "EDGETL_IMX500_PYTHON",
        IMX500_VENV,
        "--target imx500 needs its own Python with Sony's converter (TensorFlow 2.15)",
        INSTALL,
    )


def java_major(text: str) -> int:
    """The major version in ``java -version``'s output (``"17.0.15"`` -> 17, ``"1.8"`` -> 8)."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not found:
        return 0
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def require_java() -> None:
    """The converter's backend runs ``java`` (17 or newer): one line when it cannot."""
    java = shutil.which("java")
    if java is None:
        raise MissingEnvironment(
            f"--target imx500: the IMX500 converter runs Java 17, and `java` is not on the "
            f"PATH: {JAVA_INSTALL}"
        )
    try:
        shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
        major = java_major(shown.stderr + shown.stdout)
    except (OSError, subprocess.TimeoutExpired):
        major = 0
    if major < 17:
        raise MissingEnvironment(
            f"--target imx500: the IMX500 converter runs Java 17 or newer, and {java} is "
            f"{'version ' + str(major) if major else 'not runnable'}: {JAVA_INSTALL}"
        )


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


def run_worker(python: str, work: Path, log: Log) -> None:
    """The worker in its venv; its ``imx500:`` lines are the progress shown."""
    tail: deque = deque(maxlen=40)
    process = subprocess.Popen(  # -I: a user's PYTHONPATH must not reach TensorFlow 2.15
        [python, "-I", str(WORKER), str(work)],
        stdin=subprocess.PIPE,  # the worker's lifeline: it exits when this closes
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert process.stderr is not None
    try:
        for line in process.stderr:
            line = line.rstrip("\n")
            tail.append(line)
            if line.startswith("imx500: "):
                log(line)
        code = process.wait()
    finally:  # Ctrl-C or an error here: the worker (and its Java) end with us
        if process.poll() is None:
            process.kill()
            process.wait()
    if code == 0:
        return
    errors = [line[len("imx500-error: ") :] for line in tail if line.startswith("imx500-error: ")]
    reason = errors[-1] if errors else (tail[-1] if tail else f"exit {code}")
    if code == EXIT_SETUP:
        raise MissingEnvironment(f"--target imx500: {python}: {reason}: {INSTALL}")
    if code == EXIT_REFUSED:
        raise GateFailed(f"--target imx500: the converter refused the network: {reason}")
    if code == EXIT_ENVIRONMENT or code < 0:  # out of memory, or a signal from outside
        raise MissingEnvironment(
            f"--target imx500: the IMX500 worker stopped (exit {code}): {reason}"
        )
    raise WorkerFailed(
        f"--target imx500: the IMX500 worker failed ({reason}); this is a bug in edgetl: "
        "please report it with the output of `edgetl --debug …`"
    )


def write_work(
    work: Path, run: RunDir, config: Dict[str, Any], model: Any, calibration: Any, sets: Dict
) -> None:
    spec = {
        "image_size": int(config["image_size"]),
        "alpha": float(config.get("options", {}).get("alpha", 1.0)),
        "num_classes": len(config["labels"]),
        "calibration_batch": 16,
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
        run_worker(python, work, log)
        return commit(run, work, judge, budget, names, keras_test, truth, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def commit(
    run: RunDir,
    work: Path,
    judge: Judge,
    budget: Budget,
    names: List[str],
    keras_test: np.ndarray,
    truth: np.ndarray,
    log: Log,
) -> Path:
    """Judge the worker's answers; move its files to ``RUN/imx500`` (or ``rejected/``)."""
    probs = np.load(work / "probs.npz")
    test = compare(keras_test, probs["test"], truth, names)
    misses = budget.misses(
        test["top1_drop_pts"], test["agreement"], p_worse(test), test["n_images"]
    )
    decided = judge.figures(probs["decision"])
    out = work / "out"
    memory = json.loads((out / "model_q_MemoryReport.json").read_text())["Memory Report"]
    worker = json.loads((work / "report.json").read_text())
    report = {
        "target": "imx500",
        "files": sorted(p.name for p in out.iterdir()) + ["labels.txt", REPORT],
        "labels": names,
        "out_of_class": "not on the sensor (classes only)",
        "budget": budget.json(),
        "test": {
            k: test[k]
            for k in ("top1", "top1_drop_pts", "worse_than_keras", "agreement", "n_images")
        },
        "decision": decided.json(),
        "memory": memory,
        "worker": worker,
        "package_on_pi": PI_STEPS.format(zip="packerOut.zip"),
    }
    (out / "labels.txt").write_text("\n".join(names) + "\n")
    atomic.write_json(out / REPORT, report)
    log(
        f"imx500: test split: drop {test['top1_drop_pts']:+.2f} pts, agreement "
        f"{test['agreement']:.4f} on {test['n_images']} images; {decided.text()}; memory "
        f"{memory.get('Memory Usage')} of {memory.get('Total Memory Available On Chip')}"
    )
    problems = [f"{miss} on the {test['n_images']} test images" for miss in misses]
    on_decision = compare(judge.keras_probs, probs["decision"], judge.decision.labels, names)
    problems += [
        f"{miss} on the {on_decision['n_images']} decision images"
        for miss in budget.misses(
            on_decision["top1_drop_pts"],
            on_decision["agreement"],
            p_worse(on_decision),
            on_decision["n_images"],
        )
    ]
    if memory.get("Fit In Chip") is not True:
        problems.append(f"does not fit the chip ({memory.get('Memory Usage')} of 8 MB)")
    if problems:
        rejected = run.path / IMX500_REJECTED  # its own: a TFLite export owns rejected/
        shutil.rmtree(rejected, ignore_errors=True)
        out.replace(rejected)
        raise GateFailed(
            f"IMX500 budget missed: {'; '.join(problems)} (nothing in {run.path / FOLDER} "
            f"changed; the files are in {rejected})"
        )
    target = run.path / FOLDER
    if target.exists():
        target.replace(work / "previous")  # removed with the work folder
    out.replace(target)
    shutil.rmtree(run.path / IMX500_REJECTED, ignore_errors=True)  # an earlier miss's files
    log(PI_STEPS.format(zip=target / "packerOut.zip"))
    return target / "packerOut.zip"
