"""``edgetl export``: the trained Keras model to a self-describing ``.tflite``.

Modes (named constructors in ``ExportOptions``):
- ``int8``: full integer. Calibration images come from the *training* split,
  stratified by class, decoded by the same ``edge.image.load_rgb`` as training,
  never random noise. uint8 input by default: the model rescales internally,
  so the input quantization is scale 1, zero point 0 and decoder bytes go in as is.
- ``float16``: float16 weights, float32 compute and I/O (half the size).
- ``dynamic``: int8 weights, float activations. Dense layers are quantized
  per-tensor: per-channel Dense emits FULLY_CONNECTED v12, which tflite-runtime
  2.14 refuses to load (NOTES.md).
- ``float32``: the reference conversion.

Each file gets labels and a JSON card appended (``edge.modelfile``) and is
written atomically; the converter's C++ logs go to ``export.log``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge import atomic
from edge.errors import BadInput
from edge.image import load_many
from edge.modelfile import embed_metadata
from edge.runtime import load_interpreter
from toolchain import __version__
from toolchain.options import IO_TYPES, QUANT_MODES, ExportOptions
from toolchain.progress import Log, stderr_log
from toolchain.rundir import RunDir


@dataclass
class ExportResult:
    quant: str
    path: Path
    size_bytes: int
    seconds: float
    tensors: List[Dict[str, Any]]
    calibration: Dict[str, Any]


def stratified_sample(labels: List[int], samples: int, seed: int) -> List[int]:
    """Indices of up to ``samples`` items, classes taking turns so each is represented.

    Round-robin over classes (each class shuffled with ``seed``) gives every
    class ``samples / n_classes`` images when it has them, instead of the
    majority class filling the calibration set.
    """
    rng = np.random.default_rng(seed)
    by_class: Dict[int, List[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    queues = {label: list(rng.permutation(members)) for label, members in sorted(by_class.items())}
    chosen: List[int] = []
    while len(chosen) < samples and any(queues.values()):
        for label in sorted(queues):
            if queues[label] and len(chosen) < samples:
                chosen.append(int(queues[label].pop()))
    return chosen


def anchor_input_range(calibration: np.ndarray) -> np.ndarray:
    """Make the calibration set span pixel values 0 and 255 exactly.

    The converter derives the uint8 input's scale from the smallest and largest
    pixel it saw. Photos without a pure black and a pure white pixel give a
    scale like 254/255, and then decoder bytes no longer go in unchanged (the
    device must rescale, and 255 clips). Setting one pixel of the first image
    to 0 and one to 255 pins the input to scale 1, zero point 0, and moves no
    other activation range measurably (two pixels out of all calibration pixels).
    """
    anchored = calibration.copy()
    if len(anchored):
        anchored[0, 0, 0, :] = 0
        anchored[0, 0, 1, :] = 255
    return anchored


def representative_images(run: RunDir, samples: int, seed: int, size: int):
    """Calibration pixels (uint8) from the training split, and per-class counts."""
    paths, labels = run.split_files("train")
    chosen = stratified_sample(labels, samples, seed)
    pixels, kept, _ = load_many([paths[i] for i in chosen], size)
    names = run.labels()
    per_class: Dict[str, int] = {}
    for i in kept:
        per_class[names[labels[chosen[i]]]] = per_class.get(names[labels[chosen[i]]], 0) + 1
    return pixels, per_class


def convert(
    model: Any, options: ExportOptions, calibration: np.ndarray | None, log_path: Path
) -> bytes:
    """Run the TFLite converter for one mode; returns the flatbuffer bytes."""
    from toolchain.quiet import captured_output, tensorflow

    tf = tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if options.quant == "int8":
        anchored = anchor_input_range(calibration)

        def representative_dataset():
            for image in anchored:
                yield [image[np.newaxis].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[options.io]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    elif options.quant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif options.quant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    with captured_output(log_path):
        return converter.convert()


def tensor_report(path: Path) -> List[Dict[str, Any]]:
    """Every input/output tensor's name, dtype, shape, scale and zero point."""
    interpreter, _ = load_interpreter(str(path), threads=1)
    report = []
    for kind, details in (
        ("input", interpreter.get_input_details()),
        ("output", interpreter.get_output_details()),
    ):
        for detail in details:
            scale, zero_point = detail["quantization"]
            report.append(
                {
                    "kind": kind,
                    "name": detail["name"],
                    "dtype": np.dtype(detail["dtype"]).name,
                    "shape": [int(v) for v in detail["shape"]],
                    "scale": float(scale),
                    "zero_point": int(zero_point),
                }
            )
    return report


