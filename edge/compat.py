"""Can this runtime load and run this model? Answered by actually doing it.

``python -m edge.compat MODEL.tflite`` prints one JSON line per installed
runtime: it loads the model, feeds random input of the right dtype and shape,
invokes, and reports the error line when anything fails (for instance
tflite-runtime 2.14 refusing an op version newer than it knows). ``edgetl
export`` runs it inside each TensorFlow-free environment it is given, so the
check sees the device's runtime, not the workstation's.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List

import numpy as np

from edge.errors import EdgetlError
from edge.runtime import RUNTIMES, _interpreter_class


def probe(model_path: str, runtime: str) -> Dict[str, Any]:
    """Load, allocate and invoke once on random input; never raises."""
    result: Dict[str, Any] = {
        "runtime": runtime,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    try:
        interpreter_class, version = _interpreter_class(runtime)
    except (ImportError, EdgetlError) as error:
        return {**result, "installed": False, "ok": False, "error": str(error).splitlines()[0]}
    result.update(installed=True, version=version)
    try:
        interpreter = interpreter_class(model_path=model_path, num_threads=1)
        interpreter.allocate_tensors()
        rng = np.random.default_rng(0)
        for detail in interpreter.get_input_details():
            dtype = np.dtype(detail["dtype"])
            if dtype.kind == "f":
                data = rng.uniform(0, 255, detail["shape"]).astype(dtype)
            else:
                info = np.iinfo(dtype)
                data = rng.integers(info.min, info.max, detail["shape"], endpoint=True).astype(
                    dtype
                )
            interpreter.set_tensor(detail["index"], data)
        interpreter.invoke()
        output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        return {**result, "ok": True, "output_shape": list(output.shape)}
    except Exception as error:  # the runtime's own words are the report
        message = " ".join(str(error).split())[:300] or type(error).__name__
        return {**result, "ok": False, "error": message}


def probe_all(model_path: str, runtimes: List[str] | None = None) -> List[Dict[str, Any]]:
    found = [probe(model_path, name) for name in (runtimes or RUNTIMES[:2])]
    return [item for item in found if item["installed"]]


def main(argv: List[str]) -> int:
    if not argv:
        print("usage: python -m edge.compat MODEL.tflite [RUNTIME ...]", file=sys.stderr)
        return 2
    for item in probe_all(argv[0], argv[1:] or None):
        print(json.dumps(item))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
