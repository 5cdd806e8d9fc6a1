"""The ``edgetl`` command line: parse options, call one step, report.

No logic lives here that a test would want to call: each command builds an
options dataclass and calls ``toolchain.train`` / ``export`` / ``parity`` or
``edge``. Heavy modules are imported inside the commands, so ``edgetl --help``
and ``edgetl classify`` start without TensorFlow. Errors from the
exception becomes one line on stderr and an exit code of the contract in
``edge.errors.EXIT_CODES`` (1 gate, 2 bad input, 3 environment, 4 a bug).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Callable, List, Literal, Optional

import typer
from typer.core import TyperGroup

from edge.errors import BAD_INPUT, ENVIRONMENT, INTERNAL, INTERRUPTED, BadInput, EdgetlError
from edge.image import RESIZE_FILTERS
from edge.runtime import RUNTIMES
from toolchain.failures import describe_failure
from toolchain.options import (
    CLASS_WEIGHT_MODES,
    IO_TYPES,
    QUANT_MODES,
    STRATEGIES,
)

try:  # Typer 0.2x carries its own copy of Click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older Typer on top of Click
    from click import exceptions as click_exceptions

Runtime = Literal[RUNTIMES]
ResizeFilter = Literal[tuple(RESIZE_FILTERS)]


class OneLineErrors(TyperGroup):
    """Usage errors as one line (``edgetl: error: …``) instead of Click's boxed panel,
    with exit 2, so every way edgetl refuses reads the same in a terminal and in CI."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(
                args=args,
                prog_name=prog_name or "edgetl",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except click_exceptions.NoArgsIsHelpError as error:
            print(error.ctx.get_help() if error.ctx else "edgetl --help", file=sys.stderr)
            code = BAD_INPUT
        except click_exceptions.UsageError as error:
            where = error.ctx.command_path if error.ctx else "edgetl"
            message = " ".join(error.format_message().split())
            print(f"edgetl: error: {message} (see `{where} --help`)", file=sys.stderr)
            code = BAD_INPUT
        except click_exceptions.ClickException as error:
            print(f"edgetl: error: {' '.join(error.format_message().split())}", file=sys.stderr)
            code = error.exit_code
        except typer.Abort:
            code = INTERRUPTED
        except SystemExit as error:
            # Typer exits 1 itself when stdout is a closed pipe (`edgetl … --help | head`);
            # 1 is the gate's code, so this becomes the environment's.
            if error.code != 1:
                raise
            _silence_stdout()
            print("edgetl: error: the program reading the output closed it early", file=sys.stderr)
            code = ENVIRONMENT
        code = int(code or 0)
        if not standalone_mode:
            return code
        sys.exit(code)


app = typer.Typer(
    name="edgetl",
    cls=OneLineErrors,
    help="Train a MobileNetV2 classifier, export it to quantized TFLite, prove parity, "
    "and run it on a device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
DEBUG = {"on": False}


def _print_version(value: bool) -> None:
    if value:
        from toolchain import __version__

        print(f"edgetl {__version__}")
        raise typer.Exit(0)


@app.callback()
def global_options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="EDGETL_DEBUG",
            help="Print the traceback of an internal error (exit 4) to report it.",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Train a MobileNetV2 classifier, export it to quantized TFLite, prove parity,
    and run it on a device."""
    DEBUG["on"] = debug


def fail(message: str, code: int) -> None:
    print(f"edgetl: error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush
    does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def reports_errors(command: Callable) -> Callable:
    """Every exception becomes one line and the contract's exit code (``toolchain.failures``);
    a traceback only with ``--debug``."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            fail(
                "interrupted; files already written are complete, nothing half-written was kept",
                INTERRUPTED,
            )
        except SystemExit as error:  # a library that exits on its own: not our contract
            if DEBUG["on"]:
                traceback.print_exc(file=sys.stderr)
            fail(
                f"internal error (a library exited with {error.code!r}); this is a bug in "
                "edgetl: please report it with the output of `edgetl --debug …`",
                INTERNAL,
            )
        except Exception as error:
            if isinstance(error, BrokenPipeError):
                _silence_stdout()
            code, message = describe_failure(error)
            if DEBUG["on"]:
                traceback.print_exc(file=sys.stderr)
            fail(message, code)

    return wrapper


