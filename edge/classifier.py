"""Run a TFLite image classifier: pixels in, labelled scores out.

Read like pycoral's adapters: a few small pure functions (quantize the input,
dequantize the output, take the top k) and one class that holds the
interpreter. The model's own input tensor decides everything: its size, its
dtype and its quantization; nothing is guessed from the file name.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np

from edge.answer import card_floor, card_unknown_index
from edge.errors import BadInput
from edge.image import DEFAULT_RESIZE, RESIZE_FILTERS
from edge.imx500 import is_sensor_network
from edge.modelfile import ModelCard, read_embedded, read_model_card
from edge.runtime import RuntimeInfo, load_interpreter


class Prediction(NamedTuple):
    index: int
    label: str
    score: float


def quantize_input(
    pixels: np.ndarray, dtype: np.dtype, scale: float, zero_point: int
) -> np.ndarray:
    """Map raw 0–255 pixels to the model's input dtype.

    edgetl models rescale inside the graph, so a uint8 INT8 model has scale 1,
    zero point 0 and takes the decoder's bytes unchanged; an int8-input model
    shifts by its zero point; a float model takes the same values as float32.
    """
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return pixels.astype(np.float32)
    if dtype == np.uint8 and scale == 1.0 and zero_point == 0:
        return pixels
    if dtype == np.int8 and scale == 1.0 and zero_point == -128 and pixels.dtype == np.uint8:
        # x - 128 in two's complement is x with its top bit flipped: one cheap pass.
        return (pixels ^ np.uint8(0x80)).view(np.int8)
    info = np.iinfo(dtype)
    scale = scale or 1.0
    values = np.round(pixels.astype(np.float32) / scale) + zero_point
    return np.clip(values, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer outputs to real values; float outputs pass through."""
    if values.dtype in (np.float32, np.float64) or not scale:
        return values.astype(np.float32)
    return (values.astype(np.float32) - zero_point) * scale


def as_probabilities(values: np.ndarray) -> np.ndarray:
    """Scores that already look like probabilities stay; logits get a softmax."""
    values = values.astype(np.float32)
    if values.min() >= -1e-6 and abs(float(values.sum()) - 1.0) < 0.05:
        return values
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def top_k(probabilities: np.ndarray, labels: List[str], k: int) -> List[Prediction]:
    """The ``k`` best classes, highest score first; ties keep the lower index first."""
    count = probabilities.shape[-1]
    k = max(1, min(k, count))
    if count <= 64:
        # A few classes: Python's sort (stable, also in reverse) on a list beats
        # numpy's per-call overhead; this runs once per frame on the device.
        scores = probabilities.tolist()
        order = sorted(range(count), key=scores.__getitem__, reverse=True)[:k]
        return [Prediction(i, labels[i], scores[i]) for i in order]
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [Prediction(int(i), labels[i], float(probabilities[i])) for i in order]


