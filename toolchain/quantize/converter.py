"""One place that configures the TFLite converter for a mode.

Like MediaPipe Model Maker's ``QuantizationConfig``: ``export`` (the files it
writes) and ``diagnose`` (the debugger and the fallback's re-quantization)
get their converter here, so a full-INT8 model and the fallback's variant with
no layers in float are the same conversion, and an I/O type means the same
thing everywhere.

- ``int8``: full integer, calibrated on real training images with the input
  range anchored (``calibration.anchor_input_range``). uint8 I/O by default:
  the model rescales internally, so the input quantization is scale 1, zero
  point 0 and decoder bytes go in as is; ``fast_input`` then moves the
  uint8 → int8 step into XNNPACK (same outputs).
- ``float16``: float16 weights, float32 compute and I/O (half the size).
- ``dynamic``: int8 weights, float activations. Dense layers are quantized
  per-tensor: per-channel Dense emits FULLY_CONNECTED v12, which tflite-runtime
  2.14 refuses to load (README, *Traps we measured*).
- ``float32``: the reference conversion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np

from toolchain.core.quiet import captured_output, tensorflow
from toolchain.quantize.accelerator_form import static_batch
from toolchain.quantize.calibration import anchor_input_range
from toolchain.quantize.fast_input import delegate_uint8_input


def io_dtype(tf: Any, io: str) -> Any:
    """The TensorFlow dtype of an INT8 model's input and output for ``--io``."""
    return {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[io]


def representative_dataset(calibration: np.ndarray) -> Callable[[], Iterator[List[np.ndarray]]]:
    """The converter's calibration feed: one anchored image per step, as float32."""
    anchored = anchor_input_range(calibration)

    def images() -> Iterator[List[np.ndarray]]:
        for image in anchored:
            yield [image[np.newaxis].astype(np.float32)]

    return images


def int8_converter(
    model: Any, calibration: np.ndarray, io: str = "uint8", float_fallback: bool = False
) -> Tuple[Any, Callable[[], Iterator[List[np.ndarray]]]]:
    """A converter for full INT8, and its calibration feed.

    ``float_fallback`` also allows float kernels, for the layers the
    accuracy-aware fallback keeps in float; with no layers denylisted the
    result is the same full-INT8 model.
    """
    tf = tensorflow()
    dataset = representative_dataset(calibration)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if float_fallback:
        converter.target_spec.supported_ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
    converter.inference_input_type = io_dtype(tf, io)
    converter.inference_output_type = io_dtype(tf, io)
    return converter, dataset


def converter_for(model: Any, quant: str, io: str, calibration: Optional[np.ndarray]) -> Any:
    """The configured converter of one ``--quant`` mode."""
    if quant == "int8":
        return int8_converter(model, calibration, io)[0]
    tf = tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    return converter


def convert(
    model: Any,
    quant: str,
    io: str,
    calibration: Optional[np.ndarray],
    log_path: Path,
    accelerator: bool = False,
) -> bytes:
    """Run the converter for one mode; returns the flatbuffer bytes. The converter's
    C++ logs go to ``log_path``. An INT8 file gets the CPU's fast input
    (``fast_input``), or for an ``accelerator`` the form its compiler takes
    (``accelerator_form``: batch 1, the converter's own input op)."""
    converter = converter_for(model, quant, io, calibration)
    with captured_output(log_path):
        flatbuffer = converter.convert()
    if quant == "int8":
        # Before the metadata is embedded: the rewrite does not carry the appended zip.
        flatbuffer = static_batch(flatbuffer) if accelerator else delegate_uint8_input(flatbuffer)
    return flatbuffer
