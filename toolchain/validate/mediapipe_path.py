"""``edgetl validate --runtime mediapipe``: the held-out images through MediaPipe Tasks.

A phone app built on MediaPipe Tasks hands ``ImageClassifier`` an image and gets
categories back; it never sees edgetl's decoder. So this path gives MediaPipe the
files themselves (``mp.Image.create_from_file``: MediaPipe's own decode, and its own
resize when a photo is not at the model's size) and reads every category's score.
Its figures are the phone's decisions against Keras, gated like any runtime's, and
``edgetl_runner_agreement`` says how often MediaPipe decides as edgetl's runner does
on the same file: the gap a phone adds, which no other figure shows.

Why they differ, measured (README, *MediaPipe on the phone path*): on photos already
at the model's size, MediaPipe's JPEG decode differs from Pillow's by up to 3 levels
per channel, and that alone moves near-tie decisions; given edgetl's decoded pixels,
MediaPipe decides exactly as the runner does.
"""

from __future__ import annotations

import time
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from edge import metrics
from edge.classifier import Classifier, probabilities_of
from edge.errors import BadInput, MissingEnvironment
from edge.metrics import disagreements
from toolchain.core.text import single_line
from toolchain.validate.evalset import EvalSet
from toolchain.validate.figures import compare, measured_elsewhere

NAME = "mediapipe"
DECODE = "MediaPipe's own decode and resize (Image.create_from_file)"


def _vision() -> Tuple[Any, Any, Any]:
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError as error:
        raise MissingEnvironment(
            f"--runtime mediapipe: MediaPipe is not importable here ({single_line(error)}); "
            "pip install mediapipe (the `train` extras include it)"
        ) from None
    return mp, BaseOptions, vision


def probabilities(
    model: Path, paths: List[str], n_outputs: int
) -> Tuple[np.ndarray, np.ndarray, List[List[str]]]:
    """Every output's score for each file MediaPipe reads; the rows it read; the skipped."""
    mp, base_options, vision = _vision()
    options = vision.ImageClassifierOptions(
        base_options=base_options(model_asset_path=str(model)), max_results=-1
    )
    try:
        classifier = vision.ImageClassifier.create_from_options(options)
    except (RuntimeError, ValueError) as error:
        raise BadInput(
            f"{single_line(model)}: MediaPipe's ImageClassifier refuses it "
            f"({single_line(error)}); export it again with mediapipe installed"
        ) from None
    rows, kept, skipped = [], [], []
    with classifier:
        for i, path in enumerate(paths):
            try:
                image = mp.Image.create_from_file(str(path))
            except (RuntimeError, ValueError) as error:
                skipped.append([str(path), f"MediaPipe cannot read it ({single_line(error)})"])
                continue
            scores = np.zeros(n_outputs, dtype=np.float64)
            for category in classifier.classify(image).classifications[0].categories:
                if 0 <= category.index < n_outputs:
                    scores[category.index] = category.score
            rows.append(scores)
            kept.append(i)
    return np.array(rows).reshape(-1, n_outputs), np.array(kept, dtype=np.int64), skipped


def model_entry(
    path: Path, keras_probs: np.ndarray, eval_set: EvalSet, names: List[str]
) -> Dict[str, Any]:
    """Validate's model entry with MediaPipe as the runtime: its figures are the device
    path's (a phone app has only that one), like a runtime measured elsewhere."""
    start = time.perf_counter()
    probs, kept, skipped = probabilities(path, eval_set.paths, len(names))
    if not len(kept):
        raise BadInput(f"{single_line(path)}: MediaPipe read none of the held-out images")
    probs = metrics.require_finite(probs, f"{single_line(path)} (MediaPipe)")
    keras, truth = keras_probs[kept], eval_set.labels[kept]
    paths = [eval_set.paths[i] for i in kept]
    figures = compare(keras, probs, truth, names)
    runner = Classifier(path)
    # edgetl's runner on the pixels validate already decoded (read a batch at a time)
    ours = probabilities_of(runner, eval_set.pixels)[kept]
    return {
        "path": str(path),
        "quant": str(runner.card.metadata.get("quant", path.stem.replace("model_", ""))),
        "runtime": f"{NAME} {metadata.version('mediapipe')}",
        "size_bytes": path.stat().st_size,
        **figures,
        "tensor_level": "measured through MediaPipe (a phone app's only path)",
        "device_path": measured_elsewhere(figures, DECODE, len(kept), skipped),
        "edgetl_runner_agreement": metrics.top1_agreement(ours, probs),
        "disagreements": disagreements(keras, probs, truth, paths, names),
        "seconds": round(time.perf_counter() - start, 3),
    }
