"""Parity on the device itself: Keras's answers, carried to the device, met by its runtime.

``edgetl validate`` measures a TFLite model against Keras on the workstation's
CPU and runtime. A Raspberry Pi runs other kernels (tflite-runtime's ARM INT8
paths round differently from x86's: measured, see the README), so a workstation
figure is not yet a statement about the device. ``validate`` therefore leaves
``parity_reference.json`` beside ``parity.json``: for every held-out image, the
SHA-256 of its file, its label and Keras's probabilities, plus the budget the
export held. On the device, ``edgetl parity MODEL --reference FILE --source DIR``
finds the same images by *content* (copied anywhere, renamed, in any folder
layout), runs them through the runner's own decode and the device's runtime,
and reports the figures ``validate`` reports with the same definitions
(``edge.metrics``), gated like ``validate`` (exit 1).

Files in DIR that the reference does not know are ignored and counted;
reference images that DIR lacks are counted as missing, never guessed at.
"""

from __future__ import annotations

import hashlib
import math
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge import atomic, jsonfile, metrics
from edge import gate as edge_gate
from edge.classifier import Classifier
from edge.errors import BadInput
from edge.image import list_images
from edge.jsonfile import NotStrictJSON
from edge.pipeline import classify_files

FORMAT = "edgetl-parity-reference/1"
FILE_NAME = "parity_reference.json"
CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes: the key that survives copying and renaming."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def reference_json(
    paths: Sequence[str],
    labels: np.ndarray,
    keras_probs: np.ndarray,
    names: Sequence[str],
    image_size: int,
    budget: Optional[Dict[str, Any]],
    description: str,
) -> Dict[str, Any]:
    """The reference ``validate`` writes: one entry per image it measured Keras on."""
    images = []
    for path, label, probs in zip(paths, labels, keras_probs):
        images.append(
            {
                "sha256": file_digest(path),
                "name": Path(path).name,
                "label": int(label),
                "keras": [round(float(p), 7) for p in probs],
            }
        )
    return {
        "format": FORMAT,
        "labels": list(names),
        "image_size": int(image_size),
        "data": description,
        "budget": budget,
        "images": images,
    }


@dataclass
class Reference:
    path: Path
    labels: List[str]
    budget: Dict[str, Optional[float]]
    digests: List[str]
    names: List[str]
    truth: np.ndarray  # label index per image
    keras: np.ndarray  # (n_images, n_classes) Keras probabilities

    def index(self) -> Dict[str, int]:
        """Digest -> first entry (a photo copied twice into the split counts once)."""
        found: Dict[str, int] = {}
        for i, digest in enumerate(self.digests):
            found.setdefault(digest, i)
        return found


def read_reference(path: str | Path) -> Reference:
    """Load and check a reference file; every way it can be wrong is one BadInput line."""
    path = Path(path)
    where = f"--reference {path}"
    if path.is_dir():
        raise BadInput(f"{where}: is a folder; give the {FILE_NAME} that `edgetl validate` wrote")
    if not path.exists():
        raise BadInput(
            f"{where}: no such file; copy {FILE_NAME} from the run folder `edgetl validate` wrote"
        )
    try:
        data = jsonfile.read_json(path, "copy it again from the run folder `edgetl validate` wrote")
    except BadInput as error:
        raise BadInput(f"--reference {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadInput(
            f"{where}: not an edgetl parity reference ({FORMAT}); give the {FILE_NAME} "
            "that `edgetl validate` wrote"
        )
    try:
        return checked_reference(path, data)
    except (NotStrictJSON, KeyError, TypeError, ValueError) as error:
        reason = f"{error}" if isinstance(error, NotStrictJSON) else f"{type(error).__name__}"
        raise BadInput(
            f"{where}: damaged ({reason}); write it again with `edgetl validate RUN`"
        ) from None


