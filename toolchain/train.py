"""``edgetl train``: two-phase MobileNetV2 transfer learning into a run directory.

Phase 1 ("head") trains the new classifier head on a frozen base at
``learning_rate``. Unless ``head_augment`` is set, the frozen base is run
once over the training images and the head trains on the cached pooled
features: the same optimisation (the base is frozen and in inference mode
either way) at a fraction of the cost. Phase 2 ("fine-tune") unfreezes the
base from ``fine_tune_at`` and continues at ``fine_tune_learning_rate`` with
augmentation, pretrained BatchNorm frozen (see ``toolchain.model``).

Interrupted runs continue with ``--resume``: each phase keeps a Keras
``BackupAndRestore`` checkpoint per epoch in ``RUN/checkpoints/``, and the
finished head phase is saved, so at most the interrupted epoch is redone.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edge import atomic
from edge.errors import BadInput
from edge.image import DEFAULT_RESIZE, RESIZE_DESCRIPTION, load_many
from toolchain import __version__, runstate
from toolchain.datasets import (
    check_data_spec,
    data_folder,
    resolve_data,
    scan_class_folders,
    split_items,
)
from toolchain.options import CLASS_WEIGHT_MODES, STRATEGIES, TrainOptions
from toolchain.progress import Log, epoch_logger, stderr_log
from toolchain.rundir import RunDir

INPUT_CONTRACT = {
    "dtype": "float32 RGB pixels in 0..255 (uint8 for INT8 exports)",
    "normalization": {"mean": [0.0], "std": [1.0], "inside_model": "x / 127.5 - 1"},
    "resize": RESIZE_DESCRIPTION,
    "resize_filter": DEFAULT_RESIZE,  # read by edge.classifier: the device resizes the same way
    "color_order": "RGB",
}
CLASS_WEIGHT_RATIO = 2.0  # auto class weights when the largest class is over 2x the smallest


@dataclass
class TrainResult:
    run_dir: Path
    labels: List[str]
    counts: Dict[str, int]
    val_top1: float
    test_top1: float
    seconds: Dict[str, float]
    already_finished: bool = False  # --resume on a finished run: nothing was trained


SMALL_ALPHA = 0.5  # at or below: fine-tune deeper


def resolve_fine_tune_at(options: TrainOptions) -> str:
    """``auto`` on a pretrained base: layer 100 of 154 (the TF tutorial's choice: the
    last ~third adapts, early edge detectors stay) for alpha above 0.5; from
    ``block_5`` for the slim bases (alpha 0.35, 0.5), whose thin ImageNet features
    need more adapting: on flowers128 at 0.35/128 px it beat layer 100 on the test
    split in every run we made (0.67-0.71 in six runs vs 0.65-0.66 in four). The
    whole base when training from scratch: a random frozen base gives chance accuracy."""
    if options.fine_tune_at != "auto":
        return options.fine_tune_at
    if options.weights.lower() == "none":
        return "0"
    return "block_5" if options.alpha <= SMALL_ALPHA else "100"


def class_weights_for(labels: np.ndarray, n_classes: int, mode: str) -> Optional[Dict[int, float]]:
    """Inverse-frequency weights (mean 1), or None when classes are balanced enough."""
    if mode not in ("auto", "on", "off"):
        raise BadInput(f"--class-weights {mode}: choose auto, on or off")
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts[counts > 0]
    if mode == "off" or (mode == "auto" and present.max() <= CLASS_WEIGHT_RATIO * present.min()):
        return None
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return {i: float(w) for i, w in enumerate(weights)}


BASE_LAYERS = 154  # MobileNetV2 without top, at every alpha and size
# Layer-name prefixes of the MobileNetV2 base that --fine-tune-at may name.
# Every layer name of the MobileNetV2 base (the same at every alpha and size), so that
# --fine-tune-at is checked before the run starts, not after its head phase.
_PADDED_BLOCKS = (1, 3, 6, 13)
_ADD_BLOCKS = (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)
BASE_LAYER_NAMES = (
    "Conv1", "bn_Conv1", "Conv1_relu",
    *(f"expanded_conv_{part}" for part in ("depthwise", "depthwise_BN", "depthwise_relu",
                                            "project", "project_BN")),
    *(
        f"block_{b}_{part}"
        for b in range(1, 17)
        for part in ("expand", "expand_BN", "expand_relu", "pad", "depthwise",
                     "depthwise_BN", "depthwise_relu", "project", "project_BN", "add")
        if (part != "pad" or b in _PADDED_BLOCKS) and (part != "add" or b in _ADD_BLOCKS)
    ),
    "Conv_1", "Conv_1_bn", "out_relu",
)  # fmt: skip


def fine_tune_at_problem(text: str) -> Optional[str]:
    """Why ``--fine-tune-at`` cannot name a base layer, or None; checked before any file
    is written, so a typo never leaves a half-made run behind."""
    text = str(text).strip()
    if text == "auto":
        return None
    if text.isascii() and text.lstrip("-").isdigit():
        index = int(text)
        return None if 0 <= index < BASE_LAYERS else f"the base has layers 0..{BASE_LAYERS - 1}"
    if text and any(name.startswith(text) for name in BASE_LAYER_NAMES):
        return None
    return "use auto, a layer index, or a block name such as block_13"


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")


def _positive_finite(value: float) -> bool:
    return math.isfinite(value) and value > 0


def check_options(options: TrainOptions) -> None:
    """Every option, checked before anything is read at length or written (exit 2).

    The CLI declares the same ranges (shown in ``--help``); this is the check for
    library callers and for what one option means next to another."""
    o = options
    for name, value in (("--epochs", o.epochs), ("--fine-tune-epochs", o.fine_tune_epochs)):
        if value < 0:
            raise BadInput(f"{name} {value}: must be 0 or more")
    if o.epochs + o.fine_tune_epochs == 0:
        raise BadInput("--epochs and --fine-tune-epochs are both 0: nothing would be trained")
    if o.batch_size < 1:
        raise BadInput(f"--batch-size {o.batch_size}: must be at least 1")
    if not 32 <= o.image_size <= 1024:
        raise BadInput(f"--image-size {o.image_size}: MobileNetV2 takes 32 to 1024 pixels")
    if not _positive_finite(o.alpha) or o.alpha > 2:
        raise BadInput(f"--alpha {o.alpha}: must be above 0 and at most 2")
    for name, value in (
        ("--learning-rate", o.learning_rate),
        ("--fine-tune-learning-rate", o.fine_tune_learning_rate),
    ):
        if not _positive_finite(value):
            raise BadInput(f"{name} {value}: must be a number above 0")
    if not 0 <= o.label_smoothing < 1:
        raise BadInput(f"--label-smoothing {o.label_smoothing}: must be in [0, 1)")
    if not 0 <= o.dropout < 1:
        raise BadInput(f"--dropout {o.dropout}: must be in [0, 1)")
    if o.seed < 0:
        raise BadInput(f"--seed {o.seed}: must be 0 or more")
    if o.patience < 0:
        raise BadInput(f"--patience {o.patience}: must be 0 or more")
    if o.synthetic_per_class < 3:
        raise BadInput(f"--synthetic-per-class {o.synthetic_per_class}: must be at least 3")
    if not 0 <= o.val_fraction < 1 or not 0 < o.test_fraction < 1:
        raise BadInput("--val-fraction must be in [0, 1) and --test-fraction in (0, 1)")
    if o.val_fraction + o.test_fraction >= 1:
        raise BadInput(
            f"--val-fraction {o.val_fraction} + --test-fraction {o.test_fraction}: "
            "nothing would be left to train on; keep their sum below 1"
        )
    if o.class_weights not in CLASS_WEIGHT_MODES:
        raise BadInput(f"--class-weights {o.class_weights}: choose auto, on or off")
    if o.strategy not in STRATEGIES:
        raise BadInput(f"--strategy {o.strategy}: choose one of {', '.join(STRATEGIES)}")
    if o.strategy == "multiworker":
        from toolchain.devices import tf_config_problem

        problem = tf_config_problem(os.environ.get("TF_CONFIG"))
        if problem:
            raise BadInput(f"--strategy multiworker: {problem}")
    problem = fine_tune_at_problem(o.fine_tune_at)
    if problem:
        raise BadInput(f"--fine-tune-at {o.fine_tune_at}: {problem}")
    _check_weights(o)
    check_data_spec(o.data)


def _check_weights(o: TrainOptions) -> None:
    from toolchain.model import KERAS_ALPHAS

    if o.weights.lower() == "imagenet":
        if o.alpha not in KERAS_ALPHAS:
            raise BadInput(
                f"--alpha {o.alpha}: ImageNet weights exist for "
                f"{', '.join(str(a) for a in KERAS_ALPHAS)} only (or pass --weights none)"
            )
    elif o.weights.lower() != "none":
        path = Path(o.weights)
        if not path.is_file():
            raise BadInput(
                f"--weights {o.weights}: no such file; give imagenet, none or a no-top .h5 file"
            )
        if not path.name.lower().endswith((".h5", ".hdf5")):
            raise BadInput(f"--weights {o.weights}: not an .h5 weights file")


def load_split_pixels(
    root: Path, entries: List[Tuple[str, int]], size: int
) -> Tuple[np.ndarray, np.ndarray, List[Tuple[str, int]], List[Tuple[str, str]]]:
    """Decode one split in parallel; returns pixels, labels, kept entries, skipped files."""
    pixels, kept, skipped = load_many([root / rel for rel, _ in entries], size)
    kept_entries = [entries[i] for i in kept]
    labels = np.array([label for _, label in kept_entries], dtype=np.int64)
    return pixels, labels, kept_entries, skipped


def _pixel_dataset(tf, pixels, onehot, batch: int, seed: Optional[int], augment=None):
    """uint8 pixels held in memory -> shuffled float batches (augmented when given)."""
    ds = tf.data.Dataset.from_tensor_slices((pixels, onehot))
    if seed is not None:
        ds = ds.shuffle(len(pixels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch).map(lambda x, y: (tf.cast(x, tf.float32), y))
    if augment is not None:
        # One batch at a time: the augmentation layers draw from one seeded stateful
        # generator, and parallel calls would take its numbers in a racy order, so the
        # same --seed would give a different model. Each call is a whole batch of TF
        # ops (multi-threaded inside), and prefetch still overlaps it with training.
        ds = ds.map(lambda x, y: (augment(x, training=True), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def _save_model(model: Any, path: Path) -> None:
    """Saved under a temporary name (which keeps the ``.keras`` suffix Keras insists on),
    synced and renamed: a kill never leaves half a model under the final name."""
    with atomic.atomic_path(path) as tmp:
        model.save(tmp)


def read_csv_history(paths: List[Path]) -> Tuple[Dict[str, List[float]], int]:
    """Per-epoch metrics from the phases' CSV logs; the last row of a repeated epoch wins
    (an epoch interrupted after its CSV row but before its checkpoint is redone)."""
    history: Dict[str, List[float]] = {}
    head_epochs = 0
    for index, path in enumerate(paths):
        if not path.is_file():
            continue
        rows: Dict[int, Dict[str, str]] = {}
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                rows[int(row["epoch"])] = row
        for epoch in sorted(rows):
            for key, value in rows[epoch].items():
                if key not in ("epoch", "learning_rate"):
                    history.setdefault(key, []).append(float(value))
        if index == 0:
            head_epochs = len(rows)
    return history, head_epochs


class Trainer:
    """Holds the run's state across phases; ``run()`` does the whole job."""

    def __init__(self, options: TrainOptions, log: Log) -> None:
        self.options = options
        self.log = log
        self.run = RunDir(options.out)
        self.checkpoints = self.run.checkpoints
        self.logs = runstate.working_logs(self.run)
        self.staged = runstate.staged(self.run)
        self.seconds: Dict[str, float] = {}
        self.images_per_second: Dict[str, float] = {}
        self.epoch_seconds: Dict[str, List[float]] = {}

    # -- state ------------------------------------------------------------------
    def _saved_options(self) -> TrainOptions:
        """The interrupted run's own options (a moved run keeps its new place)."""
        saved = self.checkpoints / "options.json"
        try:
            values = json.loads(saved.read_text(encoding="utf-8"))
            if not isinstance(values, dict):
                raise ValueError("not an object")
            options = replace(TrainOptions.from_dict(values), resume=True, out=str(self.run.path))
            check_options(options)  # an edited file is named here, not as a crash later
            return replace(options, fine_tune_at=resolve_fine_tune_at(options))
        except BadInput as error:
            raise BadInput(
                f"--resume: {saved} holds a bad option ({error}); start over with --force"
            ) from None
        except (ValueError, TypeError, AttributeError, OSError) as error:
            raise BadInput(
                f"--resume: {saved} is damaged ({error}); start over with --force"
            ) from None

    def _state(self) -> Dict[str, Any]:
        return runstate.read_state(self.run)

    def _set_state(self, **values: Any) -> None:
        runstate.write_state(self.run, **values)

    # -- data -------------------------------------------------------------------
    def _dataset(self) -> Tuple[Path, str, List[str], List[Tuple[str, int]]]:
        """The image folder, its description, class names and every image (read only)."""
        o = self.options
        root, description = resolve_data(o.data, self.run.path, o.synthetic_per_class, o.seed)
        labels, items = scan_class_folders(root)
        return root, description, labels, items

    def _saved_splits(self) -> Optional[Dict[str, Any]]:
        """``--resume`` uses the splits the run started with instead of re-scanning
        the folder (photos added since would leak into val or test)."""
        path = self.checkpoints / "splits.json"
        if not (self.options.resume and path.is_file()):
            return None
        return self.run.read_splits(path)

    def _load_data(self, dataset) -> None:
        o = self.options
        start = time.perf_counter()
        saved = self._saved_splits()
        if saved is not None:
            root = self.run.data_root(saved)
            self.description = f"{saved.get('description', 'image folder')} (splits reused)"
            self.labels = list(saved.get("labels") or [])
            try:
                splits = {
                    name: [(rel, int(label)) for rel, label in saved[name]]
                    for name in ("train", "val", "test")
                }
            except (TypeError, ValueError):
                raise BadInput(
                    f"--resume: {self.checkpoints / 'splits.json'} is damaged; start over with --force"
                ) from None
            if len(self.labels) < 2:
                raise BadInput(
                    f"--resume: {self.checkpoints / 'splits.json'} names no classes; start over with --force"
                )
            n_items = sum(len(v) for v in splits.values())
            self.log(f"resume: reusing the run's splits ({n_items} images) from {root}")
        else:
            root, self.description, self.labels, items = dataset or self._dataset()
            splits = split_items(items, o.seed, o.val_fraction, o.test_fraction)
            n_items = len(items)
            self.log(
                f"data: {self.description}: {n_items} images, {len(self.labels)} classes "
                f"({', '.join(self.labels)})"
            )
        self.log(
            f"decoding {n_items} images at {o.image_size}px into memory "
            f"(~{n_items * o.image_size**2 * 3 / 2**20:.0f} MiB)"
        )
        self.decoded: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        self.skipped: List[Tuple[str, str]] = []
        for split_name in ("train", "val", "test"):
            pixels, y, kept, skipped = load_split_pixels(root, splits[split_name], o.image_size)
            self.decoded[split_name] = (pixels, y)
            splits[split_name] = kept
            self.skipped += skipped
        for _, reason in self.skipped:
            self.log(f"skipped: {reason}")
        self.counts = {name: int(len(self.decoded[name][1])) for name in self.decoded}
        if self.counts["train"] == 0:
            raise BadInput(f"--data {o.data}: no readable training images")
        self.log(
            f"splits: train {self.counts['train']}, val {self.counts['val']}, "
            f"test {self.counts['test']} (seed {o.seed}); decoded at {o.image_size}px in "
            f"{time.perf_counter() - start:.1f}s"
        )
        self.seconds["data"] = time.perf_counter() - start
        self.root = root
        relative = os.path.relpath(root, self.run.path)
        self.splits = {
            "root": str(root),
            "root_relative": relative if not relative.startswith("..") else None,
            "description": self.description,
            "seed": o.seed,
            "val_fraction": o.val_fraction,
            "test_fraction": o.test_fraction,
            "labels": self.labels,
            **{n: [[rel, label] for rel, label in splits[n]] for n in ("train", "val", "test")},
            "skipped": [[path, reason] for path, reason in self.skipped],
        }
        if saved is None:
            atomic.write_json(self.checkpoints / "splits.json", self.splits)

    def _onehot(self, split_name: str) -> np.ndarray:
        return np.eye(len(self.labels), dtype=np.float32)[self.decoded[split_name][1]]

    # -- keras ------------------------------------------------------------------
    def _callbacks(self, phase: str, total: int, offset: int, model: Any) -> List[Any]:
        keras = self.keras
        has_val = self.counts["val"] > 0
        callbacks = [
            # CSV before the backup: if a kill falls between the two, the epoch is
            # redone and its row replaced, rather than recorded as done and lost.
            keras.callbacks.CSVLogger(str(self.logs / f"{phase}.csv"), append=True),
            # double_checkpoint: a kill during the save leaves the previous epoch's backup to load.
            keras.callbacks.BackupAndRestore(str(self.checkpoints / phase), double_checkpoint=True),
            epoch_logger(
                phase,
                total,
                self.log,
                offset=offset,
                durations=self.epoch_seconds.setdefault(phase, []),
            ),
        ]
        try:
            import tensorboard  # noqa: F401

            callbacks.append(keras.callbacks.TensorBoard(str(self.logs / "tensorboard" / phase)))
        except ImportError:
            pass
        if has_val:
            callbacks.append(
                keras.callbacks.ModelCheckpoint(
                    str(self.checkpoints / f"best_{phase}.weights.h5"),
                    monitor="val_loss",
                    save_best_only=True,
                    save_weights_only=True,
                )
            )
            if self.options.patience > 0:
                callbacks.append(
                    keras.callbacks.EarlyStopping(
                        monitor="val_loss",
                        patience=self.options.patience,
                        restore_best_weights=True,
                    )
                )
        return callbacks

    def _compile(self, model: Any, learning_rate: float) -> None:
        keras = self.keras
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=self.options.label_smoothing),
            metrics=["accuracy"],
        )

    def _head_phase(self, model: Any, class_weight) -> None:
        o, tf, keras = self.options, self.tf, self.keras
        start = time.perf_counter()
        steps = 0
        if o.head_augment or not o.cache_features:
            self.log(
                "head: training on "
                + ("augmented " if o.head_augment else "")
                + "pixels through the frozen base"
            )
            train_ds = _pixel_dataset(
                tf,
                self.decoded["train"][0],
                self._onehot("train"),
                o.batch_size,
                o.seed,
                self.augment if o.head_augment else None,
            )
            val_ds = self._val_pixels()
            self._compile(model, o.learning_rate)
            fit = model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=o.epochs,
                verbose=0,
                class_weight=class_weight,
                callbacks=self._callbacks("head", o.epochs, 0, model),
            )
            steps = len(fit.epoch)
        else:
            extract_start = time.perf_counter()
            extractor = keras.Model(model.input, model.get_layer("pool").output)
            features = {
                name: extractor.predict(
                    self.decoded[name][0].astype(np.float32),
                    batch_size=256,  # inference only: large batches are ~1.5x faster here
                    verbose=0,
                ).astype(np.float32)
                for name in ("train", "val")
                if self.counts[name]
            }
            self.seconds["head_feature_extraction"] = time.perf_counter() - extract_start
            self.log(
                f"head: base run once over {self.counts['train'] + self.counts['val']} images "
                f"({time.perf_counter() - extract_start:.1f}s); training the head on cached features"
            )
            head_input = keras.Input(shape=features["train"].shape[1:], name="pooled_features")
            x = model.get_layer("dropout")(head_input)
            head = keras.Model(head_input, model.get_layer("probabilities")(x), name="head")
            self._compile(head, o.learning_rate)
            train_ds = tf.data.Dataset.from_tensor_slices(
                (features["train"], self._onehot("train"))
            )
            train_ds = train_ds.shuffle(len(features["train"]), seed=o.seed).batch(o.batch_size)
            val_data = (features["val"], self._onehot("val")) if "val" in features else None
            fit = head.fit(
                train_ds,
                validation_data=val_data,
                epochs=o.epochs,
                verbose=0,
                class_weight=class_weight,
                callbacks=self._callbacks("head", o.epochs, 0, head),
            )
            steps = len(fit.epoch)
        self.seconds["head"] = time.perf_counter() - start
        self.images_per_second["head"] = round(
            steps * self.counts["train"] / self.seconds["head"], 1
        )

    def _val_pixels(self):
        if not self.counts["val"]:
            return None
        return _pixel_dataset(
            self.tf, self.decoded["val"][0], self._onehot("val"), self.options.batch_size, None
        )

    def _fine_tune_phase(self, model: Any, base: Any, class_weight) -> None:
        from toolchain.model import fine_tune_index, unfreeze_from

        o = self.options
        start = time.perf_counter()
        index = fine_tune_index(base, o.fine_tune_at)
        trainable = unfreeze_from(base, index, o.weights.lower() != "none")
        self.log(
            f"fine-tune: base layers {index}..{len(base.layers) - 1} ({trainable} trainable) "
            f"at learning rate {o.fine_tune_learning_rate:g}" + (", augmented" if o.augment else "")
        )
        with self.strategy.scope():
            self._compile(model, o.fine_tune_learning_rate)
        train_ds = _pixel_dataset(
            self.tf,
            self.decoded["train"][0],
            self._onehot("train"),
            o.batch_size,
            o.seed + 1,
            self.augment if o.augment else None,
        )
        total = o.epochs + o.fine_tune_epochs
        fit = model.fit(
            train_ds,
            validation_data=self._val_pixels(),
            epochs=total,
            initial_epoch=o.epochs,
            verbose=0,
            class_weight=class_weight,
            callbacks=self._callbacks("fine_tune", o.fine_tune_epochs, o.epochs, model),
        )
        self.seconds["fine_tune"] = time.perf_counter() - start
        self.images_per_second["fine_tune"] = round(
            len(fit.epoch) * self.counts["train"] / self.seconds["fine_tune"], 1
        )

    def _float32_copy(self, model: Any) -> Any:
        """Mixed-precision models are saved as float32 so export sees plain float ops."""
        if not self.options.mixed_precision:
            return model
        from toolchain.model import build_classifier

        self.keras.mixed_precision.set_global_policy("float32")
        o = self.options
        copy, _ = build_classifier(len(self.labels), o.image_size, o.alpha, "none", o.dropout)
        copy.set_weights(model.get_weights())
        return copy

    # -- the job ----------------------------------------------------------------
    def run_all(self) -> TrainResult:
        check_options(self.options)
        self.options = replace(self.options, fine_tune_at=resolve_fine_tune_at(self.options))
        o = self.options
        plan = runstate.check_out_folder(self.run, data_folder(o.data), o.resume, o.force)
        if plan == "finished":
            return self._already_finished()
        if plan == "resume":
            self.options = o = self._saved_options()
            self.log(f"resuming {self.run.path} with the options it was started with")
            if self._state().get("installing") is not None:
                return self._commit()  # killed while committing: finish the renames
        elif o.mixed_precision:
            self._require_gpu()
        # A user's folder or a tfds set is read (and its class names checked) before
        # anything is written; generated data is written into the run, so after the claim.
        dataset = None if o.data == "synthetic" or o.resume else self._dataset()
        runstate.claim(self.run, fresh=not o.resume)
        if not o.resume:
            atomic.write_json(self.checkpoints / "options.json", o.to_dict())
        self._load_data(dataset)

        from toolchain.augment import augmentation
        from toolchain.devices import choose_strategy, describe_devices, enable_mixed_precision
        from toolchain.model import build_classifier
        from toolchain.quiet import keras as import_keras
        from toolchain.quiet import tensorflow

        self.tf, self.keras = tensorflow(), import_keras()
        self.keras.utils.set_random_seed(o.seed)
        _, devices = describe_devices(self.tf)
        self.strategy, strategy_text = choose_strategy(self.tf, o.strategy)
        self.log(f"devices: {devices}; {strategy_text}")
        if o.mixed_precision:
            self.log(enable_mixed_precision(self.tf, self.keras))
        self.augment = augmentation(o.seed) if (o.augment or o.head_augment) else None
        with self.strategy.scope():
            model, base = build_classifier(
                len(self.labels), o.image_size, o.alpha, o.weights, o.dropout
            )
        class_weight = class_weights_for(
            self.decoded["train"][1], len(self.labels), o.class_weights
        )
        if class_weight:
            self.log(
                "class weights: "
                + ", ".join(f"{self.labels[i]} {w:.2f}" for i, w in class_weight.items())
            )

        after_head = self.checkpoints / "after_head.weights.h5"
        if self._state().get("head_done") and after_head.is_file():
            model.load_weights(after_head)
            self.log("head phase already done: loaded its weights")
        elif o.epochs:
            with self.strategy.scope():
                self._head_phase(model, class_weight)
            model.save_weights(after_head)
        self._set_state(head_done=True)
        if o.fine_tune_epochs:
            self._fine_tune_phase(model, base, class_weight)
        return self._finish(model)

    def _finish(self, model: Any) -> TrainResult:
        """Write the new run's files into the staging folder, then commit them at once."""
        o, staged = self.options, self.staged
        keras_model = self._float32_copy(model)

        def predictions(split_name: str) -> np.ndarray:
            pixels = self.decoded[split_name][0]
            if not len(pixels):
                return np.zeros((0, len(self.labels)), np.float32)
            return keras_model.predict(pixels.astype(np.float32), batch_size=64, verbose=0)

        top1 = {}
        for split_name in ("val", "test"):
            y = self.decoded[split_name][1]
            probs = predictions(split_name)
            top1[split_name] = float(np.mean(probs.argmax(axis=1) == y)) if len(y) else float("nan")
            if split_name == "val" and len(y):
                self._plot_confusion(y, probs.argmax(axis=1))
        self.log(f"keras top-1: val {top1['val']:.3f}, test {top1['test']:.3f}")

        staged.mkdir(parents=True, exist_ok=True)
        _save_model(keras_model, staged / "model.keras")
        history, head_epochs = read_csv_history(
            [self.logs / "head.csv", self.logs / "fine_tune.csv"]
        )
        atomic.write_json(
            staged / "history.json", {"fine_tune_start_epoch": head_epochs, **history}
        )
        atomic.write_json(staged / "splits.json", self.splits)
        atomic.write_text(staged / "labels.txt", "\n".join(self.labels) + "\n")
        self._write_report(history, head_epochs, top1)
        try:
            from toolchain.plots import training_curves

            training_curves(history, head_epochs, staged / "training_curves.png")
        except ImportError:
            self.log("note: matplotlib is not installed; training_curves.png not written")
        atomic.write_json(
            staged / "config.json",
            {
                "edgetl_version": __version__,
                "options": o.to_dict(),
                "labels": self.labels,
                "image_size": o.image_size,
                "input": INPUT_CONTRACT,
                "data": {
                    "description": self.description,
                    "root": str(self.root),
                    "counts": self.counts,
                },
                "results": {"val_top1": top1["val"], "test_top1": top1["test"]},
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            },
        )
        return self._commit()

    def _commit(self) -> TrainResult:
        runstate.commit(self.run, self.log)
        for phase in ("head", "fine_tune"):  # per-epoch backups; best weights stay
            shutil.rmtree(self.checkpoints / phase, ignore_errors=True)
        self.log(
            f"wrote {self.run.model}, training_curves.png, train_report.json in {self.run.path}"
        )
        return self._result()

    def _result(self, already_finished: bool = False) -> TrainResult:
        config = self.run.read_config()
        results = config.get("results") if isinstance(config.get("results"), dict) else {}
        data = config.get("data") if isinstance(config.get("data"), dict) else {}
        return TrainResult(
            self.run.path,
            list(config["labels"]),
            data.get("counts") if isinstance(data.get("counts"), dict) else {},
            _number(results.get("val_top1")),
            _number(results.get("test_top1")),
            config.get("seconds") if isinstance(config.get("seconds"), dict) else {},
            already_finished,
        )

    def _already_finished(self) -> TrainResult:
        self.run.require_trained()
        self.log(f"--resume: {self.run.path} finished training already; nothing to do")
        return self._result(already_finished=True)

    def _require_gpu(self) -> None:
        """--mixed-precision without a GPU is refused before the run folder is touched."""
        from toolchain.devices import enable_mixed_precision
        from toolchain.quiet import keras as import_keras
        from toolchain.quiet import tensorflow

        tf = tensorflow()
        if not tf.config.list_physical_devices("GPU"):
            enable_mixed_precision(tf, import_keras())  # raises the one-line environment error

    def _plot_confusion(self, y: np.ndarray, predicted: np.ndarray) -> None:
        try:
            from toolchain.metrics import confusion_matrix
            from toolchain.plots import confusion_matrices

            matrix = confusion_matrix(y, predicted, len(self.labels))
            confusion_matrices(
                {"validation split (Keras)": matrix},
                self.labels,
                self.staged / "confusion_val.png",
            )
        except ImportError:
            pass

    def _write_report(self, history: Dict[str, List[float]], head_epochs: int, top1) -> None:
        per_class = {
            split: {
                self.labels[i]: int(n)
                for i, n in enumerate(
                    np.bincount(self.decoded[split][1], minlength=len(self.labels))
                )
            }
            for split in ("train", "val", "test")
        }
        val_loss = history.get("val_loss", [])
        atomic.write_json(
            self.staged / "train_report.json",
            {
                "edgetl_version": __version__,
                "data": self.description,
                "counts": self.counts,
                "per_class": per_class,
                "skipped": [[path, reason] for path, reason in self.skipped],
                "options": self.options.to_dict(),
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "images_per_second": self.images_per_second,
                # The median skips the first epoch's graph tracing.
                "epoch_seconds_median": {
                    phase: round(float(np.median(values)), 3)
                    for phase, values in self.epoch_seconds.items()
                    if values
                },
                "epochs_run": {
                    "head": head_epochs,
                    "fine_tune": len(history.get("loss", [])) - head_epochs,
                },
                "best_epoch": int(np.argmin(val_loss)) + 1 if val_loss else None,
                "val_top1": top1["val"],
                "test_top1": top1["test"],
            },
        )


def train(options: TrainOptions, log: Log = stderr_log) -> TrainResult:
    return Trainer(options, log).run_all()
