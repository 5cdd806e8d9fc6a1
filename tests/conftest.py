"""Shared fixtures. TensorFlow is slow to start, so the tiny trained run and its
INT8 export are built once per session and shared (read-only) by the tests.

The tiny model follows the README's *Traps we measured*: MobileNetV2 alpha 0.35 at 96 px from scratch
(``weights=none``), BatchNorm momentum 0.9, trained end to end on generated
images; it reaches ~0.95+ validation accuracy on five classes (chance 0.2).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

TINY = dict(
    data="synthetic",
    image_size=96,
    alpha=0.35,
    weights="none",
    epochs=1,
    fine_tune_epochs=10,
    fine_tune_learning_rate=3e-3,
    synthetic_per_class=80,
    seed=7,
    patience=0,  # every epoch runs, so tests can count them
)


def _fixture_export():
    """Full INT8, gated but never repaired, so the tests that read ``model_int8.tflite``
    find it whatever the machine: the tiny run's test split is 40 images, so one image
    that INT8 flips moves top-1 by 2.5 points, past the default 1-point budget, and the
    default export would then ship a mix (it did after a fresh install of the same
    pinned packages). Five points and 0.9 agreement allow two flipped images."""
    from toolchain.core.options import ExportOptions

    return ExportOptions("int8", 100, auto_fallback=False, max_drop=5.0, min_agreement=0.9)


def build_tiny_run(run_dir: str) -> None:
    """Train and export the tiny run (what ``tiny_run`` returns)."""
    from toolchain.core.options import TrainOptions
    from toolchain.export.command import export
    from toolchain.train.command import train

    # The tiny run is the classes-only model (`--no-out-of-class`), which most tests
    # read; the micro run trains with the default, the `unknown` output included.
    train(TrainOptions(out=run_dir, **TINY, out_of_class=False), log=print)
    export(Path(run_dir), _fixture_export(), log=print)


def build_micro_run(run_dir: str) -> None:
    """The micro run (what ``micro_run`` returns): the tiny run's images, splits and
    labels (same generator and seed; only the head phase is trained, which is quick)
    with a four-layer CNN in MobileNetV2's place, exported like ``tiny_run``."""
    from toolchain.core.options import TrainOptions
    from toolchain.export.command import export
    from toolchain.train.command import train

    head_only = {**TINY, "fine_tune_epochs": 0}  # the default: with the unknown output
    train(TrainOptions(out=run_dir, **head_only), log=print)
    _micro_model(Path(run_dir)).save(Path(run_dir) / "model.keras")
    export(Path(run_dir), _fixture_export(), log=print)


def build_in_background(name: str, run_dir: str) -> None:
    """Build one shared run in the background process ``pytest_collection_finish``
    starts. It ends itself when pytest is gone (its stdin, a pipe from pytest,
    closes: the QAT worker's lifeline), and marks a finished run with ``DONE`` (its
    exit code alone could be TensorFlow's teardown after the work was done)."""
    import threading

    def lifeline() -> None:
        sys.stdin.buffer.read()  # returns only when pytest's end of the pipe closes
        os._exit(1)

    threading.Thread(target=lifeline, daemon=True).start()
    {"tiny": build_tiny_run, "micro": build_micro_run}[name](run_dir)
    (Path(run_dir).parent / DONE).write_text("ok")
    sys.stdout.flush()
    os._exit(0)


DONE = "run.done"
BUILDS: dict = {}  # each background build (tiny, micro): process, folder, log


def _needs(item, name: str) -> bool:
    return f"{name}_run" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    """Tests that need a shared run go after those that need none, the micro run's
    first and the tiny MobileNetV2 run's last: ``pytest_collection_finish`` starts
    building both in the background, and the tests before them overlap that time
    (much of a test is one core's work, and so is the ~35 s of graph tracing before
    the tiny run's first fine-tuning step)."""
    items[:] = sorted(items, key=lambda item: (_needs(item, "tiny"), _needs(item, "micro")))


def pytest_collection_finish(session) -> None:
    """Start each needed shared run's build (a real training and export: ~35 s for the
    micro run, ~2 min for the tiny one) once the selection is final (``-m``, ``-k``,
    ``--lf`` applied)."""
    if session.config.option.collectonly:
        return
    for name in ("micro", "tiny"):
        if not any(_needs(item, name) for item in session.items):
            continue
        folder = session.config._tmp_path_factory.mktemp(name)
        code = f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]\n"
        code += "from conftest import build_in_background\n"
        code += f"build_in_background({name!r}, {str(folder / 'run')!r})"
        with (folder / "build.log").open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-u", "-c", code],
                cwd=REPO,
                stdin=subprocess.PIPE,  # its lifeline: held open until this session ends
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its runtime probes go with it (killpg)
            )
        BUILDS[name] = dict(folder=folder, log=folder / "build.log", process=process)


def pytest_sessionfinish(session, exitstatus) -> None:
    for build in BUILDS.values():
        process = build["process"]
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdin.close()


def _built(name: str) -> Path:
    """The run the background build made (waiting for it), or the test fails with its log."""
    build = BUILDS.get(name)
    if build is None:  # only when collection itself was skipped (--collect-only)
        pytest.skip(f"the {name} run is built only for a session that runs a test needing it")
    process = build["process"]
    try:
        process.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if not (build["folder"] / DONE).is_file():
        log = build["log"].read_text()
        tail = log[log.find("Traceback") :] if "Traceback" in log else log[-3000:]
        pytest.fail(f"building the {name} run failed (exit {process.returncode}):\n{tail[-3000:]}")
    return build["folder"] / "run"


