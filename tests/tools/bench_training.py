"""Training and parity figures of ``make bench``, on real photos and real weights.

Head phase with cached vs uncached features at equal accuracy; head-only vs
fine-tuned on the test split; full INT8 vs the accuracy-aware fallback (and the
per-layer-error ranking it replaced); ``edgetl validate``'s speed. Figures are only
meaningful on the flower photos with ImageNet weights (alpha 0.35, 128 px), so
without them the section says it was skipped.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List

from edge.image import load_many
from toolchain.core.options import ExportOptions, TrainOptions, ValidateOptions

Log = Callable[[str], None]


def quiet(message: str) -> None:
    """A log that drops everything: the bench prints its own lines."""


def training(photos: Path, weights: Path, shown: str, log: Log = print) -> Dict[str, Any]:
    """Three training runs on ``photos`` from ``weights``, then ``parity`` on the fine-tuned
    one; ``shown`` names the shared folder in the report when either is absent."""
    # Imported in the functions: benchmark.py imports this module, and so does the
    # spawned timing process, which should load no more than a device would.
    from toolchain.train.command import train

    if not (photos.is_dir() and weights.is_file()):
        log(f"training bench skipped: {photos} or {weights} is absent")
        return {"skipped": f"{shown}/data/flowers128 or {shown}/weights absent"}
    base = TrainOptions(
        data=str(photos),
        weights=str(weights),
        alpha=0.35,
        image_size=128,
        epochs=10,
        fine_tune_epochs=0,
        patience=0,
    )
    runs = {
        "head_cached": base,
        "head_uncached": replace(base, cache_features=False),
        # the recipe as users get it: auto fine-tune depth, the last epochs averaged
        "fine_tuned": replace(
            base,
            fine_tune_epochs=TrainOptions.fine_tune_epochs,
            patience=TrainOptions.patience,
        ),
    }
    results: Dict[str, Any] = {
        "data": str(photos),
        "weights": weights.name,
        "alpha": 0.35,
        "image_size": 128,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in runs.items():
            log(f"training bench: {name}")
            run_dir = Path(tmp) / name
            start = time.perf_counter()
            train(replace(options, out=str(run_dir)), log=quiet)
            report = json.loads((run_dir / "train_report.json").read_text())
            results[name] = {
                "wall_seconds": round(time.perf_counter() - start, 1),
                "phase_seconds": report["seconds"],
                "epoch_seconds_median": report["epoch_seconds_median"],
                "images_per_second": report["images_per_second"],
                "val_top1": round(report["val_top1"], 4),
                "test_top1": round(report["test_top1"], 4),
            }
            log(f"  {results[name]}")
        results["parity"] = parity(Path(tmp) / "fine_tuned", photos, log)
    cached, uncached = results["head_cached"], results["head_uncached"]
    results["ratios"] = {
        "head_epoch_uncached_over_cached": round(
            uncached["epoch_seconds_median"]["head"] / cached["epoch_seconds_median"]["head"], 1
        ),
        "head_phase_uncached_over_cached": round(
            uncached["phase_seconds"]["head"] / cached["phase_seconds"]["head"], 2
        ),
        "head_val_top1_difference_pts": round(100 * (cached["val_top1"] - uncached["val_top1"]), 2),
        "fine_tuned_minus_head_only_test_pts": round(
            100 * (results["fine_tuned"]["test_top1"] - cached["test_top1"]), 2
        ),
    }
    log(f"training ratios: {results['ratios']}")
    return results


def parity_figures(report: Dict[str, Any]) -> Dict[str, Any]:
    """The figures of a ``parity.json`` worth comparing between runs, per model file."""
    out: Dict[str, Any] = {"keras_top1": round(report["keras"]["top1"], 4)}
    for m in report["models"]:
        out[Path(m["path"]).name] = {
            "quant": m["quant"],
            "top1": round(m["top1"], 4),
            "top1_ci95": [round(v, 4) for v in m["top1_ci95"]],
            "top1_drop_pts": round(m["top1_drop_pts"], 2),
            "agreement": round(m["agreement"], 4),
            "device_path_top1": round(m["device_path"]["top1"], 4),
        }
    return out


def parity(run_dir: Path, photos: Path, log: Log = print) -> Dict[str, Any]:
    """INT8 parity of the fine-tuned run: full INT8 against the accuracy-aware mix that
    ``--auto-fallback --max-drop 1 --min-agreement 0.95`` finds (and the per-layer-error
    ranking it replaced), and validation speed on every photo (Keras alone vs the whole
    of ``edgetl validate``)."""
    from edge.errors import GateFailed
    from toolchain.export.command import export
    from toolchain.validate.command import validate

    export(run_dir, ExportOptions(validate=False), log=quiet)
    start = time.perf_counter()
    every = validate(run_dir, ValidateOptions(data=str(photos)), log=quiet)
    speed = {
        "images": every["n_images"],
        "validate_seconds": round(time.perf_counter() - start, 2),
        "keras_predict_seconds": every["keras"]["seconds"],
    }
    speed["validate_over_keras"] = round(
        speed["validate_seconds"] / speed["keras_predict_seconds"], 2
    )
    full = parity_figures(validate(run_dir, log=quiet))
    # Agreement is the steadier target on a test split of a few hundred images (a top-1
    # drop moves in steps of 100/n points): ask for both so the fallback has work to do
    # on a model whose full-INT8 drop is already small.
    options = ExportOptions(max_drop=1.0, min_agreement=0.95, auto_fallback=True, force=True)
    start = time.perf_counter()
    try:
        export(run_dir, options, log=quiet)
        outcome = "passed"
    except GateFailed as failure:
        outcome = f"failed: {failure}"
    seconds = round(time.perf_counter() - start, 1)
    report = json.loads((run_dir / "export_report.json").read_text())
    steps = report.get("fallback", {}).get("steps", [])
    fallback: Dict[str, Any] = {
        "outcome": outcome,
        "export_seconds": seconds,
        "float_ops": steps[-1]["float_layers"] if len(steps) > 1 else [],
        "steps": steps,
        "test_split": parity_figures(json.loads((run_dir / "parity.json").read_text())),
    }
    if len(steps) > 1:
        fallback["mixed_over_full_int8"] = {
            "size": round(steps[-1]["size_bytes"] / steps[0]["size_bytes"], 3),
            "invoke_p50": round(steps[-1]["invoke_p50_ms"] / steps[0]["invoke_p50_ms"], 2),
        }
    result = {
        "validation_speed_all_photos": speed,
        "test_split_full_int8": full,
        "auto_fallback_max_drop_1_min_agreement_0.95": fallback,
        "per_layer_error_ranking_baseline": error_ranked_fallback(run_dir),
    }
    log(f"parity: {result}")
    return result


def error_ranked_fallback(run_dir: Path) -> List[Dict[str, Any]]:
    """The baseline the accuracy-aware fallback replaced: the 1, 2, 4 … 32 layers with the
    largest per-layer (debugger) error kept in float, each mix's size and test parity."""
    import numpy as np

    from toolchain import metrics
    from toolchain.core.quiet import keras
    from toolchain.core.rundir import RunDir
    from toolchain.export.exported import model_card
    from toolchain.quantize import fallback
    from toolchain.quantize.calibration import representative_images
    from toolchain.quantize.diagnose import Calibrated

    run = RunDir(run_dir)
    config = run.read_config()
    size = int(config["image_size"])
    model = keras().models.load_model(run.model, compile=False)
    calibration, _ = representative_images(run, 200, int(config["options"].get("seed", 0)), size)
    calibrated = Calibrated(model, calibration, run.path / "export.log")
    ranked = [row["tensor_name"] for row in calibrated.layer_errors(limit=0)]
    scratch = run.path / ".bench.tflite"
    predict, _ = fallback.interpreter_callbacks(
        scratch, model_card(config, "int8-mixed", "uint8", {})
    )
    paths, labels = run.split_files("test")
    pixels, kept, _ = load_many(paths, size)
    y = np.array([labels[i] for i in kept])
    keras_probs = model.predict(pixels.astype(np.float32), verbose=0)
    keras_top1 = metrics.topk_accuracy(keras_probs, y, 1)
    full = len(calibrated.quantize([]))
    rows = []
    for count in (1, 2, 4, 8, 16, 32):
        flatbuffer = calibrated.quantize(ranked[:count])
        probs = predict(flatbuffer, pixels)
        drop = metrics.drop_points(keras_top1, metrics.topk_accuracy(probs, y, 1))
        rows.append(
            {
                "float_layers": count,
                "size_over_full_int8": round(len(flatbuffer) / full, 3),
                "test_top1_drop_pts": round(drop, 2),
                "test_agreement": round(metrics.top1_agreement(keras_probs, probs), 4),
            }
        )
    scratch.unlink(missing_ok=True)
    return rows
