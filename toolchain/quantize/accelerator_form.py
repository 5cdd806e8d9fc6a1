"""The form of an INT8 file that an accelerator's compiler takes: a fixed batch of one.

The converter writes every tensor's shape signature with the batch left open
(``[-1, H, W, 3]``), because Keras models take any batch. The Edge TPU compiler
refuses dynamic sizes ("dynamic-sized tensors" is the commonest failure its users
report), and an NPU compiler plans its memory for one fixed shape. The shapes
themselves are already those of batch 1, so only the signature changes: every
runtime runs the file exactly as before.

The CPU file's input rewrite (``fast_input``: ``DEQUANTIZE`` + ``QUANTIZE``) is not
applied to an accelerator's file: neither accelerator runs a float op, and the
compilers map nothing before it. The converter's own single ``QUANTIZE``
(uint8 → int8, a requantization both accelerators run) stays.
"""

from __future__ import annotations

from toolchain.core.quiet import tensorflow


def static_batch(flatbuffer: bytes) -> bytes:
    """``flatbuffer`` with each tensor's open dimensions fixed to its shape (batch 1)."""
    tensorflow()
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    changed = False
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            signature = tensor.shapeSignature
            if signature is None or tensor.shape is None or len(signature) != len(tensor.shape):
                continue
            if any(int(v) < 0 for v in signature):
                tensor.shapeSignature = [
                    int(s) if int(v) < 0 else int(v) for v, s in zip(signature, tensor.shape)
                ]
                changed = True
    if not changed:
        return flatbuffer
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