def say(message: str) -> None:
    print(message, flush=True)


def check_json_output(path: Path, inputs: List[Path]) -> None:
    """A report path must be a new or replaceable .json file, never one of the inputs."""
    if path.suffix.lower() != ".json":
        raise BadInput(f"--json {path}: give a file name ending in .json")
    if path.is_dir():
        raise BadInput(f"--json {path}: is a folder; give a file name such as {path}/bench.json")
    if not path.parent.is_dir():
        raise BadInput(f"--json {path}: folder {path.parent} does not exist")
    for given in inputs:
        if path.exists() and given.exists() and path.resolve() == given.resolve():
            raise BadInput(f"--json {path} is an input of this command; choose another name")


@app.command()
@reports_errors
def train(
    data: Annotated[
        str, typer.Option(help="synthetic | tf_flowers | tfds:NAME | PATH to class folders")
    ] = "tf_flowers",
    out: Annotated[
        Path, typer.Option(help="Run directory to write (model, labels, splits, history).")
    ] = Path("build/runs/latest"),
    image_size: Annotated[
        int,
        typer.Option(
            min=32,
            max=1024,
            help="Square input size in pixels. 224 is MobileNetV2's native size; 96-160 trade accuracy for speed.",
        ),
    ] = 224,
    alpha: Annotated[
        float,
        typer.Option(
            min=0.1,
            max=2.0,
            help="Width multiplier. ImageNet weights exist for 0.35, 0.5, 0.75, 1.0, 1.3, 1.4.",
        ),
    ] = 1.0,
    weights: Annotated[
        str,
        typer.Option(
            help="imagenet | none | FILE.h5 (a local no-top weights file for offline machines)."
        ),
    ] = "imagenet",
    epochs: Annotated[
        int, typer.Option(min=0, max=10000, help="Head-phase epochs on the frozen base.")
    ] = 10,
    fine_tune_epochs: Annotated[
        int,
        typer.Option(
            min=0,
            max=10000,
            help="Most fine-tuning epochs after the head phase (0 = head only); early stopping on val loss usually ends it sooner.",
        ),
    ] = 15,
    fine_tune_at: Annotated[
        str,
        typer.Option(
            help="First base layer to fine-tune: an index, a name prefix like block_13, or auto (pretrained: layer 100, or block_5 for alpha <= 0.5 whose thin features need more adapting; 0 from scratch)."
        ),
    ] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="Images per step.")] = 32,
    learning_rate: Annotated[
        float, typer.Option(min=1e-8, max=10.0, help="Head-phase Adam learning rate.")
    ] = 1e-3,
    fine_tune_learning_rate: Annotated[
        float,
        typer.Option(
            min=1e-8,
            max=10.0,
            help="Fine-tuning learning rate; ~1/10 of the head rate so pretrained filters are adjusted, not overwritten.",
        ),
    ] = 1e-4,
    seed: Annotated[
        int,
        typer.Option(
            min=0,
            max=2**31 - 1,
            help="Seed for splits, shuffling, initialisation and synthetic data.",
        ),
    ] = 42,
    synthetic_per_class: Annotated[
        int,
        typer.Option(min=3, max=100000, help="Images per class generated for --data synthetic."),
    ] = 100,
    augment: Annotated[
        bool,
        typer.Option(
            help="Random flip, ±5% rotation, 10% zoom, contrast and brightness while fine-tuning (training only; never inside the exported model)."
        ),
    ] = True,
    head_augment: Annotated[
        bool,
        typer.Option(
            help="Augment in the head phase too. Off (default): the frozen base runs once and the head trains on cached features, many times faster."
        ),
    ] = False,
    cache_features: Annotated[
        bool,
        typer.Option(
            help="Head phase without augmentation: run the frozen base once and train the head on cached features (same result, much faster). --no-cache-features runs the base every epoch."
        ),
    ] = True,
    dropout: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.95,
            help="Dropout before the classifier layer; 0.2 as in Keras' MobileNetV2 top.",
        ),
    ] = 0.2,
    label_smoothing: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.95,
            help="Label smoothing; 0.1 (Szegedy et al.) curbs over-confident outputs, which also quantize better.",
        ),
    ] = 0.1,
    class_weights: Annotated[
        Literal[CLASS_WEIGHT_MODES],
        typer.Option(
            help="auto (inverse-frequency weights when a class has over 2x the images of another), on, off."
        ),
    ] = "auto",
    patience: Annotated[
        int,
        typer.Option(
            min=0,
            max=10000,
            help="Early stopping: epochs without a lower val loss before a phase stops; best weights are restored. 0 = off.",
        ),
    ] = 5,
    strategy: Annotated[
        Literal[STRATEGIES],
        typer.Option(
            help="auto (all local GPUs when several), mirrored, or multiworker (set TF_CONFIG on each machine)."
        ),
    ] = "auto",
    mixed_precision: Annotated[
        bool,
        typer.Option(
            help="float16 compute on GPU (about 2x on tensor cores); the saved model is float32."
        ),
    ] = False,
    val_fraction: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9,
            help="Share of each class held out for validation (early stopping, checkpoints).",
        ),
    ] = 0.1,
    test_fraction: Annotated[
        float,
        typer.Option(
            min=0.01,
            max=0.9,
            help="Share of each class held out for the final test and `edgetl validate`.",
        ),
    ] = 0.1,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue an interrupted run in --out with its original options; at most the interrupted epoch is redone."
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="Replace the run already in --out (its exports and parity reports go too, as they would no longer match)."
        ),
    ] = False,
) -> None:
    """Train a MobileNetV2 transfer model: head on a frozen base, then fine-tuning."""
    from toolchain.options import TrainOptions
    from toolchain.train import train as run_training

    options = TrainOptions(
        data=data,
        out=str(out),
        image_size=image_size,
        alpha=alpha,
        weights=weights,
        epochs=epochs,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_at=fine_tune_at,
        batch_size=batch_size,
        learning_rate=learning_rate,
        fine_tune_learning_rate=fine_tune_learning_rate,
        seed=seed,
        synthetic_per_class=synthetic_per_class,
        augment=augment,
        head_augment=head_augment,
        cache_features=cache_features,
        dropout=dropout,
        label_smoothing=label_smoothing,
        class_weights=class_weights,
        patience=patience,
        strategy=strategy,
        mixed_precision=mixed_precision,
        resume=resume,
        force=force,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )
    result = run_training(options)
    done = "already trained, nothing to do" if result.already_finished else "trained"
    say(
        f"{done}: {result.run_dir}  val top-1 {result.val_top1:.4f}  test top-1 {result.test_top1:.4f}"
    )


