"""The ``edgetl`` command line: parse options, call one step, report.

No logic lives here that a test would want to call: each command receives
its options dataclass whole (``toolchain.core.options``, turned into Typer options by
``toolchain.cli_options``) and calls ``toolchain.train.command`` / ``export`` /
``parity`` or ``edge``. Heavy modules are imported inside the commands, so
``edgetl --help`` and ``edgetl classify`` start without TensorFlow. Every
exception becomes one line on stderr and an exit code of the contract in
``edge.errors.EXIT_CODES`` (1 gate, 2 bad input, 3 environment, 4 a bug).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from typer.core import TyperGroup

from edge.errors import BAD_INPUT, ENVIRONMENT, INTERNAL, INTERRUPTED, BadInput
from edge.gate import drop_text
from toolchain import runlock
from toolchain.cli_options import check_json_output, takes_options
from toolchain.core.device_options import (
    BenchOptions,
    ClassifyOptions,
    ParityOptions,
    ServeOptions,
)
from toolchain.core.failures import describe_failure
from toolchain.core.options import ExportOptions, TrainOptions, ValidateOptions

try:  # Typer 0.2x carries its own copy of Click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older Typer on top of Click
    from click import exceptions as click_exceptions


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
    """Every exception becomes one line and the contract's exit code (``toolchain.core.failures``);
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


@app.command()
@reports_errors
@takes_options(TrainOptions)
def train(options: TrainOptions) -> None:
    """Train a MobileNetV2 transfer model: head on a frozen base, then fine-tuning."""
    from toolchain.train import cluster_watch
    from toolchain.train.command import train as run_training
    from toolchain.train.devices import worker_role

    role = worker_role(options.strategy)
    if role is not None and not cluster_watch.watched():  # bounded wait for the cluster
        with runlock.held_for_training(Path(options.out), chief=role.chief):
            code = cluster_watch.run_watched(sys.argv[1:], os.environ["TF_CONFIG"], role.index)
        raise typer.Exit(code)
    cluster_watch.die_with_parent()
    chief = role is None or (role.chief and not cluster_watch.watched())  # the watcher holds it
    with runlock.held_for_training(Path(options.out), chief=chief):
        summary = run_training(options).summary()
    say(summary)


RunDirArgument = Annotated[Path, typer.Argument(help="Run directory written by edgetl train.")]


@app.command()
@reports_errors
@takes_options(ExportOptions)
def export(run_dir: RunDirArgument, options: ExportOptions) -> None:
    """Convert the trained model to TFLite: RUN_DIR/model_<quant>.tflite."""
    from toolchain.export.command import export as run_export

    if options.target == "imx500":
        from toolchain.export.imx500.convert import export_imx500

        with runlock.held(run_dir):
            packed = export_imx500(run_dir, options)
        say(f"exported: {packed} ({packed.stat().st_size} bytes)")
        return
    with runlock.held(run_dir):
        results = run_export(run_dir, options)
    for result in results:
        say(f"exported: {result.path} ({result.size_bytes} bytes)")


@app.command()
@reports_errors
@takes_options(ValidateOptions)
def validate(run_dir: RunDirArgument, options: ValidateOptions) -> None:
    """Compare Keras and TFLite on the same held-out images; write parity.json."""
    from toolchain.validate.command import validate as run_validate

    with runlock.held(run_dir):
        report = run_validate(run_dir, options)
    keras = report["keras"]
    say(
        f"keras: top-1 {keras['top1']:.4f}  top-5 {keras['top5']:.4f}  on {report['n_images']} images"
    )
    for m in report["models"]:
        drop = drop_text(m["top1_drop_pts"], m["worse_than_keras"])
        say(
            f"{Path(m['path']).name}: top-1 {m['top1']:.4f}  {drop}  agreement {m['agreement']:.4f}"
        )


