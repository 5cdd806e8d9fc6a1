"""``edgetl train``: two-phase MobileNetV2 transfer learning into a run directory.

Phase 1 trains the new head on a frozen base at ``learning_rate``. Phase 2
unfreezes the base from ``fine_tune_at`` and continues at the lower
``fine_tune_learning_rate`` (pretrained BatchNorm stays frozen, see
``toolchain.model``). Everything later steps need is written to the run dir.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from edge import atomic
from edge.errors import BadInput
from edge.image import RESIZE_DESCRIPTION, load_many
from toolchain import __version__
from toolchain.datasets import resolve_data, scan_class_folders, split_items
from toolchain.options import TrainOptions
from toolchain.progress import Log, epoch_logger, stderr_log
from toolchain.rundir import RunDir

INPUT_CONTRACT = {
    "dtype": "float32 RGB pixels in 0..255 (uint8 for INT8 exports)",
    "normalization": {"mean": [0.0], "std": [1.0], "inside_model": "x / 127.5 - 1"},
    "resize": RESIZE_DESCRIPTION,
    "color_order": "RGB",
}


@dataclass
class TrainResult:
    run_dir: Path
    labels: List[str]
    counts: Dict[str, int]
    val_top1: float
    test_top1: float
    seconds: Dict[str, float]


def resolve_fine_tune_at(options: TrainOptions) -> str:
    """``auto``: layer 100 of 154 on a pretrained base (the TF tutorial's choice: the
    last ~third adapts, early edge detectors stay); the whole base when training
    from scratch, since a random frozen base only gives chance accuracy."""
    if options.fine_tune_at != "auto":
        return options.fine_tune_at
    return "0" if options.weights.lower() == "none" else "100"


def load_split_pixels(
    root: Path, entries: List[Tuple[str, int]], size: int
) -> Tuple[np.ndarray, np.ndarray, List[Tuple[str, int]], List[Tuple[str, str]]]:
    """Decode one split; returns pixels, labels, the kept entries and skipped files."""
    pixels, kept, skipped = load_many([root / rel for rel, _ in entries], size)
    kept_entries = [entries[i] for i in kept]
    labels = np.array([label for _, label in kept_entries], dtype=np.int64)
    return pixels, labels, kept_entries, skipped


def _dataset(tf: Any, pixels: np.ndarray, labels: np.ndarray, batch: int, shuffle_seed: int | None):
    ds = tf.data.Dataset.from_tensor_slices((pixels, labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(pixels), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch).map(lambda x, y: (tf.cast(x, tf.float32), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def _merge_history(history: Dict[str, List[float]], new: Dict[str, List[float]]) -> None:
    for key, values in new.items():
        history.setdefault(key, []).extend(float(v) for v in values)


def _save_model(model: Any, path: Path) -> None:
    """Keras insists on a ``.keras`` suffix, so the temporary name keeps it."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def train(options: TrainOptions, log: Log = stderr_log) -> TrainResult:
    run = RunDir(options.out)
    if run.path.exists() and not run.path.is_dir():
        raise BadInput(f"--out {run.path}: is a file; give a folder for the run")
    for name, value in (
        ("--epochs", options.epochs),
        ("--fine-tune-epochs", options.fine_tune_epochs),
    ):
        if value < 0:
            raise BadInput(f"{name} {value}: must be 0 or more")
    if options.epochs + options.fine_tune_epochs == 0:
        raise BadInput("--epochs and --fine-tune-epochs are both 0: nothing would be trained")
    if options.batch_size < 1:
        raise BadInput(f"--batch-size {options.batch_size}: must be at least 1")
    options = replace(options, fine_tune_at=resolve_fine_tune_at(options))
    seconds: Dict[str, float] = {}
    run.path.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    root, description = resolve_data(
        options.data, run.path, options.synthetic_per_class, options.seed
    )
    labels, items = scan_class_folders(root)
    splits = split_items(items, options.seed, options.val_fraction, options.test_fraction)
    log(f"data: {description}: {len(items)} images, {len(labels)} classes ({', '.join(labels)})")
    decoded = {}
    skipped_all: List[Tuple[str, str]] = []
    for split_name in ("train", "val", "test"):
        pixels, y, kept, skipped = load_split_pixels(root, splits[split_name], options.image_size)
        decoded[split_name] = (pixels, y)
        splits[split_name] = kept
        skipped_all += skipped
    for _, reason in skipped_all:
        log(f"skipped: {reason}")
    counts = {name: len(decoded[name][1]) for name in decoded}
    if counts["train"] == 0:
        raise BadInput(f"--data {options.data}: no readable training images")
    log(
        f"splits: train {counts['train']}, val {counts['val']}, test {counts['test']} "
        f"(seed {options.seed}); decoded at {options.image_size}px in "
        f"{time.perf_counter() - start:.1f}s"
    )
    seconds["data"] = time.perf_counter() - start

    root_relative = os.path.relpath(root, run.path)
    atomic.write_json(
        run.splits,
        {
            "root": str(root),
            "root_relative": root_relative if not root_relative.startswith("..") else None,
            "seed": options.seed,
            "val_fraction": options.val_fraction,
            "test_fraction": options.test_fraction,
            "labels": labels,
            **{
                name: [[rel, label] for rel, label in splits[name]]
                for name in ("train", "val", "test")
            },
            "skipped": [[path, reason] for path, reason in skipped_all],
        },
    )
    atomic.write_text(run.labels_file, "\n".join(labels) + "\n")

    from toolchain.model import build_classifier, fine_tune_index, unfreeze_from
    from toolchain.quiet import keras as import_keras
    from toolchain.quiet import tensorflow

    tf = tensorflow()
    keras = import_keras()
    keras.utils.set_random_seed(options.seed)
    model, base = build_classifier(
        len(labels), options.image_size, options.alpha, options.weights, options.dropout
    )
    pretrained = options.weights.lower() != "none"
    train_ds = _dataset(tf, *decoded["train"], options.batch_size, options.seed)
    val_ds = _dataset(tf, *decoded["val"], options.batch_size, None) if counts["val"] else None
    history: Dict[str, List[float]] = {}

    def compile_for(learning_rate: float) -> None:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )

    if options.epochs:
        start = time.perf_counter()
        compile_for(options.learning_rate)
        fit = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=options.epochs,
            verbose=0,
            callbacks=[epoch_logger("head", options.epochs, log)],
        )
        _merge_history(history, fit.history)
        seconds["head"] = time.perf_counter() - start
    fine_tune_start = len(history.get("loss", []))
    if options.fine_tune_epochs:
        start = time.perf_counter()
        index = fine_tune_index(base, options.fine_tune_at)
        trainable = unfreeze_from(base, index, pretrained)
        log(
            f"fine-tune: base layers {index}..{len(base.layers) - 1} ({trainable} trainable) "
            f"at learning rate {options.fine_tune_learning_rate:g}"
        )
        compile_for(options.fine_tune_learning_rate)
        fit = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=options.epochs + options.fine_tune_epochs,
            initial_epoch=options.epochs,
            verbose=0,
            callbacks=[
                epoch_logger("fine-tune", options.fine_tune_epochs, log, offset=options.epochs)
            ],
        )
        _merge_history(history, fit.history)
        seconds["fine_tune"] = time.perf_counter() - start

    def accuracy(split_name: str) -> float:
        pixels, y = decoded[split_name]
        if not len(y):
            return float("nan")
        probabilities = model.predict(pixels.astype(np.float32), batch_size=64, verbose=0)
        return float(np.mean(np.argmax(probabilities, axis=1) == y))

    val_top1, test_top1 = accuracy("val"), accuracy("test")
    log(f"keras top-1: val {val_top1:.3f}, test {test_top1:.3f}")

    _save_model(model, run.model)
    atomic.write_json(run.history, {"fine_tune_start_epoch": fine_tune_start, **history})
    atomic.write_json(
        run.config,
        {
            "edgetl_version": __version__,
            "options": options.to_dict(),
            "labels": labels,
            "image_size": options.image_size,
            "input": INPUT_CONTRACT,
            "data": {"description": description, "root": str(root), "counts": counts},
            "results": {"val_top1": val_top1, "test_top1": test_top1},
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
        },
    )
    try:
        from toolchain.plots import training_curves

        training_curves(history, fine_tune_start, run.path / "training_curves.png")
    except ImportError:
        log("note: matplotlib is not installed; training_curves.png not written")
    log(f"wrote {run.model} and {run.path}/{{config.json,labels.txt,splits.json,history.json}}")
    return TrainResult(run.path, labels, counts, val_top1, test_top1, seconds)
