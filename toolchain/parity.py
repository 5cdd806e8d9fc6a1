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
  are reused instead of decoding every file twice. Its figures cover only the
  images it classified (against Keras on the same ones); any it could not are
  listed with their reasons, never counted as class 0.

``--max-drop`` / ``--min-agreement`` turn the figures into an exit code;
``--diagnose`` (or a failed gate) ranks INT8 layers by quantization error.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edge import atomic
from edge.classifier import Classifier
from edge.errors import BadInput, GateFailed
from edge.image import DEFAULT_RESIZE, RESIZE_FILTERS, list_images, load_many
from edge.runtime import RUNTIMES
from toolchain import metrics
from toolchain.options import check_gate_options
from toolchain.progress import Log, stderr_log
from toolchain.rundir import RunDir

WORST_SHOWN = 12
SKIPPED_SHOWN = 5
# What --model accepts: exported models, and the full-INT8 one --auto-fallback set aside.
MODEL_SUFFIXES = (".tflite", ".tflite.rejected")
# Characters that start Markdown syntax (tables, emphasis, links, HTML, headings, code).
MARKDOWN_SPECIAL = frozenset("\\|*_[]<>#`")


@dataclass
class EvalSet:
    paths: List[str]
    labels: np.ndarray
    pixels: np.ndarray
    description: str
    skipped: List[Any]
    missing_classes: List[str]


def single_line(text: Any) -> str:
    """``text`` with newlines and control characters as spaces: a quoted file or class
    name must not split an error line or a table row."""
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in str(text))


def few(items: Sequence[Any], limit: int = 5) -> str:
    """The first ``limit`` items, each shortened, so a list of 1,000 labels stays one line."""
    shown = ", ".join(single_line(repr(item))[:40] for item in list(items)[:limit])
    more = f", … ({len(items)} in all)" if len(items) > limit else ""
    return f"[{shown}{more}]"


def check_model_paths(models: Sequence[str | Path]) -> List[Path]:
    """Each ``--model`` names an existing .tflite file (a folder or a .keras is a typo).

    ``.tflite.rejected`` counts too: export validates the full-INT8 model that
    ``--auto-fallback`` set aside beside the mixed one.
    """
    paths = []
    for model in models:
        path = Path(model)
        shown = single_line(path)
        if path.is_dir():
            raise BadInput(
                f"--model {shown}: is a folder; give a .tflite file, e.g. {shown}/model_int8.tflite"
            )
        if not path.exists():
            raise BadInput(f"--model {shown}: no such file; give the path of an exported .tflite")
        if not path.is_file():
            raise BadInput(f"--model {shown}: not a regular file; give an exported .tflite file")
        if not path.name.lower().endswith(MODEL_SUFFIXES):
            raise BadInput(
                f"--model {shown}: not a .tflite file; give a model written by `edgetl export`"
            )
        paths.append(path)
    return paths


def check_validate_options(
    models: Sequence[str | Path] = (),
    max_drop: Optional[float] = None,
    min_agreement: Optional[float] = None,
    device_resize: Optional[str] = None,
    runtime: Optional[str] = None,
) -> List[Path]:
    """Every option of ``edgetl validate``, checked before an image is read or a file
    written (a bad one must not leave a half-true parity.json); returns the model paths."""
    check_gate_options(max_drop, min_agreement)
    if device_resize is not None and device_resize not in RESIZE_FILTERS:
        raise BadInput(
            f"--device-resize {single_line(device_resize)!r}: choose one of "
            f"{', '.join(RESIZE_FILTERS)}"
        )
    if runtime is not None and runtime not in RUNTIMES:
        raise BadInput(f"--runtime {single_line(runtime)!r}: choose one of {', '.join(RUNTIMES)}")
    return check_model_paths(models)


