"""The images an export decision is taken on, and the figures a decision reads.

Why a bigger decision set: the test split is a few hundred images, so one image
moves the top-1 by ~0.4 points, and a model with a true agreement of 0.93 reads
0.95 on it often enough to ship. Decisions (ship full INT8? stop the repair
here?) are therefore taken on the validation split *plus* training images
(about 1,200 images on flowers128), aiming two points above the budget.
INT8-vs-Keras agreement needs no labels, but INT8 flips fewer decisions on
images the model was fitted to (``make quality`` measured full-INT8 agreement on
training images -0.1 to +3.5 points above held-out photos, mean +1.4, across
three flowers128 folds), so the validation images alone must meet the budget too: the precise-but-biased figure and the
unbiased-but-noisy one both hold, or the repair goes on.
The test split stays untouched by every decision and gives the figures
reported (and gated) afterwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

from edge import metrics
from edge.classifier import Classifier, probabilities_of
from edge.errors import BadInput
from edge.image import load_many
from toolchain.core.budget import Budget
from toolchain.core.pixel_file import predict_in_batches
from toolchain.core.progress import Log
from toolchain.core.rundir import RunDir

DECISION_TRAIN_IMAGES = 1000  # training images added to the validation split
# The validation split's share, evenly across it: a large dataset's val split would
# otherwise be held in memory whole (30,000 images make 3,000 val images).
DECISION_VAL_IMAGES = 4000
# Agreement on the decision images should clear the budget by this much: training images
# overstate it (see the module docstring; on flowers128 folds the accepted mix agreed
# 1.1-1.2 points less on held-out photos than on its decision images). The repair stops
# at the first mix with this headroom; if the layer cap comes first, it settles for the
# latest mix within the budget itself. The Wilson lower bound was tried first and was
# out of reach: on one fold the repair plateaued at 0.957-0.962 agreement on 1,171
# decision images (bound 0.944-0.949) through 32 float ops.
HEADROOM = 0.02


@dataclass(frozen=True)
class Estimate:
    """INT8-vs-Keras figures on the decision set, with the bound decisions use."""

    images: int
    drop_pts: float
    agreement: float
    agreement_lower: float  # Wilson 95% lower bound, all decision images
    unseen_images: int  # the validation split's share: images the model was not fitted to
    unseen_drop_pts: float
    unseen_agreement: float

    def meets(self, budget: Budget, headroom: float = HEADROOM) -> bool:
        """The precise-but-biased figures (all images, agreement with ``headroom``) and
        the unbiased-but-noisy ones (validation images only) must both hold."""
        precise = (
            self.drop_pts <= budget.max_drop and self.agreement >= budget.min_agreement + headroom
        )
        unseen = (
            self.unseen_drop_pts <= budget.max_drop
            and self.unseen_agreement >= budget.min_agreement
        )
        return precise and (unseen or self.unseen_images == 0)

    def level(self, budget: Budget) -> int:
        """2: within budget with the headroom (stop here); 1: within budget only (the
        repair's answer if nothing reaches 2); 0: outside it."""
        return 2 if self.meets(budget) else int(self.meets(budget, headroom=0.0))

    def json(self) -> Dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        return (
            f"drop {self.drop_pts:+.2f} pts, agreement {self.agreement:.3f} "
            f"(95% lower bound {self.agreement_lower:.3f}) on {self.images} decision images; "
            f"drop {self.unseen_drop_pts:+.2f} pts, agreement {self.unseen_agreement:.3f} on "
            f"their {self.unseen_images} validation images"
        )


def _figures(probs: np.ndarray, keras_probs: np.ndarray, labels: np.ndarray):
    agreeing = int((probs.argmax(1) == keras_probs.argmax(1)).sum())
    drop = metrics.drop_points(
        metrics.topk_accuracy(keras_probs, labels, 1), metrics.topk_accuracy(probs, labels, 1)
    )
    return agreeing, round(drop, 3), round(agreeing / max(1, len(labels)), 4)


def estimate(
    probs: np.ndarray, keras_probs: np.ndarray, labels: np.ndarray, unseen: int = 0
) -> Estimate:
    """Pure: the figures of ``probs`` (a candidate INT8 model's) against Keras's; the
    first ``unseen`` rows are validation images."""
    agreeing, drop, agreement = _figures(probs, keras_probs, labels)
    lower, _ = metrics.wilson_interval(agreeing, len(labels))
    _, unseen_drop, unseen_agreement = (
        _figures(probs[:unseen], keras_probs[:unseen], labels[:unseen]) if unseen else (0, 0.0, 1.0)
    )
    return Estimate(
        images=int(len(labels)),
        drop_pts=drop,
        agreement=agreement,
        agreement_lower=round(float(lower), 4),
        unseen_images=int(unseen),
        unseen_drop_pts=unseen_drop,
        unseen_agreement=unseen_agreement,
    )


@dataclass(frozen=True)
class DecisionSet:
    pixels: np.ndarray
    labels: np.ndarray
    sources: Dict[str, int]  # split name -> images read from it, validation first
    train_paths: Tuple[Any, ...] = ()  # the training images it holds (QAT trains on others)

    @property
    def unseen(self) -> int:
        """How many leading rows are validation images."""
        return self.sources.get("val", 0)

    def describe(self) -> str:
        return " + ".join(f"{n} {name}" for name, n in self.sources.items())


def evenly(paths: List[Any], labels: List[int], limit: int):
    """Evenly spaced entries of a (seeded, shuffled) split, so every class is represented."""
    if len(paths) <= limit:
        return paths, labels
    picks = np.unique(np.linspace(0, len(paths) - 1, limit).round().astype(int))
    return [paths[i] for i in picks], [labels[i] for i in picks]


def decision_set(
    run: RunDir, config: Dict[str, Any], log: Log, half_of_train: bool = False
) -> DecisionSet:
    """The validation split (up to ``DECISION_VAL_IMAGES``) plus up to
    ``DECISION_TRAIN_IMAGES`` training images (at most
    half of them with ``half_of_train``: QAT then fine-tunes on the other half, so no
    decision image is one QAT fitted), decoded as the model sees them. The test split
    is never part of it."""
    n_classes, size = len(config["labels"]), int(config["image_size"])
    parts, sources, train_paths = [], {}, ()
    for split in ("val", "train"):
        paths, labels = run.split_files(split, n_classes)
        if split == "val":
            paths, labels = evenly(paths, labels, DECISION_VAL_IMAGES)
        if split == "train":
            limit = min(DECISION_TRAIN_IMAGES, len(paths) // 2 if half_of_train else len(paths))
            paths, labels = evenly(paths, labels, limit)
            train_paths = tuple(paths)
        if not paths:
            continue
        pixels, kept, _ = load_many(paths, size)
        if kept:
            parts.append((pixels, np.array([labels[i] for i in kept])))
            sources[split] = len(kept)
    if not parts:
        raise BadInput(
            f"{run.path}: none of the validation or training images could be read to judge "
            "the INT8 model; restore the dataset folder named in splits.json"
        )
    log(f"budget: decisions on {' + '.join(f'{n} {s}' for s, n in sources.items())} images")
    return DecisionSet(
        np.concatenate([p for p, _ in parts]),
        np.concatenate([y for _, y in parts]),
        sources,
        train_paths,
    )


@dataclass(frozen=True)
class Judge:
    """The decision images and Keras's probabilities on them: computed once per export,
    then every candidate INT8 model (PTQ, QAT, each repair step) is measured the same way."""

    decision: DecisionSet
    keras_probs: np.ndarray

    @classmethod
    def of(
        cls, run: RunDir, config: Dict[str, Any], model: Any, log: Log, half_of_train: bool = False
    ) -> Judge:
        decision = decision_set(run, config, log, half_of_train)
        probs = predict_in_batches(model, decision.pixels)
        return cls(decision, metrics.require_finite(probs, f"{run.model} (Keras)"))

    def figures(self, probs: np.ndarray) -> Estimate:
        return estimate(probs, self.keras_probs, self.decision.labels, self.decision.unseen)

    def figures_of(self, model_path: Any) -> Estimate:
        return self.figures(probabilities_of(Classifier(model_path), self.decision.pixels))
