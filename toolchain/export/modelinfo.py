"""Read a ``.tflite`` flatbuffer: operators with their versions, the converter's
``min_runtime_version``, and whether any float kernels are left in an INT8 model.

Uses TensorFlow's generated schema reader, so it runs on the workstation.
"""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

from edge.errors import BadInput
from toolchain.core.quiet import tensorflow


def inspect_tflite(model: str | Path | bytes) -> Dict[str, Any]:
    """``model``: a path or the flatbuffer's bytes. A file that is not a well-formed
    flatbuffer (someone else's, damaged) is one line of BadInput, not a crash."""
    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    try:
        return _inspect(data)
    except (AttributeError, IndexError, TypeError, ValueError, struct.error) as error:
        name = "the model" if isinstance(model, bytes) else str(model)
        raise BadInput(
            f"{name}: not a well-formed TFLite flatbuffer ({type(error).__name__}); export it again"
        ) from None


CONVERSIONS = ("QUANTIZE", "DEQUANTIZE")


def float_compute_ops(graph: Any, names: List[str], float_types: set) -> Counter:
    """Ops with a float input or output, not counting the chains of QUANTIZE/DEQUANTIZE
    that only convert the model's own input or output (uint8 camera bytes are
    dequantized and requantized to int8 on the way in): what an INT8-only
    accelerator would have to hand back to the CPU."""

    def tensors(indices: Any, length: int) -> List[int]:
        return [int(i) for i in (indices if length else []) if i >= 0]

    ops = [graph.Operators(o) for o in range(graph.OperatorsLength())]
    ins = [tensors(op.InputsAsNumpy(), op.InputsLength()) for op in ops]
    outs = [tensors(op.OutputsAsNumpy(), op.OutputsLength()) for op in ops]
    edge_in = {int(i) for i in graph.InputsAsNumpy()}
    edge_out = {int(i) for i in graph.OutputsAsNumpy()}
    adapters = set()
    for k, name in enumerate(names):  # forward from the inputs
        if name in CONVERSIONS and ins[k] and set(ins[k]) <= edge_in:
            adapters.add(k)
            edge_in |= set(outs[k])
    for k in reversed(range(len(ops))):  # backward from the outputs
        if names[k] in CONVERSIONS and outs[k] and set(outs[k]) <= edge_out:
            adapters.add(k)
            edge_out |= set(ins[k])
    counted: Counter = Counter()
    for k, name in enumerate(names):
        if k not in adapters and any(
            graph.Tensors(t).Type() in float_types for t in ins[k] + outs[k]
        ):
            counted[name] += 1
    return counted


def _inspect(data: bytes) -> Dict[str, Any]:

    tensorflow()
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.python import schema_util

    model = schema.Model.GetRootAsModel(data, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        name = op_names.get(schema_util.get_builtin_code_from_operator_code(code), "CUSTOM")
        codes.append((name, code.Version()))
    counts: Counter = Counter()
    float_weights = 0
    float32_bytes = 0  # what the weights would take as float32: the "size vs float" reference
    float_types = {schema.TensorType.FLOAT32, schema.TensorType.FLOAT16}
    float_ops: Counter = Counter()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        names = [codes[graph.Operators(o).OpcodeIndex()][0] for o in range(graph.OperatorsLength())]
        counts.update(names)
        float_ops.update(float_compute_ops(graph, names, float_types))
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            buffer = model.Buffers(tensor.Buffer())
            if buffer is not None and buffer.DataLength() > 0:
                elements = 1
                for d in tensor.ShapeAsNumpy() if tensor.ShapeLength() else []:
                    elements *= int(d)
                float32_bytes += 4 * elements
                if tensor.Type() in float_types:
                    float_weights += 1
    metadata = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        buffer = model.Buffers(entry.Buffer())
        raw = bytes(buffer.DataAsNumpy()) if buffer.DataLength() else b""
        metadata[(entry.Name() or b"").decode("utf-8", "replace")] = raw
    min_version = metadata.get("min_runtime_version", b"").split(b"\0")[0].decode() or None
    return {
        "ops": {
            name: {"version": version, "count": counts.get(name, 0)} for name, version in codes
        },
        "min_runtime_version": min_version,
        "float_weight_tensors": float_weights,
        # ops that compute in float: empty for a model an INT8-only accelerator can run
        "float_ops": dict(sorted(float_ops.items())),
        "float32_weight_bytes": float32_bytes,
        "size_vs_float32_weights": round(len(data) / float32_bytes, 3) if float32_bytes else None,
    }
