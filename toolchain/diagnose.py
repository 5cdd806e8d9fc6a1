"""Why did INT8 lose accuracy, and which layers to keep in float to win it back.

TensorFlow Lite's ``QuantizationDebugger`` runs the float and the quantized
model side by side on calibration images and records, per quantized tensor,
the error of the quantized values. ``rmse / scale`` is the error in units of
one quantization step: about 0.29 is pure rounding; values well above 1 mark
a layer whose range was badly chosen (an outlier channel, a wrong calibration
range). Its ``tensor_name`` column is exactly what selective quantization
(``denylisted_nodes``) takes, so the same ranking drives the repair.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Dict, List, Sequence

import numpy as np

from toolchain.quiet import captured_output, tensorflow


def _int8_converter(tf: Any, model: Any, calibration: np.ndarray, io_type: str = "uint8"):
    from toolchain.export import anchor_input_range

    anchored = anchor_input_range(calibration)

    def representative_dataset():
        for image in anchored:
            yield [image[np.newaxis].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,  # float kernels for the layers kept in float
    ]
    dtype = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[io_type]
    converter.inference_input_type = dtype
    converter.inference_output_type = dtype
    return converter, representative_dataset


def channel_error(float_values, quantized_values, scale: float, zero_point: int) -> float:
    """Median over channels of (quantization rmse / the channel's own spread).

    ``rmse / scale`` judges a tensor in units of its one shared step, so a
    tensor whose range is set by one outlier channel looks fine (its error is
    ~0.3 steps) while every other channel was rounded to a handful of levels.
    Measuring each channel against its own spread exposes exactly that, and
    it is the most common reason per-tensor INT8 activations lose accuracy.
    """
    channels = np.shape(float_values[0])[-1]
    real = np.concatenate([np.asarray(v, np.float64).reshape(-1, channels) for v in float_values])
    quant = np.concatenate(
        [np.asarray(v, np.float64).reshape(-1, channels) for v in quantized_values]
    )
    dequant = (quant - zero_point) * scale
    rmse = np.sqrt(np.mean((real - dequant) ** 2, axis=0))
    spread = real.std(axis=0)
    live = spread > 1e-6  # dead channels (all zero after ReLU) carry no information
    if not live.any():
        return 0.0
    return float(np.median(rmse[live] / spread[live]))


def layer_errors(
    model: Any, calibration: np.ndarray, log_path, limit: int = 10
) -> List[Dict[str, Any]]:
    """Quantized tensors ranked by per-channel relative error, worst first."""
    tf = tensorflow()
    converter, dataset = _int8_converter(tf, model, calibration)
    with captured_output(log_path):
        options = tf.lite.experimental.QuantizationDebugOptions(
            layer_direct_compare_metrics={"channel_error": channel_error}
        )
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=dataset, debug_options=options
        )
        debugger.run()
        buffer = io.StringIO()
        debugger.layer_statistics_dump(buffer)
    rows = []
    for row in csv.DictReader(io.StringIO(buffer.getvalue())):
        scale = float(row["scale"]) or 1.0
        rows.append(
            {
                "tensor_name": row["tensor_name"],
                "op": row["op_name"],
                "rmse_over_scale": round(float(row["mean_squared_error"]) ** 0.5 / scale, 4),
                "channel_error": round(float(row.get("channel_error") or 0.0), 4),
                "max_abs_error": round(float(row["max_abs_error"]), 6),
                "scale": scale,
            }
        )
    rows.sort(key=lambda r: (-r["channel_error"], -r["rmse_over_scale"]))
    return rows[:limit] if limit else rows


def convert_keeping_float(
    model: Any,
    calibration: np.ndarray,
    float_layers: Sequence[str],
    log_path,
    io_type: str = "uint8",
) -> bytes:
    """An INT8 model with ``float_layers`` (tensor names from ``layer_errors``) left in float."""
    tf = tensorflow()
    converter, dataset = _int8_converter(tf, model, calibration, io_type)
    with captured_output(log_path):
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(float_layers))
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=dataset, debug_options=options
        )
        return debugger.get_nondebug_quantized_model()


def short_name(tensor_name: str) -> str:
    """``edgetl_mobilenetv2_1/mobilenetv2_base_1/block_16_project_BN_1/...;…`` -> ``block_16_project_BN``."""
    import re

    parts = [p for p in tensor_name.split(";")[0].split("/") if p]
    layer = (
        parts[2]
        if len(parts) > 3 and parts[1].startswith("mobilenetv2_base")
        else parts[min(1, len(parts) - 1)]
    )
    return re.sub(r"_\d+$", "", layer)
