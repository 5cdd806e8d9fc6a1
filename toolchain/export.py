"""``edgetl export``: the trained Keras model to a self-describing ``.tflite``.

Modes (named constructors in ``ExportOptions``):
- ``int8``: full integer. Calibration images come from the *training* split,
  stratified by class, decoded by the same ``edge.image.load_rgb`` as training,
  never random noise. uint8 input by default: the model rescales internally,
  so the input quantization is scale 1, zero point 0 and decoder bytes go in as is;
  ``fast_input`` then moves the uint8 → int8 step into XNNPACK (same outputs).
- ``float16``: float16 weights, float32 compute and I/O (half the size).
- ``dynamic``: int8 weights, float activations. Dense layers are quantized
  per-tensor: per-channel Dense emits FULLY_CONNECTED v12, which tflite-runtime
  2.14 refuses to load (README, *Traps we measured*).
- ``float32``: the reference conversion.

Each file gets labels and a JSON card appended (``edge.modelfile``) and is
written atomically; the converter's C++ logs go to ``export.log``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge import atomic
from edge.errors import BadInput
from edge.image import load_many
from edge.modelfile import embed_metadata
from edge.runtime import load_interpreter
from toolchain import __version__
from toolchain.fast_input import delegate_uint8_input
from toolchain.options import IO_TYPES, QUANT_MODES, ExportOptions, check_gate_options
from toolchain.progress import Log, stderr_log
from toolchain.rundir import RunDir, read_json_object


@dataclass
class ExportResult:
    quant: str
    path: Path
    size_bytes: int
    seconds: float
    tensors: List[Dict[str, Any]]
    calibration: Dict[str, Any]
    payload: bytes = b""  # the model (with standard metadata) before edgetl's own entries
    card: Dict[str, Any] = field(default_factory=dict)


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
    names = run.labels()
    paths, labels = run.split_files("train", len(names))
    chosen = stratified_sample(labels, samples, seed)
    pixels, kept, _ = load_many([paths[i] for i in chosen], size)
    per_class: Dict[str, int] = {}
    for i in kept:
        per_class[names[labels[chosen[i]]]] = per_class.get(names[labels[chosen[i]]], 0) + 1
    return pixels, per_class


def training_pixel_stats(run: RunDir, seed: int, size: int, sample: int = 500) -> Dict[str, Any]:
    """Pixel mean/std of (a seeded sample of) the whole training split, to set beside
    the calibration set's: a calibration set that does not look like training shows here."""
    paths, _ = run.split_files("train")
    rng = np.random.default_rng(seed + 1)
    chosen = rng.permutation(len(paths))[:sample]
    pixels, _, _ = load_many([paths[i] for i in chosen], size)
    if not len(pixels):
        return {}
    return {
        "train_pixel_mean": round(float(pixels.mean()), 2),
        "train_pixel_std": round(float(pixels.std()), 2),
        "train_sample": int(len(pixels)),
    }


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
        flatbuffer = converter.convert()
    if options.quant == "int8":
        # Before the metadata is embedded: the rewrite does not carry the appended zip.
        flatbuffer = delegate_uint8_input(flatbuffer)
    return flatbuffer


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


def check_export_options(options: ExportOptions) -> List[str]:
    """Every option of ``edgetl export``, checked before the model is loaded or a file
    written (a typo must not cost minutes of conversion); returns the modes to export."""
    modes = modes_for(options.quant)
    if options.io not in IO_TYPES:
        raise BadInput(f"--io {options.io}: choose one of {', '.join(IO_TYPES)}")
    samples = options.calibration_samples
    if "int8" in modes and (
        not isinstance(samples, int) or isinstance(samples, bool) or samples < 1
    ):
        raise BadInput(
            f"--calibration-samples {samples}: int8 needs at least 1 training image to "
            "calibrate on (100-500 is the usual range)"
        )
    check_gate_options(options.max_drop, options.min_agreement)
    gates = options.max_drop is not None or options.min_agreement is not None
    if not options.validate and (gates or options.auto_fallback):
        raise BadInput(
            "--max-drop, --min-agreement and --auto-fallback judge the validation that "
            "--no-validate turns off; drop --no-validate or the gate"
        )
    if options.auto_fallback and options.max_drop is None:
        raise BadInput("--auto-fallback needs --max-drop PTS: the budget the fallback works to")
    if options.auto_fallback and "int8" not in modes:
        raise BadInput("--auto-fallback applies to --quant int8 (or all)")
    return modes


