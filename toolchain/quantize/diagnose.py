"""Why did INT8 lose accuracy, and which layers to keep in float to win it back.

TensorFlow Lite's ``QuantizationDebugger`` runs the float and the quantized
model side by side on calibration images and records, per quantized tensor,
the error of the quantized values. ``rmse / scale`` is the error in units of
one quantization step: about 0.29 is pure rounding; values well above 1 mark
a layer whose range was badly chosen (an outlier channel, a wrong calibration
range). Its ``tensor_name`` column is exactly what selective quantization
(``denylisted_nodes``) takes: ``fallback.py`` keeps any of them in float.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any, Dict, List, Sequence

import numpy as np

from edge.tensors import operators
from toolchain.core.quiet import captured_output, tensorflow
from toolchain.quantize.converter import int8_converter
from toolchain.quantize.fast_input import delegate_uint8_input


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


class Calibrated:
    """One INT8 calibration, quantized as often as needed.

    Calibration (running the representative images through the float model) is
    the slow part of conversion; quantizing the calibrated model with a given set
    of layers kept in float is a small fraction of that (tens of milliseconds for
    MobileNetV2 0.35 on the development VM). The accuracy-aware fallback quantizes
    dozens of variants, so it calibrates once here. With no layers in float the
    result is bit-for-bit the model ``edgetl export`` writes from the same images.
    """

    def __init__(self, model: Any, calibration: np.ndarray, log_path, io_type: str = "uint8"):
        tf = tensorflow()
        converter, dataset = int8_converter(model, calibration, io_type, float_fallback=True)
        self._dtype = converter.inference_input_type  # the I/O type int8_converter set
        self._log_path = log_path
        with captured_output(log_path):
            options = tf.lite.experimental.QuantizationDebugOptions(
                layer_direct_compare_metrics={"channel_error": channel_error}
            )
            self._debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=dataset, debug_options=options
            )

    def layer_errors(self, limit: int = 10) -> List[Dict[str, Any]]:
        """Quantized tensors ranked by per-channel relative error, worst first."""
        with captured_output(self._log_path):
            self._debugger.run()
            buffer = io.StringIO()
            self._debugger.layer_statistics_dump(buffer)
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

    def quantize(self, float_layers: Sequence[str] = ()) -> bytes:
        """The INT8 model with ``float_layers`` (``tensor_name`` values) left in float."""
        from tensorflow.lite.python import convert

        with captured_output(self._log_path):
            quantized = convert.mlir_quantize(
                self._debugger.calibrated_model,
                input_data_type=self._dtype,
                output_data_type=self._dtype,
                denylisted_nodes=list(float_layers),
            )
        return delegate_uint8_input(quantized)  # as export does: same bytes with no float layers


def with_consumers(flatbuffer: bytes, tensors: Sequence[str]) -> Dict[str, List[str]]:
    """Each quantized tensor with the ops that read it (named by their output tensors).

    Keeping one op in float does not undo a badly quantized *tensor*: its output
    is quantized again, with the same calibrated range, for the next INT8 op. To
    take a tensor out of INT8, its producer and every consumer must run in float,
    so the fallback ranks and reverts these groups, not single ops.
    """
    tf = tensorflow()
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    wanted = set(tensors)
    readers: Dict[str, List[str]] = {name: [] for name in tensors}
    for op in operators(interpreter):
        outputs = [names[i] for i in op["outputs"] if names.get(i) in wanted]
        for i in op["inputs"]:
            if names.get(i) in readers:
                readers[names[i]].extend(o for o in outputs if o not in readers[names[i]])
    return {name: [name, *(r for r in readers[name] if r != name)] for name in tensors}


def layer_errors(
    model: Any, calibration: np.ndarray, log_path, limit: int = 10
) -> List[Dict[str, Any]]:
    """Quantized tensors ranked by per-channel relative error, worst first."""
    return Calibrated(model, calibration, log_path).layer_errors(limit)


def short_name(tensor_name: str) -> str:
    """``edgetl_mobilenetv2_1/mobilenetv2_base_1/block_16_project_BN_1/...;…`` -> ``block_16_project_BN``."""

    parts = [p for p in tensor_name.split(";")[0].split("/") if p]
    layer = (
        parts[2]
        if len(parts) > 3 and parts[1].startswith("mobilenetv2_base")
        else parts[min(1, len(parts) - 1)]
    )
    return re.sub(r"_\d+$", "", layer)
