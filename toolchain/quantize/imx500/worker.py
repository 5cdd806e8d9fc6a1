"""The IMX500 conversion, run by ``toolchain.export.imx500.convert`` in a Python of its own.

Why a process and a venv of its own: Sony's converter (``imx500-converter[tf]``)
pins TensorFlow 2.14-2.15 with Keras 2, and its quantizer, the Model Compression
Toolkit (MCT), goes with it; edgetl trains with TensorFlow 2.21 and Keras 3. So
this module imports nothing of edgetl: it reads a work folder the parent wrote and
writes the converter's files and the quantized model's answers back.

Three steps, each a process (``argv[1]``; ``argv[2]`` is the work folder), so the
parent judges between them: ``quantize`` (MCT, plain PTQ or GPTQ, as
``spec.json`` says), ``convert`` (``imxconv-tf`` on the model the parent kept) and
``predict`` (an exported model's answers on ``pixels.npy``, for ``validate``).

In: ``spec.json`` (image size, alpha, classes, calibration batch, method),
``reference.npy`` (Keras's probabilities on the first test
images: the rebuild is checked against them before anything else), ``weights.npz`` (every layer's weights by layer name, from the
run's classes-only Keras model: the calibrated head), ``calibration.npy`` (uint8
training pixels) and ``sets.npz`` (named uint8 pixel sets to answer: the test split
and the decision images). Out: ``out/`` (``packerOut.zip``, ``dnnParams.xml``, the
memory report, MCT's ``model_q.keras``), ``probs.npz`` (the quantized model's
probabilities per set) and ``report.json`` (versions, method, times). Failures end in one ``imx500-error:``
line on stderr and an ``EXIT_*`` code the parent maps.

Traps this handles (measured on flowers128, alpha 0.35, 128 px):
- The converter has no ``Rescaling`` ("unsupported ops"): the model's own
  [0, 255] -> [-1, 1] map becomes a 1x1 depthwise convolution with the same
  scale and offset, which it runs. The input stays raw uint8 pixels (the
  converter's ``dnnParams.xml`` says: unsigned 8 bit, scale 1), as the camera
  hands them over.
- The converter refuses a float model and a softmax inside ``Dense``: MCT
  quantizes first, and the softmax is its own layer.
- MCT's quantized model is a fake-quant Keras model, so it answers on the
  workstation: the export holds it to the same budget as a TFLite file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

EXIT_SETUP = 3  # the venv lacks a package: the parent says how to install it
EXIT_REFUSED = 5  # the converter refused the network: the parent exits 1 with its line
EXIT_ENVIRONMENT = 6  # out of memory: the parent exits 3
EXIT_BUG = 7  # an exception: the parent exits 4 with its last line
EXIT_UNREADABLE = 8  # predict: the exported model cannot be loaded: the parent exits 2
EXIT_ORPHANED = 9  # the parent died: nobody reads this code
INPUT_SCALING = "to_minus1_1"


def watch_parent(work: Path) -> None:
    """Exit when stdin closes (the parent died, ``kill -9`` included, or gave up), taking
    the work folder with it, so no orphan writes into a folder a later export reuses."""

    def watch() -> None:
        while sys.stdin.buffer.read(1):
            pass
        shutil.rmtree(work, ignore_errors=True)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, daemon=True).start()


def say(message: str) -> None:
    print(f"imx500: {message}", file=sys.stderr, flush=True)


def build_float(tf, spec):
    """The edgetl classifier (classes only) as a flat Keras 2 graph the converter takes:
    the input scaling as a depthwise convolution, the softmax as its own layer."""
    size = int(spec["image_size"])
    inputs = tf.keras.Input(shape=(size, size, 3), name="pixels")
    scaling = tf.keras.layers.DepthwiseConv2D(1, use_bias=True, name=INPUT_SCALING)
    x = scaling(inputs)
    scaling.set_weights(
        [np.full((1, 1, 3, 1), 1.0 / 127.5, np.float32), np.full((3,), -1.0, np.float32)]
    )
    base = tf.keras.applications.MobileNetV2(
        input_tensor=x, alpha=float(spec["alpha"]), include_top=False, weights=None
    )
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(base.output)
    logits = tf.keras.layers.Dense(int(spec["num_classes"]), name="probabilities")(x)
    outputs = tf.keras.layers.Softmax(name="softmax")(logits)
    return tf.keras.Model(inputs, outputs, name="edgetl_mobilenetv2_imx500")


def copy_weights(model, weights) -> int:
    """Every layer's weights from ``weights`` (``name/index`` keys), but the scaling's."""
    by_layer = {}
    for key in weights.files:
        name, index = key.rsplit("/", 1)
        by_layer.setdefault(name, {})[int(index)] = weights[key]
    copied = 0
    for layer in model.layers:
        if not layer.weights or layer.name == INPUT_SCALING:
            continue
        arrays = by_layer[layer.name]
        layer.set_weights([arrays[i] for i in range(len(arrays))])
        copied += 1
    return copied


def predict(model, pixels: np.ndarray, batch: int = 64) -> np.ndarray:
    parts = [
        model.predict(pixels[i : i + batch].astype(np.float32), verbose=0)
        for i in range(0, len(pixels), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def convert(converter: Path, model_path: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(converter), "-i", str(model_path), "-o", str(out), "--overwrite-output"],
        capture_output=True,
        text=True,
    )


def converter_error(result: subprocess.CompletedProcess) -> str:
    """The converter's own ERROR line (it logs Python paths after each message)."""
    for line in (result.stdout + result.stderr).splitlines():
        if " ERROR " in line or line.startswith("ERROR"):
            return line.split(" ERROR : ", 1)[-1].split(" [/", 1)[0].strip()
    tail = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return tail[-1] if tail else f"exit {result.returncode}"