def planned_files(run: RunDir, modes: List[str], options: ExportOptions) -> List[Path]:
    """Every model file this export may write or replace, known before any work starts:
    with --auto-fallback also the mixed model and the full-INT8 file set aside."""
    files = [run.tflite(mode) for mode in modes]
    if options.auto_fallback:
        int8 = run.tflite("int8")
        files += [run.tflite("int8_mixed"), int8.with_name(int8.name + ".rejected")]
    return files


def config_seed(run: RunDir, config: Dict[str, Any]) -> int:
    """The run's seed (calibration is sampled with it), one line if it was edited."""
    value = config["options"].get("seed", 0)
    try:
        seed = int(value)
    except (TypeError, ValueError, OverflowError):
        seed = -1
    if seed < 0 or isinstance(value, bool):
        raise BadInput(
            f"{run.config}: options.seed {str(value)[:40]!r} is not a whole number >= 0; "
            f"it was edited: train again with `edgetl train --out {run.path} --force`"
        )
    return seed


def model_card(
    config: Dict[str, Any], quant: str, io: str, calibration_info: Dict[str, Any]
) -> Dict[str, Any]:
    """The JSON card embedded in each exported file: what a device needs to know."""
    return {
        "edgetl_version": __version__,
        "quant": quant,
        "io": io,
        "labels": list(config["labels"]),
        "image_size": int(config["image_size"]),
        "input": config.get("input", {}),
        "train": config.get("results", {}),
        "calibration": calibration_info,
    }


def _write(
    path: Path, flatbuffer: bytes, card: Dict[str, Any], seconds: float, log: Log
) -> ExportResult:
    from toolchain.phone_metadata import with_image_classifier_metadata

    standard = with_image_classifier_metadata(flatbuffer, card["labels"])
    card = {**card, "standard_metadata": standard is not None}
    if standard is None:
        log(
            "note: mediapipe is not installed, so no standard TFLite metadata was written "
            "(phone runtimes need it): pip install 'edgetl[train]'"
        )
    payload = standard or flatbuffer
    if card["quant"] == "int8":  # checked before the write: a good earlier file stays
        from toolchain.modelinfo import inspect_tflite

        left = inspect_tflite(payload)["float_weight_tensors"]
        if left:
            raise BadInput(
                f"{path.name}: the converter left {left} float weight tensor(s), so it is not "
                "a full-INT8 model (nothing was written); use --auto-fallback for a "
                "deliberate mixed model"
            )
    path = atomic.write_bytes(path, embed_metadata(payload, card, card["labels"]))
    tensors = tensor_report(path)
    result = ExportResult(
        card["quant"],
        path,
        path.stat().st_size,
        seconds,
        tensors,
        card["calibration"],
        payload,
        card,
    )
    log(f"wrote {path} ({result.size_bytes / 1024:.0f} KiB, {seconds:.1f}s)")
    for tensor in tensors:
        log(
            f"  {tensor['kind']:6s} {tensor['dtype']:7s} {tensor['shape']}  "
            f"scale {tensor['scale']:.6g}  zero point {tensor['zero_point']}"
        )
    return result


def calibration_set(run: RunDir, options: ExportOptions, seed: int, size: int, log: Log) -> tuple:
    """INT8 calibration pixels and what the card says about them, read before the model
    is loaded: a run whose training images are all unreadable fails in seconds."""
    calibration, per_class = representative_images(run, options.calibration_samples, seed, size)
    if len(calibration) == 0:
        raise BadInput(
            f"{run.path}: none of the training images chosen for calibration could be read; "
            "restore the dataset folder named in splits.json"
        )
    info = {
        "images": int(len(calibration)),
        "per_class": per_class,
        "source": "train split, stratified by class",
        "pixel_mean": round(float(calibration.mean()), 2),
        "pixel_std": round(float(calibration.std()), 2),
        **training_pixel_stats(run, seed, size),
    }
    log(
        f"int8: calibrating on {len(calibration)} training images "
        f"({', '.join(f'{k} {v}' for k, v in per_class.items())})"
    )
    return calibration, info


