"""The QAT worker's process, supervised: no leftovers, no hang, no silent crash.

``toolchain.export.qat.finetune`` prepares the worker's inputs; this module starts
``worker.py`` in its own Python and watches it.

- Its inputs (weights, training pixels, the float model's probabilities,
  calibration pixels) and its output (the flatbuffer) are unlinked temporary
  files in the run folder, passed by file descriptor: a kill of either process,
  ``kill -9`` included, leaves no gigabytes behind. Its scratch folder for
  TensorFlow's temporary files (``RUN/.qat-work``) is removed by the worker when
  its parent dies, by this side when it ends, and by the next export when both
  were killed at once.
- Its stdin is a pipe nobody writes to: when this process dies the pipe closes
  and the worker exits (a pipe works on every OS, ``PR_SET_PDEATHSIG`` only on Linux).
- It reports progress on stderr (``qat:`` lines for the user, ``qat-alive``
  heartbeats every few seconds of training or conversion). No progress for
  ``EDGETL_QAT_STALL_SECONDS`` (default 300) and it is killed: exit 3.
- A worker that crashes never lets the export exit 0: killed by a signal from
  outside (the kernel's out-of-memory killer sends SIGKILL) or out of memory is
  the environment (exit 3); an exception, a fatal signal it raised itself, or
  exit 0 without a model is a bug (exit 4). Only the worker's own verdict that
  its rebuild does not match the Keras model (``EXIT_FAILED``) keeps PTQ and
  says why in the report.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Tuple

from edge.errors import INTERNAL, BadInput, EdgetlError, MissingEnvironment
from toolchain.core.progress import Log

QAT_VENV = ".venv-qat"
QAT_PACKAGES = "'edgetl[qat-cpu]' (or [qat] on a GPU workstation)"
WORKER = Path(__file__).with_name("worker.py")
STALL_ENV = "EDGETL_QAT_STALL_SECONDS"
# The worker sends a heartbeat every few seconds while it trains, calibrates or
# converts; its longest silent step (importing TensorFlow, the converter's MLIR
# passes on MobileNetV2 alpha 1.0 at 224 px) takes well under a minute on 2 cores.
DEFAULT_STALL_SECONDS = 300.0

# The worker's exit codes (worker.EXIT_*): it imports nothing of edgetl, so they
# are repeated here.
EXIT_SETUP = 3  # a package is missing from the QAT venv
EXIT_FAILED = 5  # the rebuilt model does not match the Keras one: keep PTQ
EXIT_ENVIRONMENT = 6  # out of memory or disk, said in its last line
# Signals another process sends (the OOM killer's SIGKILL, a shutdown's SIGTERM), and
# SIGILL (a TensorFlow wheel built for CPU instructions this machine lacks).
OUTSIDE_SIGNALS = {signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGILL}


class WorkerCrashed(EdgetlError):
    """The QAT worker failed in a way that is edgetl's bug (exit 4)."""

    exit_code = INTERNAL


def install_line() -> str:
    return (
        f"python3 -m venv {QAT_VENV} && {QAT_VENV}/bin/pip install {QAT_PACKAGES}, "
        "or set EDGETL_QAT_PYTHON"
    )


def stall_seconds() -> float:
    """``EDGETL_QAT_STALL_SECONDS``: how long the worker may go without progress."""
    given = os.environ.get(STALL_ENV)
    if given is None or not given.strip():
        return DEFAULT_STALL_SECONDS
    try:
        seconds = float(given)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise BadInput(
            f"{STALL_ENV}={given[:40]!r}: give the seconds the QAT worker may go without "
            f"progress, a number > 0 (default {DEFAULT_STALL_SECONDS:.0f})"
        )
    return seconds


def read_lines(stream: IO[str], lines: queue.Queue[Optional[str]]) -> None:
    """The worker's stderr, line by line, then ``None`` at its end (a thread)."""
    for line in stream:
        lines.put(line.rstrip())
    lines.put(None)