def imports():
    """MCT and TensorFlow 2.15, or None after the ``imx500-error`` line naming what is missing."""
    try:
        import model_compression_toolkit as mct
        import tensorflow as tf
    except ImportError as error:
        print(f"imx500-error: missing package: {error.name}", file=sys.stderr, flush=True)
        return None
    return mct, tf


def quantize(mct, model, representative, tpc, method: str, spec):
    """MCT's post-training quantization for the IMX500, plain or with GPTQ.

    GPTQ (gradient-based PTQ) fits the rounding of the weights to the float
    model's answers on the calibration images: slower, and what Sony's
    documentation offers when plain PTQ loses accuracy.
    """
    if method == "gptq":
        # Without MCT's Hessian-based weighting, which took over 16 minutes of the 2-core
        # VM on a 0.35 MobileNetV2 at 128 px without finishing; 10 epochs take about 70 s.
        config = mct.gptq.get_keras_gptq_config(
            n_epochs=int(spec.get("gptq_epochs", 10)),
            use_hessian_based_weights=False,
            use_hessian_sample_attention=False,
            gradual_activation_quantization=False,
        )
        quantized, _ = mct.gptq.keras_gradient_post_training_quantization(
            model, representative, gptq_config=config, target_platform_capabilities=tpc
        )
        return quantized
    quantized, _ = mct.ptq.keras_post_training_quantization(
        model, representative, target_platform_capabilities=tpc
    )
    return quantized


