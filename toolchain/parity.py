"""``edgetl validate``: is the ``.tflite`` as accurate as the Keras model?

The same held-out images (the run's test split, or a labeled folder given
with ``--data``) are decoded once by ``edge.image.load_rgb`` (the device's own
decoder) and go through the Keras model in batches and through each
``.tflite`` on the device runner's ``Classifier``. Because the device path and
training share that decoder, the TFLite figure here *is* the device-path
figure. ``--max-drop`` turns the top-1 drop into an exit code for CI.
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
from edge.image import list_images, load_many
from toolchain import metrics
from toolchain.progress import Log, stderr_log
from toolchain.rundir import RunDir


@dataclass
class EvalSet:
    paths: List[str]
    labels: np.ndarray
    pixels: np.ndarray
    description: str
    skipped: List[Any]


def labeled_folder(folder: Path, labels: Sequence[str]) -> tuple:
    """Paths and label indices of ``folder/<class>/…``, matching class folders by name."""
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
    return paths, indices


def load_eval_set(run: RunDir, data: Optional[str], size: int, labels: List[str]) -> EvalSet:
    if data:
        paths, indices = labeled_folder(Path(data), labels)
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
    )


def tflite_probabilities(classifier: Classifier, pixels: np.ndarray) -> np.ndarray:
    """One interpreter reused for every image (allocation happens once)."""
    out = np.zeros((len(pixels), len(classifier.labels)), dtype=np.float32)
    for i, image in enumerate(pixels):
        out[i] = classifier.probabilities(image)
    return out


def model_summary(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, keras_top1: float
) -> Dict[str, Any]:
    top1 = metrics.topk_accuracy(candidate, labels, 1)
    difference = np.abs(reference - candidate)
    correct = int(round(top1 * len(labels)))
    return {
        "top1": top1,
        "top1_ci95": list(metrics.wilson_interval(correct, len(labels))),
        "top5": metrics.topk_accuracy(candidate, labels, 5),
        "top1_drop_pts": metrics.drop_points(keras_top1, top1),
        "agreement": metrics.top1_agreement(reference, candidate),
        "mean_abs_prob_diff": float(difference.mean()) if difference.size else 0.0,
        "max_abs_prob_diff": float(difference.max()) if difference.size else 0.0,
    }


def validate(
    run_dir: str | Path,
    models: Sequence[str] = (),
    data: Optional[str] = None,
    max_drop: Optional[float] = None,
    runtime: Optional[str] = None,
    log: Log = stderr_log,
) -> Dict[str, Any]:
    """Write ``parity.json`` and ``parity.md``; raise ``GateFailed`` past ``max_drop``."""
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

    from toolchain.quiet import keras as import_keras

    keras = import_keras()
    keras_model = keras.models.load_model(run.model, compile=False)
    keras_start = time.perf_counter()
    keras_probs = keras_model.predict(eval_set.pixels.astype(np.float32), batch_size=64, verbose=0)
    keras_seconds = time.perf_counter() - keras_start
    keras_top1 = metrics.topk_accuracy(keras_probs, eval_set.labels, 1)
    report: Dict[str, Any] = {
        "n_images": int(len(eval_set.labels)),
        "data": eval_set.description,
        "labels": labels,
        "keras": {
            "top1": keras_top1,
            "top1_ci95": list(
                metrics.wilson_interval(
                    int(round(keras_top1 * len(eval_set.labels))), len(eval_set.labels)
                )
            ),
            "top5": metrics.topk_accuracy(keras_probs, eval_set.labels, 5),
            "seconds": round(keras_seconds, 3),
        },
        "models": [],
        "skipped": [list(item) for item in eval_set.skipped],
    }
    matrices = {
        "Keras": metrics.confusion_matrix(
            eval_set.labels, np.argmax(keras_probs, axis=1), len(labels)
        )
    }
    for path in model_paths:
        classifier = Classifier(path, runtime=runtime)
        if classifier.labels != labels:
            raise BadInput(f"{path}: its labels {classifier.labels} are not the run's {labels}")
        tflite_start = time.perf_counter()
        probs = tflite_probabilities(classifier, eval_set.pixels)
        summary = model_summary(keras_probs, probs, eval_set.labels, keras_top1)
        entry = {
            "path": str(path),
            "quant": classifier.card.metadata.get("quant", path.stem.replace("model_", "")),
            "runtime": f"{classifier.runtime.name} {classifier.runtime.version}",
            "size_bytes": path.stat().st_size,
            **summary,
            "seconds": round(time.perf_counter() - tflite_start, 3),
        }
        report["models"].append(entry)
        matrices[f"{path.name}"] = metrics.confusion_matrix(
            eval_set.labels, np.argmax(probs, axis=1), len(labels)
        )
        log(
            f"{path.name}: top-1 {entry['top1']:.4f} vs keras {keras_top1:.4f} "
            f"(drop {entry['top1_drop_pts']:+.2f} pts), agreement {entry['agreement']:.4f} "
            f"[{entry['runtime']}]"
        )
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["gate"] = {"max_drop": max_drop, "passed": True}
    failing = [
        m for m in report["models"] if max_drop is not None and m["top1_drop_pts"] > max_drop
    ]
    if failing:
        report["gate"]["passed"] = False
    atomic.write_json(run.parity, report)
    atomic.write_text(run.path / "parity.md", parity_markdown(report))
    try:
        from toolchain.plots import confusion_matrices

        confusion_matrices(matrices, labels, run.path / "parity_confusion.png")
    except ImportError:
        pass
    log(f"wrote {run.parity} and parity.md ({report['seconds']:.1f}s)")
    if failing:
        worst = max(failing, key=lambda m: m["top1_drop_pts"])
        raise GateFailed(
            f"parity gate failed: {Path(worst['path']).name} top-1 drop "
            f"{worst['top1_drop_pts']:.2f} pts > --max-drop {max_drop} "
            f"(keras {keras_top1:.4f}, tflite {worst['top1']:.4f}, agreement {worst['agreement']:.4f})"
        )
    return report


def parity_markdown(report: Dict[str, Any]) -> str:
    lines = [
        "# Parity report",
        "",
        f"{report['n_images']} images ({report['data']}).",
        "",
        "| model | top-1 | 95% CI | top-5 | drop (pts) | agreement | mean abs prob diff |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| Keras | {report['keras']['top1']:.4f} | {report['keras']['top1_ci95'][0]:.3f}–"
        f"{report['keras']['top1_ci95'][1]:.3f} | {report['keras']['top5']:.4f} | – | – | – |",
    ]
    for m in report["models"]:
        lines.append(
            f"| {Path(m['path']).name} | {m['top1']:.4f} | {m['top1_ci95'][0]:.3f}–{m['top1_ci95'][1]:.3f}"
            f" | {m['top5']:.4f} | {m['top1_drop_pts']:+.2f} | {m['agreement']:.4f} | "
            f"{m['mean_abs_prob_diff']:.4f} |"
        )
    gate = report.get("gate", {})
    if gate.get("max_drop") is not None:
        lines += [
            "",
            f"Gate `--max-drop {gate['max_drop']}`: {'passed' if gate['passed'] else 'FAILED'}.",
        ]
    lines += ["", "![confusion matrices](parity_confusion.png)", ""]
    return "\n".join(lines)