def labeled_folder(folder: Path, labels: Sequence[str]) -> tuple:
    """Paths and label indices of ``folder/<class>/…``, matching class folders by name.

    A folder that names no label is an error (a typo would silently shrink the
    test); a label with no folder is only reported (a user's photos may cover
    a few classes).
    """
    shown = single_line(folder)
    if not folder.is_dir():
        raise BadInput(f"--data {shown}: no such folder of class folders")
    try:
        classes = sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
    except OSError as error:
        raise BadInput(
            f"--data {shown}: cannot be listed ({error.strerror}); check its permissions"
        ) from None
    unknown = [name for name in classes if name not in labels]
    if unknown:
        raise BadInput(
            f"--data {shown}: folder(s) {few(unknown)} match no label of the model "
            f"{few(labels)}; rename or remove them"
        )
    paths, indices = [], []
    for name in classes:
        for path in list_images(folder / name):
            paths.append(path)
            indices.append(labels.index(name))
    if not paths:
        raise BadInput(f"--data {shown}: no images in its class folders")
    missing = [name for name in labels if name not in classes]
    return paths, indices, missing


def load_eval_set(run: RunDir, data: Optional[str], size: int, labels: List[str]) -> EvalSet:
    """The held-out images, decoded once with the training preprocessing."""
    missing: List[str] = []
    if data:
        paths, indices, missing = labeled_folder(Path(data), labels)
        description = f"labeled folder {data}"
    else:
        paths, indices = run.split_files("test", len(labels))
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


def device_probabilities(classifier: Classifier, eval_set: EvalSet) -> tuple:
    """The files through the device runner's decode (with the classifier's resize).

    Returns the probabilities of the images the device path classified, their
    indices into ``eval_set``, and ``[path, reason]`` for each it did not.
    """
    if classifier.resize == DEFAULT_RESIZE:
        everything = np.arange(len(eval_set.paths), dtype=np.int64)
        return tflite_probabilities(classifier, eval_set.pixels), everything, []
    from edge.pipeline import classify_files

    results = classify_files(classifier, [Path(p) for p in eval_set.paths], k=1)
    return match_results(eval_set.paths, results, len(classifier.labels))


def match_results(paths: Sequence[str], results: Any, n_classes: int) -> tuple:
    """Pair device results with ``paths`` by path, never by position.

    A result with an error, or a path with no result at all (a decoder that
    stopped early), is skipped with its reason instead of leaving a row of
    zeros that would read as class 0.
    """
    found: Dict[str, np.ndarray] = {}
    errors: Dict[str, str] = {}
    for result in results:
        key = str(Path(result.path))
        if result.error or result.probabilities is None:
            errors[key] = result.error or "no probabilities"
        else:
            found[key] = result.probabilities
    kept, skipped = [], []
    for i, path in enumerate(paths):
        key = str(Path(path))
        if key in found:
            kept.append(i)
        else:
            reason = errors.get(key, "the device path returned no result for it")
            skipped.append([str(path), single_line(reason)])
    probs = np.zeros((len(kept), n_classes), dtype=np.float32)
    for row, i in enumerate(kept):
        probs[row] = found[str(Path(paths[i]))]
    return probs, np.array(kept, dtype=np.int64), skipped


