"""Which INT8 model ``edgetl export`` ships, and the repair when full INT8 misses the budget.

One run ships one INT8 model, chosen here and named in ``export_report.json``
(``shipped``):

- ``--target accelerator`` (or ``--no-auto-fallback``): the full-INT8 file, when it
  meets the budget on the test split; otherwise exit 1 saying by how much.
- ``--target cpu`` (the default): the full-INT8 file when it meets the budget on
  the test split *and* on the decision images (``budget.decision_set``);
  otherwise the accuracy-aware mix (``fallback.repair``, judged on the decision
  images), which must then meet the budget on the test split too. The full-INT8
  file that failed is renamed ``.rejected``, so nobody copies it to a device.

Everything here happens in the export's staging folder (``transaction``):
a miss raises ``GateFailed`` and ``export`` decides what, if anything, the run gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edge import atomic
from edge.errors import GateFailed, NotFinite
from toolchain.accelerators.verdicts import target_miss, verdicts
from toolchain.core import runjson
from toolchain.core.budget import Budget
from toolchain.core.options import ACCELERATOR_TARGETS, ValidateOptions
from toolchain.core.progress import Log
from toolchain.core.rundir import RunDir
from toolchain.export.exported import (
    ExportResult,
    embed_parity,
    model_card,
    report_entry,
    write_model,
)
from toolchain.export.job import ExportJob
from toolchain.quantize import fallback
from toolchain.quantize.diagnose import Calibrated, short_name, with_consumers
from toolchain.validate.command import validate
from toolchain.validate.decision import Judge
from toolchain.validate.figures import gate_failures, gated


def missed(
    entry: Dict[str, Any], n_images: int, budget: Budget, hint: str, decided: Any = None
) -> str:
    """One line: which file, by how much it missed which bound, and what to try. A model
    within budget on the test split missed it on the decision images (``decided``)."""
    test = gated(entry, budget)
    gaps = budget.misses(
        test["top1_drop_pts"], test["agreement"], test["p_worse"], test["agreement_images"]
    )
    if not gaps and decided is not None:
        return (
            f"INT8 budget missed: {Path(entry['path']).name} meets it on the {n_images} test "
            f"images but not on the decision images ({decided.text()}; needs agreement "
            f"{budget.min_agreement:g} + headroom there); {hint}"
        )
    return (
        f"INT8 budget missed: {Path(entry['path']).name} {' and '.join(gaps)} on the "
        f"{n_images} test images; {hint}"
    )


def record_parity(
    out: RunDir,
    results: List[ExportResult],
    parity: Dict[str, Any],
    report: Dict[str, Any],
    budget: Budget,
) -> None:
    """Embed the figures in each file, and keep the report's sizes and each entry's
    test-split figures (what ``export_report.json`` holds it to) in step with them."""
    embed_parity(results, parity)
    sizes = {r.path.name: r.size_bytes for r in results}
    figures = {Path(m["path"]).name: m for m in parity["models"]}
    for entry in report["models"]:
        entry["size_bytes"] = sizes.get(entry["path"], entry["size_bytes"])
        measured = figures.get(entry["path"])
        if measured is not None:
            entry["test"] = {"n_images": parity["n_images"], **gated(measured, budget)}
    atomic.write_json(out.export_report, report)


def shipping(out: RunDir, report: Dict[str, Any], name: str, why: str, log: Log) -> None:
    report["shipped"] = {"int8": name, "why": why}
    atomic.write_json(out.export_report, report)
    log(f"shipping {name}: {why}")


def validate_within(job: ExportJob, results: List[ExportResult]) -> Dict[str, Any]:
    """``edgetl validate`` of ``results`` on the test split with the budget as its gates,
    so the staged ``parity.json`` and ``parity.md`` record the verdict (and diagnose a
    miss); the verdict itself is the caller's to act on."""
    models = ValidateOptions(models=tuple(str(r.path) for r in results))
    try:
        return validate(job.run.path, models, job.log, out=job.out, budget=job.budget)
    except NotFinite:
        raise  # no figures were written: the model itself is unfit, whatever the budget
    except GateFailed:
        return runjson.read_parity(job.out.parity, job.run.path)


def entry_of(parity: Dict[str, Any], path: Path) -> Dict[str, Any]:
    return next(m for m in parity["models"] if Path(m["path"]).resolve() == path.resolve())


