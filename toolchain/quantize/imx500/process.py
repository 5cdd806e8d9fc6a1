"""Sony's IMX500 toolchain in a Python of its own: finding it, and running its worker.

MCT (Sony's Model Compression Toolkit) and the converter ``imxconv-tf`` pin
TensorFlow 2.15 / Keras 2 and run Java 17, so they live in ``.venv-imx500``
(``make setup-imx500``) and edgetl reaches them through ``worker.py``, one
process per step. Shared by ``export --target imx500`` (quantize, convert) and
``validate`` (the exported network's answers on the held-out images).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections import deque
from pathlib import Path

from edge.errors import INTERNAL, BadInput, EdgetlError, GateFailed, MissingEnvironment
from toolchain.core.progress import Log
from toolchain.core.venvs import own_python

IMX500_VENV = ".venv-imx500"
INSTALL = "make setup-imx500 (a venv with imx500-converter[tf] and model-compression-toolkit)"
JAVA_INSTALL = "sudo apt install openjdk-17-jre-headless"
WORKER = Path(__file__).with_name("worker.py")
EXIT_SETUP, EXIT_REFUSED, EXIT_ENVIRONMENT = 3, 5, 6  # the worker's codes (worker.py)
EXIT_UNREADABLE = 8  # the predict step could not load the exported model


class WorkerFailed(EdgetlError):
    """The IMX500 worker failed in a way that is edgetl's bug (exit 4)."""

    exit_code = INTERNAL


def imx500_python() -> str:
    """The interpreter that runs the worker: ``EDGETL_IMX500_PYTHON``, else
    ``.venv-imx500`` in the folder the user works in; exit 3 with the install line."""
    return own_python(
        "EDGETL_IMX500_PYTHON",
        IMX500_VENV,
        "--target imx500 needs its own Python with Sony's converter (TensorFlow 2.15)",
        INSTALL,
    )


def java_major(text: str) -> int:
    """The major version in ``java -version``'s output (``"17.0.15"`` -> 17, ``"1.8"`` -> 8)."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not found:
        return 0
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def require_java() -> None:
    """The converter's backend runs ``java`` (17 or newer): one line when it cannot."""
    java = shutil.which("java")
    if java is None:
        raise MissingEnvironment(
            f"--target imx500: the IMX500 converter runs Java 17, and `java` is not on the "
            f"PATH: {JAVA_INSTALL}"
        )
    try:
        shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
        major = java_major(shown.stderr + shown.stdout)
    except (OSError, subprocess.TimeoutExpired):
        major = 0
    if major < 17:
        raise MissingEnvironment(
            f"--target imx500: the IMX500 converter runs Java 17 or newer, and {java} is "
            f"{'version ' + str(major) if major else 'not runnable'}: {JAVA_INSTALL}"
        )


def run_worker(python: str, step: str, work: Path, log: Log, who: str = "--target imx500") -> None:
    """One step of the worker in its venv; its ``imx500:`` lines are the progress shown.
    ``who`` starts each error line (the command or option the user gave).

    The worker runs in a process group of its own, killed whole when the step ends
    or this process is interrupted: the converter's Java is the worker's child, and
    a kill of the worker alone would leave it running.
    """
    tail: deque = deque(maxlen=40)
    process = subprocess.Popen(  # -I: a user's PYTHONPATH must not reach TensorFlow 2.15
        [python, "-I", str(WORKER), step, str(work)],
        stdin=subprocess.PIPE,  # the worker's lifeline: it exits when this closes
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        start_new_session=True,
    )
    assert process.stderr is not None
    try:
        for line in process.stderr:
            line = line.rstrip("\n")
            tail.append(line)
            if line.startswith("imx500: "):
                log(line)
        code = process.wait()
    finally:  # Ctrl-C, an error here, or a step that left a child behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.poll() is None:
            process.wait()
    if code == 0:
        return
    errors = [line[len("imx500-error: ") :] for line in tail if line.startswith("imx500-error: ")]
    reason = errors[-1] if errors else (tail[-1] if tail else f"exit {code}")
    if code == EXIT_SETUP:
        raise MissingEnvironment(f"{who}: {python}: {reason}: {INSTALL}")
    if code == EXIT_REFUSED:
        raise GateFailed(f"{who}: the converter refused the network: {reason}")
    if code == EXIT_UNREADABLE:
        raise BadInput(f"{who}: {reason}; export it again with --target imx500 --force")
    if code == EXIT_ENVIRONMENT or code < 0:  # out of memory, or a signal from outside
        raise MissingEnvironment(
            f"{who}: the IMX500 worker stopped (exit {code}, out of memory or killed from "
            f"outside): {reason}; close other programs and run it again"
        )
    raise WorkerFailed(
        f"{who}: the IMX500 worker failed ({reason}); this is a bug in edgetl: "
        "please report it with the output of `edgetl --debug …`"
    )
