"""The MobileNetV2 transfer model, and how its layers are frozen per phase.

The model takes raw RGB pixels 0–255 (float32) and rescales them to
MobileNetV2's [-1, 1] itself, so the exported INT8 model takes ``uint8``
pixels straight from a decoder (input scale 1, zero point 0) and the device
does no float math before the interpreter.

Traps handled here (Keras 3.15):
- ``base(x, training=False)`` is *not* sticky in Keras 3: a functional model
  passes ``training=True`` from ``fit`` down to every layer, overriding it.
  What keeps pretrained BatchNorm in inference mode is ``layer.trainable =
  False`` (Keras 3 BatchNormalization normalises with batch statistics only
  when ``training and self.trainable``). Without it, fine-tuning on small
  batches replaces ImageNet statistics with noisy batch ones and accuracy
  collapses; so every BatchNorm layer of a pretrained base stays frozen.
- With ``weights=none`` there are no statistics to protect: BatchNorm trains,
  with momentum 0.9 instead of 0.999 (at 0.999 the moving statistics barely
  move in a short run and the model scores chance at inference).
- ``weights`` may be a local no-top ``.h5`` file, for air-gapped machines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Tuple

from edge.errors import BadInput, MissingEnvironment
from toolchain.core.quiet import keras as import_keras

KERAS_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
BASE_NAME = "mobilenetv2_base"


def weights_argument(weights: str, alpha: float) -> Any:
    """Translate ``--weights`` into what ``MobileNetV2(weights=...)`` accepts."""
    if weights.lower() == "none":
        return None
    if weights.lower() == "imagenet":
        if alpha not in KERAS_ALPHAS:
            raise BadInput(f"--alpha {alpha}: ImageNet weights exist for {KERAS_ALPHAS} only")
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise BadInput(
            f"--weights {weights}: no such file; give imagenet, none or a no-top .h5 file"
        )
    return str(path.resolve())


def build_classifier(
    num_classes: int,
    image_size: int,
    alpha: float = 1.0,
    weights: str = "imagenet",
    dropout: float = 0.2,
) -> Tuple[Any, Any]:
    """Return ``(model, base)``: the full classifier and its MobileNetV2 base.

    The base starts frozen (head phase). ``image_size`` must be at least 32.
    """
    if image_size < 32:
        raise BadInput(f"--image-size {image_size}: MobileNetV2 needs at least 32 pixels")
    keras = import_keras()
    weights_arg = weights_argument(weights, alpha)
    shape = (image_size, image_size, 3)
    try:
        base = keras.applications.MobileNetV2(
            input_shape=shape, alpha=alpha, include_top=False, weights=weights_arg, pooling=None
        )
    except Exception as error:  # Keras raises bare Exception on URL failure, ValueError on shapes
        text = str(error)
        if weights_arg == "imagenet" and ("URL fetch failure" in text or "resolve" in text.lower()):
            expected = (
                f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_"
                f"{image_size if image_size in (96, 128, 160, 192, 224) else 224}_no_top.h5"
            )
            raise MissingEnvironment(
                "ImageNet weights cannot be downloaded (no network): pass --weights FILE.h5 "
                f"or copy {expected} into {os.path.expanduser('~/.keras/models/')}"
            ) from None
        if weights_arg not in (None, "imagenet"):
            raise BadInput(
                f"--weights {weights}: does not fit MobileNetV2 alpha {alpha} without top "
                f"({text.splitlines()[0][:160]}); check --alpha matches the file"
            ) from None
        raise BadInput(
            f"MobileNetV2(alpha={alpha}, size={image_size}): {text.splitlines()[0]}"
        ) from None
    base.name = BASE_NAME
    pretrained = weights_arg is not None
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and not pretrained:
            layer.momentum = 0.9

    inputs = keras.Input(shape=shape, dtype="float32", name="pixels")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_1")(inputs)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    # float32 even under a mixed_float16 policy: a float16 softmax loses small probabilities.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", name="probabilities", dtype="float32"
    )(x)
    model = keras.Model(inputs, outputs, name="edgetl_mobilenetv2")
    freeze_base(base)
    return model, base


def freeze_base(base: Any) -> None:
    """Head phase: nothing in the base trains."""
    base.trainable = False


def fine_tune_index(base: Any, fine_tune_at: str) -> int:
    """``--fine-tune-at`` as an index: an integer, or the first layer whose name starts with it."""
    text = str(fine_tune_at).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(base.layers):
            raise BadInput(f"--fine-tune-at {text}: the base has layers 0..{len(base.layers) - 1}")
        return index
    for index, layer in enumerate(base.layers):
        if layer.name.startswith(text):
            return index
    raise BadInput(
        f"--fine-tune-at {text}: no base layer is named like that; use an index or a block "
        "name such as block_13"
    )


def unfreeze_from(base: Any, index: int, pretrained: bool) -> int:
    """Fine-tune phase: layers from ``index`` on train; pretrained BatchNorm stays frozen.

    Returns how many base layers are trainable.
    """
    keras = import_keras()
    base.trainable = True
    trainable = 0
    for position, layer in enumerate(base.layers):
        train_it = position >= index
        if pretrained and isinstance(layer, keras.layers.BatchNormalization):
            train_it = False  # see module docstring: keeps ImageNet statistics in use
        layer.trainable = train_it
        trainable += int(train_it)
    return trainable
