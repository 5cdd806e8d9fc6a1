"""``edgetl validate --runtime R`` when this process cannot import R.

tflite-runtime 2.14 is built against numpy 1.x and TensorFlow 2.21 needs numpy
2, so the two never share a process. ``validate`` then runs the device-side
``edgetl parity`` inside a TensorFlow-free environment that has R (the ones
``toolchain.core.runtimes.runtime_pythons`` finds: ``EDGETL_RUNTIME_PYTHONS``, or
``.venv-edge`` / ``.venv-legacy`` where the user works), on the reference it has
just written, and turns that environment's per-image probabilities into the
same model entry an in-process runtime gets. Only the device path exists there
(the files through the runner's decoder), so the entry's tensor-level figures
are the device path's, and it says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge import atomic, metrics
from edge.errors import (
    ENVIRONMENT,
    GATE_FAILED,
    INTERRUPTED,
    BadInput,
    EdgetlError,
    MissingEnvironment,
    NotFinite,
)
from edge.metrics import disagreements
from edge.modelfile import read_embedded
from edge.runtime import _interpreter_class
from toolchain.core import runjson
from toolchain.core.runtimes import runtime_pythons
from toolchain.core.text import single_line
from toolchain.validate.evalset import EvalSet
from toolchain.validate.figures import compare, measured_elsewhere

TIMEOUT = 3600  # seconds: a large held-out folder on a slow runtime, never endless


def installed_here(runtime: str) -> bool:
    try:
        _interpreter_class(runtime)
    except (ImportError, EdgetlError):
        return False
    return True


def environment_with(runtime: str, model: Path) -> str:
    """The first TensorFlow-free interpreter whose edgetl can load ``runtime``."""
    tried = runtime_pythons()
    for python in tried:
        try:
            completed = subprocess.run(
                [python, "-I", "-m", "edge.compat", str(model.resolve())],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in completed.stdout.splitlines():
            try:
                found = json.loads(line) if line.startswith("{") else {}
            except ValueError:
                continue
            if found.get("runtime") == runtime and found.get("installed"):
                return python
    raise MissingEnvironment(
        f"--runtime {runtime}: not importable in this process, and none of "
        f"{len(tried)} device environment(s) has it (EDGETL_RUNTIME_PYTHONS, or .venv-edge / "
        ".venv-legacy in this folder); run `make setup-edge` or name one in EDGETL_RUNTIME_PYTHONS"
    )


def run_parity(
    python: str, model: Path, runtime: str, reference_path: Path, paths: List[str]
) -> Dict[str, Any]:
    """``edgetl parity`` in ``python`` on exactly ``paths`` (links in a scratch folder, so
    the device command hashes the held-out images, not the whole dataset beside them)."""
    folder = reference_path.parent / atomic.partial_name(Path(f"parity_{runtime}"))
    report = folder / "device_parity.json"
    try:
        (folder / "images").mkdir(parents=True)
        for i, image in enumerate(paths):
            (folder / "images" / f"{i:07d}_{Path(image).name}").symlink_to(Path(image).resolve())
        command = [
            python, "-I", "-m", "toolchain.cli", "parity", str(model.resolve()),
            "--reference", str(reference_path.resolve()), "--source", str(folder / "images"),
            "--runtime", runtime, "--json", str(report), "--allow-missing",
        ]  # fmt: skip
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise MissingEnvironment(
                f"{single_line(model)}: {runtime} in {python} did not finish in {TIMEOUT}s; "
                "validate on fewer images (--data) or with a runtime in this process"
            ) from None
        # 1 is the device command's own default gate: validate applies its own.
        if completed.returncode not in (0, 1):
            last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
            if completed.returncode == INTERRUPTED:
                raise KeyboardInterrupt
            error = MissingEnvironment if completed.returncode == ENVIRONMENT else BadInput
            raise error(
                f"{single_line(model)}: {runtime} in {python} failed ({last}); an older edgetl "
                f"there lacks `edgetl parity`: reinstall it with `{python} -m pip install edgetl`"
            )
        if completed.returncode == GATE_FAILED and not report.exists():
            # The device command refused the model before any figure (NaN outputs).
            last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
            raise NotFinite(f"{runtime} in {python}: {last.removeprefix('edgetl: error: ')}")
        fix = f"the edgetl in {python} wrote a report this one cannot read: reinstall it"
        return runjson.read_checked(report, runjson.check_device_report, fix)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def model_entry_elsewhere(
    path: Path,
    runtime: str,
    reference_path: Path,
    digests: List[str],
    keras_probs: np.ndarray,
    eval_set: EvalSet,
    names: List[str],
) -> Dict[str, Any]:
    """Validate's model entry, measured by ``edgetl parity`` in another environment."""
    start = time.perf_counter()
    python = environment_with(runtime, path)
    device = run_parity(python, path, runtime, reference_path, eval_set.paths)
    found = {item["sha256"]: item["probabilities"] for item in device["images"]}
    kept = np.array([i for i, d in enumerate(digests) if d in found], dtype=np.int64)
    if not len(kept):
        raise BadInput(f"{single_line(path)}: {runtime} in {python} classified none of the images")
    probs = metrics.require_finite(
        np.array([found[digests[i]] for i in kept], dtype=np.float64), str(path)
    )
    keras, truth = keras_probs[kept], eval_set.labels[kept]
    paths = [eval_set.paths[i] for i in kept]
    figures = compare(keras, probs, truth, names)
    skipped = [[eval_set.paths[i], "not classified there"] for i in range(len(digests))]
    skipped = [row for i, row in enumerate(skipped) if digests[i] not in found]
    return {
        "path": str(path),
        "quant": str((read_embedded(path) or {}).get("quant", path.stem.replace("model_", ""))),
        "runtime": device["device"]["runtime"],
        "environment": python,
        "size_bytes": path.stat().st_size,
        **figures,
        "tensor_level": "measured through the device path (the runtime is in another environment)",
        "device_path": measured_elsewhere(figures, device.get("resize"), len(kept), skipped),
        "disagreements": disagreements(keras, probs, truth, paths, names),
        "seconds": round(time.perf_counter() - start, 3),
    }
