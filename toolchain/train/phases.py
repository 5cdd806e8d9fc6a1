"""The Keras side of a training run: devices, the model, and its two phases.

Phase 1 ("head") trains the new classifier head on a frozen base at
``learning_rate``. Unless ``head_augment`` is set, the frozen base is run
once over the training images and the head trains on the cached pooled
features: the same optimisation (the base is frozen and in inference mode
either way) at a fraction of the cost. Phase 2 ("fine-tune") unfreezes the
base from ``fine_tune_at`` and continues at ``fine_tune_learning_rate`` with
augmentation, pretrained BatchNorm frozen (see ``toolchain.train.model``).

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

from edge.errors import BadInput
from toolchain.core.options import TrainOptions
from toolchain.core.pixel_file import Rows, predict_to_file, row_dataset
from toolchain.core.progress import Log, epoch_logger
from toolchain.core.quiet import keras as import_keras
from toolchain.core.quiet import tensorflow
from toolchain.core.rundir import RunDir
from toolchain.train import cluster_watch, runstate
from toolchain.train.augment import augmentation
from toolchain.train.averaging import phase_averaging
from toolchain.train.checks import finite_loss_guard
from toolchain.train.data import TrainingData, even_shards
from toolchain.train.devices import (
    choose_strategy,
    describe_devices,
    enable_mixed_precision,
    worker_role,
)
from toolchain.train.model import build_classifier, fine_tune_index, unfreeze_from

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
    shard: Tuple[int, int] = (1, 0)  # (workers, this worker) of a multi-worker run
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
    cluster_watch.announce(cluster_watch.CONNECTING)
    strategy, strategy_text = choose_strategy(tf, options.strategy)
    cluster_watch.announce(cluster_watch.JOINED)  # a multi-worker strategy: all joined
    log(f"devices: {devices}; {strategy_text}")
    replicas = getattr(strategy, "num_replicas_in_sync", 1)
    if options.batch_size % replicas:
        raise BadInput(
            f"--batch-size {options.batch_size} does not split evenly over {replicas} replicas; "
            f"give a multiple of {replicas} (it is the batch of all replicas together)"
        )
    if options.mixed_precision:
        log(enable_mixed_precision(tf, keras))
    wanted = options.augment or options.head_augment
    augment = augmentation(options.seed, options.pretrained) if wanted else None
    role = worker_role(options.strategy)
    shard = (role.workers, role.index) if role else (1, 0)
    return Session(options, data, run, log, tf, keras, strategy, augment, shard)


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
    train_ds = _dataset(
        session, data.splits["train"].pixels, "train", o.seed, o.head_augment, class_weight
    )
    val_ds = _val_dataset(session, data.splits["val"].pixels)
    return _fit(session, model, train_ds, val_ds, o.learning_rate, "head", 0)


def _head_on_features(session: Session, model: Any, class_weight: ClassWeights) -> int:
    """The frozen base runs once; the head (dropout and dense, the same layer objects as
    in ``model``, so the trained weights land there) trains on the pooled features."""
    o, data, keras = session.options, session.data, session.keras
    extract_start = time.perf_counter()
    # Outside the strategy: a plain copy of the frozen base gives every worker the same
    # features (Keras' own predict cannot gather a multi-worker strategy's outputs).
    plain = plain_copy(session, model)
    extractor = keras.Model(plain.input, plain.get_layer("pool").output)
    # Inference only, so large batches (~1.5x faster here); the features go to disk
    # beside the pixels, so the cache does not grow memory with the data either.
    features = {
        name: predict_to_file(extractor, data.splits[name].pixels, session.run.checkpoints)
        for name in ("train", "val")
    }
    session.timings.seconds["head_feature_extraction"] = time.perf_counter() - extract_start
    session.log(
        f"head: base run once over {data.counts['train'] + data.counts['val']} images "
        f"({time.perf_counter() - extract_start:.1f}s); training the head on cached features"
    )
    with session.strategy.scope():  # Keras builds the head's step for this strategy
        head_input = keras.Input(shape=features["train"].shape[1:], name="pooled_features")
        x = model.get_layer("dropout")(head_input)
        head = keras.Model(head_input, model.get_layer("probabilities")(x), name="head")
    train_ds = _dataset(session, features["train"], "train", o.seed, False, class_weight)
    val_data = _val_dataset(session, features["val"])
    fit_epochs = _fit(session, head, train_ds, val_data, o.learning_rate, "head", 0)
    for rows in features.values():
        rows.close()
    return fit_epochs


def fine_tune_phase(session: Session, model: Any, base: Any, class_weight: ClassWeights) -> None:
    """Phase 2: the base unfrozen from ``fine_tune_at``, on augmented pixels."""
    o, data, timings = session.options, session.data, session.timings
    start = time.perf_counter()
    index = fine_tune_index(base, o.fine_tune_at)
    trainable = unfreeze_from(base, index, o.pretrained)
    session.log(
        f"fine-tune: base layers {index}..{len(base.layers) - 1} ({trainable} trainable) "
        f"at learning rate {o.fine_tune_learning_rate:g}" + (", augmented" if o.augment else "")
    )
    train_ds = _dataset(
        session, data.splits["train"].pixels, "train", o.seed + 1, o.augment, class_weight
    )
    val_ds = _val_dataset(session, data.splits["val"].pixels)
    epochs = _fit(
        session,
        model,
        train_ds,
        val_ds,
        o.fine_tune_learning_rate,
        "fine_tune",
        o.epochs,
    )
    timings.seconds["fine_tune"] = time.perf_counter() - start
    timings.images_per_second["fine_tune"] = round(
        epochs * data.counts["train"] / timings.seconds["fine_tune"], 1
    )


def plain_copy(session: Session, model: Any) -> Any:
    """The model rebuilt outside any strategy, float32, with the same weights.

    What is evaluated and saved: export wants plain float ops (not a mixed-precision
    graph), and Keras 3's ``predict`` under a multi-worker strategy fails to gather
    the replicas' outputs ("unsupported type PerReplica"). On one device without
    mixed precision the model itself is already that.
    """
    o, keras = session.options, session.keras
    if not (o.mixed_precision or _distributed(session)):
        return model
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    copy, _ = build_classifier(len(session.data.labels), o.image_size, o.alpha, "none", o.dropout)
    copy.set_weights(model.get_weights())
    keras.mixed_precision.set_global_policy(policy)  # fine-tuning may follow
    return copy


def _distributed(session: Session) -> bool:
    """Training under a tf.distribute strategy (even one of a single replica)."""
    replicas = getattr(session.strategy, "num_replicas_in_sync", 1)
    return replicas > 1 or session.options.strategy != "auto"


def _fit(
    session: Session,
    model: Any,
    train_ds: Any,
    val_ds: Any,
    learning_rate: float,
    phase: str,
    initial_epoch: int,
) -> int:
    """Compile and fit ``model`` for its phase under the session's strategy; returns
    how many epochs ran (early stopping may end a phase sooner).

    Across workers, ``model`` is first wrapped in a functional model made outside
    the strategy's scope over the same layers, whose variables (made in the scope)
    stay the distributed ones: Keras 3 then builds the training step when it traces
    it, instead of from the first distributed batch, which it cannot do under
    MultiWorkerMirroredStrategy ("unsupported type PerReplica"). The optimizer's
    variables are then made here, before the step: made inside it, on one replica
    of several, they would have no value on the others.
    """
    o, tf = session.options, session.tf
    epochs = o.epochs if phase == "head" else o.epochs + o.fine_tune_epochs
    trainee = model
    across_workers = isinstance(session.strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if across_workers:
        trainee = session.keras.Model(model.inputs, model.outputs, name=model.name)
    with session.strategy.scope():  # the optimizer's variables are made here
        _compile(session, trainee, learning_rate)
        if across_workers:
            trainee.optimizer.build(trainee.trainable_variables)
        # Not at the epoch a resumed earlier phase left (BackupAndRestore) on the model.
        trainee._initial_epoch = None
        fit = trainee.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            initial_epoch=initial_epoch,
            verbose=0,
            callbacks=_callbacks(session, phase, epochs - initial_epoch, initial_epoch, trainee),
        )
    return len(fit.epoch)


def _dataset(
    session: Session,
    rows: Rows,
    split_name: str,
    seed: int,
    augment: bool,
    class_weight: ClassWeights,
) -> Any:
    """Shuffled training batches of ``rows`` (pixels or features) with their labels, and
    each image's class weight when classes are weighted (in the pipeline rather than
    Keras' ``class_weight``, which cannot map a per-worker distributed dataset)."""
    weights = None
    if class_weight:
        weights = np.array([class_weight.get(i, 1.0) for i in range(len(session.data.labels))])
    augment_model = session.augment if augment else None
    return _split_dataset(session, rows, split_name, seed, augment_model, weights)


