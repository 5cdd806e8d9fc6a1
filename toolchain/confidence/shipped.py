"""The shipped Keras model: the trained classifier with its calibration and its
out-of-class answer built into the graph, so every runtime gets the same scores.

Output: one row of ``classes + 1`` probabilities that sum to 1::

    [p_1 (1 - u), ..., p_K (1 - u), u]

``p`` is the temperature-scaled softmax (the last dense layer with its weights
divided by T: no extra op), ``u`` the probability that the photo is out of
class: a logistic of the distance to the nearest class mean around the
threshold (``toolchain.confidence.outofclass``). The extra last class is an
explicit label, ``unknown``, so MediaPipe Tasks, a phone app or any TFLite
runner that ranks classes shows it by name with no code of edgetl's, and a photo
of a trained class keeps its calibrated score (u is about 0 for nearly all of
them). Only built-in Keras layers and ``keras.ops`` are used, so the model loads
anywhere Keras 3 does, with nothing to register.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from edge.answer import UNKNOWN_ANSWER
from toolchain.confidence.outofclass import OutOfClass
from toolchain.core.quiet import keras as import_keras

FEATURES_LAYER = "pool"  # pooled base features: what the head and the distance read
HEAD_LAYER = "probabilities"  # the trained dense softmax
LOGIT_LAYER = "distance_to_logit"  # the out-of-class distance, as a logit around the threshold


def has_out_of_class(config: Dict[str, Any]) -> bool:
    """Whether a run's model has the ``unknown`` output (config.json's ``unknown``)."""
    return isinstance(config.get("unknown"), dict)


def output_labels(config: Dict[str, Any]) -> List[str]:
    """A run's output labels: the trained classes, then ``unknown`` when it has one."""
    return list(config["labels"]) + ([UNKNOWN_ANSWER] if has_out_of_class(config) else [])


def has_head(model: Any) -> bool:
    """Whether ``model`` is a classifier this module can extend (edgetl's own layout)."""
    names = {layer.name for layer in model.layers}
    return FEATURES_LAYER in names and HEAD_LAYER in names


def classes_only(model: Any) -> Any:
    """The shipped model without its ``unknown`` output: the calibrated class scores
    alone, as ``train --no-out-of-class`` leaves them (what ``--qat`` can rebuild)."""
    keras = import_keras()
    return keras.Model(model.inputs, model.get_layer(HEAD_LAYER).output)


def features_and_logits(model: Any) -> Any:
    """A model from pixels to (pooled features, logits before the softmax)."""
    keras = import_keras()
    features = model.get_layer(FEATURES_LAYER).output
    head = model.get_layer(HEAD_LAYER)
    kernel, bias = head.get_weights()
    logits = keras.layers.Dense(kernel.shape[1], name="logits", dtype="float32")
    out = logits(features)
    logits.set_weights([kernel, bias])
    return keras.Model(model.inputs, [features, out], name="features_and_logits")


def out_of_class_logit(model: Any) -> Optional[Any]:
    """A model from pixels to the logit of the ``unknown`` probability (above 0: past the
    threshold); None for a model without the out-of-class output."""
    if LOGIT_LAYER not in {layer.name for layer in model.layers}:
        return None
    keras = import_keras()
    return keras.Model(model.inputs, model.get_layer(LOGIT_LAYER).output, name="unknown_logit")


def with_confidence(
    model: Any, temperature: float, out_of_class: Optional[OutOfClass] = None
) -> Any:
    """``model`` with calibrated scores, and with ``out_of_class`` the ``unknown`` class as
    its last output. The calibrated dense layer keeps the name ``probabilities``, so
    what reads the head by name (QAT's rebuild) finds the calibrated weights."""
    keras = import_keras()
    ops = keras.ops
    features = model.get_layer(FEATURES_LAYER).output
    kernel, bias = model.get_layer(HEAD_LAYER).get_weights()
    classes = kernel.shape[1]
    calibrated = keras.layers.Dense(classes, activation="softmax", name=HEAD_LAYER, dtype="float32")
    probabilities = calibrated(features)
    calibrated.set_weights([kernel / temperature, bias / temperature])
    if out_of_class is None:
        return keras.Model(model.inputs, probabilities, name=model.name)

    scales = out_of_class.scales.astype(np.float32)
    standardized = keras.layers.Rescaling(scales, name="standardize_features")(features)
    centres = (out_of_class.means * scales).astype(np.float32)  # (classes, features)
    difference = ops.subtract(ops.expand_dims(standardized, 1), centres)
    # MUL rather than SQUARE: TFLite's SQUARE has no INT8 kernel.
    per_class = ops.mean(ops.multiply(difference, difference), axis=-1)
    nearest = ops.min(per_class, axis=-1, keepdims=True)
    softness, threshold = out_of_class.softness, out_of_class.threshold
    logit = keras.layers.Rescaling(1.0 / softness, offset=-threshold / softness, name=LOGIT_LAYER)(
        nearest
    )
    unknown = keras.layers.Activation("sigmoid", name="unknown_probability")(logit)
    known = ops.multiply(probabilities, ops.subtract(1.0, unknown))
    scores = keras.layers.Concatenate(name="scores", dtype="float32")([known, unknown])
    return keras.Model(model.inputs, scores, name=f"{model.name}_with_unknown")
