"""Options of each step as frozen dataclasses: defaults live here, in one place.

They are written whole into the run directory (``config.json``) and read
back by later steps, so export and validate never re-guess what training
decided (image size, labels, normalisation, split seed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional

from edge.errors import BadInput

QUANT_MODES = ("int8", "float16", "dynamic", "float32")
IO_TYPES = ("uint8", "int8", "float32")
STRATEGIES = ("auto", "mirrored", "multiworker")
CLASS_WEIGHT_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class TrainOptions:
    data: str = "tf_flowers"
    out: str = "build/runs/latest"
    image_size: int = 224
    alpha: float = 1.0
    weights: str = "imagenet"  # "imagenet", "none" or a path to a no-top .h5 file
    epochs: int = 10  # head phase, frozen base
    fine_tune_epochs: int = 15  # a cap: early stopping restores the best epoch
    fine_tune_at: str = "auto"  # base layer index, a name prefix ("block_13"), or auto
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4  # a tenth: large steps would wreck the pretrained filters
    dropout: float = 0.2
    seed: int = 42
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    synthetic_per_class: int = 100  # images per class for --data synthetic
    # flip/rotate/zoom/contrast/brightness while fine-tuning (and in the head phase if asked)
    augment: bool = True
    # off: the frozen base runs once and the head trains on cached features
    head_augment: bool = False
    # off (or head_augment on): every head epoch runs the base again
    cache_features: bool = True
    label_smoothing: float = 0.1
    class_weights: str = "auto"  # auto (on when classes differ by more than 2x), on, off
    patience: int = 5  # early stopping on val loss, best weights restored; 0 turns it off
    strategy: str = "auto"
    mixed_precision: bool = False
    resume: bool = False
    force: bool = False  # replace a run already in --out (and what was derived from it)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> TrainOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportOptions:
    quant: str = "int8"
    calibration_samples: int = 200
    io: str = "uint8"  # INT8 model input/output type; uint8 takes decoder bytes as they are
    validate: bool = True  # run `edgetl validate` on what was written
    max_drop: Optional[float] = None  # gate, percentage points of top-1 (as validate)
    min_agreement: Optional[float] = None
    auto_fallback: bool = False  # keep the worst INT8 layers in float until max_drop holds
    fallback_max_layers: int = 32
    force: bool = False  # replace existing model files

    @classmethod
    def for_int8(cls, calibration_samples: int = 200, io: str = "uint8") -> ExportOptions:
        return cls("int8", calibration_samples, io)

    @classmethod
    def for_float16(cls) -> ExportOptions:
        return cls("float16", 0, "float32")

    @classmethod
    def for_dynamic(cls) -> ExportOptions:
        return cls("dynamic", 0, "float32")

    @classmethod
    def for_float32(cls) -> ExportOptions:
        return cls("float32", 0, "float32")


@dataclass(frozen=True)
class ValidateOptions:
    max_drop: Optional[float] = None  # percentage points of top-1
    data: Optional[str] = None
    runtime: Optional[str] = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_gate_options(max_drop: Optional[float], min_agreement: Optional[float]) -> None:
    """The gates' ranges (validate and export share them): a NaN or negative budget would
    pass or fail every model whatever its figures, and agreement is a fraction."""
    if max_drop is not None and not (
        _is_number(max_drop) and math.isfinite(max_drop) and max_drop >= 0
    ):
        raise BadInput(
            f"--max-drop {max_drop}: give the top-1 percentage points a model may lose, "
            "a finite number >= 0 (e.g. --max-drop 1)"
        )
    if min_agreement is not None and not (_is_number(min_agreement) and 0 <= min_agreement <= 1):
        raise BadInput(
            f"--min-agreement {min_agreement}: give a fraction from 0 to 1 "
            "(e.g. --min-agreement 0.95)"
        )