def modes_for(quant: str) -> List[str]:
    if quant == "all":
        return list(QUANT_MODES)
    if quant not in QUANT_MODES:
        raise BadInput(f"--quant {quant}: choose one of {', '.join(QUANT_MODES)} or all")
    return [quant]


def export(
    run_dir: str | Path, options: ExportOptions, log: Log = stderr_log
) -> List[ExportResult]:
    run = RunDir(run_dir).require_trained()
    if options.io not in IO_TYPES:
        raise BadInput(f"--io {options.io}: choose one of {', '.join(IO_TYPES)}")
    modes = modes_for(options.quant)
    config = run.read_config()
    size = int(config["image_size"])
    labels = list(config["labels"])
    seed = int(config["options"].get("seed", 0))

    from toolchain.quiet import keras as import_keras

    keras = import_keras()
    model = keras.models.load_model(run.model, compile=False)
    results = []
    for mode in modes:
        mode_options = ExportOptions(
            mode, options.calibration_samples, options.io if mode == "int8" else "float32"
        )
        calibration_info: Dict[str, Any] = {}
        calibration = None
        if mode == "int8":
            if options.calibration_samples < 1:
                raise BadInput("--calibration-samples must be at least 1 for int8")
            calibration, per_class = representative_images(
                run, options.calibration_samples, seed, size
            )
            if len(calibration) == 0:
                raise BadInput(f"{run.path}: no readable training images for calibration")
            calibration_info = {
                "images": int(len(calibration)),
                "per_class": per_class,
                "source": "train split, stratified by class",
                "pixel_mean": round(float(calibration.mean()), 2),
                "pixel_std": round(float(calibration.std()), 2),
            }
            log(
                f"int8: calibrating on {len(calibration)} training images "
                f"({', '.join(f'{k} {v}' for k, v in per_class.items())})"
            )
        start = time.perf_counter()
        flatbuffer = convert(model, mode_options, calibration, run.path / "export.log")
        seconds = time.perf_counter() - start
        card = {
            "edgetl_version": __version__,
            "quant": mode,
            "io": mode_options.io,
            "labels": labels,
            "image_size": size,
            "input": config.get("input", {}),
            "train": config.get("results", {}),
            "calibration": calibration_info,
        }
        path = atomic.write_bytes(run.tflite(mode), embed_metadata(flatbuffer, card, labels))
        tensors = tensor_report(path)
        result = ExportResult(mode, path, path.stat().st_size, seconds, tensors, calibration_info)
        results.append(result)
        log(f"wrote {path} ({result.size_bytes / 1024:.0f} KiB, {seconds:.1f}s)")
        for tensor in tensors:
            log(
                f"  {tensor['kind']:6s} {tensor['dtype']:7s} {tensor['shape']}  "
                f"scale {tensor['scale']:.6g}  zero point {tensor['zero_point']}"
            )
    atomic.write_json(
        run.path / "export_report.json",
        {
            "edgetl_version": __version__,
            "models": [
                {
                    "quant": r.quant,
                    "path": r.path.name,
                    "size_bytes": r.size_bytes,
                    "seconds": round(r.seconds, 2),
                    "tensors": r.tensors,
                    "calibration": r.calibration,
                }
                for r in results
            ],
        },
    )
    return results