def _refuse_overwrite(paths: List[Path], force: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise BadInput(f"{existing[0]} exists; pass --force to replace it (nothing was written)")


def export(
    run_dir: str | Path, options: ExportOptions, log: Log = stderr_log
) -> List[ExportResult]:
    """Write ``model_<quant>.tflite`` for each mode, then validate and gate them."""
    modes = check_export_options(options)
    run = RunDir(run_dir).require_trained()
    _refuse_overwrite(planned_files(run, modes, options), options.force)
    config = run.read_config()
    size = int(config["image_size"])
    seed = config_seed(run, config)
    calibration, calibration_info = None, {}
    if "int8" in modes:
        calibration, calibration_info = calibration_set(run, options, seed, size, log)
    model = run.load_keras_model()
    results: List[ExportResult] = []
    for mode in modes:
        mode_options = replace(options, quant=mode, io=options.io if mode == "int8" else "float32")
        start = time.perf_counter()
        flatbuffer = convert(model, mode_options, calibration, run.path / "export.log")
        info = calibration_info if mode == "int8" else {}
        card = model_card(config, mode, mode_options.io, info)
        results.append(_write(run.tflite(mode), flatbuffer, card, time.perf_counter() - start, log))
    report: Dict[str, Any] = {
        "edgetl_version": __version__,
        "models": [_result_json(r, run, log) for r in results],
    }
    atomic.write_json(run.export_report, report)
    if not options.validate:
        return results

    from edge.errors import GateFailed
    from toolchain.parity import gate_failures, validate

    written = [str(r.path) for r in results]
    try:
        parity = validate(
            run.path,
            written,
            max_drop=options.max_drop,
            min_agreement=options.min_agreement,
            log=log,
        )
        _record_parity(run, results, parity, report)
    except GateFailed:
        _record_parity(run, results, read_json_object(run.parity), report)
        if not options.auto_fallback:
            raise
        log("int8 misses the gate: looking for the fewest layers to keep in float")
        mixed, fallback_report = auto_fallback(run, model, calibration, config, options, log)
        report["fallback"] = fallback_report
        if mixed is None:
            atomic.write_json(run.export_report, report)
            raise GateFailed(
                f"auto-fallback: no mix within {options.fallback_max_layers} float layers met "
                f"--max-drop {options.max_drop} on the validation split; see export_report.json"
            ) from None
        results.append(mixed)
        report["models"].append(_result_json(mixed, run, log))
        atomic.write_json(run.export_report, report)
        # The full-INT8 file that failed steps aside (renamed back if the mix fails too):
        # the run then holds one INT8 model, the one within budget, so `edgetl validate
        # RUN` gates what ships and nobody copies the failed file to a device by mistake.
        failed = next(r for r in results if r.quant == "int8")
        rejected = failed.path.with_name(failed.path.name + ".rejected")
        failed.path.replace(rejected)
        for entry in report["models"]:
            if entry["path"] == failed.path.name:
                entry["path"] = rejected.name
        failed.path, original = rejected, failed.path
        written = [str(r.path) for r in results]
        parity = validate(run.path, written, log=log)
        _record_parity(run, results, parity, report)
        final = [m for m in parity["models"] if Path(m["path"]) == mixed.path]
        problems = gate_failures(final, options.max_drop, options.min_agreement)
        if problems:
            rejected.replace(original)
            raise GateFailed(
                "parity gate failed on the test split: " + "; ".join(problems)
            ) from None
        log(
            f"{mixed.path.name} meets the gate on the test split; "
            f"the full-INT8 model that did not is kept as {rejected.name}"
        )
    return results


def _record_parity(run: RunDir, results: List[ExportResult], parity, report) -> None:
    embed_parity(results, parity)
    sizes = {r.path.name: r.size_bytes for r in results}
    for entry in report["models"]:
        entry["size_bytes"] = sizes.get(entry["path"], entry["size_bytes"])
    atomic.write_json(run.export_report, report)


def embed_parity(results: List[ExportResult], parity: Dict[str, Any]) -> None:
    """Rewrite each file with its validation figures in the card, so the device knows
    how the model it runs was measured (the file is replaced atomically)."""
    by_path = {Path(m["path"]).resolve(): m for m in parity["models"]}
    for r in results:
        figures = by_path.get(r.path.resolve())
        if figures is None or not r.payload:
            continue
        r.card["parity"] = {
            "n_images": parity["n_images"],
            "data": parity["data"],
            "keras_top1": round(parity["keras"]["top1"], 4),
            "top1": round(figures["top1"], 4),
            "top1_drop_pts": round(figures["top1_drop_pts"], 2),
            "agreement": round(figures["agreement"], 4),
        }
        atomic.write_bytes(r.path, embed_metadata(r.payload, r.card, r.card["labels"]))
        r.size_bytes = r.path.stat().st_size


def _result_json(r: ExportResult, run: RunDir, log: Log) -> Dict[str, Any]:
    """The report entry of one file: tensors, ops, runtime checks, size against float32.

    Also where an "int8" file that still holds float kernels is refused.
    """
    from toolchain import runtimes
    from toolchain.modelinfo import inspect_tflite

    info = inspect_tflite(r.path)
    compatibility = runtimes.check(r.path)
    log(f"{r.path.name} on device runtimes:")
    for line in runtimes.describe(compatibility):
        log(line)
    failures = [c for c in compatibility if not c["ok"]]
    for failure in failures:
        log(
            f"warning: {r.path.name} does not run on {failure['runtime']} "
            f"{failure.get('version', '')}: {failure.get('error', '')}"
        )
    float32 = run.tflite("float32")
    return {
        "quant": r.quant,
        "path": r.path.name,
        "size_bytes": r.size_bytes,
        "size_ratio_to_float32": round(r.size_bytes / float32.stat().st_size, 3)
        if float32.is_file()
        else None,
        "seconds": round(r.seconds, 2),
        "tensors": r.tensors,
        "calibration": r.calibration,
        "ops": info["ops"],
        "min_runtime_version": info["min_runtime_version"],
        "compatibility": compatibility,
    }


def auto_fallback(
    run: RunDir,
    model: Any,
    calibration: np.ndarray,
    config: Dict[str, Any],
    options: ExportOptions,
    log: Log,
):
    """Accuracy-aware fallback (see ``fallback.py``) on the validation split.

    Returns the written mixed model (or None) and the fallback's report.
    """
    from toolchain import fallback
    from toolchain.diagnose import Calibrated, short_name, with_consumers

    paths, labels = run.split_files("val", len(config["labels"]))
    if not paths:
        raise BadInput(f"{run.path}: the run has no validation split for --auto-fallback")
    pixels, kept, _ = load_many(paths, int(config["image_size"]))
    if not kept:
        raise BadInput(
            f"{run.path}: none of the {len(paths)} validation images could be read for "
            "--auto-fallback; restore the dataset folder named in splits.json"
        )
    y = np.array([labels[i] for i in kept])
    keras_probs = model.predict(pixels.astype(np.float32), verbose=0)
    calibrated = Calibrated(model, calibration, run.path / "export.log", options.io)
    tensors = [row["tensor_name"] for row in calibrated.layer_errors(limit=0)]
    groups = with_consumers(calibrated.quantize([]), tensors)
    card = model_card(config, "int8-mixed", options.io, {"images": int(len(calibration))})
    scratch = run.path / atomic.partial_name(run.tflite("int8_mixed"))  # a kill leaves a temp name
    predict, latency_ms = fallback.interpreter_callbacks(scratch, card)
    try:
        outcome = fallback.repair(
            calibrated.quantize,
            groups,
            predict,
            latency_ms,
            pixels,
            y,
            keras_probs,
            options.max_drop,
            options.min_agreement,
            options.fallback_max_layers,
            name=short_name,
            log=log,
        )
    finally:
        scratch.unlink(missing_ok=True)
    report = {
        "method": "accuracy-aware: layers ranked by measured sensitivity, kept in float one at "
        "a time until the validation split meets the budget",
        "seconds": round(outcome.seconds, 2),
        "ranking": outcome.ranking[:20],
        "steps": [step.json() for step in outcome.steps],
    }
    if outcome.flatbuffer is None:
        return None, report
    card["float_layers"] = [short_name(name) for name in outcome.float_tensors]
    target = run.path / "model_int8_mixed.tflite"
    _refuse_overwrite([target], options.force)
    return _write(target, outcome.flatbuffer, card, outcome.seconds, log), report
