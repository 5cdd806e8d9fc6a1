"""One writer per run: an advisory lock held for a whole ``train``, ``export`` or
``validate``.

Why: two commands on one run (an export while a ``train --force`` commits its
new model) used to interleave their renames, leave a run whose models came from
two trainings, and both exit 0. Now the second command stops at once, before it
reads or writes anything, in one line naming the process that holds the run.

The lock is ``flock`` on the run folder itself: there is no lock file to leave
behind or to clean up, and the kernel releases it when the holder exits, even
after ``kill -9``. Advisory: it binds edgetl commands, not a user's ``cp``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator, Optional

from edge.errors import BadInput
from toolchain.core.rundir import RunDir
from toolchain.export import transaction

VERBS = ("train", "export", "validate")


@contextlib.contextmanager
def held(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock for the ``with`` body; ``BadInput`` (exit 2) when another
    process holds it. A path that is not a folder is not locked (the command itself
    says what is wrong with it). Holding the run, it first finishes an export commit
    that a kill interrupted, so every command starts from a consistent run."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInput(
                f"{path} is in use by {holder(path)}; wait for it to finish or stop it, "
                "then run this command again (nothing was changed)"
            ) from None
        transaction.recover(RunDir(path))
        yield
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def held_for_training(path: Path, chief: bool) -> Iterator[None]:
    """``held`` for ``train --out``, a folder training may create: it is made first so
    two trainings cannot both claim it, and removed again if the command leaves it
    empty (a refused option must leave nothing behind). A multi-worker run's other
    workers write only their own hidden folder, so only the chief locks ``--out``."""
    if not chief:
        yield
        return
    made = [p for p in (path, *path.parents) if not p.exists() and not p.is_symlink()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        made = []  # the command says why it cannot write there
    try:
        with held(path):
            yield
    finally:
        for folder in made:  # innermost first, each only while empty
            try:
                folder.rmdir()
            except OSError:
                break


def holder(path: Path) -> str:
    """``PID 1234 (edgetl export)`` from the kernel's lock table, where Linux has one."""
    pid = _locking_pid(path)
    if pid is None:
        return "another edgetl command"
    return f"PID {pid}" + (f" (edgetl {verb})" if (verb := _verb_of(pid)) else "")


def _locking_pid(path: Path) -> Optional[int]:
    try:
        inode = os.stat(path).st_ino
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
        if (
            len(fields) >= 6
            and fields[1:4:2] == ["FLOCK", "WRITE"]
            and fields[5].rsplit(":", 1)[-1] == str(inode)
            and fields[4].isdigit()
        ):
            return int(fields[4])
    return None


def _verb_of(pid: int) -> Optional[str]:
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    words = [a.decode("utf-8", "replace") for a in arguments]
    return next((w for w in words if w in VERBS), None)
