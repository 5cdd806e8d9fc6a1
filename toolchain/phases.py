"""The Keras side of a training run: devices, the model, and its two phases.

Phase 1 ("head") trains the new classifier head on a frozen base at
``learning_rate``. Unless ``head_augment`` is set, the frozen base is run
once over the training images and the head trains on the cached pooled
features: the same optimisation (the base is frozen and in inference mode
either way) at a fraction of the cost. Phase 2 ("fine-tune") unfreezes the
base from ``fine_tune_at`` and continues at ``fine_tune_learning_rate`` with
augmentation, pretrained BatchNorm frozen (see ``toolchain.model``).

Each phase logs a CSV row and keeps a Keras ``BackupAndRestore`` checkpoint per
epoch in ``RUN/checkpoints/``, so ``--resume`` redoes at most the interrupted
epoch. TensorFlow is imported when a session starts (or ``require_gpu`` asks),
never at import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from toolchain import runstate
from toolchain.augment import augmentation
from toolchain.devices import choose_strategy, describe_devices, enable_mixed_precision
from toolchain.model import build_classifier, fine_tune_index, unfreeze_from
from toolchain.options import TrainOptions
from toolchain.progress import Log, epoch_logger
from toolchain.quiet import keras as import_keras
from toolchain.quiet import tensorflow
from toolchain.rundir import RunDir
from toolchain.train_data import TrainingData, pixel_dataset

ClassWeights = Optional[Dict[int, float]]


@dataclass
class Timings:
    """What the phases measured, for train_report.json and config.json."""

    seconds: Dict[str, float] = field(default_factory=dict)
    images_per_second: Dict[str, float] = field(default_factory=dict)
    epoch_seconds: Dict[str, List[float]] = field(default_factory=dict)


@dataclass
class Session:
    """What both phases share, made once by ``start_session`` after the data is decoded."""

    options: TrainOptions
    data: TrainingData
    run: RunDir
    log: Log
    tf: Any
    keras: Any
    strategy: Any  # a tf.distribute strategy; variables are made in its scope
    augment: Any  # the augmentation model, or None when no phase augments
    timings: Timings = field(default_factory=Timings)


def require_gpu() -> None:
    """--mixed-precision without a GPU is refused before the run folder is touched."""
    tf = tensorflow()
    if not tf.config.list_physical_devices("GPU"):
        enable_mixed_precision(tf, import_keras())  # raises the one-line environment error


def start_session(options: TrainOptions, data: TrainingData, run: RunDir, log: Log) -> Session:
    """Import TensorFlow, seed it, and choose the devices and the strategy."""
    tf, keras = tensorflow(), import_keras()
    keras.utils.set_random_seed(options.seed)
    _, devices = describe_devices(tf)
    strategy, strategy_text = choose_strategy(tf, options.strategy)
    log(f"devices: {devices}; {strategy_text}")
    if options.mixed_precision:
        log(enable_mixed_precision(tf, keras))
    augment = augmentation(options.seed) if (options.augment or options.head_augment) else None
    return Session(options, data, run, log, tf, keras, strategy, augment)


def build_model(session: Session) -> Tuple[Any, Any]:
    """``(model, base)`` with the base frozen, its variables made in the strategy's scope."""
    o = session.options
    with session.strategy.scope():
        return build_classifier(
            len(session.data.labels), o.image_size, o.alpha, o.weights, o.dropout
        )


def head_phase(session: Session, model: Any, class_weight: ClassWeights) -> None:
    """Phase 1: the head trains, the base stays frozen."""
    o, timings = session.options, session.timings
    with session.strategy.scope():  # the optimizer's variables are made here
        start = time.perf_counter()
        if o.head_augment or not o.cache_features:
            steps = _head_on_pixels(session, model, class_weight)
        else:
            steps = _head_on_features(session, model, class_weight)
        timings.seconds["head"] = time.perf_counter() - start
        timings.images_per_second["head"] = round(
            steps * session.data.counts["train"] / timings.seconds["head"], 1
        )


def _head_on_pixels(session: Session, model: Any, class_weight: ClassWeights) -> int:
    """Every head epoch runs the frozen base again: needed when the head sees augmented images."""
    o, data = session.options, session.data
    session.log(
        "head: training on "
        + ("augmented " if o.head_augment else "")
        + "pixels through the frozen base"
    )
    train_ds = pixel_dataset(
        session.tf,
        data.splits["train"].pixels,
        data.onehot("train"),
        o.batch_size,
        o.seed,
        session.augment if o.head_augment else None,
    )
    val_ds = _val_pixels(session)
    _compile(session, model, o.learning_rate)
    fit = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=o.epochs,
        verbose=0,
        class_weight=class_weight,
        callbacks=_callbacks(session, "head", o.epochs, 0, model),
    )
    return len(fit.epoch)