@app.command()
@reports_errors
@takes_options(ClassifyOptions)
def classify(
    model: Annotated[
        Path,
        typer.Argument(
            help="A .tflite classifier (labels embedded or labels.txt beside it), or the AI "
            "Camera's network.rpk (labels.txt beside it or one folder up)."
        ),
    ],
    options: ClassifyOptions,
) -> None:
    """Classify images, a video or a camera on the device (no TensorFlow needed)."""
    from edge.display import Window
    from edge.session import Reporter, closing_lines, open_model, open_source_for, run_session

    output = Path(options.output) if options.output else None
    if output is not None and output.resolve() == model.resolve():
        raise BadInput(f"--output {output} is the model itself; give a .csv or .jsonl file name")
    classifier = open_model(model, options.runtime, options.threads)
    # No display: one line and exit 3 before the source is opened or a frame is read.
    window = Window() if options.show else None
    opened = open_source_for(classifier, options.source)
    print(classifier.runtime.describe(), file=sys.stderr)
    print(opened.describe(), file=sys.stderr)
    reporter = Reporter.for_source(opened, quiet=options.quiet, window=window)
    summary = run_session(
        classifier, opened, reporter, options.top_k, options.threshold, output, options.data_labels
    )
    closing = closing_lines(summary, output, options.data_labels)
    for line in closing.notes:
        print(line, file=sys.stderr)
    for line in closing.results:
        say(line)


@app.command()
@reports_errors
@takes_options(ParityOptions)
def parity(
    model: Annotated[Path, typer.Argument(help="The .tflite to check on this device.")],
    options: ParityOptions,
    json_out: Annotated[
        Optional[Path],
        typer.Option("--json", help="Write the figures and each image's probabilities here."),
    ] = None,
) -> None:
    """On the device: this runtime against Keras on the held-out images of
    parity_reference.json (written by `edgetl validate`); exit 1 past the budget."""
    from edge.errors import GateFailed
    from edge.reference import check_on_device, summary_lines

    if json_out is not None:
        check_json_output(json_out, [model, Path(options.reference)])
    report = check_on_device(
        model, options.reference, options.source, options.max_drop, options.min_agreement,
        options.runtime, options.threads, json_out, options.allow_missing,
    )  # fmt: skip
    for line in summary_lines(report):
        say(line)
    if not report["gate"]["passed"]:
        raise GateFailed("device parity gate failed: " + "; ".join(report["gate"]["failures"]))


@app.command()
@reports_errors
@takes_options(BenchOptions)
def bench(
    model: Annotated[Path, typer.Argument(help="A .tflite classifier.")],
    options: BenchOptions,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
) -> None:
    """Invoke latency (p50/p90/p99) and, with --source, folder throughput against a
    label_image.py-style sequential loop on the same files."""
    from edge import atomic
    from edge.bench import folder_vs_sequential, invoke_latency, summary_lines
    from edge.classifier import Classifier
    from edge.sources import resolve_source

    if json_out is not None:
        check_json_output(json_out, [model])
    classifier = Classifier(model, runtime=options.runtime, threads=options.threads)
    print(classifier.runtime.describe(), file=sys.stderr)
    figures = {
        "model": str(model),
        "runtime": classifier.runtime.name,
        "runtime_version": classifier.runtime.version,
        "threads": classifier.runtime.threads,
        "invoke": invoke_latency(classifier, options.runs),
    }
    say(summary_lines(figures)[0])
    if options.source:
        figures.update(folder_vs_sequential(classifier, resolve_source(options.source)))
        for line in summary_lines(figures)[1:]:
            say(line)
    if json_out:
        atomic.write_json(json_out, figures)


@app.command()
@reports_errors
@takes_options(ServeOptions)
def serve(
    model: Annotated[Path, typer.Argument(help="The .tflite to try on a phone.")],
    options: ServeOptions,
) -> None:
    """A page that runs the model in a phone's browser (MediaPipe Tasks for the web):
    prints the address and a QR code; Ctrl-C stops."""
    from edge.web import server

    httpd, url, lines = server.start(
        model, options.host, options.port, options.web_runtime, options.cdn,
        options.cert, options.key,
    )  # fmt: skip
    for line in lines:
        print(line, file=sys.stderr)
    say(url)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:  # how a server is stopped: not a failure
        print("edgetl serve: stopped", file=sys.stderr)
    finally:
        httpd.server_close()


@app.command()
@reports_errors
def info(model: Annotated[Path, typer.Argument(help="A .tflite file.")]) -> None:
    """What a .tflite says about itself: labels, card, tensors, ops, size, runtimes."""
    from toolchain.info import info_lines

    for line in info_lines(model):
        say(line)


def main() -> None:
    # File names that are not UTF-8 print with backslash escapes instead of crashing a
    # session half-way (Python's stdout is strict under a UTF-8 locale).
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    app()


if __name__ == "__main__":
    main()