def run_worker(python: str, spec: Dict[str, Any], log: Log) -> Dict[str, Any]:
    """The worker in an isolated interpreter (``-I``: no user site, no script folder on
    the path), supervised (see the module docstring). Returns its report with
    ``exit_code`` (0 or ``EXIT_FAILED``); raises for anything else."""
    limit = stall_seconds()
    scratch = Path(spec["scratch"])
    shutil.rmtree(scratch, ignore_errors=True)  # what a worker killed with its parent left
    scratch.mkdir()
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["TMPDIR"] = str(scratch)
    try:
        try:
            process = subprocess.Popen(
                [python, "-I", str(WORKER), json.dumps(spec)],
                stdin=subprocess.PIPE,  # the lifeline: closes when this process dies
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
                errors="replace",
                env=env,
                pass_fds=tuple(spec["fds"].values()),
            )
        except OSError as error:
            raise MissingEnvironment(
                f"--qat: {python} does not start ({error.strerror or error}); {install_line()}"
            ) from None
        try:
            report, tail, stalled = supervise(process, limit, log)
            if not stalled:  # its stderr ended: it is exiting, or hangs having closed it
                try:
                    process.wait(timeout=limit)
                except subprocess.TimeoutExpired:
                    stalled = True
        finally:
            if process.poll() is None:
                process.kill()
            code = process.wait()
            assert process.stdin is not None
            process.stdin.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if stalled:
        raise MissingEnvironment(
            f"--qat: the QAT worker made no progress for {limit:.0f}s and was stopped; if "
            f"it is only slow (a large model on a slow CPU), raise the limit: "
            f"{STALL_ENV}=<seconds> (default {DEFAULT_STALL_SECONDS:.0f})"
        )
    sys.stderr.flush()
    report["exit_code"] = code
    if code in (0, EXIT_FAILED):
        if tail and code == EXIT_FAILED:
            report["said"] = tail[-1]
        return report
    if code == -signal.SIGABRT and "history" in report:
        # Its report comes after its model is written: an abort in TensorFlow's teardown
        # past that point lost nothing (the model is still checked and judged as usual).
        report["teardown"] = "the worker aborted after writing its model and report"
        return report
    raise crash_error(python, code, tail)


def supervise(
    process: subprocess.Popen, limit: float, log: Log
) -> Tuple[Dict[str, Any], List[str], bool]:
    """Pass the worker's ``qat:`` lines on as progress until its stderr ends: its report,
    its last other lines, and whether it went ``limit`` seconds without progress."""
    assert process.stderr is not None
    lines: queue.Queue[Optional[str]] = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stderr, lines), daemon=True).start()
    report: Dict[str, Any] = {}
    tail: List[str] = []
    last_progress = time.monotonic()
    while True:
        try:
            line = lines.get(timeout=max(0.0, last_progress + limit - time.monotonic()))
        except queue.Empty:
            return report, tail, True
        if line is None:
            return report, tail, False
        if line.startswith("qat-alive"):
            last_progress = time.monotonic()
        elif line.startswith("qat-report: "):
            report = parse_report(line[len("qat-report: ") :])
        elif line.startswith("qat: "):
            last_progress = time.monotonic()
            log(line)
        elif line.startswith("qat-error: "):
            last_progress = time.monotonic()
            tail = (tail + [line[len("qat-error: ") :]])[-5:]
        elif line:
            tail = (tail + [line])[-5:]


def parse_report(text: str) -> Dict[str, Any]:
    """The worker's report line; damaged text is recorded, never a reason to fail."""
    try:
        report = json.loads(text)
    except ValueError:
        report = None
    return report if isinstance(report, dict) else {"unreadable_report": text[:200]}


def crash_error(python: str, code: int, tail: List[str]) -> EdgetlError:
    """The one-line error for a worker that exited ``code`` (not 0, not ``EXIT_FAILED``)."""
    said = " ".join((tail[-1] if tail else "no output").split())[:300]
    if code == EXIT_SETUP:
        return MissingEnvironment(f"--qat: {python} lacks a package QAT needs; {install_line()}")
    if code == EXIT_ENVIRONMENT:
        return MissingEnvironment(f"--qat: the QAT worker stopped: {said}")
    if code < 0:
        number = -code
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        if number in OUTSIDE_SIGNALS:
            why = (
                "often the kernel's out-of-memory killer: free memory or use a smaller "
                "--image-size, and check `dmesg`"
                if number == signal.SIGKILL
                else "another process stopped it"
            )
            if number == signal.SIGILL:
                why = "the TensorFlow in it needs CPU instructions this machine lacks"
            return MissingEnvironment(f"--qat: the QAT worker was killed by {name} ({why})")
        return WorkerCrashed(
            f"--qat: the QAT worker crashed with {name} (last output: {said}); this is a bug "
            "in edgetl: please report it with the output of `edgetl --debug …`"
        )
    return WorkerCrashed(
        f"--qat: the QAT worker failed with exit {code} (last output: {said}); this is a bug "
        "in edgetl: please report it with the output of `edgetl --debug …`"
    )
