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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edge import atomic
from edge.errors import GateFailed
from toolchain import fallback
from toolchain.budget import Budget, Judge
from toolchain.diagnose import Calibrated, short_name, with_consumers
from toolchain.exported import (
    ExportResult,
    embed_parity,
    model_card,
    refuse_overwrite,
    report_entry,
    write_model,
)
from toolchain.options import ExportOptions, ValidateOptions
from toolchain.parity import validate
from toolchain.parity_figures import gate_failures
from toolchain.progress import Log
from toolchain.rundir import RunDir, read_json_object


def missed(
    entry: Dict[str, Any], n_images: int, budget: Budget, hint: str, decided: Any = None
) -> str:
    """One line: which file, by how much it missed which bound, and what to try. A model
    within budget on the test split missed it on the decision images (``decided``)."""
    drop = max(entry["top1_drop_pts"], entry["device_path"]["top1_drop_pts"])
    agreement = min(entry["agreement"], entry["device_path"]["agreement"])
    gaps = []
    if drop > budget.max_drop:
        gaps.append(f"loses {drop:.2f} pts of top-1 (budget {budget.max_drop:g})")
    if agreement < budget.min_agreement:
        gaps.append(f"agrees {agreement:.3f} with Keras (budget {budget.min_agreement:g})")
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
    run: RunDir, results: List[ExportResult], parity: Dict[str, Any], report: Dict[str, Any]
) -> None:
    """Embed the figures in each file and keep the report's sizes in step with them."""
    embed_parity(results, parity)
    sizes = {r.path.name: r.size_bytes for r in results}
    for entry in report["models"]:
        entry["size_bytes"] = sizes.get(entry["path"], entry["size_bytes"])
    atomic.write_json(run.export_report, report)


def shipping(run: RunDir, report: Dict[str, Any], name: str, why: str, log: Log) -> None:
    report["shipped"] = {"int8": name, "why": why}
    atomic.write_json(run.export_report, report)
    log(f"shipping {name}: {why}")


def validate_within(
    run: RunDir, results: List[ExportResult], budget: Budget, log: Log
) -> Dict[str, Any]:
    """``edgetl validate`` of ``results`` on the test split with the budget as its gates,
    so ``parity.json`` and ``parity.md`` record the verdict (and diagnose a miss); the
    verdict itself is the caller's to act on."""
    gates = ValidateOptions(
        models=tuple(str(r.path) for r in results),
        max_drop=budget.max_drop,
        min_agreement=budget.min_agreement,
    )
    try:
        return validate(run.path, gates, log)
    except GateFailed:
        return read_json_object(run.parity)


def entry_of(parity: Dict[str, Any], path: Path) -> Dict[str, Any]:
    return next(m for m in parity["models"] if Path(m["path"]).resolve() == path.resolve())


def ship(
    run: RunDir,
    model: Any,
    calibration: Optional[np.ndarray],
    config: Dict[str, Any],
    options: ExportOptions,
    budget: Budget,
    results: List[ExportResult],
    parity: Dict[str, Any],
    report: Dict[str, Any],
    log: Log,
    judge: Optional[Judge] = None,
) -> None:
    """Choose the INT8 model to ship (see the module docstring); ``GateFailed`` when
    none meets the budget. ``parity`` is the test-split validation of ``results``."""
    full = next(r for r in results if r.quant == "int8")
    entry = entry_of(parity, full.path)
    passes = not gate_failures([entry], budget.max_drop, budget.min_agreement)
    n = parity["n_images"]
    if options.target == "accelerator" or not options.auto_fallback:
        if not passes:
            hint = (
                "--target cpu lets the few layers INT8 hurts most run in float"
                if options.target == "accelerator"
                else "drop --no-auto-fallback to let the export keep the layers INT8 hurts most in float"
            )
            report["shipped"] = {"int8": None, "why": missed(entry, n, budget, hint)}
            atomic.write_json(run.export_report, report)
            raise GateFailed(report["shipped"]["why"])
        float_ops = next(m for m in report["models"] if m["path"] == full.path.name)["float_ops"]
        if options.target == "accelerator" and float_ops:
            report["shipped"] = {
                "int8": None,
                "why": f"{full.path.name} computes {', '.join(float_ops)} in float, which an "
                "INT8-only accelerator cannot run; use --target cpu",
            }
            atomic.write_json(run.export_report, report)
            raise GateFailed(report["shipped"]["why"])
        why = "every op INT8 (--target accelerator)" if options.target == "accelerator" else ""
        report["shipped"] = {
            "int8": full.path.name,
            "why": f"full INT8 meets the budget on the {n} test images"
            + (f"; {why}" if why else ""),
        }
        atomic.write_json(run.export_report, report)
        return
    judge = judge or Judge.of(run, config, model, log)
    full_estimate = judge.figures_of(full.path)
    log(f"budget: {full.path.name} {full_estimate.text()}")
    report["decision"] = {"images": judge.decision.sources, "full_int8": full_estimate.json()}
    if passes and full_estimate.meets(budget):
        why = (
            f"full INT8 meets the budget on the {n} test images and on the decision images "
            f"({full_estimate.text()})"
        )
        shipping(run, report, full.path.name, why, log)
        return
    where = "on the test split" if not passes else "on the decision images"
    log(
        f"{full.path.name} misses the budget {where}: looking for the fewest layers to keep in float"
    )
    mixed = find_mix(run, model, calibration, config, options, budget, judge, report, log)
    if mixed is None:
        hint = (
            f"no mix of up to {options.fallback_max_layers} float layers met it on the "
            "decision images (see export_report.json); loosen --max-drop/--min-agreement, "
            "or train on more images"
        )
        report["shipped"] = {
            "int8": None,
            "why": missed(entry, n, budget, hint, decided=full_estimate),
        }
        atomic.write_json(run.export_report, report)
        raise GateFailed(report["shipped"]["why"])
    set_aside_and_gate(run, results, mixed, budget, report, log)


