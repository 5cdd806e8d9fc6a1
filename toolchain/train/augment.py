"""Training-only augmentation as Keras preprocessing layers.

Applied in the ``tf.data`` pipeline, never inside the model: ``model.export``
traces augmentation layers in training mode, and the TFLite converter then
fails on ``StatelessRandomGetKeyCounter`` (README, *Traps we measured*). The saved and
exported model therefore contains no augmentation at all.

Defaults follow the TensorFlow transfer-learning tutorial (horizontal flip,
rotation: the tutorial's ±20% of a turn tilts photos unnaturally, we use ±5%),
plus mild zoom, contrast and brightness, all in the raw 0–255 range.
"""

from __future__ import annotations

from typing import Any

from toolchain.core.quiet import keras as import_keras


def augmentation(seed: int) -> Any:

    keras = import_keras()
    layers = keras.layers
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1),
            layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
            layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 3),
            layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed + 4),
        ],
        name="augmentation",
    )