def device_path_figures(
    classifier: Classifier, model_path: Path, keras_probs: np.ndarray, eval_set: EvalSet
) -> Dict[str, Any]:
    """Device-path figures over the images it classified, against Keras on that subset."""
    probs, kept, skipped = device_probabilities(classifier, eval_set)
    if not len(kept):
        first = skipped[0] if skipped else ["(none)", "no images"]
        raise BadInput(
            f"{single_line(model_path)}: the device path (resize {classifier.resize}) classified "
            f"none of the {len(eval_set.paths)} images; first: {single_line(first[0])}: {first[1]}; "
            "check that the edge runner reads them: `edgetl classify MODEL IMAGE`"
        )
    keras_subset, truth = keras_probs[kept], eval_set.labels[kept]
    top1 = metrics.topk_accuracy(probs, truth, 1)
    return {
        "resize": classifier.resize,
        "same_decoder_as_training": classifier.resize == DEFAULT_RESIZE,
        "top1": top1,
        "top1_drop_pts": metrics.drop_points(metrics.topk_accuracy(keras_subset, truth, 1), top1),
        "agreement": metrics.top1_agreement(keras_subset, probs),
        "mean_abs_prob_diff": float(np.abs(keras_subset - probs).mean()),
        "n_images": int(len(kept)),
        "skipped": skipped,
    }


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
    given = check_validate_options(models, max_drop, min_agreement, device_resize, runtime)
    run = RunDir(run_dir).require_trained()
    config = run.read_config()
    labels = list(config["labels"])
    size = int(config["image_size"])
    model_paths = given or run.tflite_models()
    if not model_paths:
        raise BadInput(f"{run.path}: no .tflite model; run `edgetl export {run.path}` first")

    start = time.perf_counter()
    eval_set = load_eval_set(run, data, size, labels)
    if len(eval_set.labels) == 0:
        raise BadInput(f"{run.path}: no readable images to validate on")
    log(f"validating on {len(eval_set.labels)} images ({eval_set.description})")
    if eval_set.missing_classes:
        log(f"note: no images for {', '.join(eval_set.missing_classes)}")

    keras_model = run.load_keras_model()
    keras_start = time.perf_counter()
    keras_probs = keras_model.predict(eval_set.pixels.astype(np.float32), batch_size=64, verbose=0)
    report = base_report(eval_set, labels, keras_probs, time.perf_counter() - keras_start)
    for path in model_paths:
        classifier = open_classifier(path, runtime, labels, device_resize)
        entry = model_entry(path, classifier, keras_probs, eval_set, labels)
        report["models"].append(entry)
        log_model(entry, report["keras"]["top1"], len(eval_set.paths), log)
    report["seconds"] = round(time.perf_counter() - start, 2)
    failing = gate_failures(report["models"], max_drop, min_agreement)
    report["gate"] = {"max_drop": max_drop, "min_agreement": min_agreement, "passed": not failing}
    if failing or diagnose:
        int8 = [m for m in report["models"] if m["quant"] == "int8"]
        try:
            report["diagnosis"] = diagnosis(run, keras_model, int8, log)
        except Exception as error:  # the verdict stands without it: a gate failure stays 1
            if not failing:
                raise
            from toolchain.failures import describe_failure

            note = f"diagnosis not possible: {describe_failure(error)[1]}"
            log(f"note: {note}")
            report["diagnosis"] = {"note": note}
    atomic.write_json(run.parity, report)
    write_pictures(run, report, keras_probs, eval_set)
    atomic.write_text(run.parity_markdown, parity_markdown(report))
    log(f"wrote {run.parity} and parity.md ({report['seconds']:.1f}s)")
    if failing:
        raise GateFailed("parity gate failed: " + "; ".join(failing))
    return report