def dequantize_table(dtype: np.dtype, scale: float, zero_point: int) -> Optional[np.ndarray]:
    """Every 8-bit output code's real value, so dequantizing is one lookup.

    Indexed by the raw byte (``values.view(np.uint8)``), for int8 and uint8
    alike; None for float outputs, which need no table.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.uint8), np.dtype(np.int8)) or not scale:
        return None
    codes = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
    return ((codes - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


INPUT_DTYPES = ("float32", "uint8", "int8", "int16")
EXPECTED_IO = (
    "edgetl runs image classifiers that take one square RGB image, input [1, H, H, 3] "
    f"({'/'.join(INPUT_DTYPES)}), and give one score per class, output [1, N]"
)


def io_problem(inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> Optional[str]:
    """Why a model with these input and output tensors is not an image classifier edgetl
    can run, or None. Checked when the model is loaded: a batch of 2, an output of rank
    3 or a fourth channel would otherwise fail at the first image, inside the
    interpreter, in words that name neither the model nor what it should be."""
    if len(inputs) != 1 or len(outputs) != 1:
        return f"it has {len(inputs)} input(s) and {len(outputs)} output(s), not one of each"
    in_shape = [int(n) for n in inputs[0]["shape"]]
    out_shape = [int(n) for n in outputs[0]["shape"]]
    dtype = np.dtype(inputs[0]["dtype"]).name
    if len(in_shape) != 4:
        return f"its input has shape {in_shape}, rank {len(in_shape)}, not an image batch"
    if in_shape[0] != 1:
        return f"its input takes a batch of {in_shape[0]} images (shape {in_shape}), not one"
    if in_shape[3] != 3:
        return f"its input has {in_shape[3]} channels (shape {in_shape}), not 3 (RGB)"
    if in_shape[1] != in_shape[2] or in_shape[1] < 1:
        return f"its input is not a square image (shape {in_shape})"
    if dtype not in INPUT_DTYPES:
        return f"its input is {dtype}"
    if len(out_shape) != 2:
        return f"its output has shape {out_shape}, rank {len(out_shape)}, not a vector of scores"
    if out_shape[0] != 1 or out_shape[1] < 1:
        return f"its output has shape {out_shape}, not one row of class scores"
    return None


class Classifier:
    """One interpreter, reused for every image."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        runtime: Optional[str] = None,
        threads: Optional[int] = None,
    ) -> None:
        if not os.path.isfile(model_path):
            raise BadInput(f"{model_path}: no such model file; give the path of a .tflite file")
        if is_sensor_network(model_path):
            raise BadInput(
                f"{model_path}: the AI Camera's network runs on its sensor, not in an "
                f"interpreter; use it with `edgetl classify {model_path} --source camera`"
            )
        self.model_path = str(model_path)
        probe_quantized = _looks_quantized(self.model_path)
        self.interpreter, self.runtime = load_interpreter(
            self.model_path, runtime=runtime, threads=threads, quantized=probe_quantized
        )
        inputs, outputs = (
            self.interpreter.get_input_details(),
            self.interpreter.get_output_details(),
        )
        problem = io_problem(inputs, outputs)
        if problem:
            raise BadInput(f"{model_path}: {problem}; {EXPECTED_IO}")
        self._input, self._output = inputs[0], outputs[0]
        in_shape, out_shape = list(self._input["shape"]), list(self._output["shape"])
        self.image_size = int(in_shape[1])
        self.input_dtype = np.dtype(self._input["dtype"])
        self.input_scale, self.input_zero_point = self._input["quantization"]
        self.output_scale, self.output_zero_point = self._output["quantization"]
        self._table = dequantize_table(
            self._output["dtype"], self.output_scale, self.output_zero_point
        )
        # An 8-bit output with scale 1/256 is a quantized softmax: probabilities already.
        self._softmax_out = self._table is not None and abs(self.output_scale * 256 - 1) < 1e-6
        self._input_index, self._output_index = self._input["index"], self._output["index"]
        self.card: ModelCard = read_model_card(self.model_path, int(out_shape[1]))
        self.labels = self.card.labels
        # The out-of-class output and the answer floor, when the card has them (edge.answer).
        self.unknown_index = card_unknown_index(self.card.metadata, int(out_shape[1]))
        self.floor = card_floor(self.card.metadata)
        # Such a model's scores are probabilities by construction (they sum to 1 before
        # quantization), whatever its output scale: never pass them through a softmax.
        self._softmax_out = self._softmax_out or self.unknown_index is not None
        # The model card says how training resized; the device must do the same.
        self.resize = card_resize(self.card.metadata, self.model_path)

    def set_resize(self, name: str) -> None:
        """Resize frames with filter ``name`` instead of the card's (``--device-resize``).

        Checked here, in the caller's thread: the decode thread is where an
        unknown name would otherwise first be used.
        """
        if name not in RESIZE_FILTERS:
            raise BadInput(
                f"resize filter {name!r} is not one edgetl knows; "
                f"choose one of {', '.join(RESIZE_FILTERS)}"
            )
        self.resize = name

    @property
    def runtime_info(self) -> RuntimeInfo:
        return self.runtime

    @property
    def quantized(self) -> bool:
        return self.input_dtype != np.float32

    def set_input(self, pixels: np.ndarray) -> None:
        if pixels.shape != (self.image_size, self.image_size, 3):
            raise BadInput(
                f"image of shape {pixels.shape} given to a model that takes "
                f"{self.image_size}x{self.image_size}x3"
            )
        tensor = quantize_input(pixels, self.input_dtype, self.input_scale, self.input_zero_point)
        # One copy, straight into the interpreter's input buffer: ``tensor[np.newaxis]``
        # is a view, not a per-image batch array.
        self.interpreter.set_tensor(self._input_index, tensor[np.newaxis])

    def invoke(self) -> None:
        self.interpreter.invoke()

    def output_probabilities(self) -> np.ndarray:
        raw = self.interpreter.get_tensor(self._output_index)[0]
        if self._table is None:
            values = dequantize(raw, self.output_scale, self.output_zero_point)
            return values if self._softmax_out else as_probabilities(values)
        values = self._table[raw.view(np.uint8)]
        return values if self._softmax_out else as_probabilities(values)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for one ``uint8`` (size, size, 3) image."""
        self.set_input(pixels)
        self.invoke()
        return self.output_probabilities()

    def classify(self, pixels: np.ndarray, k: int = 3) -> List[Prediction]:
        return top_k(self.probabilities(pixels), self.labels, k)


def probabilities_of(classifier: Classifier, pixels: np.ndarray) -> np.ndarray:
    """Scores for a batch of decoded images through one reused interpreter (its
    tensors are allocated once): how validate and the fallback run a model."""
    out = np.zeros((len(pixels), len(classifier.labels)), dtype=np.float32)
    for i, image in enumerate(pixels):
        out[i] = classifier.probabilities(image)
    return out


def card_resize(metadata: Dict[str, Any], model_path: str) -> str:
    """The resize filter a model card prescribes (bilinear when it names none)."""
    card_input = metadata.get("input", {})
    name = card_input.get("resize_filter", DEFAULT_RESIZE) if isinstance(card_input, dict) else None
    if not isinstance(name, str) or name not in RESIZE_FILTERS:
        raise BadInput(
            f"{model_path}: its card names resize filter {name!r}, which edgetl does not know "
            f"({', '.join(RESIZE_FILTERS)}); export the model again"
        )
    return name


def _looks_quantized(model_path: str) -> bool:
    """Cheap guess before loading (for the thread default): edgetl's file name or metadata."""
    meta = read_embedded(model_path) or {}
    quant = str(meta.get("quant", os.path.basename(model_path)))
    return "int8" in quant