@app.command()
@reports_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by edgetl train.")],
    quant: Annotated[
        Literal[(*QUANT_MODES, "all")], typer.Option(help="The TFLite flavour to write.")
    ] = "int8",
    calibration_samples: Annotated[
        int,
        typer.Option(
            min=1,
            max=100000,
            help="INT8 calibration images from the training split, stratified by class. 100-500 is the usual range: fewer under-sample activation ranges, more cost time for little gain.",
        ),
    ] = 200,
    io: Annotated[
        Literal[IO_TYPES],
        typer.Option(
            help="INT8 model input/output type: uint8 (camera bytes go straight in), int8, float32."
        ),
    ] = "uint8",
    validate: Annotated[
        bool,
        typer.Option(
            help="Validate what was written against Keras on the test split (as `edgetl validate`)."
        ),
    ] = True,
    max_drop: Annotated[
        Optional[float],
        typer.Option(
            min=0.0,
            max=100.0,
            help="Gate: exit 1 when a model loses more top-1 than this many points.",
        ),
    ] = None,
    min_agreement: Annotated[
        Optional[float],
        typer.Option(
            min=0.0,
            max=1.0,
            help="Gate: exit 1 when top-1 agreement with Keras is below this fraction.",
        ),
    ] = None,
    auto_fallback: Annotated[
        bool,
        typer.Option(
            help="With --max-drop: rank INT8 layers by measured sensitivity (each one alone in float, on the validation split) and keep the most sensitive in float, one at a time, until the budget holds; writes model_int8_mixed.tflite and renames the full-INT8 file that failed to model_int8.tflite.rejected."
        ),
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace model files that already exist.")] = False,
) -> None:
    """Convert the trained model to TFLite: RUN_DIR/model_<quant>.tflite."""
    from toolchain.export import export as run_export
    from toolchain.options import ExportOptions

    options = ExportOptions(
        quant=quant,
        calibration_samples=calibration_samples,
        io=io,
        validate=validate,
        max_drop=max_drop,
        min_agreement=min_agreement,
        auto_fallback=auto_fallback,
        force=force,
    )
    results = run_export(run_dir, options)
    for result in results:
        say(f"exported: {result.path} ({result.size_bytes} bytes)")


