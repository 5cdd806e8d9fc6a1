"""Quantization-aware fine-tuning, run by ``toolchain.export.qat.finetune`` in a process (and venv) of its own.

Why a process and a venv of its own: ``tensorflow-model-optimization`` works
only with Keras 2 (``tf-keras``, selected by ``TF_USE_LEGACY_KERAS=1`` before
TensorFlow is imported), and it pins ``absl-py`` 1.x where MediaPipe (which
writes edgetl's phone metadata) needs 2.x. So this module imports nothing of
edgetl: it reads a work folder the parent wrote and writes a flatbuffer back.

In: the spec as JSON in ``argv[1]`` (image size, alpha, classes, dropout,
epochs, io, learning rate, seed, image counts, a scratch folder) and, by file
descriptor (``spec["fds"]``), unlinked files the parent wrote: ``weights`` (an
npz of every layer's weights by layer name, from the Keras 3 model), ``train``
(raw uint8 training pixels), ``teacher`` (raw float32: the float model's
probabilities on them), ``calibration`` (raw uint8 calibration pixels). Out: the
flatbuffer into the ``model`` descriptor, the report as one ``qat-report:``
line on stderr.

Supervision (``toolchain.export.qat.supervisor`` says why): a thread watches stdin and
exits the process when it closes (the parent died), removing the scratch
folder; ``qat-alive`` lines on stderr every few seconds of work tell the parent
it is not hung; failures end in one ``qat-error:`` line and an ``EXIT_*`` code.
Memory: the pixel files are memory-mapped and read a batch at a time (float32
copies of whole sets were four times their size), so it does not grow with the
image count.

Traps this handles, each measured on flowers128 (alpha 0.35, 128 px):
- tfmot cannot quantize a nested model: MobileNetV2 is rebuilt flat
  (``input_tensor=``) and weights are copied by layer name; the copy is checked
  against the teacher's probabilities before any training.
- ``Rescaling`` has no quantize config: ``RescalingConfig`` fake-quantizes only
  its output.
- Activation ranges start at ±6 and tfmot's moving average (decay 0.999) moves
  them a few percent per epoch: a warm-up pass with a fast decay sets them from
  real images first.
- Pretrained BatchNorm stays frozen (inference statistics); the converter folds it.
- Loss: distillation against the float model's probabilities. Against the labels
  the model keeps *training* and drifts from the float model it must match.
- The converter calibrates every tensor QAT left without a range, so it gets real
  training images, never dummy ones (dummy ones silently break the model).
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import sys
import threading
import time
import traceback

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: tf.keras is tf-keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

EXIT_SETUP = 3  # the venv lacks a package: the parent says how to install it
EXIT_FAILED = 5  # QAT ran but cannot be used (weights did not copy): the parent keeps PTQ
EXIT_ENVIRONMENT = 6  # out of memory or disk: the parent exits 3
EXIT_BUG = 7  # an exception: the parent exits 4 with its last line
EXIT_ORPHANED = 9  # the parent died: nobody reads this code
HEARTBEAT_SECONDS = 5.0
_last_beat = [0.0]


def say(message: str) -> None:
    print(f"qat: {message}", file=sys.stderr, flush=True)


def alive() -> None:
    """Tell the parent work goes on, at most every few seconds (called from every loop)."""
    now = time.monotonic()
    if now - _last_beat[0] >= HEARTBEAT_SECONDS:
        _last_beat[0] = now
        print("qat-alive", file=sys.stderr, flush=True)


def watch_parent(scratch: str) -> None:
    """Exit when stdin closes: the parent died (``kill -9`` included) or gave up.

    A thread, so it runs while TensorFlow computes (its ops release the GIL);
    the scratch folder (TensorFlow's temporary SavedModels) goes with it.
    """

    def watch() -> None:
        while sys.stdin.buffer.read(1):
            pass
        shutil.rmtree(scratch, ignore_errors=True)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, daemon=True).start()


def mapped_rows(fd: int, count: int, row_shape, dtype) -> np.ndarray:
    """Rows of an unlinked file the parent passed by descriptor, memory-mapped
    read-only: pages are read when touched and the kernel can always drop them."""
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
    if count == 0:
        return np.zeros((0, *row_shape), dtype)
    mapped = mmap.mmap(fd, count * row_bytes, access=mmap.ACCESS_READ)
    return np.frombuffer(mapped, dtype).reshape(count, *row_shape)


def read_weights(fd: int):
    handle = os.fdopen(os.dup(fd), "rb")
    handle.seek(0)
    return np.load(handle)


def write_all(fd: int, data: bytes) -> None:
    view, offset = memoryview(data), 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)


def build_float(tf, spec):
    """The edgetl classifier as a flat Keras 2 graph with the Keras 3 model's layer names."""
    size = int(spec["image_size"])
    inputs = tf.keras.Input(shape=(size, size, 3), name="pixels")
    x = tf.keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_1")(inputs)
    base = tf.keras.applications.MobileNetV2(
        input_tensor=x, alpha=float(spec["alpha"]), include_top=False, weights=None
    )
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(base.output)
    x = tf.keras.layers.Dropout(float(spec["dropout"]), name="dropout")(x)
    outputs = tf.keras.layers.Dense(
        int(spec["num_classes"]), activation="softmax", name="probabilities"
    )(x)
    return tf.keras.Model(inputs, outputs, name="edgetl_mobilenetv2_qat")


def copy_weights(model, weights) -> int:
    """Set every layer's weights from ``weights`` (``name/index`` keys); returns how many."""
    by_layer = {}
    for key in weights.files:
        name, index = key.rsplit("/", 1)
        by_layer.setdefault(name, {})[int(index)] = weights[key]
    copied = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in by_layer:
            raise ValueError(f"layer {layer.name} has no weights in the Keras model")
        arrays = by_layer[layer.name]
        layer.set_weights([arrays[i] for i in range(len(arrays))])
        copied += 1
    return copied


def rescaling_config(tfmot):
    """A QuantizeConfig for ``Rescaling``: no weights, only its output fake-quantized."""
    base = tfmot.quantization.keras.QuantizeConfig

    class RescalingConfig(base):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [
                tfmot.quantization.keras.quantizers.MovingAverageQuantizer(
                    num_bits=8, per_axis=False, symmetric=False, narrow_range=False
                )
            ]

        def get_config(self):
            return {}

    return RescalingConfig


def quantize(tf, tfmot, model):
    config = rescaling_config(tfmot)
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def clone(layer):
        if isinstance(layer, tf.keras.layers.Rescaling):
            return annotate(layer.__class__.from_config(layer.get_config()), config())
        if isinstance(layer, tf.keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        return annotate(layer.__class__.from_config(layer.get_config()))

    annotated = tf.keras.models.clone_model(model, clone_function=clone)
    annotated.set_weights(model.get_weights())
    with tfmot.quantization.keras.quantize_scope({"RescalingConfig": config}):
        return tfmot.quantization.keras.quantize_apply(annotated)


def freeze_batchnorm(tf, model) -> None:
    """Pretrained BatchNorm keeps its ImageNet statistics (inference mode)."""
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, tf.keras.layers.BatchNormalization):
            layer.trainable = False


def warm_up_ranges(quant_ops, model, images: np.ndarray, batch: int) -> None:
    """Run the images through in training mode with a fast moving average, so every
    activation range starts from real data instead of ±6."""
    original = quant_ops.MovingAvgQuantize

    def fast(*args, **kwargs):
        kwargs["ema_decay"] = 0.5
        return original(*args, **kwargs)

    quant_ops.MovingAvgQuantize = fast
    try:
        for _ in range(2):
            for start in range(0, len(images), batch):
                model(images[start : start + batch].astype(np.float32), training=True)
                alive()
    finally:
        quant_ops.MovingAvgQuantize = original


def convert(tf, model, calibration: np.ndarray, io: str) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def images():
        for image in calibration:
            alive()
            yield [image[None].astype(np.float32)]

    converter.representative_dataset = images
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    dtype = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[io]
    converter.inference_input_type = dtype
    converter.inference_output_type = dtype
    return converter.convert()


def train_epoch(model, pixels: np.ndarray, teacher: np.ndarray, batch: int, rng) -> float:
    """One shuffled pass, a batch read from the mapped pixels at a time; the mean
    distillation loss over the images."""
    order = rng.permutation(len(pixels))
    total = 0.0
    for start in range(0, len(order), batch):
        chosen = np.sort(order[start : start + batch])  # sorted: the mapped file reads forward
        loss = model.train_on_batch(pixels[chosen].astype(np.float32), teacher[chosen])
        total += float(np.asarray(loss).reshape(-1)[0]) * len(chosen)
        alive()
    return total / max(len(order), 1)


def main(spec) -> int:
    watch_parent(spec["scratch"])
    alive()
    try:
        import tensorflow as tf
        import tensorflow_model_optimization as tfmot
        from tensorflow_model_optimization.python.core.quantization.keras import quant_ops
    except ImportError as error:
        print(f"qat-error: missing package: {error.name}", file=sys.stderr, flush=True)
        return EXIT_SETUP
    alive()
    start = time.perf_counter()
    tf.keras.utils.set_random_seed(int(spec["seed"]))
    rng = np.random.default_rng(int(spec["seed"]))
    size, fds = int(spec["image_size"]), spec["fds"]
    image = (size, size, 3)
    pixels = mapped_rows(fds["train"], int(spec["train_images"]), image, np.uint8)
    teacher = np.array(
        mapped_rows(fds["teacher"], len(pixels), (int(spec["num_classes"]),), np.float32)
    )
    calibration = mapped_rows(fds["calibration"], int(spec["calibration_images"]), image, np.uint8)
    model = build_float(tf, spec)
    try:
        copied = copy_weights(model, read_weights(fds["weights"]))
    except (ValueError, KeyError) as error:
        print(f"qat-error: the weights do not fit the rebuilt graph: {error}", file=sys.stderr)
        return EXIT_FAILED
    probe = model.predict(pixels[:64].astype(np.float32), verbose=0)
    gap = float(np.abs(probe - teacher[:64]).max())
    if gap > 1e-3:
        print(f"qat-error: the rebuilt model differs from Keras by {gap:.2g}", file=sys.stderr)
        return EXIT_FAILED
    say(f"rebuilt MobileNetV2 flat, {copied} layers copied (max probability gap {gap:.1g})")
    qat = quantize(tf, tfmot, model)
    freeze_batchnorm(tf, qat)
    batch = int(spec["batch_size"])
    warm_up_ranges(quant_ops, qat, calibration, batch)
    qat.compile(
        optimizer=tf.keras.optimizers.Adam(float(spec["learning_rate"])),
        loss=tf.keras.losses.CategoricalCrossentropy(),
    )
    history = []
    for epoch in range(int(spec["epochs"])):
        began = time.perf_counter()
        loss = train_epoch(qat, pixels, teacher, batch, rng)
        history.append({"epoch": epoch + 1, "distillation_loss": round(loss, 5)})
        say(
            f"epoch {epoch + 1}/{spec['epochs']}: distillation loss {loss:.4f} "
            f"({time.perf_counter() - began:.0f}s)"
        )
    flatbuffer = convert(tf, qat, calibration, spec["io"])
    write_all(fds["model"], flatbuffer)
    report = {
        "layers_copied": copied,
        "rebuild_max_probability_gap": gap,
        "history": history,
        "seconds": round(time.perf_counter() - start, 1),
        "tensorflow": tf.__version__,
        "tfmot": getattr(tfmot, "__version__", "?"),
    }
    print(f"qat-report: {json.dumps(report)}", file=sys.stderr, flush=True)
    say(f"converted ({len(flatbuffer) / 1024:.0f} KiB) in {report['seconds']:.0f}s")
    return 0


def run(argv) -> int:
    """``main``, with every failure turned into one ``qat-error:`` line and a code the
    parent maps: the environment's (memory, disk) or a bug."""
    try:
        return main(json.loads(argv[1]))
    except MemoryError:
        print("qat-error: out of memory", file=sys.stderr, flush=True)
        return EXIT_ENVIRONMENT
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.ENOMEM):
            print(f"qat-error: {error.strerror or error}", file=sys.stderr, flush=True)
            return EXIT_ENVIRONMENT
        print(f"qat-error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return EXIT_BUG
    except Exception as error:  # the parent turns it into exit 4 with this line
        traceback.print_exc()  # for --debug readers; the last line is what the parent quotes
        reason = " ".join(str(error).split())[:300]
        print(f"qat-error: {type(error).__name__}: {reason}", file=sys.stderr, flush=True)
        return EXIT_BUG


if __name__ == "__main__":
    # Skip the interpreter's teardown: with TensorFlow's threads and the watcher thread
    # still alive it can abort (SIGABRT) after the model was written, and the parent
    # rightly reads a signal as a crash. Everything the parent needs is written by now.
    exit_code = run(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