def quantize_step(work: Path) -> int:
    """``spec.json``'s method: the quantized model's answers (``probs.npz``) and its
    export (``out/model_q.keras``), for the parent to judge before anything compiles."""
    found = imports()
    if found is None:
        return EXIT_SETUP
    mct, tf = found
    spec = json.loads((work / "spec.json").read_text())
    method = spec.get("method", "ptq")
    started = time.perf_counter()
    model = build_float(tf, spec)
    copied = copy_weights(model, np.load(work / "weights.npz"))
    sets = np.load(work / "sets.npz")
    reference = np.load(work / "reference.npy")  # Keras's answers on the first test images
    gap = float(np.abs(predict(model, sets["test"][: len(reference)]) - reference).max())
    if gap > 1e-3:
        print(f"imx500-error: the rebuilt model differs from Keras by {gap:.2g}", file=sys.stderr)
        return EXIT_BUG
    calibration = np.load(work / "calibration.npy", mmap_mode="r")
    batch = int(spec.get("calibration_batch", 16))
    say(f"rebuilt MobileNetV2 for the converter ({copied} layers copied)")

    def representative():
        for start in range(0, len(calibration), batch):
            yield [np.asarray(calibration[start : start + batch], np.float32)]

    tpc = mct.get_target_platform_capabilities("tensorflow", "imx500", target_platform_version="v1")
    say(f"MCT {method.upper()} for the IMX500 on {len(calibration)} training images")
    quantized = quantize(mct, model, representative, tpc, method, spec)
    np.savez(work / "probs.npz", **{name: predict(quantized, sets[name]) for name in sets.files})
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    mct.exporter.keras_export_model(model=quantized, save_model_path=str(out / "model_q.keras"))
    report = {
        "tensorflow": tf.__version__,
        "mct": getattr(mct, "__version__", "?"),
        "method": method,
        "layers_copied": copied,
        "calibration_images": int(len(calibration)),
        "rebuild_max_probability_gap": gap,
        "quantize_seconds": round(time.perf_counter() - started, 1),
    }
    (work / "report.json").write_text(json.dumps(report))
    return 0


def convert_step(work: Path) -> int:
    """``imxconv-tf`` on the judged ``out/model_q.keras``: ``packerOut.zip`` and the memory report."""
    converter = Path(sys.executable).parent / "imxconv-tf"
    if not converter.is_file():
        print("imx500-error: missing package: imx500-converter", file=sys.stderr, flush=True)
        return EXIT_SETUP
    out = work / "out"
    say("imxconv-tf: compiling for the IMX500")
    began = time.perf_counter()
    result = convert(converter, out / "model_q.keras", out)
    report = json.loads((work / "report.json").read_text())
    report.update(
        converter_seconds=round(time.perf_counter() - began, 1), converter_exit=result.returncode
    )
    (work / "report.json").write_text(json.dumps(report))
    if result.returncode != 0 or not (out / "packerOut.zip").is_file():
        print(f"imx500-error: imxconv-tf: {converter_error(result)}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    say(f"converted in {report['converter_seconds']:.0f}s")
    return 0


def predict_step(work: Path) -> int:
    """An exported ``model_q.keras`` (``spec.json``'s ``model``) answers ``sets.npz``:
    how ``validate`` measures the IMX500 network beside the TFLite files."""
    found = imports()
    if found is None:
        return EXIT_SETUP
    mct, _ = found
    spec = json.loads((work / "spec.json").read_text())
    try:
        model = mct.keras_load_quantized_model(spec["model"])
    except Exception as error:  # a damaged or foreign file: the parent names it
        reason = " ".join(str(error).split())[:200]
        print(
            f"imx500-error: {spec['model']}: MCT cannot load it ({type(error).__name__}: {reason})",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_UNREADABLE
    pixels = np.load(work / "pixels.npy", mmap_mode="r")  # written a batch at a time
    np.savez(work / "probs.npz", test=predict(model, pixels))
    return 0


STEPS = {"quantize": quantize_step, "convert": convert_step, "predict": predict_step}


def main(step: str, work: Path) -> int:
    watch_parent(work)
    return STEPS[step](work)


def run(argv) -> int:
    try:
        return main(argv[1], Path(argv[2]))
    except MemoryError:
        print("imx500-error: out of memory", file=sys.stderr, flush=True)
        return EXIT_ENVIRONMENT
    except Exception as error:  # the parent turns it into exit 4 with this line
        traceback.print_exc()
        reason = " ".join(str(error).split())[:300]
        print(f"imx500-error: {type(error).__name__}: {reason}", file=sys.stderr, flush=True)
        return EXIT_BUG


if __name__ == "__main__":
    code = run(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip TensorFlow's teardown, as the QAT worker does
