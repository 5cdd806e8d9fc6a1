"""``edgetl export``: the trained Keras model to self-describing ``.tflite`` files.

This module only orchestrates; each step lives below it:
``calibration`` (which training images), ``converter`` (one configured
converter per mode), ``exported`` (card, atomic write, report entry),
``parity`` (validate what was written), and on a failed gate with
``--auto-fallback``: ``diagnose`` + ``fallback`` (which layers to keep in
float). The converter's C++ logs go to ``export.log``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edge import atomic
from edge.errors import BadInput, GateFailed
from edge.image import load_many
from toolchain import __version__, fallback
from toolchain.calibration import calibration_set, config_seed
from toolchain.converter import convert
from toolchain.diagnose import Calibrated, short_name, with_consumers
from toolchain.exported import (
    ExportResult,
    embed_parity,
    model_card,
    refuse_overwrite,
    report_entry,
    write_model,
)
from toolchain.options import (
    IO_TYPES,
    QUANT_MODES,
    ExportOptions,
    ValidateOptions,
    check_gate_options,
)
from toolchain.parity import gate_failures, validate
from toolchain.progress import Log, stderr_log
from toolchain.rundir import RunDir, read_json_object


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


def export(
    run_dir: str | Path, options: ExportOptions, log: Log = stderr_log
) -> List[ExportResult]:
    """Write ``model_<quant>.tflite`` for each mode, then validate and gate them."""
    modes = check_export_options(options)
    run = RunDir(run_dir).require_trained()
    refuse_overwrite(planned_files(run, modes, options), options.force)
    config = run.read_config()
    size = int(config["image_size"])
    seed = config_seed(run, config)
    calibration, calibration_info = None, {}
    if "int8" in modes:
        calibration, calibration_info = calibration_set(
            run, options.calibration_samples, seed, size, log
        )
    model = run.load_keras_model()
    results: List[ExportResult] = []
    for mode in modes:
        io = options.io if mode == "int8" else "float32"
        start = time.perf_counter()
        flatbuffer = convert(model, mode, io, calibration, run.export_log)
        card = model_card(config, mode, io, calibration_info if mode == "int8" else {})
        seconds = time.perf_counter() - start
        results.append(write_model(run.tflite(mode), flatbuffer, card, seconds, log))
    report: Dict[str, Any] = {
        "edgetl_version": __version__,
        "models": [report_entry(r, run, log) for r in results],
    }
    atomic.write_json(run.export_report, report)
    if not options.validate:
        return results
    gate = ValidateOptions(
        models=tuple(str(r.path) for r in results),
        max_drop=options.max_drop,
        min_agreement=options.min_agreement,
    )
    try:
        record_parity(run, results, validate(run.path, gate, log), report)
    except GateFailed:
        record_parity(run, results, read_json_object(run.parity), report)
        if not options.auto_fallback:
            raise
        repair_int8(run, model, calibration, config, options, results, report, log)
    return results


def repair_int8(
    run: RunDir,
    model: Any,
    calibration: np.ndarray,
    config: Dict[str, Any],
    options: ExportOptions,
    results: List[ExportResult],
    report: Dict[str, Any],
    log: Log,
) -> None:
    """After a failed gate: write the mixed model, set the failed full-INT8 file aside
    and gate the mix on the test split; ``GateFailed`` when no mix makes it."""
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
    report["models"].append(report_entry(mixed, run, log))
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
    both = ValidateOptions(models=tuple(str(r.path) for r in results))
    parity = validate(run.path, both, log)
    record_parity(run, results, parity, report)
    final = [m for m in parity["models"] if Path(m["path"]) == mixed.path]
    problems = gate_failures(final, options.max_drop, options.min_agreement)
    if problems:
        rejected.replace(original)
        raise GateFailed("parity gate failed on the test split: " + "; ".join(problems)) from None
    log(
        f"{mixed.path.name} meets the gate on the test split; "
        f"the full-INT8 model that did not is kept as {rejected.name}"
    )


def record_parity(run: RunDir, results: List[ExportResult], parity, report) -> None:
    embed_parity(results, parity)
    sizes = {r.path.name: r.size_bytes for r in results}
    for entry in report["models"]:
        entry["size_bytes"] = sizes.get(entry["path"], entry["size_bytes"])
    atomic.write_json(run.export_report, report)


def auto_fallback(
    run: RunDir,
    model: Any,
    calibration: np.ndarray,
    config: Dict[str, Any],
    options: ExportOptions,
    log: Log,
) -> Tuple[Optional[ExportResult], Dict[str, Any]]:
    """Accuracy-aware fallback (see ``fallback.py``) on the validation split.

    Returns the written mixed model (or None) and the fallback's report.
    """
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
    calibrated = Calibrated(model, calibration, run.export_log, options.io)
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
    target = run.tflite("int8_mixed")
    refuse_overwrite([target], options.force)
    return write_model(target, outcome.flatbuffer, card, outcome.seconds, log), report