def checked_reference(path: Path, data: Dict[str, Any]) -> Reference:
    """The reference's parts, each checked; ``NotStrictJSON`` names the first wrong one."""
    labels, images = data.get("labels"), data.get("images")
    if not isinstance(labels, list) or len(labels) < 2:
        raise NotStrictJSON("'labels' is not a list of at least two class names")
    if not all(isinstance(name, str) for name in labels):
        raise NotStrictJSON("a label is not a class name")
    if not isinstance(images, list) or not images:
        raise NotStrictJSON("'images' is not a list of at least one image")
    keras, truth, digests, names = [], [], [], []
    for i, entry in enumerate(images):
        if not isinstance(entry, dict):
            raise NotStrictJSON(f"image #{i + 1} is not an object")
        probs = entry.get("keras")
        if not isinstance(probs, list) or len(probs) != len(labels):
            raise NotStrictJSON(
                f"image #{i + 1}'s probabilities do not match its {len(labels)} labels"
            )
        keras.append([jsonfile.number(p, 0.0, 1.0) for p in probs])
        try:
            truth.append(jsonfile.whole_number(entry.get("label"), 0, len(labels) - 1))
        except NotStrictJSON as error:
            raise NotStrictJSON(
                f"image #{i + 1} has no integer label of its labels: {error}"
            ) from None
        digest = entry.get("sha256")
        if not isinstance(digest, str):
            raise NotStrictJSON(f"image #{i + 1} has no sha256")
        digests.append(digest)
        names.append(str(entry.get("name", "")))
    return Reference(
        path,
        labels,
        read_budget(data.get("budget")),
        digests,
        names,
        np.array(truth, dtype=np.int64),
        np.array(keras, dtype=np.float64),
    )


def read_budget(budget: Any) -> Dict[str, Optional[float]]:
    """The gate the export held; a value that is not a finite number in range would pass
    or fail every model whatever its figures (NaN compares false), so it is refused.
    A missing bound stays None here: ``edge.gate`` fills it with the default."""
    if budget is None:
        return {"max_drop": None, "min_agreement": None}
    if not isinstance(budget, dict):
        raise NotStrictJSON("its budget is not an object")
    found: Dict[str, Optional[float]] = {}
    for key, low, high in (("max_drop", 0.0, math.inf), ("min_agreement", 0.0, 1.0)):
        try:
            found[key] = jsonfile.number(budget.get(key), low, high, optional=True)
        except NotStrictJSON as error:
            raise NotStrictJSON(f"budget {key}: {error}") from None
    return found


def match_source(
    reference: Reference, source: str | Path
) -> Tuple[List[Path], List[int], int, List[List[str]]]:
    """The files of ``source`` that the reference knows, by content.

    Returns the matched paths, each one's entry in the reference, how many image
    files the reference does not know (ignored), and ``[path, reason]`` for files
    that could not be read. A file seen twice counts once.
    """
    folder = Path(source)
    if not folder.is_dir():
        raise BadInput(
            f"--source {folder}: no such folder; give the folder you copied the held-out images to"
        )
    known = reference.index()
    paths, entries, unknown, seen = [], [], 0, set()
    unreadable: List[List[str]] = []
    for path in list_images(folder):
        try:
            digest = file_digest(path)
        except OSError as error:
            unreadable.append([str(path), error.strerror or type(error).__name__])
            continue
        if digest in known and digest not in seen:
            seen.add(digest)
            paths.append(path)
            entries.append(known[digest])
        elif digest not in known:
            unknown += 1
    return paths, entries, unknown, unreadable


