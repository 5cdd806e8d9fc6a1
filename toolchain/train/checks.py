"""What ``edgetl train`` checks before it reads a dataset at length or writes a file.

Every option is checked here first (exit 2), so a typo never leaves a half-made
run behind and a bad combination (fractions that leave nothing to train on, an
alpha without ImageNet weights) is named in one line instead of surfacing as a
Keras traceback after the head phase. ``--resume`` runs the same checks over
the options a run was started with (see ``toolchain.train.runstate``).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from edge.errors import BadInput
from toolchain.core.options import CLASS_WEIGHT_MODES, STRATEGIES, TrainOptions
from toolchain.train.datasets import check_data_spec
from toolchain.train.devices import tf_config_problem, worker_role
from toolchain.train.model import KERAS_ALPHAS

SMALL_ALPHA = 0.5  # at or below: fine-tune deeper

BASE_LAYERS = 154  # MobileNetV2 without top, at every alpha and size
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


def checked_options(options: TrainOptions) -> TrainOptions:
    """The options checked, with ``--fine-tune-at auto`` decided once: the run records
    the layer it chose, so a resumed run and a reader of config.json see the same."""
    check_options(options)
    return replace(options, fine_tune_at=resolve_fine_tune_at(options))


def resolve_fine_tune_at(options: TrainOptions) -> str:
    """``auto`` on a pretrained base: layer 100 of 154 (the TF tutorial's choice: the
    last ~third adapts, early edge detectors stay) for alpha above 0.5; from
    ``block_5`` for the slim bases (alpha 0.35, 0.5), whose thin ImageNet features
    need more adapting: on flowers128 at 0.35/128 px it beat layer 100 on the test
    split in every run we made (0.67-0.71 in six runs vs 0.65-0.66 in four). The
    whole base when training from scratch: a random frozen base gives chance accuracy."""
    if options.fine_tune_at != "auto":
        return options.fine_tune_at
    if not options.pretrained:
        return "0"
    return "block_5" if options.alpha <= SMALL_ALPHA else "100"


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
        problem = tf_config_problem(os.environ.get("TF_CONFIG"))
        if problem:
            raise BadInput(f"--strategy multiworker: {problem}")
        workers = worker_role(o.strategy).workers  # type: ignore[union-attr]
        if o.batch_size % workers:
            raise BadInput(
                f"--batch-size {o.batch_size} does not split evenly over {workers} workers; "
                f"give a multiple of {workers} (it is the batch of all workers together)"
            )
    problem = fine_tune_at_problem(o.fine_tune_at)
    if problem:
        raise BadInput(f"--fine-tune-at {o.fine_tune_at}: {problem}")
    _check_weights(o)
    check_data_spec(o.data)


def _check_weights(o: TrainOptions) -> None:
    """``--weights`` against ``--alpha``: Keras publishes ImageNet weights for six alphas
    only, and a missing or non-.h5 file would otherwise fail after the data is decoded."""
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


# Which option sets each phase's step size: what to lower when its loss diverges.
LEARNING_RATE_OPTIONS = {"head": "--learning-rate", "fine_tune": "--fine-tune-learning-rate"}


def diverged(phase: str, learning_rate: float, where: str) -> BadInput:
    """The one-line refusal of a run whose numbers stopped being finite. Bad input (exit 2):
    the learning rate (or the data) drove it there, and nothing non-finite is saved."""
    option = LEARNING_RATE_OPTIONS.get(phase, "--learning-rate")
    return BadInput(
        f"training diverged: {where} is not a finite number; lower {option} "
        f"(it is {learning_rate:g}, try a tenth of it) and start again with --force"
    )


def finite_loss_guard(keras: Any, phase: str, learning_rate: float) -> Any:
    """A Keras callback that stops the phase at the end of an epoch whose loss (or val
    loss) is NaN or infinite, before the epoch's checkpoint and CSV row are written
    (it goes first in the callback list): without it Keras trains on NaN to the end and
    saves a model that predicts class 0 for every image. Every worker of a multi-worker
    run sees the same averaged loss, so all stop at the same epoch."""

    class FiniteLoss(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
            for key in ("loss", "val_loss"):
                value = (logs or {}).get(key)
                if value is not None and not math.isfinite(float(value)):
                    raise diverged(phase, learning_rate, f"epoch {epoch + 1}'s {key} ({value})")

    return FiniteLoss()


def require_finite(
    arrays: Iterable[np.ndarray], phase: str, learning_rate: float, what: str
) -> None:
    """Refuse a model whose weights or outputs hold NaN or infinity before anything is saved."""
    if not all(np.isfinite(np.asarray(a)).all() for a in arrays):
        raise diverged(phase, learning_rate, what)
