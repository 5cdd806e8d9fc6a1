"""The Coral Edge TPU's documented model rules, checked on a .tflite file without its compiler.

Why a static check: ``edgetpu_compiler`` ships only from Coral's own apt repository
(not Debian, not PyPI), so most machines that export a model cannot run it. And its
failure is quiet: it maps operators onto the Edge TPU only up to the first one it
cannot run, and that operator and every one after it run on the host CPU. A file
that breaks a rule near its input (edgetl's CPU input rewrite starts with
``DEQUANTIZE``) compiles "successfully" into a model that runs wholly on the CPU.

The rules, as Coral's "TensorFlow models on the Edge TPU" page states them (in our
words; the op table is its "supported operations" table):

- every tensor the operators compute is 8-bit (int8 or uint8): no float operator;
- tensor sizes are fixed at compile time (no dynamic dimension, so batch 1);
- a computed tensor of more than 3 dimensions may be larger than 1 only in its 3
  innermost (weights are not held to it);
- only the operators in the table, each from the Edge TPU runtime version it names
  (the compiler's ``-m``);
- one subgraph.

Not checked here (the interpreter does not expose them): operator versions and the
per-operator limits of the table's notes (dilation, fused activations, sizes the
compiler declines). The compiler, where installed, is the final word
(``edgetl export --target edgetpu`` runs it when it is on the PATH).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np

from edge.tensors import operators

# Operator -> the lowest Edge TPU runtime version that runs it (10: every version).
SUPPORTED_OPS: Dict[str, int] = {
    "ADD": 10,
    "AVERAGE_POOL_2D": 10,
    "CONCATENATION": 10,
    "CONV_2D": 10,
    "DEPTHWISE_CONV_2D": 10,
    "EXPAND_DIMS": 13,
    "FULLY_CONNECTED": 10,
    "L2_NORMALIZATION": 10,
    "LOGISTIC": 10,
    "LSTM": 14,
    "MAXIMUM": 10,
    "MAX_POOL_2D": 10,
    "MEAN": 10,
    "MINIMUM": 10,
    "MUL": 10,
    "PACK": 13,
    "PAD": 10,
    "PRELU": 13,
    "QUANTIZE": 13,
    "REDUCE_MAX": 14,
    "REDUCE_MIN": 14,
    "RELU": 10,
    "RELU6": 10,
    "RELU_N1_TO_1": 10,
    "RESHAPE": 10,
    "RESIZE_BILINEAR": 10,
    "RESIZE_NEAREST_NEIGHBOR": 10,
    "RSQRT": 14,
    "SLICE": 10,
    "SOFTMAX": 10,
    "SPACE_TO_DEPTH": 10,
    "SPLIT": 10,
    "SQUARED_DIFFERENCE": 14,
    "SQUEEZE": 10,
    "STRIDED_SLICE": 10,
    "SUB": 10,
    "SUM": 13,
    "TANH": 10,
    "TRANSPOSE": 14,
    "TRANSPOSE_CONV": 13,
}
EIGHT_BIT = ("int8", "uint8")
# Integer tensors an 8-bit operator may still read: biases (int32) and shapes or axes.
CONSTANT_KINDS = ("int32", "int64")


@dataclass(frozen=True)
class Broken:
    """One rule a file breaks, where (the first operator or tensor), and how often."""

    rule: str
    where: str
    count: int

    def text(self) -> str:
        more = f" (and {self.count - 1} more)" if self.count > 1 else ""
        return f"{self.rule}: {self.where}{more}"


def check(interpreter: Any) -> Dict[str, Any]:
    """The Edge TPU verdict of an allocated interpreter's model: the rules it breaks,
    the runtime version its operators need, and how many operators lie before the
    first one the compiler cannot map (an upper bound on what it maps)."""
    tensors = {int(t["index"]): t for t in interpreter.get_tensor_details()}
    # A delegate (XNNPACK by default) appends DELEGATE nodes after the model's own.
    ops = [op for op in operators(interpreter) if op["op_name"] != "DELEGATE"]
    found: Dict[str, List[str]] = {}

    def breaks(rule: str, where: str) -> None:
        found.setdefault(rule, []).append(where)

    # The model's own inputs are fed, not computed: a float input is the host's to
    # quantize (the compiler leaves that first op on the CPU and maps the rest).
    inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    if not ops:
        found["operators the Edge TPU runs"] = ["not checked: this runtime lists no operators"]
    subgraphs = _subgraphs(interpreter)
    if subgraphs > 1:
        breaks("one subgraph", f"the file has {subgraphs}")
    first_unmappable = None
    for position, op in enumerate(ops):
        name = op["op_name"]
        where = f"op #{position} {name}"
        mappable = True
        if name not in SUPPORTED_OPS:
            breaks("operators the Edge TPU runs", f"{where} is not one of them")
            mappable = False
        kinds_out = [_kind(tensors, i) for i in op["outputs"] if i in tensors]
        kinds_in = [_kind(tensors, i) for i in op["inputs"] if i in tensors and i not in inputs]
        wide = [k for k in kinds_out if k not in EIGHT_BIT] + [
            k for k in kinds_in if k not in EIGHT_BIT + CONSTANT_KINDS
        ]
        if wide:
            kinds = sorted(set(wide))
            breaks("8-bit tensors only", f"{where} computes in {'/'.join(kinds)}")
            mappable = False
        if not mappable and first_unmappable is None:
            first_unmappable = position
    activations = set(inputs)
    activations.update(i for op in ops for i in op["outputs"])
    for tensor in (tensors[i] for i in sorted(activations) if i in tensors):
        signature = [int(v) for v in tensor.get("shape_signature", tensor["shape"])]
        shape = [int(v) for v in tensor["shape"]]
        if any(v < 0 for v in signature):
            breaks("static shapes", f"tensor {tensor['name']!r} has shape {signature}")
        if len(shape) > 3 and any(v > 1 for v in shape[:-3]):
            breaks(
                "at most 3 dimensions larger than 1, the innermost",
                f"tensor {tensor['name']!r} has shape {shape}",
            )
    runtime = max([SUPPORTED_OPS.get(op["op_name"], 10) for op in ops], default=10)
    return {
        "ok": not found,
        "broken": [Broken(rule, places[0], len(places)).text() for rule, places in found.items()],
        "n_ops": len(ops),
        "ops_before_first_unmappable": len(ops) if first_unmappable is None else first_unmappable,
        "min_edgetpu_runtime": runtime,
    }


def _kind(tensors: Dict[int, Any], index: int) -> str:
    return np.dtype(tensors[index]["dtype"]).name


def _subgraphs(interpreter: Any) -> int:
    """The number of subgraphs, where the runtime says (tflite-runtime 2.14 may not)."""
    inner = getattr(interpreter, "_interpreter", None)
    count = getattr(inner, "NumSubgraphs", None)
    return int(count()) if callable(count) else 1


def summary(verdict: Dict[str, Any]) -> str:
    """One line: what ``edgetl info`` prints and what an Edge TPU export fails with."""
    if verdict["ok"]:
        return (
            f"Edge TPU rules: none broken ({verdict['n_ops']} ops, needs Edge TPU runtime "
            f">= {verdict['min_edgetpu_runtime']}; compile with "
            f"edgetpu_compiler -m {verdict['min_edgetpu_runtime']})"
        )
    return (
        f"Edge TPU rules broken: {'; '.join(verdict['broken'])}; the compiler would map at most "
        f"the first {verdict['ops_before_first_unmappable']} of {verdict['n_ops']} ops and "
        "run the rest on the CPU"
    )