def rename(result: ExportResult, target: Path, report: Dict[str, Any]) -> None:
    """Move a written model and keep the report's entry naming it in step."""
    for entry in report["models"]:
        if entry["path"] == result.path.name:
            entry["path"] = target.name
    result.path.replace(target)
    result.path = target


def set_aside_and_gate(
    run: RunDir,
    results: List[ExportResult],
    mixed: ExportResult,
    budget: Budget,
    report: Dict[str, Any],
    log: Log,
) -> None:
    """Rename the failed full-INT8 file ``.rejected``, then validate and gate the mix on
    the test split. If the mix fails too (or anything stops the validation) the
    full-INT8 file gets its name back, and a failed mix is set aside in its place."""
    results.append(mixed)
    report["models"].append(report_entry(mixed, run, log))
    # The run then holds one INT8 model, the one within budget, so `edgetl validate
    # RUN` gates what ships and nobody copies the failed file to a device by mistake.
    failed = next(r for r in results if r.quant == "int8")
    original = failed.path
    rejected = original.with_name(original.name + ".rejected")
    rename(failed, rejected, report)
    atomic.write_json(run.export_report, report)
    try:
        parity = validate_within(run, [mixed], budget, log)
        record_parity(run, [mixed], parity, report)
    except BaseException:
        rename(failed, original, report)
        atomic.write_json(run.export_report, report)
        raise
    entry = entry_of(parity, mixed.path)
    if gate_failures([entry], budget.max_drop, budget.min_agreement):
        rename(failed, original, report)
        rename(mixed, mixed.path.with_name(mixed.path.name + ".rejected"), report)
        hint = (
            "the mix met it on the decision images only; loosen the budget or train on more images"
        )
        report["shipped"] = {"int8": None, "why": missed(entry, parity["n_images"], budget, hint)}
        atomic.write_json(run.export_report, report)
        raise GateFailed(report["shipped"]["why"])
    floats = mixed.card.get("float_layers", [])
    why = (
        f"full INT8 missed the budget; keeping {len(floats)} op(s) in float "
        f"({', '.join(floats)}) meets it on the decision images and on the "
        f"{parity['n_images']} test images; the full-INT8 file is {rejected.name}"
    )
    shipping(run, report, mixed.path.name, why, log)


def find_mix(
    run: RunDir,
    model: Any,
    calibration: np.ndarray,
    config: Dict[str, Any],
    options: ExportOptions,
    budget: Budget,
    judge: Judge,
    report: Dict[str, Any],
    log: Log,
) -> Optional[ExportResult]:
    """Accuracy-aware fallback (``fallback.repair``) judged on the decision images:
    the written mixed model, or None when no mix within the layer cap meets the budget."""
    calibrated = Calibrated(model, calibration, run.export_log, options.io)
    tensors = [row["tensor_name"] for row in calibrated.layer_errors(limit=0)]
    groups = with_consumers(calibrated.quantize([]), tensors)
    card = model_card(config, "int8-mixed", options.io, {"images": int(len(calibration))})
    scratch = run.path / atomic.partial_name(run.tflite("int8_mixed"))  # a kill leaves a temp name

    def accepts(probs: np.ndarray):
        figures = judge.figures(probs)
        return figures.level(budget), figures.json()

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
            log=log,
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
    atomic.write_json(run.export_report, report)
    if outcome.flatbuffer is None:
        return None
    card["float_layers"] = [short_name(name) for name in outcome.float_tensors]
    target = run.tflite("int8_mixed")
    refuse_overwrite([target], options.force)
    return write_model(target, outcome.flatbuffer, card, outcome.seconds, log)
