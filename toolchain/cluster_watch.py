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
from toolchain.devices import cluster_tasks

JOINED_FD = "EDGETL_JOINED_FD"  # set in the watched child: where it says "joined"
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
    return JOINED_FD in os.environ


def announce_joined() -> None:
    """Tell the watching parent that the cluster formed (a no-op when not watched)."""
    descriptor = os.environ.pop(JOINED_FD, None)
    if descriptor is None:
        return
    with contextlib.suppress(OSError, ValueError):
        os.write(int(descriptor), b"joined\n")
        os.close(int(descriptor))


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


def run_watched(arguments: Sequence[str], tf_config: str, own_index: int) -> int:
    """Run ``edgetl ARGUMENTS`` in a child and return its exit code; exit 3
    (``MissingEnvironment``) when the cluster does not form in time."""
    import select

    timeout = join_timeout()
    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-m", "toolchain.cli", *arguments],
        env={**os.environ, JOINED_FD: str(write_end)},
        pass_fds=(write_end,),
    )
    os.close(write_end)
    # Ctrl-C reaches the child from the terminal; it ends with 130 and we pass that on.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        said: Optional[bytes] = os.read(read_end, 64) if ready else None
        if said is None:
            silent = not_listening(tf_config, own_index)
            child.kill()
            child.wait()
            who = ", ".join(silent) if silent else "another task (all ports answer)"
            raise MissingEnvironment(
                f"the cluster did not form within {timeout:g} s: {who} did not join; start "
                f"every worker with the same TF_CONFIG cluster, or set {TIMEOUT_ENV} to wait "
                "longer (nothing was trained)"
            )
        code = child.wait()
    finally:
        os.close(read_end)
        signal.signal(signal.SIGINT, previous)
        if child.poll() is None:
            child.kill()
    if code < 0:
        raise MissingEnvironment(
            f"the training process was killed by signal {-code} (out of memory, or stopped "
            "from outside); start every worker again with --resume"
        )
    return code
