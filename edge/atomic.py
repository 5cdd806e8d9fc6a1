"""Write files so that a final path only ever holds a complete file.

Every artefact edgetl writes (models, JSON reports, label files) goes to a
temporary name in the same folder and is renamed over the final path:
``os.replace`` is atomic on one filesystem, so a Ctrl-C, a kill or a full
disk leaves either the old file or the new one, never half of one. With
``durable`` (the default) the contents are fsynced before the rename and the
folder after it, so a power cut cannot leave the new name pointing at blocks
that never reached the disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

# ".{final name}.{token}.partial{final suffixes}": the last suffixes (up to two) stay
# last because some writers refuse a name that does not end in the one they expect
# (Keras's save_weights wants ".weights.h5", not ".h5").
_PARTIAL_NAME = re.compile(r"\.(?P<final>.+)\.[0-9a-f]{12}\.partial(?P<suffix>(?:\.[^.]*)*)")


# What a write can fail with that is the machine's doing, not the path's (exit 3).
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


NAME_MAX = 255  # bytes in one file name (ext4, APFS, exFAT on a camera card...)
KEPT_SUFFIXES = 2  # ".weights.h5"; a dated "run.2026.12.07.csv" keeps ".07.csv"


def partial_name(final: Path) -> str:
    """A fresh temporary name for ``final``, hidden, in the same folder; it keeps fewer of
    the final suffixes where all of them would make it longer than a name may be."""
    stem = f".{final.name}.{secrets.token_hex(6)}.partial"
    suffixes = final.suffixes[-KEPT_SUFFIXES:]
    while suffixes and len(os.fsencode(stem + "".join(suffixes))) > NAME_MAX:
        suffixes = suffixes[1:]
    return stem + "".join(suffixes)


def name_too_long(final: Path) -> Optional[str]:
    """Why ``final`` cannot be written whole, when its temporary name would be longer
    than a file name may be: said before any work, not after it (None when it fits)."""
    longest = len(os.fsencode(final.name)) + len(partial_name(Path("x"))) - 1
    if longest <= NAME_MAX:
        return None
    room = NAME_MAX - (longest - len(os.fsencode(final.name)))
    return f"the name {final.name[:40]}... is too long to write safely; use at most {room} bytes"


def is_partial_name(name: str) -> bool:
    """True for a name ``partial_name`` makes: a write that was never committed."""
    match = _PARTIAL_NAME.fullmatch(name)
    if match is None:
        return False
    suffixes = Path(match["final"]).suffixes  # any trailing run of them (or none)
    return match["suffix"] in {"".join(suffixes[i:]) for i in range(len(suffixes) + 1)}


def left_by_a_kill(final: Path, before: float) -> List[Path]:
    """Temporary files of ``final`` that a killed writer left (last written before
    ``before``, a ``time.time()``): the next complete write of ``final`` supersedes them.
    Only names ``partial_name`` made for this exact file, so nothing else is touched."""
    prefix = f".{final.name}."
    stale = []
    for entry in final.parent.iterdir() if final.parent.is_dir() else []:
        if entry.name.startswith(prefix) and is_partial_name(entry.name):
            try:
                if entry.is_file() and entry.stat().st_mtime < before and not in_use(entry):
                    stale.append(entry)
            except OSError:
                continue
    return stale


def hold(descriptor: int) -> None:
    """Mark an open temporary file as being written (an advisory lock, released when
    the writer exits, killed or not), so another session never removes it."""
    try:
        import fcntl

        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError):
        pass  # no flock here (Windows, some network filesystems): cleanup relies on age


def in_use(path: Path) -> bool:
    """True while a live writer holds ``path`` (see ``hold``)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(descriptor)


def open_partial(path: str | os.PathLike) -> Tuple[Path, int]:
    """Create a new, empty temporary file beside ``path``; return it and a write descriptor.

    Mode 0o666 before the umask, as ``open()`` would give the final file:
    ``tempfile.mkstemp`` makes 0600 files, and every renamed artefact kept
    that, unreadable by the group that was meant to use it.
    """
    final = Path(path)
    while True:
        partial = final.with_name(partial_name(final))
        try:
            return partial, os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:  # 48 random bits collided; draw again
            continue


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename in folder ``path`` survive a power cut, where the filesystem allows.

    Some filesystems (and Windows) refuse to open or sync a folder; the rename
    itself is still atomic there, so that is not an error.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a closed file's contents to the disk (before it is renamed into place)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def commit(partial: Path, final: Path, durable: bool = True) -> None:
    """Rename the finished ``partial`` over ``final``, synced first when ``durable``."""
    if durable:
        fsync_file(partial)
    os.replace(partial, final)
    if durable:
        fsync_directory(final.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    The temporary file is removed if the body raises (including
    KeyboardInterrupt), so nothing half-written survives.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial, descriptor = open_partial(final)
    os.close(descriptor)
    try:
        yield partial
        commit(partial, final, durable)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    with atomic_path(path, durable) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


NULLED_KEY = "non_finite_as_null"


def finite_only(obj: Any) -> Tuple[Any, List[str]]:
    """``obj`` with every NaN or infinite float replaced by None, and where each was
    (``history.loss[3]``). Pure; dicts, lists and tuples are copied, nothing else."""
    nulled: List[str] = []

    def walk(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            nulled.append(f"{where or '(top)'} was {value}")
            return None
        if isinstance(value, dict):
            return {
                key: walk(item, f"{where}.{key}" if where else str(key))
                for key, item in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [walk(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return value

    return walk(obj, ""), nulled


def write_json(path: str | os.PathLike, obj: Any, durable: bool = True) -> Path:
    """Strict JSON only: Python would write ``NaN`` and ``Infinity``, which are not JSON
    (browsers, ``jq`` and edgetl's own reader refuse the file). A non-finite float is
    written as null and, in an object, listed under ``non_finite_as_null`` with where it
    was, so the reader learns why a figure is missing (a diverged loss, a figure over no
    images) rather than losing the whole report."""
    clean, nulled = finite_only(obj)
    if nulled and isinstance(clean, dict):
        clean[NULLED_KEY] = nulled
    text = json.dumps(clean, indent=2, sort_keys=False, allow_nan=False)
    return write_text(path, text + "\n", durable)
