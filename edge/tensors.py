"""What an interpreter holds, as plain rows: its I/O tensors and its operators.

``edgetl info``, the export report and the fallback's graph walk all read the
same tables from here instead of each walking the interpreter its own way.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np


def tensor_table(interpreter: Any) -> List[Dict[str, Any]]:
    """Every input and output tensor: kind, name, dtype, shape, scale and zero point."""
    rows = []
    for kind, details in (
        ("input", interpreter.get_input_details()),
        ("output", interpreter.get_output_details()),
    ):
        for detail in details:
            scale, zero_point = detail["quantization"]
            rows.append(
                {
                    "kind": kind,
                    "name": detail["name"],
                    "dtype": np.dtype(detail["dtype"]).name,
                    "shape": [int(v) for v in detail["shape"]],
                    "scale": float(scale),
                    "zero_point": int(zero_point),
                }
            )
    return rows


def describe_tensor(row: Dict[str, Any]) -> str:
    """One line per tensor, as ``edgetl info`` and ``edgetl export`` print it."""
    return (
        f"{row['kind']:6s} {row['dtype']:7s} {row['shape']}  "
        f"scale {row['scale']:.6g}  zero point {row['zero_point']}"
    )


def operators(interpreter: Any) -> List[Dict[str, Any]]:
    """The graph's operators in execution order (``op_name``, ``inputs``, ``outputs``).

    The interpreters' public API has no graph walk; ``_get_ops_details`` is the
    one reader they all share (ai-edge-litert, tflite-runtime 2.14, tf.lite), so
    it is called here only, and an interpreter without it gives an empty list.
    """
    details = getattr(interpreter, "_get_ops_details", None)
    if details is None:
        return []
    return [
        {
            "op_name": str(op["op_name"]),
            "inputs": [int(i) for i in op["inputs"]],
            "outputs": [int(i) for i in op["outputs"]],
        }
        for op in details()
    ]
