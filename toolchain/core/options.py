"""Options of each step as frozen dataclasses: defaults live here, in one place.

They are written whole into the run directory (``config.json``) and read
back by later steps, so export and validate never re-guess what training
decided (image size, labels, normalisation, split seed).

Each field also carries its command-line help, range and choices
(``option``), which ``toolchain.cli_options`` turns into the ``edgetl``
options: the CLI declares nothing twice, so its defaults cannot drift from
these.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Dict, Optional, Sequence, Tuple

from edge.gate import DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT
from edge.image import RESIZE_FILTERS
from edge.runtime import RUNTIMES

QUANT_MODES = ("int8", "float16", "dynamic", "float32")
IO_TYPES = ("uint8", "int8", "float32")
# cpu: float where the budget needs it; the rest: all INT8, batch 1 (toolchain/accelerators/)
VALIDATE_RUNTIMES = (*RUNTIMES, "mediapipe")  # MediaPipe Tasks: a phone app's whole path
TARGETS = ("cpu", "accelerator", "edgetpu", "ethos-u", "imx500")
ACCELERATOR_TARGETS = ("accelerator", "edgetpu", "ethos-u")  # all-INT8 TFLite files
# The default budget is declared in edge/gate.py (the device's `edgetl parity` needs it).
STRATEGIES = ("auto", "mirrored", "multiworker")
CLASS_WEIGHT_MODES = ("auto", "on", "off")


REQUIRED: Any = MISSING  # an option the command line must give (no default)


def option(
    default: Any,
    help: str,
    *,
    min: Optional[float] = None,
    max: Optional[float] = None,
    choices: Optional[Sequence[str]] = None,
    path: bool = False,
    flag: Optional[str] = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with what ``edgetl --help`` says about it.

    ``min``/``max``: the range the CLI accepts; ``choices``: the values it lists;
    ``path``: a file-system path on the command line (kept a ``str`` here, as it is
    written to JSON); ``flag``: the option's name when it is not the field's
    (``--model`` for ``models``); ``cli=False``: a field no command line sets.
    ``REQUIRED`` as the default makes a field without one, which the CLI demands.
    """
    metadata = {
        "help": help,
        "min": min,
        "max": max,
        "choices": tuple(choices) if choices is not None else None,
        "path": path,
        "flag": flag,
        "cli": cli,
    }
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainOptions:
    data: str = option("tf_flowers", "synthetic | tf_flowers | tfds:NAME | PATH to class folders")
    out: str = option(
        "build/runs/latest",
        "Run directory to write (model, labels, splits, history).",
        path=True,
    )
    image_size: int = option(
        224,
        "Square input size in pixels. 224 is MobileNetV2's native size; 96-160 trade accuracy for speed.",
        min=32,
        max=1024,
    )
    alpha: float = option(
        1.0,
        "Width multiplier. ImageNet weights exist for 0.35, 0.5, 0.75, 1.0, 1.3, 1.4.",
        min=0.1,
        max=2.0,
    )
    weights: str = option(
        "imagenet",
        "imagenet | none | FILE.h5 (a local no-top weights file for offline machines).",
    )
    epochs: int = option(10, "Head-phase epochs on the frozen base.", min=0, max=10000)
    fine_tune_epochs: int = option(
        25,
        "Fine-tuning epochs after the head phase (0 = head only); the last of them are averaged (--average-epochs).",
        min=0,
        max=10000,
    )
    fine_tune_at: str = option(
        "auto",
        "First base layer to fine-tune: an index, a name prefix like block_13, or auto (pretrained: layer 100, or block_5 for alpha <= 0.5 whose thin features need more adapting; 0 from scratch).",
    )
    batch_size: int = option(32, "Images per step.", min=1, max=4096)
    learning_rate: float = option(1e-3, "Head-phase Adam learning rate.", min=1e-8, max=10.0)
    # a tenth: large steps would wreck the pretrained filters
    fine_tune_learning_rate: float = option(
        1e-4,
        "Fine-tuning learning rate; ~1/10 of the head rate so pretrained filters are adjusted, not overwritten.",
        min=1e-8,
        max=10.0,
    )
    dropout: float = option(
        0.2,
        "Dropout before the classifier layer; 0.2 as in Keras' MobileNetV2 top.",
        min=0.0,
        max=0.95,
    )
    seed: int = option(
        42,
        "Seed for splits, shuffling, initialisation and synthetic data.",
        min=0,
        max=2**31 - 1,
    )
    val_fraction: float = option(
        0.1,
        "Share of each class held out for validation (the temperature, the out-of-class threshold and the answer floor; early stopping with --patience).",
        min=0.0,
        max=0.9,
    )
    test_fraction: float = option(
        0.1,
        "Share of each class held out for the final test and `edgetl validate`.",
        min=0.01,
        max=0.9,
    )
    synthetic_per_class: int = option(
        100, "Images per class generated for --data synthetic.", min=3, max=100000
    )
    augment: bool = option(
        True,
        "Random flip, ±8% rotation, 65-100% crops, 10% shifts, ±30% contrast and brightness while fine-tuning (a base trained from scratch: flip, ±5% rotation, 10% zoom, ±20%; training only, never inside the exported model).",
    )
    head_augment: bool = option(
        False,
        "Augment in the head phase too. Off (default): the frozen base runs once and the head trains on cached features, many times faster.",
    )
    cache_features: bool = option(
        True,
        "Head phase without augmentation: run the frozen base once and train the head on cached features (same result, much faster). --no-cache-features runs the base every epoch.",
    )
    label_smoothing: float = option(
        0.1,
        "Label smoothing; 0.1 (Szegedy et al.) curbs over-confident outputs and, measured here, keeps the out-of-class distance sharp: on three four-flower folds of the earlier recipe the distance flagged 97.5-99.8% of dog photos at 0.1 and 93.5-98.9% at 0 (README, Training recipe).",
        min=0.0,
        max=0.95,
    )
    out_of_class: bool = option(
        True,
        "Give the model an 'unknown' output, computed inside it: the distance of a photo's pooled features to the trained classes, its threshold set to keep 99% of the validation photos. --no-out-of-class leaves the classes alone (what --qat needs).",
    )
    class_weights: str = option(
        "auto",
        "auto (inverse-frequency weights when a class has over 2x the images of another), on, off.",
        choices=CLASS_WEIGHT_MODES,
    )
    patience: int = option(
        0,
        "Early stopping: epochs without a lower val loss before a phase stops; best weights are restored (and --average-epochs is off). 0 = off, the default: the kept epoch flatters the validation split that calibration and the answer floor are fitted on.",
        min=0,
        max=10000,
    )
    average_epochs: int = option(
        10,
        "Average the weights of the last N fine-tuning epochs (at most the last half of them) instead of keeping the last epoch's: better calibrated and closer to INT8 than one epoch's weights (README, Training recipe). 0 = off; off with --patience and for a base trained from scratch (--weights none), whose BatchNorm trains.",
        min=0,
        max=10000,
    )
    strategy: str = option(
        "auto",
        "auto (all local GPUs when several), mirrored, or multiworker (set TF_CONFIG on each machine).",
        choices=STRATEGIES,
    )
    mixed_precision: bool = option(
        False,
        "float16 compute on GPU (about 2x on tensor cores); the saved model is float32.",
    )
    resume: bool = option(
        False,
        "Continue an interrupted run in --out with its original options; at most the interrupted epoch is redone.",
    )
    force: bool = option(
        False,
        "Replace the run already in --out (its exports and parity reports go too, as they would no longer match).",
    )

    @property
    def pretrained(self) -> bool:
        """Whether the base starts from trained weights (not ``--weights none``): its
        BatchNorm stays frozen, and the recipe's averaging and augmentation apply."""
        return self.weights.lower() != "none"

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> TrainOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportOptions:
    # the for_* constructors below fill quant, calibration_samples and io by position
    quant: str = option("int8", "The TFLite flavour to write.", choices=(*QUANT_MODES, "all"))
    calibration_samples: int = option(
        200,
        "INT8 calibration images from the training split, stratified by class. 100-500 is the usual range: fewer under-sample activation ranges, more cost time for little gain.",
        min=1,
        max=100000,
    )
    io: str = option(
        "uint8",
        "INT8 model input/output type: uint8 (camera bytes go straight in), int8, float32.",
        choices=IO_TYPES,
    )
    target: str = option(
        "cpu",
        "cpu: INT8 where it keeps the accuracy budget, float for the few layers that cannot (CPU kernels run both); accelerator: every op INT8, batch fixed at 1, no float op at the input, or exit 1, with the Edge TPU rules and Arm Vela's verdict in the report; edgetpu / ethos-u: the same, and that accelerator's check must pass (ethos-u needs vela: pip install ethos-u-vela); imx500: the Raspberry Pi AI Camera's network (RUN/imx500/packerOut.zip) by Sony's MCT and converter, held to the same budget (make setup-imx500, Java 17).",
        choices=TARGETS,
    )
    validate: bool = option(
        True,
        "Validate what was written against Keras on the test split (as `edgetl validate`) and hold it to the accuracy budget.",
    )
    max_drop: Optional[float] = option(
        None,
        f"Budget: most top-1 points a shipped model may lose against Keras, beyond chance on the test split (default {DEFAULT_MAX_DROP:g}).",
        min=0.0,
        max=100.0,
    )
    min_agreement: Optional[float] = option(
        None,
        f"Budget: least top-1 agreement with Keras a shipped model must keep (default {DEFAULT_MIN_AGREEMENT:g}).",
        min=0.0,
        max=1.0,
    )
    auto_fallback: bool = option(
        True,
        "With --target cpu, when full INT8 misses the budget: keep the layers whose INT8 costs the most accuracy in float, one at a time, until it holds (model_int8_mixed.tflite; the full-INT8 file becomes model_int8.tflite.rejected). --no-auto-fallback only gates.",
    )
    qat: bool = option(
        False,
        "Quantization-aware fine-tuning: a few epochs with INT8 rounding simulated, distilled from the float model, for a better pure-INT8 model. Runs in its own Python (.venv-qat or EDGETL_QAT_PYTHON); ships only when it beats post-training quantization on the decision images.",
    )
    qat_epochs: int = option(2, "Epochs of --qat.", min=1, max=100)
    min_precision: float = option(
        0.9,
        "The precision the model's answers promise: the card's answer floor is the lowest top score whose lower bound (--precision-confidence) on the held-out photos' precision (val and test splits) still reaches it; below it a device answers unknown.",
        min=0.0,
        max=1.0,
    )
    precision_confidence: float = option(
        0.9,
        "Confidence of the one-sided Clopper-Pearson bound behind --min-precision. 0.9 (default): on three four-flower folds the held-out photos' precision met the promise (less 0.01) on all three at coverage 0.63-0.72, against one of three at 0.8; in re-drawn 396-photo decision sets, in 93% of trials against 88% at 0.8 (README); 0.5 makes it about even odds.",
        min=0.5,
        max=0.999,
    )
    fallback_max_layers: int = option(
        48, "Most INT8 ops the auto fallback keeps in float before it gives up.", cli=False
    )
    force: bool = option(False, "Replace model files that already exist.")

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
    models: Tuple[str, ...] = option(
        (),
        "A .tflite to check (repeatable); default: every model_*.tflite in the run.",
        path=True,
        flag="--model",
    )
    data: Optional[str] = option(
        None,
        "A labeled folder of class folders to evaluate on instead of the run's test split.",
    )
    max_drop: Optional[float] = option(
        None,
        "Fail (exit 1) when a model's top-1 is more than this many points below Keras and the images show it worse beyond chance (sign test, p < 0.05).",
        min=0.0,
        max=100.0,
    )
    min_agreement: Optional[float] = option(
        None,
        "Fail (exit 1) when top-1 agreement with Keras is below this fraction.",
        min=0.0,
        max=1.0,
    )
    runtime: Optional[str] = option(
        None,
        "Measure with this runtime; one this process lacks (tflite_runtime beside TensorFlow) runs in a device environment (.venv-edge/.venv-legacy or EDGETL_RUNTIME_PYTHONS); mediapipe: MediaPipe Tasks' ImageClassifier on the files, as a phone app calls it.",
        choices=VALIDATE_RUNTIMES,
    )
    diagnose: bool = option(
        False, "Rank INT8 layers by quantization error (also done when a gate fails)."
    )
    unknown_data: Optional[str] = option(
        None,
        "A folder of photos of none of the classes: report the share each model answers unknown, the AUROC of its out-of-class score against the held-out photos, and the risk-coverage curve (risk_coverage.png).",
        path=True,
    )
    device_resize: Optional[str] = option(
        None,
        "Resize the device path with this filter instead of the model's own: what if the device resized differently?",
        choices=tuple(RESIZE_FILTERS),
    )
