"""Shared fixtures. TensorFlow is slow to start, so the tiny trained run and its
INT8 export are built once per session and shared (read-only) by the tests.

The tiny model follows the README's *Traps we measured*: MobileNetV2 alpha 0.35 at 96 px from scratch
(``weights=none``), BatchNorm momentum 0.9, trained end to end on generated
images; it reaches ~0.95+ validation accuracy on five classes (chance 0.2).
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A trained tiny run directory with ``model_int8.tflite`` exported."""
    from toolchain.core.options import TrainOptions
    from toolchain.export.command import export
    from toolchain.train.command import train

    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    train(TrainOptions(out=str(run_dir), **TINY), log=lambda message: None)
    export(run_dir, _fixture_export(), log=lambda message: None)
    return run_dir


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run, for tests that change or add files in it."""
    import shutil

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


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    """Exit ``code``, one line on stderr naming the problem, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("edgetl: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
