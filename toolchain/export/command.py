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
from typing import Any, Dict, List, Optional

from edge import atomic
from edge.errors import BadInput, GateFailed
from toolchain import __version__
from toolchain.accelerators import ethos_u
from toolchain.confidence.far_rows import describe, find_far_rows
from toolchain.confidence.shipped import has_out_of_class, output_labels
from toolchain.core.budget import Budget
from toolchain.core.options import (
    ACCELERATOR_TARGETS,
    IO_TYPES,
    QUANT_MODES,
    TARGETS,
    ExportOptions,
)
from toolchain.core.progress import Log, stderr_log
from toolchain.core.rundir import RunDir, read_json_object
from toolchain.export import shipped_set, transaction
from toolchain.export.answer_floor import answer_floor
from toolchain.export.exported import (
    ExportResult,
    model_card,
    refuse_overwrite,
    report_entry,
    write_model,
)
from toolchain.export.job import ExportJob
from toolchain.export.qat.finetune import qat_or_ptq, qat_python
from toolchain.export.repair import entry_of, record_parity, set_aside, ship, validate_within
from toolchain.quantize.accelerator_form import static_batch
from toolchain.quantize.calibration import calibration_set, config_seed, pixel_stats
from toolchain.quantize.converter import convert
from toolchain.validate.decision import Judge
from toolchain.validate.figures import gate_failures


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
    if options.target == "imx500":  # the CLI hands it to toolchain.export.imx500.convert
        raise BadInput("--target imx500 is exported by toolchain.export.imx500.convert")
    if options.target in ("edgetpu", "ethos-u") and not options.validate:
        raise BadInput(
            f"--target {options.target} checks the file it ships with that accelerator's "
            "compiler, which --no-validate skips; drop --no-validate or use --target accelerator"
        )
    if options.target == "ethos-u" and "int8" in modes:
        ethos_u.runnable_vela()  # before any work: the compiler is what this target checks with
    samples = options.calibration_samples
    if "int8" in modes and (
        not isinstance(samples, int) or isinstance(samples, bool) or samples < 1
    ):
        raise BadInput(
            f"--calibration-samples {samples}: int8 needs at least 1 training image to "
            "calibrate on (100-500 is the usual range)"
        )
    Budget.of(options.max_drop, options.min_agreement)  # its ranges, before any work
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


def planned_files(run: RunDir, modes: List[str]) -> List[Path]:
    """The shippable files this export may replace, known before any work starts (with
    int8 both INT8 names: a run never holds two INT8 models from different exports)."""
    return [run.path / name for mode in modes for name in shipped_set.slot(mode)]


def export(
    run_dir: str | Path, options: ExportOptions, log: Log = stderr_log
) -> List[ExportResult]:
    """Write ``model_<quant>.tflite`` for each mode, validate them and hold them to the
    accuracy budget, all in a staging folder; then commit what met it
    (``transaction``, ``shipped_set``). ``GateFailed`` when a mode missed."""
    modes = check_export_options(options)
    budget = Budget.of(options.max_drop, options.min_agreement)
    run = RunDir(run_dir).require_trained()
    transaction.recover(run)
    refuse_overwrite(planned_files(run, modes), options.force)
    config = run.read_config()
    if options.qat and has_out_of_class(config):  # before asking for the QAT Python
        raise BadInput(
            f"--qat: {run.model} has the out-of-class output, which the QAT worker (Keras 2) "
            "cannot rebuild yet; export without --qat, or train with --no-out-of-class to use it"
        )
    if options.qat:
        qat_python()  # exit 3 now, not after minutes of conversion
    calibration, calibration_info = None, {}
    if "int8" in modes:
        calibration, calibration_info = calibration_set(
            run,
            options.calibration_samples,
            config_seed(run, config),
            int(config["image_size"]),
            log,
            out_of_class=has_out_of_class(config),
        )
    model = run.load_keras_model()
    check_outputs(run, config, model)
    if calibration is not None:
        far_calibration(model, calibration, calibration_info, config_seed(run, config), log)
    answer = answer_floor(
        run, config, model, options.min_precision, options.precision_confidence, log
    )
    job = ExportJob(
        run, transaction.begin(run), options, budget, config, model, calibration, log, answer
    )
    try:
        results, report, judge = convert_all(job, modes, calibration_info)
        missed = judge_all(job, modes, results, report, judge) if options.validate else {}
    except BaseException:
        transaction.abandon(run)  # the run's files were never touched
        raise
    return conclude(job, modes, results, report, missed)


def far_calibration(
    model: Any, calibration: Any, info: Dict[str, Any], seed: int, log: Log
) -> None:
    """Calibration rows past the out-of-class threshold when the scrambled copies do not
    reach it (``toolchain.confidence.far_rows``), appended and recorded in ``info``."""
    rows, found = find_far_rows(model, calibration, int(info.get("scrambled_images", 0)), seed)
    info.update(found)
    if rows is not None:
        calibration.append(rows)
        mean, std = pixel_stats(calibration)
        info.update(images=int(len(calibration)), pixel_mean=round(mean, 2))
        info["pixel_std"] = round(std, 2)
    line = describe(found)
    if line:
        log(line)


def check_outputs(run: RunDir, config: Dict[str, Any], model: Any) -> None:
    """model.keras gives one score per label config.json names (the classes, then
    ``unknown`` when the run has it): files from two runs would otherwise surface as a
    label mismatch in the first runner that opens the export."""
    outputs, labels = int(model.output_shape[-1]), output_labels(config)
    if outputs != len(labels):
        raise BadInput(
            f"{run.model} has {outputs} outputs but {run.config} names {len(labels)} labels; "
            f"the files are from different runs: train again with `edgetl train --out "
            f"{run.path} --force`"
        )


