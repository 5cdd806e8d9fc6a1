"""Make a uint8-input INT8 model convert its input inside XNNPACK.

The converter gives a uint8-input INT8 model a first op that requantizes the
uint8 pixels to int8 (``QUANTIZE`` uint8 → int8: x − 128). XNNPACK delegates
``QUANTIZE`` only from float, so that op runs on TFLite's reference kernel,
outside the delegate, single-threaded. On MobileNetV2 1.0 at 224 on the
2-core development VM, that one op made uint8 I/O measurably slower than
int8 I/O, more so with two threads than with one (``make bench`` reports the
ratio on your machine).

The same arithmetic as two ops XNNPACK does take — ``DEQUANTIZE`` uint8 →
float (x, exact) then ``QUANTIZE`` float → int8 (round(x) − 128, exact) — gives
bit-identical outputs with uint8 I/O at the speed of int8 I/O. The model's
interface does not change: the same input tensor (uint8, scale 1, zero
point 0), so decoder bytes still go straight in and MediaPipe still reads it.
"""

from __future__ import annotations

from typing import Any, List

from toolchain.core.quiet import tensorflow


def _builtin(code: Any) -> int:
    return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))


def _opcode(model: Any, schema: Any, builtin: int, version: int) -> int:
    """Index of ``builtin``'s operator code (version at least ``version``), added if missing."""
    for index, code in enumerate(model.operatorCodes):
        if _builtin(code) == builtin:
            code.version = max(int(code.version), version)
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def delegate_uint8_input(flatbuffer: bytes) -> bytes:
    """Rewrite each uint8 input → int8 ``QUANTIZE`` as ``DEQUANTIZE`` + ``QUANTIZE``.

    Anything else (int8 or float input, an input read by other ops too) is
    returned unchanged: the rewrite only applies where it is exact.
    """

    tensorflow()
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    quantize = schema.BuiltinOperator.QUANTIZE
    changed = False
    for graph in model.subgraphs:
        for input_index in list(graph.inputs):
            tensor = graph.tensors[input_index]
            readers: List[Any] = [op for op in graph.operators if input_index in list(op.inputs)]
            if tensor.type != schema.TensorType.UINT8 or not readers:
                continue
            if not all(
                _builtin(model.operatorCodes[op.opcodeIndex]) == quantize
                and graph.tensors[op.outputs[0]].type == schema.TensorType.INT8
                for op in readers
            ):
                continue
            as_float = schema.TensorT()
            as_float.shape = list(tensor.shape)
            as_float.shapeSignature = (
                list(tensor.shapeSignature) if tensor.shapeSignature is not None else None
            )
            as_float.type = schema.TensorType.FLOAT32
            as_float.name = bytes(tensor.name) + b"/as_float"
            model.buffers.append(schema.BufferT())
            as_float.buffer = len(model.buffers) - 1
            graph.tensors.append(as_float)
            float_index = len(graph.tensors) - 1

            dequantize = schema.OperatorT()
            # DEQUANTIZE of uint8 is version 1; QUANTIZE from float to int8 needs 2.
            dequantize.opcodeIndex = _opcode(model, schema, schema.BuiltinOperator.DEQUANTIZE, 1)
            dequantize.inputs = [input_index]
            dequantize.outputs = [float_index]
            quantize_code = _opcode(model, schema, quantize, 2)
            for op in readers:
                op.inputs = [float_index if i == input_index else i for i in op.inputs]
                op.opcodeIndex = quantize_code
            graph.operators.insert(graph.operators.index(readers[0]), dequantize)
            changed = True
    if not changed:
        return flatbuffer
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