def _head_on_features(session: Session, model: Any, class_weight: ClassWeights) -> int:
    """The frozen base runs once; the head (dropout and dense, the same layer objects as
    in ``model``, so the trained weights land there) trains on the pooled features."""
    o, data, tf, keras = session.options, session.data, session.tf, session.keras
    extract_start = time.perf_counter()
    extractor = keras.Model(model.input, model.get_layer("pool").output)
    features = {
        name: extractor.predict(
            data.splits[name].pixels.astype(np.float32),
            batch_size=256,  # inference only: large batches are ~1.5x faster here
            verbose=0,
        ).astype(np.float32)
        for name in ("train", "val")
        if data.counts[name]
    }
    session.timings.seconds["head_feature_extraction"] = time.perf_counter() - extract_start
    session.log(
        f"head: base run once over {data.counts['train'] + data.counts['val']} images "
        f"({time.perf_counter() - extract_start:.1f}s); training the head on cached features"
    )
    head_input = keras.Input(shape=features["train"].shape[1:], name="pooled_features")
    x = model.get_layer("dropout")(head_input)
    head = keras.Model(head_input, model.get_layer("probabilities")(x), name="head")
    _compile(session, head, o.learning_rate)
    train_ds = tf.data.Dataset.from_tensor_slices((features["train"], data.onehot("train")))
    train_ds = train_ds.shuffle(len(features["train"]), seed=o.seed).batch(o.batch_size)
    val_data = (features["val"], data.onehot("val")) if "val" in features else None
    fit = head.fit(
        train_ds,
        validation_data=val_data,
        epochs=o.epochs,
        verbose=0,
        class_weight=class_weight,
        callbacks=_callbacks(session, "head", o.epochs, 0, head),
    )
    return len(fit.epoch)


def fine_tune_phase(session: Session, model: Any, base: Any, class_weight: ClassWeights) -> None:
    """Phase 2: the base unfrozen from ``fine_tune_at``, on augmented pixels."""
    o, data, timings = session.options, session.data, session.timings
    start = time.perf_counter()
    index = fine_tune_index(base, o.fine_tune_at)
    trainable = unfreeze_from(base, index, o.weights.lower() != "none")
    session.log(
        f"fine-tune: base layers {index}..{len(base.layers) - 1} ({trainable} trainable) "
        f"at learning rate {o.fine_tune_learning_rate:g}" + (", augmented" if o.augment else "")
    )
    with session.strategy.scope():
        _compile(session, model, o.fine_tune_learning_rate)
    train_ds = pixel_dataset(
        session.tf,
        data.splits["train"].pixels,
        data.onehot("train"),
        o.batch_size,
        o.seed + 1,
        session.augment if o.augment else None,
    )
    total = o.epochs + o.fine_tune_epochs
    fit = model.fit(
        train_ds,
        validation_data=_val_pixels(session),
        epochs=total,
        initial_epoch=o.epochs,
        verbose=0,
        class_weight=class_weight,
        callbacks=_callbacks(session, "fine_tune", o.fine_tune_epochs, o.epochs, model),
    )
    timings.seconds["fine_tune"] = time.perf_counter() - start
    timings.images_per_second["fine_tune"] = round(
        len(fit.epoch) * data.counts["train"] / timings.seconds["fine_tune"], 1
    )


def float32_copy(session: Session, model: Any) -> Any:
    """Mixed-precision models are saved as float32 so export sees plain float ops."""
    o = session.options
    if not o.mixed_precision:
        return model
    session.keras.mixed_precision.set_global_policy("float32")
    copy, _ = build_classifier(len(session.data.labels), o.image_size, o.alpha, "none", o.dropout)
    copy.set_weights(model.get_weights())
    return copy


def _val_pixels(session: Session) -> Any:
    data = session.data
    if not data.counts["val"]:
        return None
    return pixel_dataset(
        session.tf, data.splits["val"].pixels, data.onehot("val"), session.options.batch_size, None
    )


def _compile(session: Session, model: Any, learning_rate: float) -> None:
    keras = session.keras
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=session.options.label_smoothing),
        metrics=["accuracy"],
    )


def _callbacks(session: Session, phase: str, total: int, offset: int, model: Any) -> List[Any]:
    keras, checkpoints = session.keras, session.run.checkpoints
    logs = runstate.working_logs(session.run)
    callbacks = [
        # CSV before the backup: if a kill falls between the two, the epoch is
        # redone and its row replaced, rather than recorded as done and lost.
        keras.callbacks.CSVLogger(str(logs / f"{phase}.csv"), append=True),
        # double_checkpoint: a kill during the save leaves the previous epoch's backup to load.
        keras.callbacks.BackupAndRestore(str(checkpoints / phase), double_checkpoint=True),
        epoch_logger(
            phase,
            total,
            session.log,
            offset=offset,
            durations=session.timings.epoch_seconds.setdefault(phase, []),
        ),
    ]
    try:
        import tensorboard  # noqa: F401

        callbacks.append(keras.callbacks.TensorBoard(str(logs / "tensorboard" / phase)))
    except ImportError:
        pass
    if session.data.counts["val"] > 0:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(checkpoints / f"best_{phase}.weights.h5"),
                monitor="val_loss",
                save_best_only=True,
                save_weights_only=True,
            )
        )
        if session.options.patience > 0:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=session.options.patience,
                    restore_best_weights=True,
                )
            )
    return callbacks