@app.command()
@reports_errors
def validate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by edgetl train.")],
    model: Annotated[
        Optional[List[Path]],
        typer.Option(
            help="A .tflite to check (repeatable); default: every model_*.tflite in the run."
        ),
    ] = None,
    data: Annotated[
        Optional[str],
        typer.Option(
            help="A labeled folder of class folders to evaluate on instead of the run's test split."
        ),
    ] = None,
    max_drop: Annotated[
        Optional[float],
        typer.Option(
            min=0.0,
            max=100.0,
            help="Fail (exit 1) when a model's top-1 is more than this many percentage points below Keras.",
        ),
    ] = None,
    runtime: Annotated[Optional[Runtime], typer.Option(help="Force a TFLite runtime.")] = None,
    min_agreement: Annotated[
        Optional[float],
        typer.Option(
            min=0.0,
            max=1.0,
            help="Fail (exit 1) when top-1 agreement with Keras is below this fraction.",
        ),
    ] = None,
    diagnose: Annotated[
        bool,
        typer.Option(help="Rank INT8 layers by quantization error (also done when a gate fails)."),
    ] = False,
    device_resize: Annotated[
        Optional[ResizeFilter],
        typer.Option(
            help="Resize the device path with this filter instead of the model's own: what if the device resized differently?"
        ),
    ] = None,
) -> None:
    """Compare Keras and TFLite on the same held-out images; write parity.json."""
    from toolchain.parity import validate as run_validate

    report = run_validate(
        run_dir,
        [str(m) for m in model or []],
        data,
        max_drop,
        runtime,
        min_agreement=min_agreement,
        diagnose=diagnose,
        device_resize=device_resize,
    )
    keras = report["keras"]
    say(
        f"keras: top-1 {keras['top1']:.4f}  top-5 {keras['top5']:.4f}  on {report['n_images']} images"
    )
    for m in report["models"]:
        say(
            f"{Path(m['path']).name}: top-1 {m['top1']:.4f}  drop {m['top1_drop_pts']:+.2f} pts  "
            f"agreement {m['agreement']:.4f}  device path {m['device_path']['top1']:.4f}"
        )