def base_report(
    eval_set: EvalSet, labels: List[str], keras_probs: np.ndarray, keras_seconds: float
) -> Dict[str, Any]:
    """The report's Keras half: the reference every model is measured against."""
    keras_top1, keras_top1_ci = accuracy_with_interval(keras_probs, eval_set.labels, 1)
    keras_top5, keras_top5_ci = accuracy_with_interval(keras_probs, eval_set.labels, 5)
    return {
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


def label_mismatch(path: Path, found: Sequence[Any], expected: Sequence[str]) -> str:
    """One line however long the label lists: the first label that differs, and counts."""
    i = next(
        (i for i, (a, b) in enumerate(zip(found, expected)) if a != b),
        min(len(found), len(expected)),
    )
    mine = single_line(repr(found[i]))[:40] if i < len(found) else "none"
    theirs = single_line(repr(expected[i]))[:40] if i < len(expected) else "none"
    return (
        f"{single_line(path)}: its labels are not the run's (label #{i + 1}: {mine} vs {theirs}; "
        f"{len(found)} vs {len(expected)} classes; its labels {few(found)}); validate it "
        "with the run it was exported from, or export it again from this run"
    )


def open_classifier(
    path: Path, runtime: Optional[str], labels: List[str], device_resize: Optional[str]
) -> Classifier:
    """The model's interpreter, checked to classify into the run's labels."""
    classifier = Classifier(path, runtime=runtime)
    if classifier.labels != labels:
        raise BadInput(label_mismatch(path, classifier.labels, labels))
    if device_resize:
        classifier.set_resize(device_resize)
    return classifier


def model_entry(
    path: Path,
    classifier: Classifier,
    keras_probs: np.ndarray,
    eval_set: EvalSet,
    labels: List[str],
) -> Dict[str, Any]:
    """Every figure of one model: tensor level, device path, worst disagreements."""
    tflite_start = time.perf_counter()
    probs = tflite_probabilities(classifier, eval_set.pixels)
    device = device_path_figures(classifier, path, keras_probs, eval_set)
    return {
        "path": str(path),
        "quant": str(classifier.card.metadata.get("quant", path.stem.replace("model_", ""))),
        "runtime": f"{classifier.runtime.name} {classifier.runtime.version}",
        "size_bytes": path.stat().st_size,
        **compare(keras_probs, probs, eval_set.labels, labels),
        "device_path": device,
        "disagreements": disagreements(keras_probs, probs, eval_set.labels, eval_set.paths, labels),
        "seconds": round(time.perf_counter() - tflite_start, 3),
    }


def log_model(entry: Dict[str, Any], keras_top1: float, n_images: int, log: Log) -> None:
    """One line of figures per model, and a warning when the device path left images out."""
    name = Path(entry["path"]).name
    device = entry["device_path"]
    log(
        f"{name}: top-1 {entry['top1']:.4f} vs keras {keras_top1:.4f} "
        f"(drop {entry['top1_drop_pts']:+.2f} pts), agreement {entry['agreement']:.4f}, "
        f"device path {device['top1']:.4f} [{entry['runtime']}]"
    )
    if device["skipped"]:
        path, reason = device["skipped"][0]
        log(
            f"warning: {name}: the device path could not classify {len(device['skipped'])} of "
            f"{n_images} images (first: {single_line(path)}: {reason}); its figures cover the "
            f"{device['n_images']} it classified"
        )


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
    from toolchain.export import config_seed, representative_images

    config = run.read_config()
    calibration, _ = representative_images(
        run, 64, config_seed(run, config), int(config["image_size"])
    )
    if not len(calibration):
        return {"note": "no readable training images to run the debugger on"}
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


def markdown_cell(text: Any) -> str:
    """``text`` as literal Markdown: a class named ``a|b`` or a path with backticks must not
    split a table cell, open a code span, or inject a link or HTML into parity.md.

    An underscore between two letters or digits stays as it is: Markdown never
    reads it as emphasis, and layer and file names (``block_16_project_BN``)
    stay greppable and copyable in the raw file.
    """
    plain = single_line(text)
    return "".join(
        "\\" + c if c in MARKDOWN_SPECIAL and not _inert_underscore(plain, i) else c
        for i, c in enumerate(plain)
    )


def _inert_underscore(text: str, i: int) -> bool:
    return (
        text[i] == "_" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
    )


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
            f"{m['top1_ci95'][1]:.3f} | {m['top5']:.4f} | {m['top1_drop_pts']:+.2f} | "
            f"{m['agreement']:.4f} | {_device_cell(m['device_path'], report['n_images'])} | "
            f"{m['mean_abs_prob_diff']:.4f} |"
        )
    gate = report.get("gate", {})
    if gate.get("max_drop") is not None or gate.get("min_agreement") is not None:
        lines += [
            "",
            f"Gate (max drop {gate.get('max_drop')}, min agreement "
            f"{gate.get('min_agreement')}): {'passed' if gate['passed'] else 'FAILED'}.",
        ]
    if report.get("missing_classes"):
        missing = ", ".join(markdown_cell(name) for name in report["missing_classes"])
        lines += ["", f"No images for: {missing}."]
    return lines + _skipped_lines(report)


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
