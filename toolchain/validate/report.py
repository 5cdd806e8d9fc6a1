"""``parity.md`` and the pictures beside ``parity.json``: the report for people.

Everything quoted from files (paths, class names, layer names) goes through
``text.markdown_cell``, so a hostile name cannot break a table or inject
Markdown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edge.gate import SIGNIFICANCE
from edge.metrics import CALIBRATION_BINS, NOISE_DRAWS, WORST_SHOWN
from toolchain.core import plots
from toolchain.core.rundir import RunDir
from toolchain.core.text import markdown_cell
from toolchain.validate.evalset import EvalSet

SKIPPED_SHOWN = 5


def write_pictures(run: RunDir, report: Dict[str, Any], keras_probs, eval_set: EvalSet) -> None:
    """Confusion matrices, per-class change and the worst disagreements as PNG; skipped
    where matplotlib is not installed (the JSON and Markdown carry every figure)."""
    labels = report["labels"]
    try:
        matrices = {"Keras": np.array(report["keras"]["confusion"])}
        for m in report["models"]:
            matrices[Path(m["path"]).name] = np.array(m["confusion"])
        plots.confusion_matrices(matrices, labels, run.parity_picture("confusion"))
        plots.per_class_change(
            {
                Path(m["path"]).name: [m["per_class"][n]["change_pts"] for n in labels]
                for m in report["models"]
            },
            labels,
            run.parity_picture("per_class"),
        )
        worst = [d for m in report["models"] for d in m["disagreements"]][:WORST_SHOWN]
        if worst:
            plots.image_grid(worst, run.parity_picture("disagreements"))
    except ImportError:
        pass


def _model_name(m: Dict[str, Any]) -> str:
    return markdown_cell(Path(m["path"]).name)


def parity_markdown(report: Dict[str, Any]) -> str:
    """parity.md: the report for people; everything quoted from files is escaped."""
    return "\n".join(
        [
            *_summary_lines(report),
            *_per_class_lines(report),
            *_disagreement_lines(report),
            *_diagnosis_lines(report),
            *_picture_lines(report),
        ]
    )


def _summary_lines(report: Dict[str, Any]) -> List[str]:
    keras = report["keras"]
    lines = [
        "# Parity report",
        "",
        f"{report['n_images']} images ({markdown_cell(report['data'])}); 95% Wilson intervals.",
        "",
        "| model | top-1 | 95% CI | top-5 | drop (pts) | agreement | device-path top-1 "
        "| mean abs prob diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| Keras | {keras['top1']:.4f} | {keras['top1_ci95'][0]:.3f}–"
        f"{keras['top1_ci95'][1]:.3f} | {keras['top5']:.4f} | – | – | – | – |",
    ]
    for m in report["models"]:
        lines.append(
            f"| {_model_name(m)} | {m['top1']:.4f} | {m['top1_ci95'][0]:.3f}–"
            f"{m['top1_ci95'][1]:.3f} | {m['top5']:.4f} | {m['top1_drop_pts']:+.2f}{_evidence(m)} | "
            f"{m['agreement']:.4f} | {_device_cell(m['device_path'], report['n_images'])} | "
            f"{m['mean_abs_prob_diff']:.4f} |"
        )
    for m in report["models"]:
        if "edgetl_runner_agreement" in m:
            lines += [
                "",
                f"{_model_name(m)} through MediaPipe Tasks ({markdown_cell(m['runtime'])}): it "
                f"decides as edgetl's runner does on {m['edgetl_runner_agreement']:.4f} of the "
                "files (MediaPipe decodes and resizes them its own way).",
            ]
    lines += _calibration_lines(report)
    gate = report.get("gate", {})
    if gate.get("max_drop") is not None or gate.get("min_agreement") is not None:
        lines += [
            "",
            f"Gate (max drop {gate.get('max_drop')}, min agreement "
            f"{gate.get('min_agreement')}): {'passed' if gate['passed'] else 'FAILED'}. "
            "A drop past the bound fails only when the images show the model worse than "
            "Keras beyond chance (exact sign test on the images only one of the two gets "
            f"right, p < {SIGNIFICANCE:g}).",
        ]
    if report.get("missing_classes"):
        missing = ", ".join(markdown_cell(name) for name in report["missing_classes"])
        lines += ["", f"No images for: {missing}."]
    return lines + _skipped_lines(report)


def _calibration_lines(report: Dict[str, Any]) -> List[str]:
    """The calibration error of each model's top score beside what exactly right scores
    would read on the same images (its own ``calibration_noise``, from its own scores
    and images): on a few hundred images most of the figure is sampling noise."""
    rows = [("Keras", report["keras"])] + [(_model_name(m), m) for m in report["models"]]
    figures = []
    for name, m in rows:
        error, noise = m.get("calibration_error"), m.get("calibration_noise")
        median = noise.get("median") if isinstance(noise, dict) else None
        if not isinstance(error, float) or not np.isfinite(error):
            continue
        floor = f" [{median:.3f}]" if isinstance(median, float) and np.isfinite(median) else ""
        figures.append(f"{name} {error:.3f}{floor}")
    if not figures:
        return []
    return [
        "",
        f"Calibration error of the top score ({CALIBRATION_BINS} bins): {', '.join(figures)}. "
        "In brackets, what exactly right scores would read on the same images from sampling "
        f"alone (median of {NOISE_DRAWS} draws; `calibration_noise` in parity.json has the 90th "
        "percentile): only a figure well past it says the scores are off.",
    ]


def _evidence(m: Dict[str, Any]) -> str:
    """The images behind the drop: lost, gained, and the sign test's p."""
    evidence = m.get("worse_than_keras")
    if not isinstance(evidence, dict):
        return ""
    return f" ({evidence['lost']} lost, {evidence['gained']} gained, p {evidence['p_worse']:.2g})"