def device_parity(
    classifier: Classifier,
    reference: Reference,
    source: str | Path,
    max_drop: Optional[float],
    min_agreement: Optional[float],
    allow_missing: bool = False,
) -> Dict[str, Any]:
    """Every figure of ``validate``'s device path, measured here, on the reference's images."""
    if list(classifier.labels) != reference.labels:
        raise BadInput(
            f"--reference {reference.path}: its labels {reference.labels[:5]} are not the "
            f"model's {list(classifier.labels)[:5]}; use the reference of this model's run"
        )
    paths, entries, unknown, unreadable = match_source(reference, source)
    if not paths:
        raise BadInput(
            f"--source {source}: none of its images is in the reference "
            f"({len(reference.digests)} images); copy the run's held-out images there "
            "unchanged (re-saving a photo changes its bytes)"
        )
    missing = len(reference.index()) - len(paths)
    if missing and not allow_missing:
        # A verdict on the images that happen to be there is not the verdict on the split.
        raise BadInput(
            f"--source {source}: {missing} of the reference's {len(reference.index())} images "
            "are not there (copied unchanged?); copy them, or pass --allow-missing to measure "
            f"the {len(paths)} found"
        )
    probs = np.zeros((len(paths), len(reference.labels)), dtype=np.float64)
    kept, skipped = [], []
    for row, result in enumerate(classify_files(classifier, paths, k=1)):
        if result.error or result.probabilities is None:
            skipped.append([result.path, result.error or "no probabilities"])
        else:
            probs[row] = result.probabilities
            kept.append(row)
    if not kept:
        raise BadInput(f"--source {source}: the runner could read none of the matched images")
    probs = metrics.require_finite(probs[kept], str(classifier.model_path))
    used = [entries[i] for i in kept]
    keras, truth = reference.keras[used], reference.truth[used]
    keras_top1 = metrics.topk_accuracy(keras, truth, 1)
    top1 = metrics.topk_accuracy(probs, truth, 1)
    agreement = metrics.top1_agreement(keras, probs)
    agreeing = int(round(agreement * len(used)))
    difference = np.abs(keras - probs)
    gate = edge_gate.device_gate(reference.budget, max_drop, min_agreement)
    drop = metrics.drop_points(keras_top1, top1)
    evidence = metrics.worse_evidence(keras, probs, truth)
    failures = edge_gate.failures(drop, agreement, gate, evidence["p_worse"], len(used))
    runtime = classifier.runtime
    return {
        "model": classifier.model_path,
        "reference": str(reference.path),
        "resize": classifier.resize,
        "device": {
            "arch": platform.machine(),
            "python": platform.python_version(),
            "runtime": f"{runtime.name} {runtime.version}",
            "threads": runtime.threads,
            "numpy": np.__version__,
        },
        "n_images": len(used),
        "missing": missing,
        "unknown_files_ignored": unknown,
        "skipped": unreadable + skipped,
        "keras_top1": keras_top1,
        "top1": top1,
        "top1_drop_pts": drop,
        "worse_than_keras": evidence,
        "agreement": agreement,
        "agreement_ci95": list(metrics.wilson_interval(agreeing, len(used))),
        "calibration_error": metrics.top1_calibration_error(probs, truth),
        "keras_calibration_error": metrics.top1_calibration_error(keras, truth),
        "calibration_noise": metrics.top1_calibration_noise(probs),  # beside calibration_error
        "mean_abs_prob_diff": float(difference.mean()),
        "max_abs_prob_diff": float(difference.max()),
        "disagreements": metrics.disagreements(
            keras, probs, truth, [str(paths[i]) for i in kept], reference.labels
        ),
        "gate": {
            **gate,
            "passed": not failures,
            "failures": failures,
        },
        "images": [
            {
                "path": str(paths[i]),
                "sha256": reference.digests[entry],
                "probabilities": [round(float(p), 6) for p in probs[row]],
            }
            for row, (i, entry) in enumerate(zip(kept, used))
        ],
    }


def check_on_device(
    model: Path,
    reference_path: str,
    source: str,
    max_drop: Optional[float],
    min_agreement: Optional[float],
    runtime: Optional[str],
    threads: Optional[int],
    json_out: Optional[Path],
    allow_missing: bool = False,
) -> Dict[str, Any]:
    """``edgetl parity``: load both files, measure, write ``json_out`` whole (or nothing)."""
    reference = read_reference(reference_path)
    classifier = Classifier(model, runtime=runtime, threads=threads)
    print(classifier.runtime.describe(), file=sys.stderr)
    report = device_parity(classifier, reference, source, max_drop, min_agreement, allow_missing)
    if json_out is not None:
        atomic.write_json(json_out, report)
    return report


def _noise_text(report: Dict[str, Any]) -> str:
    """What exactly-right scores would read here (``metrics.calibration_noise``)."""
    noise = report.get("calibration_noise")
    median = noise.get("median") if isinstance(noise, dict) else None
    if not isinstance(median, float) or median != median:
        return ""
    return f" (exactly right scores would read {median:.4f} on these images)"


def summary_lines(report: Dict[str, Any]) -> List[str]:
    device = report["device"]
    lines = [
        f"device parity on {report['n_images']} images ({device['arch']}, {device['runtime']}): "
        f"top-1 {report['top1']:.4f} vs keras {report['keras_top1']:.4f} "
        f"({edge_gate.drop_text(report['top1_drop_pts'], report['worse_than_keras'])}), "
        f"agreement {report['agreement']:.4f}, "
        f"calibration error {report['calibration_error']:.4f} vs keras "
        f"{report['keras_calibration_error']:.4f}{_noise_text(report)}"
    ]
    if report["missing"]:
        lines.append(f"note: {report['missing']} reference image(s) not found in the source")
    if report["skipped"]:
        lines.append(f"note: {len(report['skipped'])} image(s) could not be read")
    return lines
