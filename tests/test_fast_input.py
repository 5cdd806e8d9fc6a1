"""The uint8-input rewrite: same interface, same outputs, conversion moved into XNNPACK."""

import warnings

import numpy as np
import pytest

from edge.tensors import operators
from toolchain.quantize.fast_input import delegate_uint8_input


def _ops(flatbuffer: bytes):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    return [
        (op["op_name"], [dtypes[i] for i in op["inputs"] if i >= 0])
        for op in operators(interpreter)
    ]


def _outputs(flatbuffer: bytes, images: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for image in images:
        interpreter.set_tensor(source["index"], image[np.newaxis])
        interpreter.invoke()
        results.append(interpreter.get_tensor(target["index"]).copy())
    return np.concatenate(results)


@pytest.fixture(scope="module")
def converted():
    """A small rescaling classifier converted to full INT8 by TFLite, uint8 and int8 I/O."""
    from toolchain.core.quiet import keras, tensorflow

    tf, k = tensorflow(), keras()
    k.utils.set_random_seed(3)
    inputs = k.Input((32, 32, 3))
    x = k.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = k.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu6")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inputs, k.layers.Dense(4, activation="softmax")(x))
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 256, (20, 32, 32, 3)).astype(np.float32)
    calibration[0, 0, 0], calibration[0, 0, 1] = 0, 255  # input scale 1, as export anchors it
    files = {}
    for io in ("uint8", "int8"):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[np.newaxis]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = getattr(tf, io)
        with warnings.catch_warnings():  # "Statistics for quantized inputs ...": export's too
            warnings.simplefilter("ignore", UserWarning)
            files[io] = converter.convert()
    return files


def test_uint8_input_is_converted_by_delegated_ops_with_identical_outputs(converted):
    original = converted["uint8"]
    rewritten = delegate_uint8_input(original)
    # The converter's first op requantizes uint8 -> int8, which XNNPACK does not take.
    assert _ops(original)[0] == ("QUANTIZE", [np.uint8])
    assert _ops(rewritten)[:2] == [("DEQUANTIZE", [np.uint8]), ("QUANTIZE", [np.float32])]
    assert all(np.uint8 not in inputs for name, inputs in _ops(rewritten)[1:])

    from ai_edge_litert.interpreter import Interpreter

    before, after = Interpreter(model_content=original), Interpreter(model_content=rewritten)
    for details in ("get_input_details", "get_output_details"):
        old, new = getattr(before, details)()[0], getattr(after, details)()[0]
        assert (old["dtype"], old["quantization"]) == (new["dtype"], new["quantization"])
        assert list(old["shape"]) == list(new["shape"])
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    images[0], images[1] = 0, 255  # both ends of the pixel range
    assert np.array_equal(_outputs(original, images), _outputs(rewritten, images))


def test_rewrite_leaves_other_inputs_alone_and_is_idempotent(converted):
    assert delegate_uint8_input(converted["int8"]) is converted["int8"]
    once = delegate_uint8_input(converted["uint8"])
    assert delegate_uint8_input(once) is once
