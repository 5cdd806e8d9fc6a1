"""``edgetl validate --runtime R`` when this process cannot import R.

tflite-runtime 2.14 is built against numpy 1.x and TensorFlow 2.21 needs numpy
2, so the two never share a process. ``validate`` then runs the device-side
``edgetl parity`` inside a TensorFlow-free environment that has R (the ones
``toolchain.runtimes.runtime_pythons`` finds: ``EDGETL_RUNTIME_PYTHONS``, or
``.venv-edge`` / ``.venv-legacy`` where the user works), on the reference it has
just written, and turns that environment's per-image probabilities into the
same model entry an in-process runtime gets. Only the device path exists there
(the files through the runner's decoder), so the entry's tensor-level figures
are the device path's, and it says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge import atomic
from edge.errors import BadInput, EdgetlError, MissingEnvironment
from edge.image import DEFAULT_RESIZE
from edge.metrics import disagreements
from edge.modelfile import read_embedded
from edge.runtime import _interpreter_class
from toolchain.evalset import EvalSet
from toolchain.parity_figures import compare
from toolchain.runtimes import runtime_pythons
from toolchain.text import single_line

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
            if line.startswith("{"):
                found = json.loads(line)
                if found.get("runtime") == runtime and found.get("installed"):
                    return python
    raise MissingEnvironment(
        f"--runtime {runtime}: not importable in this process, and none of "
        f"{len(tried)} device environment(s) has it (EDGETL_RUNTIME_PYTHONS, or .venv-edge / "
        ".venv-legacy in this folder); run `make setup-edge` or name one in EDGETL_RUNTIME_PYTHONS"
    )


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
    source = os.path.commonpath([str(Path(p).resolve().parent) for p in eval_set.paths])
    scratch = reference_path.parent / atomic.partial_name(Path(f"parity_{runtime}.json"))
    try:
        completed = subprocess.run(
            [
                python,
                "-I",
                "-m",
                "toolchain.cli",
                "parity",
                str(path.resolve()),
                "--reference",
                str(reference_path.resolve()),
                "--source",
                source,
                "--runtime",
                runtime,
                "--json",
                str(scratch),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        if completed.returncode not in (0, 1):  # 1: its own default gate, which is ours to apply
            last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
            raise BadInput(f"{single_line(path)}: {runtime} in {python} failed: {last}")
        device = json.loads(scratch.read_text())
    finally:
        scratch.unlink(missing_ok=True)
    found = {item["sha256"]: item["probabilities"] for item in device["images"]}
    kept = np.array([i for i, d in enumerate(digests) if d in found], dtype=np.int64)
    if not len(kept):
        raise BadInput(f"{single_line(path)}: {runtime} in {python} classified none of the images")
    probs = np.array([found[digests[i]] for i in kept], dtype=np.float64)
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
        "device_path": {
            "resize": device.get("resize"),
            "same_decoder_as_training": device.get("resize") == DEFAULT_RESIZE,
            "top1": figures["top1"],
            "top1_drop_pts": figures["top1_drop_pts"],
            "agreement": figures["agreement"],
            "mean_abs_prob_diff": figures["mean_abs_prob_diff"],
            "n_images": int(len(kept)),
            "skipped": skipped,
        },
        "disagreements": disagreements(keras, probs, truth, paths, names),
        "seconds": round(time.perf_counter() - start, 3),
    }