@pytest.fixture(scope="session")
def tiny_run() -> Path:
    """A trained tiny run directory with ``model_int8.tflite`` exported (built in the
    background since collection; this waits for it)."""
    return _built("tiny")


def _micro_model(run_dir: Path):
    """A four-layer CNN with the tiny model's input contract (raw 0-255 pixels, rescaled
    inside), fitted on the run's own training split. Generated classes differ in hue
    and shape, so it reaches high accuracy in seconds."""
    import json

    import numpy as np

    from edge.image import load_many
    from toolchain.core.quiet import keras

    keras = keras()
    config = json.loads((run_dir / "config.json").read_text())
    splits = json.loads((run_dir / "splits.json").read_text())
    size, n = int(config["image_size"]), len(config["labels"])
    root = run_dir / splits["root_relative"]
    pixels, decoded, _ = load_many([str(root / rel) for rel, _ in splits["train"]], size)
    labels = np.array([splits["train"][i][1] for i in decoded])
    keras.utils.set_random_seed(TINY["seed"])
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            layers.Rescaling(1 / 127.5, offset=-1),
            layers.Conv2D(8, 3, strides=2, activation="relu"),
            layers.Conv2D(16, 3, strides=2, activation="relu"),
            layers.Conv2D(32, 3, strides=2, activation="relu"),
            layers.GlobalAveragePooling2D(name="pool"),
            layers.Dense(n, activation="softmax", name="probabilities"),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(pixels.astype("float32"), labels, epochs=15, batch_size=32, verbose=0)
    return _with_confidence(model, run_dir, config, splits, root, size)


def _with_confidence(model, run_dir: Path, config, splits, root: Path, size: int):
    """The CNN calibrated and given its out-of-class output, as training does."""
    from types import SimpleNamespace

    import numpy as np

    from edge.image import load_many
    from toolchain.train.confidence_fit import fit_confidence

    parts = {}
    for name in ("train", "val", "test"):
        pixels, decoded, _ = load_many([str(root / rel) for rel, _ in splits[name]], size)
        labels = np.array([splits[name][i][1] for i in decoded], dtype=np.int64)
        parts[name] = SimpleNamespace(pixels=pixels, class_indices=labels)
    data = SimpleNamespace(labels=list(config["labels"]), splits=parts)
    shipped, _ = fit_confidence(model, data, config.get("unknown") is not None, lambda m: None)
    return shipped


def without_out_of_class(run: Path) -> Path:
    """``run`` (a copy) as ``train --no-out-of-class`` leaves it: the calibrated classes
    alone, no ``unknown`` output (what ``--qat`` needs)."""
    import json

    from toolchain.confidence.shipped import classes_only
    from toolchain.core.quiet import keras

    model = keras().models.load_model(run / "model.keras", compile=False)
    classes_only(model).save(run / "model.keras")
    config = json.loads((run / "config.json").read_text())
    config["unknown"] = None
    (run / "config.json").write_text(json.dumps(config))
    return run


def make_int8_hostile(run: Path) -> None:
    """The outlier-channel failure of INT8 on the micro CNN: one output channel of its
    second convolution scaled by 1000 (ReLU commutes with a positive scale) and the
    third convolution's weights from that channel divided by 1000. Float computes the
    same function; INT8's one range per activation tensor then rounds the other
    channels to a few levels."""
    from toolchain.core.quiet import keras

    model = keras().models.load_model(run / "model.keras", compile=False)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    kernel, bias = convs[1].get_weights()
    kernel[..., 0] *= 1000.0
    bias[0] *= 1000.0
    convs[1].set_weights([kernel, bias])
    kernel, bias = convs[2].get_weights()
    kernel[:, :, 0, :] /= 1000.0
    convs[2].set_weights([kernel, bias])
    model.save(run / "model.keras")


def with_hostile_int8(run: Path) -> Path:
    """``run`` (a micro run copy) with the hostile model and its own full-INT8 file,
    exported without validation: a model that misses any budget, for certain."""
    from toolchain.core.options import ExportOptions
    from toolchain.export.command import export

    make_int8_hostile(run)
    export(run, ExportOptions("int8", 100, force=True, validate=False), log=lambda m: None)
    return run


@pytest.fixture(scope="session")
def micro_run() -> Path:
    """The micro run (``build_micro_run``): for tests of what the commands do with
    files, reports, gates and exit codes, not of MobileNetV2. TFLite converts its CNN
    in about a second a mode, where MobileNetV2 takes about 17 s on the 2-core CI
    machine. Built in the background since collection; this waits for it."""
    return _built("micro")


@pytest.fixture
def micro_copy(micro_run, tmp_path) -> Path:
    """A private copy of the micro run, for tests that change it."""

    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    return run


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run, for tests that change or add files in it."""

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def run_cli(*args: str, env: dict | None = None, python: str | None = None, timeout: int = 600):
    """Run ``edgetl`` in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    command = [python or sys.executable, "-m", "toolchain.cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=full_env, cwd=REPO, timeout=timeout
    )


def edgetl_here(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``edgetl`` in this process, through the same entry point as the command line
    (its error handling included). For contracts where a fresh process adds only
    TensorFlow's start-up (~6 s here): kills, other venvs and clusters keep
    ``run_cli``. The result has ``subprocess.run``'s fields."""
    from typer.testing import CliRunner

    from toolchain.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def assert_one_line_error(result, code: int, *fragments: str) -> str:
    """Exit ``code``, one line on stderr naming the problem, no traceback; returns the line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("edgetl: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
