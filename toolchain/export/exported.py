"""An exported ``.tflite`` file: its card, its atomic write, its report entry.

Each file gets standard TFLite metadata (for phone runtimes), then edgetl's
labels and JSON card appended (``edge.modelfile``), and is written
atomically. After validation the card is rewritten with the figures, so a
device knows how the model it runs was measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from edge import atomic
from edge.answer import UNKNOWN_ANSWER
from edge.errors import BadInput
from edge.modelfile import embed_metadata
from edge.runtime import load_interpreter
from edge.tensors import describe_tensor, tensor_table
from toolchain import __version__
from toolchain.confidence.shipped import has_out_of_class, output_labels
from toolchain.core import runtimes
from toolchain.core.progress import Log
from toolchain.core.rundir import RunDir
from toolchain.export.modelinfo import inspect_tflite
from toolchain.export.phone_metadata import with_image_classifier_metadata


@dataclass
class ExportResult:
    quant: str
    path: Path
    size_bytes: int
    seconds: float
    tensors: List[Dict[str, Any]]
    calibration: Dict[str, Any]
    payload: bytes = b""  # the model (with standard metadata) before edgetl's own entries
    card: Dict[str, Any] = field(default_factory=dict)


def model_card(
    config: Dict[str, Any],
    quant: str,
    io: str,
    calibration_info: Dict[str, Any],
    answer: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The JSON card embedded in each exported file: what a device needs to know.

    ``unknown`` names the output that says "none of the classes" (its index and
    label), and ``answer`` the floor below which a device answers unknown: both
    absent for a model trained before they existed, which then always answers."""
    card = {
        "edgetl_version": __version__,
        "quant": quant,
        "io": io,
        "labels": output_labels(config),
        "image_size": int(config["image_size"]),
        "input": config.get("input", {}),
        "train": config.get("results", {}),
        "calibration": calibration_info,
    }
    if config.get("temperature") is not None:
        card["temperature"] = config["temperature"]  # baked into the last layer already
    if has_out_of_class(config):
        card["unknown"] = {"label": UNKNOWN_ANSWER, "index": len(config["labels"])}
    if answer is not None:
        card["answer"] = answer
    return card


def tensor_report(path: Path) -> List[Dict[str, Any]]:
    """Every input/output tensor's name, dtype, shape, scale and zero point."""
    interpreter, _ = load_interpreter(str(path), threads=1)
    return tensor_table(interpreter)


def refuse_overwrite(paths: List[Path], force: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise BadInput(f"{existing[0]} exists; pass --force to replace it (nothing was written)")


def write_model(
    path: Path, flatbuffer: bytes, card: Dict[str, Any], seconds: float, log: Log
) -> ExportResult:
    """Metadata, card and an atomic write; an "int8" file that still holds float
    weights is refused before the write, so a good earlier file stays."""
    standard = with_image_classifier_metadata(flatbuffer, card["labels"])
    card = {**card, "standard_metadata": standard is not None}
    if standard is None:
        log(
            "note: mediapipe is not installed, so no standard TFLite metadata was written "
            "(phone runtimes need it): pip install 'edgetl[train]'"
        )
    payload = standard or flatbuffer
    if card["quant"] == "int8":
        left = inspect_tflite(payload)["float_weight_tensors"]
        if left:
            raise BadInput(
                f"{path.name}: the converter left {left} float weight tensor(s), so it is not "
                "a full-INT8 model (nothing was written); `edgetl export` with --target cpu "
                "writes a deliberate mixed model when full INT8 misses the budget"
            )
    path = atomic.write_bytes(path, embed_metadata(payload, card, card["labels"]))
    tensors = tensor_report(path)
    result = ExportResult(
        card["quant"],
        path,
        path.stat().st_size,
        seconds,
        tensors,
        card["calibration"],
        payload,
        card,
    )
    log(f"wrote {path} ({result.size_bytes / 1024:.0f} KiB, {seconds:.1f}s)")
    for tensor in tensors:
        log(f"  {describe_tensor(tensor)}")
    return result


def embed_parity(results: List[ExportResult], parity: Dict[str, Any]) -> None:
    """Rewrite each file with its validation figures in the card, so the device knows
    how the model it runs was measured (the file is replaced atomically)."""
    by_path = {Path(m["path"]).resolve(): m for m in parity["models"]}
    for r in results:
        figures = by_path.get(r.path.resolve())
        if figures is None or not r.payload:
            continue
        r.card["parity"] = {
            "n_images": parity["n_images"],
            "data": parity["data"],
            "keras_top1": round(parity["keras"]["top1"], 4),
            "top1": round(figures["top1"], 4),
            "top1_drop_pts": round(figures["top1_drop_pts"], 2),
            "worse_than_keras": figures["worse_than_keras"],
            "agreement": round(figures["agreement"], 4),
        }
        atomic.write_bytes(r.path, embed_metadata(r.payload, r.card, r.card["labels"]))
        r.size_bytes = r.path.stat().st_size


def report_entry(r: ExportResult, run: RunDir, log: Log) -> Dict[str, Any]:
    """The report entry of one file: tensors, ops, runtime checks, size against float32."""
    info = inspect_tflite(r.path)
    compatibility = runtimes.check(r.path)
    log(f"{r.path.name} on device runtimes:")
    for line in runtimes.describe(compatibility):
        log(line)
    failures = [c for c in compatibility if not c["ok"]]
    for failure in failures:
        log(
            f"warning: {r.path.name} does not run on {failure['runtime']} "
            f"{failure.get('version', '')}: {failure.get('error', '')}"
        )
    # this export's float32 file when it wrote one, else the run's
    float32 = r.path.with_name(run.tflite("float32").name)
    float32 = float32 if float32.is_file() else run.tflite("float32")
    return {
        "quant": r.quant,
        "path": r.path.name,
        "size_bytes": r.size_bytes,
        "size_ratio_to_float32": round(r.size_bytes / float32.stat().st_size, 3)
        if float32.is_file() and float32.stat().st_size > 0
        else None,
        "seconds": round(r.seconds, 2),
        "tensors": r.tensors,
        "calibration": r.calibration,
        "ops": info["ops"],
        "float_ops": info["float_ops"],
        "min_runtime_version": info["min_runtime_version"],
        "compatibility": compatibility,
    }
