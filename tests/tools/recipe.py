"""The README recipe as the development tools train it, and edgetl run as a user runs it.

Why one module: ``make quality``, ``make accelerators``, ``make web-check`` and
``make pi-check`` each train the README's recipe on the ``../shared`` photos and
report figures "for the README recipe". Each used to spell the recipe, the
weights file, the ``--shared/--retrain`` options and the subprocess call itself, so a
change to the recipe in one tool would have left the others measuring another
model under the same name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, List, Optional, Tuple

import typer

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SHARED = REPO.parent / "shared"
WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
RECIPE_FLAGS: Tuple[str, ...] = ("--alpha", "0.35", "--image-size", "128")
RECIPE = f"edgetl train {' '.join(RECIPE_FLAGS)} --weights <shared 0.35 weights>"

Shared = Annotated[
    Path,
    typer.Option(envvar="EDGETL_SHARED", help="Shared folder with data/flowers128 and weights/."),
]
Retrain = Annotated[bool, typer.Option(help="Train again even when a trained run exists.")]


def shared_inputs(shared: Path) -> Tuple[Path, Path]:
    """The photos and the ImageNet weights the recipe trains on."""
    return shared / "data" / "flowers128", shared / "weights" / WEIGHTS_FILE


def have_shared(shared: Path) -> bool:
    photos, weights = shared_inputs(shared)
    return photos.is_dir() and weights.is_file()


def edgetl(*args: str, log_file: Optional[Path] = None) -> subprocess.CompletedProcess:
    """``edgetl ARGS`` in a fresh process, as a user runs it; with ``log_file`` the
    command, its exit code and the end of its stderr are appended there."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "toolchain.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    if log_file is not None:
        with log_file.open("a") as handle:
            handle.write(f"$ edgetl {' '.join(args)}\n-> exit {result.returncode}\n")
            handle.write(result.stderr[-20000:] + "\n")
    return result


def error_line(result: subprocess.CompletedProcess) -> Optional[str]:
    """edgetl's one-line error, if it printed one."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgetl: error")]
    return lines[-1] if lines else None


def train_args(data: Path, weights: Path, out: Path) -> List[str]:
    """``edgetl train`` with the README recipe on ``data`` into ``out`` (replacing it)."""
    return ["train", "--data", str(data), "--weights", str(weights), *RECIPE_FLAGS] + [
        "--out",
        str(out),
        "--force",
    ]


def train_recipe(
    data: Path, weights: Path, out: Path, log_file: Optional[Path] = None
) -> subprocess.CompletedProcess:
    return edgetl(*train_args(data, weights, out), log_file=log_file)