def _device_cell(device: Dict[str, Any], n_images: int) -> str:
    """Top-1 and resize; the count too when the device path left images out."""
    cell = f"{device['top1']:.4f} ({markdown_cell(device['resize'])}"
    if device.get("skipped"):
        cell += f", {device.get('n_images')} of {n_images} images"
    return cell + ")"


def _skipped_lines(report: Dict[str, Any]) -> List[str]:
    """Images left out, said out loud: figures over a subset must not pass for the whole."""
    lines: List[str] = []
    if report.get("skipped"):
        lines += ["", f"{len(report['skipped'])} file(s) could not be read and were left out:"]
        lines += [_skip_item(item) for item in report["skipped"][:SKIPPED_SHOWN]]
    for m in report["models"]:
        skipped = m["device_path"].get("skipped") or []
        if skipped:
            lines += [
                "",
                f"Warning: the device path of {_model_name(m)} could not classify "
                f"{len(skipped)} of {report['n_images']} images; its figures cover the "
                f"{m['device_path'].get('n_images')} it classified:",
            ]
            lines += [_skip_item(item) for item in skipped[:SKIPPED_SHOWN]]
    return lines


def _skip_item(item: Sequence[Any]) -> str:
    path, reason = (list(item) + ["", ""])[:2]
    return f"- {markdown_cell(path)}: {markdown_cell(reason)}"


def _per_class_lines(report: Dict[str, Any]) -> List[str]:
    models = report["models"]
    lines = ["", "## Per class (top-1)", ""]
    lines += [
        "| class | n | Keras | " + " | ".join(_model_name(m) for m in models) + " |",
        "| --- " * (3 + len(models)) + "|",
    ]
    for name in report["labels"]:
        first = models[0]["per_class"][name] if models else {"n": 0, "keras": None}
        cells = [
            _fmt(m["per_class"][name]["tflite"])
            + f" ({_fmt_pts(m['per_class'][name]['change_pts'])})"
            for m in models
        ]
        lines.append(
            f"| {markdown_cell(name)} | {first['n']} | {_fmt(first['keras'])} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _disagreement_lines(report: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    for m in report["models"]:
        if not m["disagreements"]:
            continue
        lines += [
            "",
            f"## Worst disagreements: {_model_name(m)}",
            "",
            "| image | true | Keras | TFLite | max prob shift |",
            "| --- | --- | --- | --- | --- |",
        ]
        for d in m["disagreements"]:
            lines.append(
                f"| {markdown_cell(d['path'])} | {markdown_cell(d['true'])} | "
                f"{markdown_cell(d['keras'])} {d['keras_score']:.2f} | "
                f"{markdown_cell(d['tflite'])} {d['tflite_score']:.2f} | "
                f"{d['max_abs_prob_diff']:.2f} |"
            )
    return lines


def _diagnosis_lines(report: Dict[str, Any]) -> List[str]:
    layers = report.get("diagnosis", {}).get("layers")
    if not layers:
        return []
    lines = [
        "",
        "## Diagnosis: INT8 layers with the largest quantization error",
        "",
        "| layer | op | error / channel spread | rmse / scale |",
        "| --- | --- | --- | --- |",
    ]
    for layer in layers:
        lines.append(
            f"| {markdown_cell(layer['layer'])} | {markdown_cell(layer['op'])} | "
            f"{layer['channel_error']:.3f} | {layer['rmse_over_scale']:.2f} |"
        )
    return lines + [
        "",
        "Keep the worst in float with `edgetl export RUN --max-drop PTS --auto-fallback`.",
    ]


def _picture_lines(report: Dict[str, Any]) -> List[str]:
    lines = [
        "",
        "![confusion matrices](parity_confusion.png)",
        "",
        "![per-class change](parity_per_class.png)",
        "",
    ]
    if any(m["disagreements"] for m in report["models"]):
        lines += ["![worst disagreements](parity_disagreements.png)", ""]
    return lines


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt_pts(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:+.1f}"
