"""``edgetl validate``: is the ``.tflite`` as accurate as the Keras model, and if not, where?

Two comparisons per model, on the same held-out images (the run's test
split, or any labeled folder given with ``--data``):

- **tensor level**: the images decoded once with the training preprocessing;
  the same pixels go through Keras (batched) and through the ``.tflite``
  (one reused interpreter). Differences here are the converter's doing.
- **device path**: the image *files* through the ``edge`` runner's own
  decode-and-resize, driven by what the model file says (``resize_filter`` in
  its card), exactly as ``edgetl classify`` on a Pi. A preprocessing mismatch
  between training and device shows up as the gap between the two figures.
  When the device would resize exactly as training did, the decoded pixels
  are reused instead of decoding every file twice.

``--max-drop`` / ``--min-agreement`` turn the figures into an exit code;
``--diagnose`` (or a failed gate) ranks INT8 layers by quantization error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edge import atomic
from edge.classifier import Classifier
from edge.errors import BadInput, GateFailed
from edge.image import DEFAULT_RESIZE, list_images, load_many
from toolchain import metrics
from toolchain.progress import Log, stderr_log
from toolchain.rundir import RunDir

WORST_SHOWN = 12


@dataclass
class EvalSet:
    paths: List[str]
    labels: np.ndarray
    pixels: np.ndarray
    description: str
    skipped: List[Any]
    missing_classes: List[str]


def labeled_folder(folder: Path, labels: Sequence[str]) -> tuple:
    """Paths and label indices of ``folder/<class>/…``, matching class folders by name.

    A folder that names no label is an error (a typo would silently shrink the
    test); a label with no folder is only reported (a user's photos may cover
    a few classes).
    """
    if not folder.is_dir():
        raise BadInput(f"--data {folder}: no such folder of class folders")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [name for name in classes if name not in labels]
    if unknown:
        raise BadInput(
            f"--data {folder}: folder(s) {', '.join(unknown)} match no label of the model "
            f"({', '.join(labels)}); rename or remove them"
        )
    paths, indices = [], []
    for name in classes:
        for path in list_images(folder / name):
            paths.append(path)
            indices.append(labels.index(name))
    if not paths:
        raise BadInput(f"--data {folder}: no images in its class folders")
    missing = [name for name in labels if name not in classes]
    return paths, indices, missing


def load_eval_set(run: RunDir, data: Optional[str], size: int, labels: List[str]) -> EvalSet:
    missing: List[str] = []
    if data:
        paths, indices, missing = labeled_folder(Path(data), labels)
        description = f"labeled folder {data}"
    else:
        paths, indices = run.split_files("test")
        description = "test split of the run"
    pixels, kept, skipped = load_many(paths, size)
    return EvalSet(
        [str(paths[i]) for i in kept],
        np.array([indices[i] for i in kept], dtype=np.int64),
        pixels,
        description,
        skipped,
        missing,
    )


def tflite_probabilities(classifier: Classifier, pixels: np.ndarray) -> np.ndarray:
    """One interpreter reused for every image (tensors are allocated once)."""
    out = np.zeros((len(pixels), len(classifier.labels)), dtype=np.float32)
    for i, image in enumerate(pixels):
        out[i] = classifier.probabilities(image)
    return out


def device_probabilities(classifier: Classifier, eval_set: EvalSet, size: int) -> np.ndarray:
    """The files through the device runner's decode (with the classifier's resize)."""
    if classifier.resize == DEFAULT_RESIZE:
        return tflite_probabilities(classifier, eval_set.pixels)
    from edge.pipeline import classify_files

    out = np.zeros((len(eval_set.paths), len(classifier.labels)), dtype=np.float32)
    for i, result in enumerate(classify_files(classifier, [Path(p) for p in eval_set.paths], k=1)):
        out[i] = result.probabilities
    return out


def accuracy_with_interval(probabilities: np.ndarray, labels: np.ndarray, k: int) -> tuple:
    accuracy = metrics.topk_accuracy(probabilities, labels, k)
    hits = int(round(accuracy * len(labels)))
    return accuracy, list(metrics.wilson_interval(hits, len(labels)))


def compare(
    keras_probs: np.ndarray, probs: np.ndarray, labels: np.ndarray, names: Sequence[str]
) -> Dict[str, Any]:
    """Every figure of one model against Keras on the same images."""
    keras_top1 = metrics.topk_accuracy(keras_probs, labels, 1)
    top1, top1_ci = accuracy_with_interval(probs, labels, 1)
    top5, top5_ci = accuracy_with_interval(probs, labels, 5)
    difference = np.abs(keras_probs - probs)
    n_classes = len(names)
    keras_per_class = metrics.per_class_accuracy(labels, keras_probs.argmax(axis=1), n_classes)
    per_class = metrics.per_class_accuracy(labels, probs.argmax(axis=1), n_classes)
    return {
        "top1": top1,
        "top1_ci95": top1_ci,
        "top5": top5,
        "top5_ci95": top5_ci,
        "top1_drop_pts": metrics.drop_points(keras_top1, top1),
        "agreement": metrics.top1_agreement(keras_probs, probs),
        "mean_abs_prob_diff": float(difference.mean()) if difference.size else 0.0,
        "max_abs_prob_diff": float(difference.max()) if difference.size else 0.0,
        "per_class": {
            name: {
                "n": int(np.sum(labels == i)),
                "keras": _nan_to_none(keras_per_class[i]),
                "tflite": _nan_to_none(per_class[i]),
                "change_pts": _nan_to_none(100 * (per_class[i] - keras_per_class[i])),
            }
            for i, name in enumerate(names)
        },
        "confusion": metrics.confusion_matrix(labels, probs.argmax(axis=1), n_classes).tolist(),
    }


def _nan_to_none(value: float) -> Optional[float]:
    return None if np.isnan(value) else float(value)


def disagreements(
    keras_probs: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    paths: Sequence[str],
    names: Sequence[str],
    limit: int = WORST_SHOWN,
) -> List[Dict[str, Any]]:
    """Images where the two top-1 differ, worst first (largest probability shift)."""
    keras_best, best = keras_probs.argmax(axis=1), probs.argmax(axis=1)
    shift = np.abs(keras_probs - probs).max(axis=1)
    found = [i for i in np.argsort(-shift, kind="stable") if keras_best[i] != best[i]]
    return [
        {
            "path": paths[i],
            "true": names[labels[i]],
            "keras": names[keras_best[i]],
            "keras_score": round(float(keras_probs[i, keras_best[i]]), 4),
            "tflite": names[best[i]],
            "tflite_score": round(float(probs[i, best[i]]), 4),
            "max_abs_prob_diff": round(float(shift[i]), 4),
        }
        for i in found[:limit]
    ]


def validate(
    run_dir: str | Path,
    models: Sequence[str] = (),
    data: Optional[str] = None,
    max_drop: Optional[float] = None,
    runtime: Optional[str] = None,
    log: Log = stderr_log,
    min_agreement: Optional[float] = None,
    diagnose: bool = False,
    device_resize: Optional[str] = None,
) -> Dict[str, Any]:
    """Write ``parity.json``, ``parity.md`` and plots; raise ``GateFailed`` past a gate."""
    run = RunDir(run_dir).require_trained()
    config = run.read_config()
    labels = list(config["labels"])
    size = int(config["image_size"])
    model_paths = [Path(m) for m in models] or run.tflite_models()
    if not model_paths:
        raise BadInput(f"{run.path}: no .tflite model; run `edgetl export {run.path}` first")
    for path in model_paths:
        if not path.is_file():
            raise BadInput(f"--model {path}: no such file")

    start = time.perf_counter()
    eval_set = load_eval_set(run, data, size, labels)
    if len(eval_set.labels) == 0:
        raise BadInput(f"{run.path}: no readable images to validate on")
    log(f"validating on {len(eval_set.labels)} images ({eval_set.description})")
    if eval_set.missing_classes:
        log(f"note: no images for {', '.join(eval_set.missing_classes)}")

    from toolchain.quiet import keras as import_keras

    keras = import_keras()
    keras_model = keras.models.load_model(run.model, compile=False)
    keras_start = time.perf_counter()
    keras_probs = keras_model.predict(eval_set.pixels.astype(np.float32), batch_size=64, verbose=0)
    keras_seconds = time.perf_counter() - keras_start
    keras_top1, keras_top1_ci = accuracy_with_interval(keras_probs, eval_set.labels, 1)
    keras_top5, keras_top5_ci = accuracy_with_interval(keras_probs, eval_set.labels, 5)
    report: Dict[str, Any] = {
        "n_images": int(len(eval_set.labels)),
        "data": eval_set.description,
        "labels": labels,
        "missing_classes": eval_set.missing_classes,
        "keras": {
            "top1": keras_top1,
            "top1_ci95": keras_top1_ci,
            "top5": keras_top5,
            "top5_ci95": keras_top5_ci,
            "confusion": metrics.confusion_matrix(
                eval_set.labels, keras_probs.argmax(axis=1), len(labels)
            ).tolist(),
            "seconds": round(keras_seconds, 3),
        },
        "models": [],
        "skipped": [list(item) for item in eval_set.skipped],
    }
    for path in model_paths:
        classifier = Classifier(path, runtime=runtime)
        if classifier.labels != labels:
            raise BadInput(f"{path}: its labels {classifier.labels} are not the run's {labels}")
        if device_resize:
            classifier.resize = device_resize
        tflite_start = time.perf_counter()
        probs = tflite_probabilities(classifier, eval_set.pixels)
        device_probs = device_probabilities(classifier, eval_set, size)
        device_top1 = metrics.topk_accuracy(device_probs, eval_set.labels, 1)
        entry = {
            "path": str(path),
            "quant": classifier.card.metadata.get("quant", path.stem.replace("model_", "")),
            "runtime": f"{classifier.runtime.name} {classifier.runtime.version}",
            "size_bytes": path.stat().st_size,
            **compare(keras_probs, probs, eval_set.labels, labels),
            "device_path": {
                "resize": classifier.resize,
                "same_decoder_as_training": classifier.resize == DEFAULT_RESIZE,
                "top1": device_top1,
                "top1_drop_pts": metrics.drop_points(keras_top1, device_top1),
                "agreement": metrics.top1_agreement(keras_probs, device_probs),
                "mean_abs_prob_diff": float(np.abs(keras_probs - device_probs).mean()),
            },
            "disagreements": disagreements(
                keras_probs, probs, eval_set.labels, eval_set.paths, labels
            ),
            "seconds": round(time.perf_counter() - tflite_start, 3),
        }
        report["models"].append(entry)
        log(
            f"{path.name}: top-1 {entry['top1']:.4f} vs keras {keras_top1:.4f} "
            f"(drop {entry['top1_drop_pts']:+.2f} pts), agreement {entry['agreement']:.4f}, "
            f"device path {device_top1:.4f} [{entry['runtime']}]"
        )
    report["seconds"] = round(time.perf_counter() - start, 2)
    failing = gate_failures(report["models"], max_drop, min_agreement)
    report["gate"] = {"max_drop": max_drop, "min_agreement": min_agreement, "passed": not failing}
    if failing or diagnose:
        report["diagnosis"] = diagnosis(
            run, keras_model, [m for m in report["models"] if m["quant"] == "int8"], log
        )
    atomic.write_json(run.parity, report)
    write_pictures(run, report, keras_probs, eval_set)
    atomic.write_text(run.path / "parity.md", parity_markdown(report))
    log(f"wrote {run.parity} and parity.md ({report['seconds']:.1f}s)")
    if failing:
        raise GateFailed("parity gate failed: " + "; ".join(failing))
    return report


def gate_failures(models: List[Dict[str, Any]], max_drop, min_agreement) -> List[str]:
    """One phrase per model past a gate; the worse of tensor-level and device-path counts."""
    problems = []
    for m in models:
        drop = max(m["top1_drop_pts"], m["device_path"]["top1_drop_pts"])
        agreement = min(m["agreement"], m["device_path"]["agreement"])
        name = Path(m["path"]).name
        if max_drop is not None and drop > max_drop:
            problems.append(
                f"{name} top-1 drop {drop:.2f} pts > --max-drop {max_drop} "
                f"(tflite {m['top1']:.4f}, device path {m['device_path']['top1']:.4f}, "
                f"agreement {m['agreement']:.4f})"
            )
        if min_agreement is not None and agreement < min_agreement:
            problems.append(f"{name} agreement {agreement:.4f} < --min-agreement {min_agreement}")
    return problems


def diagnosis(
    run: RunDir, keras_model: Any, int8_models: List[Dict[str, Any]], log: Log
) -> Dict[str, Any]:
    """Rank INT8 layers by quantization error (TFLite's QuantizationDebugger)."""
    if not int8_models:
        return {"note": "no INT8 model to diagnose"}
    from toolchain.diagnose import layer_errors, short_name
    from toolchain.export import representative_images

    config = run.read_config()
    calibration, _ = representative_images(
        run, 64, int(config["options"].get("seed", 0)), int(config["image_size"])
    )
    start = time.perf_counter()
    layers = layer_errors(keras_model, calibration, run.path / "export.log", limit=10)
    for layer in layers:
        layer["layer"] = short_name(layer["tensor_name"])
    log(
        "largest INT8 error per channel (rmse / channel spread; well under 0.1 is healthy): "
        + ", ".join(f"{layer['layer']} {layer['channel_error']:.2f}" for layer in layers[:5])
    )
    return {
        "method": "tf.lite.experimental.QuantizationDebugger on 64 training images",
        "seconds": round(time.perf_counter() - start, 2),
        "layers": layers,
    }


def write_pictures(run: RunDir, report: Dict[str, Any], keras_probs, eval_set: EvalSet) -> None:
    try:
        from toolchain import plots
    except ImportError:
        return
    labels = report["labels"]
    try:
        matrices = {"Keras": np.array(report["keras"]["confusion"])}
        for m in report["models"]:
            matrices[Path(m["path"]).name] = np.array(m["confusion"])
        plots.confusion_matrices(matrices, labels, run.path / "parity_confusion.png")
        plots.per_class_change(
            {
                Path(m["path"]).name: [m["per_class"][n]["change_pts"] for n in labels]
                for m in report["models"]
            },
            labels,
            run.path / "parity_per_class.png",
        )
        worst = [d for m in report["models"] for d in m["disagreements"]][:WORST_SHOWN]
        if worst:
            plots.image_grid(worst, run.path / "parity_disagreements.png")
    except ImportError:
        pass


def parity_markdown(report: Dict[str, Any]) -> str:
    lines = [
        "# Parity report",
        "",
        f"{report['n_images']} images ({report['data']}); 95% Wilson intervals.",
        "",
        "| model | top-1 | 95% CI | top-5 | drop (pts) | agreement | device-path top-1 | mean abs prob diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| Keras | {report['keras']['top1']:.4f} | {report['keras']['top1_ci95'][0]:.3f}–"
        f"{report['keras']['top1_ci95'][1]:.3f} | {report['keras']['top5']:.4f} | – | – | – | – |",
    ]
    for m in report["models"]:
        lines.append(
            f"| {Path(m['path']).name} | {m['top1']:.4f} | {m['top1_ci95'][0]:.3f}–{m['top1_ci95'][1]:.3f}"
            f" | {m['top5']:.4f} | {m['top1_drop_pts']:+.2f} | {m['agreement']:.4f} | "
            f"{m['device_path']['top1']:.4f} ({m['device_path']['resize']}) | {m['mean_abs_prob_diff']:.4f} |"
        )
    gate = report.get("gate", {})
    if gate.get("max_drop") is not None or gate.get("min_agreement") is not None:
        lines += [
            "",
            f"Gate (max drop {gate.get('max_drop')}, min agreement "
            f"{gate.get('min_agreement')}): {'passed' if gate['passed'] else 'FAILED'}.",
        ]
    if report.get("missing_classes"):
        lines += ["", f"No images for: {', '.join(report['missing_classes'])}."]
    lines += ["", "## Per class (top-1)", ""]
    names = report["labels"]
    header = (
        "| class | n | Keras | " + " | ".join(Path(m["path"]).name for m in report["models"]) + " |"
    )
    lines += [header, "| --- " * (3 + len(report["models"])) + "|"]
    for name in names:
        first = (
            report["models"][0]["per_class"][name] if report["models"] else {"n": 0, "keras": None}
        )
        cells = [
            _fmt(m["per_class"][name]["tflite"])
            + f" ({_fmt_pts(m['per_class'][name]['change_pts'])})"
            for m in report["models"]
        ]
        lines.append(
            f"| {name} | {first['n']} | {_fmt(first['keras'])} | " + " | ".join(cells) + " |"
        )
    for m in report["models"]:
        if m["disagreements"]:
            lines += [
                "",
                f"## Worst disagreements: {Path(m['path']).name}",
                "",
                "| image | true | Keras | TFLite | max prob shift |",
                "| --- | --- | --- | --- | --- |",
            ]
            for d in m["disagreements"]:
                lines.append(
                    f"| `{d['path']}` | {d['true']} | {d['keras']} {d['keras_score']:.2f} | "
                    f"{d['tflite']} {d['tflite_score']:.2f} | {d['max_abs_prob_diff']:.2f} |"
                )
    if report.get("diagnosis", {}).get("layers"):
        lines += [
            "",
            "## Diagnosis: INT8 layers with the largest quantization error",
            "",
            "| layer | op | rmse / scale |",
            "| --- | --- | --- |",
        ]
        for layer in report["diagnosis"]["layers"]:
            lines.append(
                f"| {layer['layer']} | {layer['op']} | {layer['channel_error']:.3f} | "
                f"{layer['rmse_over_scale']:.2f} |"
            )
        lines += [
            "",
            "Keep the worst in float with `edgetl export RUN --max-drop PTS --auto-fallback`.",
        ]
    lines += [
        "",
        "![confusion matrices](parity_confusion.png)",
        "",
        "![per-class change](parity_per_class.png)",
        "",
    ]
    if any(m["disagreements"] for m in report["models"]):
        lines += ["![worst disagreements](parity_disagreements.png)", ""]
    return "\n".join(lines)


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt_pts(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:+.1f}"
