"""``edgetl export``: the trained Keras model to self-describing ``.tflite`` files.

This module only orchestrates; each step lives below it:
``calibration`` (which training images), ``converter`` (one configured
converter per mode), ``exported`` (card, atomic write, report entry),
``parity`` (validate what was written on the test split), ``budget`` (the
accuracy budget and the images decisions are taken on) and ``repair`` (which
INT8 model ships; with ``--target cpu`` the accuracy-aware mix when full INT8
misses the budget). The converter's C++ logs go to ``export.log``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List

from edge import atomic
from edge.errors import BadInput, GateFailed
from toolchain import __version__
from toolchain.budget import Budget, Judge
from toolchain.calibration import calibration_set, config_seed
from toolchain.converter import convert
from toolchain.exported import ExportResult, model_card, refuse_overwrite, report_entry, write_model
from toolchain.options import (
    IO_TYPES,
    QUANT_MODES,
    TARGETS,
    ExportOptions,
    check_gate_options,
)
from toolchain.parity_figures import gate_failures
from toolchain.progress import Log, stderr_log
from toolchain.qat import qat_or_ptq, qat_python
from toolchain.repair import record_parity, ship, validate_within
from toolchain.rundir import RunDir


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
    if options.target not in TARGETS:
        raise BadInput(f"--target {options.target}: choose one of {', '.join(TARGETS)}")
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
    if options.qat:
        if "int8" not in modes:
            raise BadInput("--qat makes an INT8 model: use it with --quant int8 (or all)")
        if not options.validate:
            raise BadInput(
                "--qat is judged against post-training quantization on the validation "
                "images that --no-validate skips; drop --no-validate"
            )
    if not options.validate and gates:
        raise BadInput(
            "--max-drop and --min-agreement set the budget that --no-validate turns off; "
            "drop --no-validate or the budget"
        )
    return modes


def set_aside(run: RunDir) -> List[Path]:
    """The INT8 files an earlier export may have left beside ``model_int8.tflite``: its
    repaired mix, and the full-INT8 file or failed mix it set aside."""
    int8, mixed = run.tflite("int8"), run.tflite("int8_mixed")
    return [
        mixed,
        int8.with_name(int8.name + ".rejected"),
        mixed.with_name(mixed.name + ".rejected"),
    ]


def planned_files(run: RunDir, modes: List[str]) -> List[Path]:
    """Every model file this export may write, replace or remove, known before any work
    starts: with int8 also the mix and the set-aside file (a new INT8 export replaces
    them, so a run never holds two INT8 models from different exports)."""
    files = [run.tflite(mode) for mode in modes]
    return files + set_aside(run) if "int8" in modes else files


def export(
    run_dir: str | Path, options: ExportOptions, log: Log = stderr_log
) -> List[ExportResult]:
    """Write ``model_<quant>.tflite`` for each mode, then validate them and hold them to
    the accuracy budget; with int8, choose the one INT8 model the run ships
    (``repair.ship``)."""
    modes = check_export_options(options)
    budget = Budget.of(options.max_drop, options.min_agreement)
    run = RunDir(run_dir).require_trained()
    refuse_overwrite(planned_files(run, modes), options.force)
    if options.qat:
        qat_python()  # exit 3 now, not after minutes of conversion
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
    judge, qat_report = None, None
    for mode in modes:
        io = options.io if mode == "int8" else "float32"
        start = time.perf_counter()
        flatbuffer = convert(model, mode, io, calibration, run.export_log)
        card = model_card(config, mode, io, calibration_info if mode == "int8" else {})
        if mode == "int8" and options.qat:
            judge = Judge.of(run, config, model, log, half_of_train=True)
            flatbuffer, qat_report = qat_or_ptq(
                run,
                model,
                calibration,
                config,
                io,
                options.qat_epochs,
                flatbuffer,
                card,
                judge,
                budget,
                log,
            )
        seconds = time.perf_counter() - start
        results.append(write_model(run.tflite(mode), flatbuffer, card, seconds, log))
        if mode == "int8":
            for stale in set_aside(run):  # --force was given or they did not exist
                stale.unlink(missing_ok=True)
    report: Dict[str, Any] = {
        "edgetl_version": __version__,
        "target": options.target,
        "budget": budget.json() if options.validate else None,
        "models": [report_entry(r, run, log) for r in results],
    }
    if qat_report is not None:
        report["qat"] = qat_report
    if "int8" in modes:
        report["shipped"] = (
            {"int8": None, "why": "pending: validation against the budget did not finish"}
            if options.validate
            else {
                "int8": run.tflite("int8").name,
                "why": "not validated (--no-validate): the accuracy budget was not checked",
            }
        )
    atomic.write_json(run.export_report, report)
    if not options.validate:
        log("note: --no-validate: the accuracy budget was not checked; run `edgetl validate`")
        return results
    log(f"budget: {budget.flags()}" + (" (the default)" if budget.defaulted else ""))
    parity = validate_within(run, results, budget, log)
    record_parity(run, results, parity, report)
    others = [m for m in parity["models"] if m["quant"] != "int8"]
    failing = gate_failures(others, budget.max_drop, budget.min_agreement)
    if failing:
        message = "budget missed on the test split: " + "; ".join(failing)
        if "int8" in modes:
            report["shipped"] = {"int8": None, "why": message}
            atomic.write_json(run.export_report, report)
        raise GateFailed(message)
    if "int8" in modes:
        ship(run, model, calibration, config, options, budget, results, parity, report, log, judge)
    return results