def ship(
    job: ExportJob,
    results: List[ExportResult],
    parity: Dict[str, Any],
    report: Dict[str, Any],
    judge: Optional[Judge] = None,
) -> None:
    """Choose the INT8 model to ship (see the module docstring); ``GateFailed`` when
    none meets the budget. ``parity`` is the test-split validation of ``results``.
    Every file is in the staging folder: a miss here changes nothing the run ships."""
    budget, options, out, log = job.budget, job.options, job.out, job.log
    full = next(r for r in results if r.quant == "int8")
    entry = entry_of(parity, full.path)
    passes = not gate_failures([entry], budget)
    n = parity["n_images"]
    accelerator = options.target in ACCELERATOR_TARGETS
    if accelerator or not options.auto_fallback:
        described = next(m for m in report["models"] if m["path"] == full.path.name)
        if accelerator:  # first, so a rejected file's report has the compilers' verdicts too
            described["accelerators"] = verdicts(full.path, options.target, log)
        if not passes:
            hint = (
                "--target cpu lets the few layers INT8 hurts most run in float"
                if accelerator
                else "drop --no-auto-fallback to let the export keep the layers INT8 hurts most in float"
            )
            raise GateFailed(missed(entry, n, budget, hint))
        if accelerator and described["float_ops"]:
            raise GateFailed(
                f"{full.path.name} computes {', '.join(described['float_ops'])} in float, which "
                "an INT8-only accelerator cannot run; use --target cpu"
            )
        refused = accelerator and target_miss(described["accelerators"], options.target)
        if refused:
            raise GateFailed(f"--target {options.target}: {full.path.name}: {refused}")
        why = f"every op INT8 (--target {options.target})" if accelerator else ""
        why = f"full INT8 meets the budget on the {n} test images" + (f"; {why}" if why else "")
        shipping(out, report, full.path.name, why, log)
        return
    judge = judge or Judge.of(job.run, job.config, job.model, log)
    full_estimate = judge.figures_of(full.path)
    log(f"budget: {full.path.name} {full_estimate.text()}")
    report["decision"] = {"images": judge.decision.sources, "full_int8": full_estimate.json()}
    if passes and full_estimate.meets(budget):
        why = (
            f"full INT8 meets the budget on the {n} test images and on the decision images "
            f"({full_estimate.text()})"
        )
        shipping(out, report, full.path.name, why, log)
        return
    where = "on the test split" if not passes else "on the decision images"
    log(
        f"{full.path.name} misses the budget {where}: looking for the fewest layers to keep in float"
    )
    mixed = find_mix(job, judge, report)
    if mixed is None:
        hint = (
            f"no mix of up to {options.fallback_max_layers} float layers met it on the "
            "decision images (see export_report.json); loosen --max-drop/--min-agreement, "
            "or train on more images"
        )
        raise GateFailed(missed(entry, n, budget, hint, decided=full_estimate))
    set_aside_and_gate(job, results, mixed, report)


def rename(result: ExportResult, target: Path, report: Dict[str, Any]) -> None:
    """Move a written model and keep the report's entry naming it in step."""
    for entry in report["models"]:
        if entry["path"] == result.path.name:
            entry["path"] = target.name
    result.path.replace(target)
    result.path = target


def set_aside(result: ExportResult, report: Dict[str, Any]) -> None:
    """Rename a staged model that missed its budget ``<name>.rejected``: nobody copies
    it to a device by mistake, and ``edgetl validate`` of the run skips it."""
    if not result.path.name.endswith(".rejected"):
        rename(result, result.path.with_name(result.path.name + ".rejected"), report)


def set_aside_and_gate(
    job: ExportJob, results: List[ExportResult], mixed: ExportResult, report: Dict[str, Any]
) -> None:
    """Set the failed full-INT8 file aside, then validate and gate the mix on the test
    split; ``GateFailed`` when the mix misses there too (the caller sets it aside)."""
    results.append(mixed)
    report["models"].append(report_entry(mixed, job.run, job.log))
    failed = next(r for r in results if r.quant == "int8")
    set_aside(failed, report)
    atomic.write_json(job.out.export_report, report)
    parity = validate_within(job, [mixed])
    record_parity(job.out, [mixed], parity, report, job.budget)
    entry = entry_of(parity, mixed.path)
    if gate_failures([entry], job.budget):
        hint = (
            "the mix met it on the decision images only; loosen the budget or train on more images"
        )
        raise GateFailed(missed(entry, parity["n_images"], job.budget, hint))
    floats = mixed.card.get("float_layers", [])
    why = (
        f"full INT8 missed the budget; keeping {len(floats)} op(s) in float "
        f"({', '.join(floats)}) meets it on the decision images and on the "
        f"{parity['n_images']} test images; the full-INT8 file is {failed.path.name}"
    )
    shipping(job.out, report, mixed.path.name, why, job.log)


def find_mix(job: ExportJob, judge: Judge, report: Dict[str, Any]) -> Optional[ExportResult]:
    """Accuracy-aware fallback (``fallback.repair``) judged on the decision images:
    the written mixed model, or None when no mix within the layer cap meets the budget."""
    options, out = job.options, job.out
    calibrated = Calibrated(job.model, job.calibration, job.run.export_log, options.io)
    tensors = [row["tensor_name"] for row in calibrated.layer_errors(limit=0)]
    groups = with_consumers(calibrated.quantize([]), tensors)
    card = model_card(
        job.config, "int8-mixed", options.io, {"images": int(len(job.calibration))}, job.answer
    )
    scratch = out.path / atomic.partial_name(out.tflite("int8_mixed"))

    def accepts(probs: np.ndarray):
        figures = judge.figures(probs)
        return figures.level(job.budget), figures.json()

    predict, latency_ms = fallback.interpreter_callbacks(scratch, card)
    try:
        outcome = fallback.repair(
            calibrated.quantize,
            groups,
            predict,
            latency_ms,
            judge.decision.pixels,
            judge.keras_probs,
            accepts,
            options.fallback_max_layers,
            name=short_name,
            log=job.log,
        )
    finally:
        scratch.unlink(missing_ok=True)
    report["fallback"] = {
        "method": "accuracy-aware: layers ranked by measured sensitivity, kept in float one at "
        "a time until the decision images meet the budget",
        "decision_images": judge.decision.sources,
        "seconds": round(outcome.seconds, 2),
        "ranking": outcome.ranking[:20],
        "steps": [step.json() for step in outcome.steps],
    }
    atomic.write_json(out.export_report, report)
    if outcome.flatbuffer is None:
        return None
    card["float_layers"] = [short_name(name) for name in outcome.float_tensors]
    return write_model(out.tflite("int8_mixed"), outcome.flatbuffer, card, outcome.seconds, job.log)
