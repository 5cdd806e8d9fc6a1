"""Export as a transaction: build and judge beside the run, then commit as one.

Why: an export that failed part-way used to leave the model its budget had just
rejected under the shippable name (``model_int8.tflite``), after deleting the
model the previous export had shipped. Now every file an export makes (models,
``export_report.json``, ``parity.*``) is written into ``RUN/.export-staging/``
and judged there; the run's own files change only in the commit.

- **commit**: ``commit.json`` (what to install, what to remove) is written into
  the staging folder; that write is the commit point. Then stale files go, the
  new ones are renamed in (``export_report.json`` last) and the folder is
  dropped. A kill after the commit point is finished by the next command that
  locks the run (``recover``), as ``git`` finishes a commit from its journal.
- **reject**: when no requested model met its budget, nothing in the run
  changes; the staging folder becomes ``RUN/rejected/`` (replacing an older
  one), so the figures and diagnosis of the failure are there to read.
- **abandon**: on an interrupt or any other error the staging folder is removed;
  a kill before the commit point leaves it for ``recover`` to remove.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List

from edge import atomic
from edge.errors import BadInput
from toolchain.core.rundir import EXPORT_REJECTED as REJECTED
from toolchain.core.rundir import EXPORT_STAGING as STAGING
from toolchain.core.rundir import RunDir

COMMIT = "commit.json"


def staging(run: RunDir) -> RunDir:
    """The staging folder, laid out like a run (``RunDir`` names its files)."""
    return RunDir(run.path / STAGING)


def rejected(run: RunDir) -> Path:
    return run.path / REJECTED


def begin(run: RunDir) -> RunDir:
    """A fresh, empty staging folder (after finishing or dropping an older one)."""
    recover(run)
    out = staging(run)
    out.path.mkdir()
    return out


def recover(run: RunDir) -> bool:
    """Finish a commit a kill interrupted, or drop a staging folder that never reached
    its commit point; True when a commit was finished."""
    _finish_reject(run)
    out = staging(run)
    if not out.path.exists():
        return False
    if (out.path / COMMIT).is_file():
        try:
            plan = json.loads((out.path / COMMIT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            plan = None
        if _is_plan(plan):
            try:
                _apply(run, plan)
            except OSError as error:
                raise BadInput(
                    f"{out.path}: an interrupted export cannot finish its commit ({error}); "
                    f"fix that path, or remove {out.path} and export again"
                ) from None
            return True
    shutil.rmtree(out.path, ignore_errors=True)
    return False


def _is_plan(plan: Any) -> bool:
    return (
        isinstance(plan, dict)
        and all(isinstance(plan.get(key), list) for key in ("install", "remove"))
        and all(
            isinstance(name, str) and name and "/" not in name and name not in (".", "..")
            for key in ("install", "remove")
            for name in plan[key]
        )
    )


def commit(run: RunDir, install: List[str], remove: List[str]) -> None:
    """Install the staged files ``install`` (names in the staging folder, the report
    last) and remove the run's ``remove``: one commit, finished by ``recover`` if killed."""
    order = sorted(install, key=lambda name: name == staging(run).export_report.name)
    plan = {"install": order, "remove": [n for n in remove if n not in install]}
    atomic.write_json(staging(run).path / COMMIT, plan)  # the commit point
    _apply(run, plan)


def _apply(run: RunDir, plan: Dict[str, List[str]]) -> None:
    out = staging(run)
    for name in plan["remove"]:
        target = run.path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    for name in plan["install"]:
        source = out.path / name
        if source.exists():  # a second call after a kill skips what was moved
            os.replace(source, run.path / name)
    atomic.fsync_directory(run.path)
    shutil.rmtree(out.path, ignore_errors=True)


def reject(run: RunDir) -> Path:
    """Keep this export's files as evidence in ``RUN/rejected/``; the run is unchanged.
    The older evidence is moved aside first and dropped last, so a kill in between
    leaves one of the two (``_finish_reject`` tidies up)."""
    (staging(run).path / COMMIT).unlink(missing_ok=True)
    target, older = rejected(run), _older_evidence(run)
    _remove(older)
    if target.exists() or target.is_symlink():
        os.replace(target, older)
    os.replace(staging(run).path, target)
    _remove(older)
    return target


def _older_evidence(run: RunDir) -> Path:
    return run.path / f".{REJECTED}.older"


def _finish_reject(run: RunDir) -> None:
    """After a kill inside ``reject``: the older evidence back if the new never came."""
    older = _older_evidence(run)
    if older.exists() and not rejected(run).exists():
        os.replace(older, rejected(run))
    _remove(older)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def abandon(run: RunDir) -> None:
    shutil.rmtree(staging(run).path, ignore_errors=True)