@app.command()
@reports_errors
def classify(
    model: Annotated[
        Path, typer.Argument(help="A .tflite classifier (labels embedded or labels.txt beside it).")
    ],
    source: Annotated[
        str,
        typer.Option(
            help="An image file, a folder of images (recursive), a video file, or camera / camera:N."
        ),
    ],
    top_k: Annotated[int, typer.Option(min=1, max=1000, help="Classes to report per image.")] = 3,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Hide classes scored below this.")
    ] = 0.0,
    threads: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            max=256,
            help="Interpreter threads (default: all cores, 1 where more are known to hurt).",
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(help="Write predictions to FILE.csv or FILE.jsonl, flushed per image."),
    ] = None,
    runtime: Annotated[Optional[Runtime], typer.Option(help="Force a TFLite runtime.")] = None,
    data_labels: Annotated[
        bool,
        typer.Option(
            help="The folder is labeled (SOURCE/<class>/…): report top-1 accuracy against the folder names."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option(help="Do not print one line per image.")] = False,
    show: Annotated[
        bool,
        typer.Option(
            help="Show each frame in a window with its top classes and FPS drawn on it (needs a display and OpenCV with GUI support; q or Esc quits)."
        ),
    ] = False,
) -> None:
    """Classify images, a video or a camera on the device (no TensorFlow needed)."""
    from edge.classifier import Classifier
    from edge.classify import classify_source
    from edge.output import PredictionWriter
    from edge.sources import open_source

    if output is not None and output.resolve() == model.resolve():
        raise BadInput(f"--output {output} is the model itself; give a .csv or .jsonl file name")
    classifier = Classifier(model, runtime=runtime, threads=threads)
    window = None
    if show:
        from edge.display import Window

        window = Window()  # no display: one line and exit 3 before any frame is read
    opened = open_source(source)
    print(classifier.runtime.describe(), file=sys.stderr)
    print(opened.describe(), file=sys.stderr)
    live = opened.kind in ("camera", "video") and sys.stderr.isatty()
    started = time.perf_counter()
    counter = {"n": 0}

    def report(result) -> bool:
        if result.error:
            print(f"skipped: {result.error}", file=sys.stderr)
            return True
        counter["n"] += 1
        fps = counter["n"] / max(1e-9, time.perf_counter() - started)
        best = (
            ", ".join(f"{p.label} {p.score:.3f}" for p in result.predictions) or "(below threshold)"
        )
        if live:
            print(f"\r{fps:6.1f} FPS  {best}\033[K", end="", file=sys.stderr, flush=True)
        elif not quiet:
            say(f"{result.path}: {best}")
        if window is not None:
            from edge.display import annotate

            lines = [f"{p.label} {p.score:.2f}" for p in result.predictions] + [f"{fps:.1f} FPS"]
            return window.show(annotate(result.image, lines))
        return True

    # Rows stream into a temporary file beside --output, renamed over it only when the
    # session ends normally: a crash or a kill never leaves a half-written --output.
    writer = PredictionWriter(str(output), top_k) if output else None
    try:
        summary = classify_source(classifier, opened, top_k, threshold, writer, report, data_labels)
    except BaseException:
        if writer:
            writer.abort()
        raise
    finally:
        if window is not None:
            window.close()
    if writer:
        writer.close()
    if live:
        print(file=sys.stderr)
    stages = "  ".join(f"{k} {v:.2f} ms" for k, v in summary.stage_ms.items())
    print(
        f"classified {summary.classified} image(s), {len(summary.unreadable)} unreadable, "
        f"{summary.images_per_s:.1f} images/s ({stages})"
        + (
            f", {summary.skipped} older camera frame(s) skipped to stay live"
            if summary.skipped
            else ""
        )
        + (f"; wrote {output}" if output else ""),
        file=sys.stderr,
    )
    if data_labels:
        if summary.unknown_labels:
            print(
                f"note: folders not among the model's labels: {', '.join(summary.unknown_labels)}",
                file=sys.stderr,
            )
        if summary.accuracy is None:
            print("note: no image sat in a folder named like a label", file=sys.stderr)
        else:
            say(
                f"top-1 accuracy {summary.accuracy:.4f} ({summary.correct}/{summary.labeled} labeled images)"
            )


