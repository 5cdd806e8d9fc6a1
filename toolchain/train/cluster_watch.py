"""Multi-worker training that waits for its cluster within a bound.

Why a second process: ``MultiWorkerMirroredStrategy``'s constructor blocks until
every task in ``TF_CONFIG`` has joined, holding the GIL and ignoring SIGTERM, so
nothing inside the process can time it out (a watchdog thread never runs). A
worker that was never started therefore used to hang the others for ever.

So ``edgetl train --strategy multiworker`` runs the training in a child process
and watches it. The child says ``joined`` through a pipe once its strategy
exists (``announce_joined``); without that within ``EDGETL_WORKER_TIMEOUT``
seconds (default 600) the child is killed and the command exits 3 naming the
tasks that are not listening on their address. After the cluster formed, the
parent only waits and passes the child's exit code on; the child dies with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from typing import List, Optional, Sequence

from edge.errors import BadInput, MissingEnvironment
from toolchain.train.devices import cluster_tasks

JOINED_FD = "EDGETL_JOINED_FD"  # set in the watched child: where it says how far it got
WATCHED = "EDGETL_WATCHED"  # set in the watched child, for all its life
CONNECTING, JOINED = "connecting", "joined"
TIMEOUT_ENV = "EDGETL_WORKER_TIMEOUT"
DEFAULT_TIMEOUT = 600.0  # seconds: machines of a cluster are rarely started in step


def join_timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 7 * 24 * 3600:
        raise BadInput(
            f"{TIMEOUT_ENV}={text[:40]!r}: give the seconds to wait for every worker to "
            "join, a number above 0 (unset: 600)"
        )
    return value


def watched() -> bool:
    """True in the child this module started (it must not start another)."""
    return JOINED_FD in os.environ or os.environ.get(WATCHED) == "1"


def announce(stage: str) -> None:
    """Tell the watching parent ``connecting`` (the data is ready, the strategy is
    being made: the join timer starts) or ``joined`` (the cluster formed); a no-op
    when not watched."""
    descriptor = os.environ.get(JOINED_FD)
    if descriptor is None:
        return
    with contextlib.suppress(OSError, ValueError):
        os.write(int(descriptor), f"{stage}\n".encode())
        if stage == JOINED:
            os.close(int(descriptor))
            os.environ.pop(JOINED_FD, None)


def not_listening(tf_config: str, own_index: int) -> List[str]:
    """The tasks of the cluster, other than this one, with nothing on their port:
    a worker that started has its server listening, one that never started has not."""
    silent = []
    for index, (name, address) in enumerate(cluster_tasks(tf_config)):
        if index == own_index:
            continue
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                pass
        except OSError:
            silent.append(f"{name} ({address})")
    return silent


def die_with_parent() -> None:
    """In the watched child: a killed watcher takes its training with it (Linux), as a
    killed single-process worker did before; the peers then stop with ``--resume``."""
    if not watched() or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the watcher died before the line above
            os._exit(3)


def _next_stage(read_end: int, timeout: Optional[float]) -> Optional[str]:
    """The child's next word, ``""`` when it exited, None when ``timeout`` ran out."""
    import select

    ready, _, _ = select.select([read_end], [], [], timeout)
    if not ready:
        return None
    word = b""
    while not word.endswith(b"\n"):
        chunk = os.read(read_end, 1)
        if not chunk:
            return ""
        word += chunk
    return word.decode().strip()


def run_watched(arguments: Sequence[str], tf_config: str, own_index: int) -> int:
    """Run ``edgetl ARGUMENTS`` in a child and return its exit code; exit 3
    (``MissingEnvironment``) when the cluster does not form within the timeout,
    counted from when the child starts to connect (decoding a large dataset first
    must not count). Ctrl-C before that ends the child (exit 130)."""
    timeout = join_timeout()
    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-m", "toolchain.cli", *arguments],
        env={**os.environ, JOINED_FD: str(write_end), WATCHED: "1"},
        pass_fds=(write_end,),
    )
    os.close(write_end)
    previous = signal.getsignal(signal.SIGINT)
    try:
        stage = _next_stage(read_end, None)
        if stage == CONNECTING:
            stage = _next_stage(read_end, timeout)
        if stage is None:
            silent = not_listening(tf_config, own_index)
            child.kill()
            child.wait()
            who = ", ".join(silent) if silent else "another task (all ports answer)"
            raise MissingEnvironment(
                f"the cluster did not form within {timeout:g} s: {who} did not join; start "
                f"every worker with the same TF_CONFIG cluster, or set {TIMEOUT_ENV} to wait "
                "longer (nothing was trained)"
            )
        # Training: Ctrl-C reaches the child from the terminal; it ends with 130.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = child.wait()
    finally:
        os.close(read_end)
        signal.signal(signal.SIGINT, previous)
        if child.poll() is None:
            child.kill()
            child.wait()
    if code == -signal.SIGINT:
        return 130
    if code < 0:
        raise MissingEnvironment(
            f"the training process was killed by signal {-code} (out of memory, or stopped "
            "from outside); start every worker again with --resume"
        )
    return code