def convert_all(job: ExportJob, modes: List[str], calibration_info: Dict[str, Any]):
    """Every requested mode converted and written into the staging folder, with the
    report that describes them."""
    options, log = job.options, job.log
    results: List[ExportResult] = []
    judge, qat_report = None, None
    for mode in modes:
        io = options.io if mode == "int8" else "float32"
        start = time.perf_counter()
        flatbuffer = convert(
            job.model, mode, io, job.calibration, job.run.export_log,
            accelerator=options.target in ACCELERATOR_TARGETS,
        )  # fmt: skip
        card = model_card(
            job.config, mode, io, calibration_info if mode == "int8" else {}, job.answer
        )
        if mode == "int8" and options.qat:
            judge = Judge.of(job.run, job.config, job.model, log, half_of_train=True)
            flatbuffer, qat_report = qat_or_ptq(
                job.run, job.model, job.calibration, job.config, io, options.qat_epochs,
                flatbuffer, card, judge, job.budget, log,
            )  # fmt: skip
            if options.target in ACCELERATOR_TARGETS:
                flatbuffer = static_batch(flatbuffer)  # QAT's own conversion included
        seconds = time.perf_counter() - start
        results.append(write_model(job.out.tflite(mode), flatbuffer, card, seconds, log))
    report: Dict[str, Any] = {
        "edgetl_version": __version__,
        "target": options.target,
        "budget": job.budget.json() if options.validate else None,
        "answer": job.answer,
        "models": [report_entry(r, job.run, log) for r in results],
    }
    if qat_report is not None:
        report["qat"] = qat_report
    if "int8" in modes and not options.validate:
        report["shipped"] = {
            "int8": job.out.tflite("int8").name,
            "why": "not validated (--no-validate): the accuracy budget was not checked",
        }
    atomic.write_json(job.out.export_report, report)
    return results, report, judge


def judge_all(
    job: ExportJob, modes: List[str], results: List[ExportResult], report, judge
) -> Dict[str, str]:
    """Validate every staged model on the test split and hold each mode to the budget;
    returns the modes that missed, with why (their files are renamed ``.rejected``)."""
    log, budget = job.log, job.budget
    log(f"budget: {budget.flags()}" + (" (the default)" if budget.defaulted else ""))
    parity = validate_within(job, results)
    record_parity(job.out, results, parity, report, budget)
    missed: Dict[str, str] = {}
    for result in [r for r in results if r.quant != "int8"]:
        entry = entry_of(parity, result.path)
        failing = gate_failures([entry], budget)
        if failing:
            missed[result.quant] = "budget missed on the test split: " + "; ".join(failing)
            set_aside(result, report)
    if "int8" in modes:
        try:
            ship(job, results, parity, report, judge)
        except GateFailed as error:
            missed["int8"] = str(error)
            for result in results:
                if result.quant in ("int8", "int8-mixed"):
                    set_aside(result, report)
    atomic.write_json(job.out.export_report, report)
    return missed


def conclude(
    job: ExportJob,
    modes: List[str],
    results: List[ExportResult],
    report: Dict[str, Any],
    missed: Dict[str, str],
) -> List[ExportResult]:
    """Commit what met the budget, or, when nothing did, leave the run as it was and
    keep this export's files in ``RUN/rejected/``; ``GateFailed`` for every miss."""
    run, log = job.run, job.log
    staged = {p.name for p in job.out.path.iterdir()}
    everything_missed = len(missed) == len(modes)
    # a rejected export's own report describes its files alone: the run keeps its own
    run_files = set() if everything_missed else {p.name for p in run.path.iterdir()}
    old = None if everything_missed else previous_report(run)
    decided = shipped_set.plan(run_files, staged, modes, missed, report, old, job.options.validate)
    atomic.write_json(job.out.export_report, decided.report)
    if everything_missed:
        where = transaction.reject(run)
        raise GateFailed(
            "; ".join(missed.values())
            + f" (nothing in {run.path} changed; the rejected files and their reports are in {where})"
        )
    point_parity_at(run, job.out, staged)
    transaction.commit(run, decided.install, decided.remove)
    for result in results:
        result.path = run.path / result.path.name
    outcomes = decided.report["modes"].items()
    log(
        "committed: " + ", ".join(f"{m} {o['status']} ({o['file'] or 'none'})" for m, o in outcomes)
    )
    if missed:
        kept = ", ".join(
            f"{mode}: {outcome['file'] or 'none'}"
            for mode, outcome in decided.report["modes"].items()
        )
        raise GateFailed("; ".join(missed.values()) + f" (the run ships {kept})")
    return [r for r in results if not r.path.name.endswith(shipped_set.REJECTED_SUFFIX)]


def previous_report(run: RunDir) -> Optional[Dict[str, Any]]:
    """The report the run has now; a damaged one is replaced, not trusted."""
    if not run.export_report.is_file():
        return None
    try:
        return read_json_object(run.export_report)
    except BadInput:
        return None


def point_parity_at(run: RunDir, out: RunDir, staged: set) -> None:
    """``parity.json`` names its models by path: the staged files' run names."""
    if "parity.json" not in staged:
        return
    parity = read_json_object(out.parity)
    for model in parity.get("models", []):
        name = Path(model["path"]).name
        if name not in staged and shipped_set.set_aside_name(name) in staged:
            name = shipped_set.set_aside_name(name)
        model["path"] = str(run.path / name)
    atomic.write_json(out.parity, parity)