@app.command()
@reports_errors
def bench(
    model: Annotated[Path, typer.Argument(help="A .tflite classifier.")],
    runs: Annotated[
        int, typer.Option(min=1, max=1000000, help="Timed invokes after warm-up.")
    ] = 100,
    threads: Annotated[
        Optional[int], typer.Option(min=1, max=256, help="Interpreter threads.")
    ] = None,
    source: Annotated[
        Optional[str], typer.Option(help="A folder of images for end-to-end throughput.")
    ] = None,
    runtime: Annotated[Optional[Runtime], typer.Option(help="Force a TFLite runtime.")] = None,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
) -> None:
    """Invoke latency (p50/p90/p99) and, with --source, folder throughput against a
    label_image.py-style sequential loop on the same files."""
    from edge import atomic
    from edge.bench import folder_vs_sequential, invoke_latency
    from edge.classifier import Classifier
    from edge.sources import resolve_source

    if json_out is not None:
        check_json_output(json_out, [model])
    classifier = Classifier(model, runtime=runtime, threads=threads)
    print(classifier.runtime.describe(), file=sys.stderr)
    figures = {
        "model": str(model),
        "runtime": classifier.runtime.name,
        "runtime_version": classifier.runtime.version,
        "threads": classifier.runtime.threads,
        "invoke": invoke_latency(classifier, runs),
    }
    inv = figures["invoke"]
    say(
        f"invoke: p50 {inv['p50_ms']:.3f} ms  p90 {inv['p90_ms']:.3f} ms  p99 {inv['p99_ms']:.3f} ms  "
        f"{inv['images_per_s']:.1f} images/s"
    )
    if source:
        compared = folder_vs_sequential(classifier, resolve_source(source))
        folder, sequential = compared["folder"], compared["label_image_loop"]
        figures.update(compared)
        say(
            f"folder: {folder['images']} images  {folder['images_per_s']:.1f} images/s  "
            f"decode {folder['decode_ms_mean']:.3f} ms  resize {folder['resize_ms_mean']:.3f} ms  "
            f"invoke {folder['invoke_ms_mean']:.3f} ms  post {folder['post_ms_mean']:.3f} ms  "
            f"{100 * folder['share_outside_invoke']:.0f}% of wall time outside invoke"
        )
        if compared["folder_over_label_image_loop"]:
            say(
                f"label_image-style loop (one image at a time): "
                f"{sequential['images_per_s']:.1f} images/s; the pipeline is "
                f"{compared['folder_over_label_image_loop']:.2f}x that "
                f"(medians of {compared['rounds']} interleaved runs after a warm-up)"
            )
    if json_out:
        atomic.write_json(json_out, figures)


@app.command()
@reports_errors
def info(model: Annotated[Path, typer.Argument(help="A .tflite file.")]) -> None:
    """What a .tflite says about itself: labels, card, tensors, ops, size, runtimes."""
    from collections import Counter

    from edge.classifier import Classifier
    from edge.compat import probe_all

    classifier = Classifier(model, threads=1)
    card = classifier.card.metadata
    say(f"{model}: {model.stat().st_size} bytes")
    say(f"labels ({classifier.card.labels_source}): {', '.join(classifier.labels)}")
    for key in ("quant", "io", "image_size", "edgetl_version", "float_layers"):
        if key in card:
            say(f"{key}: {card[key]}")
    if card.get("input"):
        say(f"input contract: {json.dumps(card['input'])}")
    for kind, details in (
        ("input", classifier.interpreter.get_input_details()),
        ("output", classifier.interpreter.get_output_details()),
    ):
        for d in details:
            scale, zero_point = d["quantization"]
            say(
                f"{kind}: {d['dtype'].__name__} {[int(v) for v in d['shape']]} scale {scale:.6g} zero point {zero_point}"
            )
    try:
        from toolchain.modelinfo import inspect_tflite

        details = inspect_tflite(model)
        say(
            "ops: "
            + ", ".join(f"{n} v{o['version']} x{o['count']}" for n, o in details["ops"].items())
        )
        say(f"min runtime version (converter's estimate): {details['min_runtime_version']}")
        if details["size_vs_float32_weights"]:
            say(
                f"size vs float32 weights: {details['size_vs_float32_weights']:.2f}x "
                f"({details['float32_weight_bytes']} bytes as float32)"
            )
    except EdgetlError:  # no TensorFlow here: op counts from the interpreter instead
        ops = Counter(op["op_name"] for op in classifier.interpreter._get_ops_details())
        say("ops: " + ", ".join(f"{name} x{count}" for name, count in sorted(ops.items())))
    for result in probe_all(str(model)):
        status = "loads and runs" if result["ok"] else f"fails: {result['error']}"
        say(f"runtime {result['runtime']} {result.get('version', '')}: {status}")
    if card.get("train"):
        say("train: " + json.dumps(card["train"]))


def main() -> None:
    # File names that are not UTF-8 print with backslash escapes instead of crashing a
    # session half-way (Python's stdout is strict under a UTF-8 locale).
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    app()


if __name__ == "__main__":
    main()