def _val_dataset(session: Session, rows: Rows) -> Any:
    """The val split in order, or None when it is empty (Keras then skips validation)."""
    if not session.data.counts["val"]:
        return None
    return _split_dataset(session, rows, "val", None, None, None)


def _split_dataset(
    session: Session,
    rows: Rows,
    split_name: str,
    seed: Optional[int],
    augment: Any,
    class_weights: Optional[np.ndarray],
) -> Any:
    """One split's ``row_dataset``; across workers, one pipeline per worker.

    Each worker of a multi-worker run builds its own pipeline over its own share
    of the indices, batched per replica (``distribute_datasets_from_function``),
    so no worker reads or augments an image another worker trains on. The split
    is first padded to whole global batches with zero-weight rows
    (``data.even_shards``): every worker then takes the same number of
    steps of the same shape, whatever the split's size and the worker count.
    """
    data, batch = session.data, session.options.batch_size
    class_indices = data.splits[split_name].class_indices
    if session.shard[0] > 1:
        rows, class_indices, class_weights = even_shards(
            rows, class_indices, len(data.labels), batch, class_weights
        )

    def pipeline(per_replica_batch: int, shard: Tuple[int, int]) -> Any:
        return row_dataset(
            session.tf,
            rows,
            class_indices,
            len(data.labels),
            per_replica_batch,
            seed,
            augment,
            shard,
            class_weights,
        )

    if session.shard[0] <= 1:
        return pipeline(batch, (1, 0))
    return session.strategy.distribute_datasets_from_function(
        lambda context: pipeline(
            context.get_per_replica_batch_size(batch),
            (context.num_input_pipelines, context.input_pipeline_id),
        )
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
    o = session.options
    learning_rate = o.learning_rate if phase == "head" else o.fine_tune_learning_rate
    backup = keras.callbacks.BackupAndRestore(str(checkpoints / phase), double_checkpoint=True)
    callbacks = [
        # First: a diverged epoch stops the phase before any callback records it.
        finite_loss_guard(keras, phase, learning_rate),
        # CSV before the backup: if a kill falls between the two, the epoch is
        # redone and its row replaced, rather than recorded as done and lost.
        keras.callbacks.CSVLogger(str(logs / f"{phase}.csv"), append=True),
        # double_checkpoint: a kill during the save leaves the previous epoch's backup to load.
        backup,
        epoch_logger(
            phase,
            total,
            session.log,
            offset=offset,
            durations=session.timings.epoch_seconds.setdefault(phase, []),
        ),
    ]
    if phase == "fine_tune":  # before the backup: see toolchain.train.averaging
        at = callbacks.index(backup)
        callbacks[at:at] = phase_averaging(keras, o, checkpoints, offset + total - 1, session.log)
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
        if o.patience > 0:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=session.options.patience,
                    restore_best_weights=True,
                )
            )
    return callbacks
