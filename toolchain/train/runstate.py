"""A training run's life in its folder: checked, claimed, worked in, committed.

The promise: edgetl never loses what a user had.

- **Checked** before anything is written: ``--out`` must be new, empty, or a
  folder edgetl marked as its own run (``.edgetl-run``); it may not lie inside
  ``--data``; replacing a finished or interrupted run needs ``--force``.
- **Claimed**: the marker is written; a fresh start clears only edgetl's own
  working folder (``checkpoints/``) and records its options there, which is
  what ``--resume`` reads back.
- **Worked in**: checkpoints, logs, splits and the new artefacts all live in
  ``checkpoints/`` while training runs, so a kill or a crash leaves the
  previous run's model, exports and reports exactly as they were.
- **Committed** at the end: stale exports and parity reports of the old model
  are removed by exact name, then the new files are renamed into place with
  ``config.json`` last. A kill during the renames is finished by ``--resume``.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from edge import atomic
from edge.errors import BadInput
from toolchain import __version__
from toolchain.core import runjson
from toolchain.core.options import TrainOptions
from toolchain.core.rundir import (
    CONFIG,
    DERIVED_FILES,
    DERIVED_FOLDERS,
    LOG_FILES,
    SETUP_FILES,
    TENSORBOARD,
    TRAINING_FILES,
    RunDir,
)
from toolchain.train import averaging
from toolchain.train.checks import checked_options

# Working files that alone do not make a run worth keeping (training never started).
STATE = "state.json"
# The fine-tuned weights, kept from the end of the phase to the commit (see train.command).
AFTER_FINE_TUNE = "after_fine_tune.weights.h5"
# What a kill inside that save left before 2026-12-07 (its own temporary name then).
LEGACY_WRITING = "writing_" + AFTER_FINE_TUNE
# What a file manager leaves in a folder a user just made: it stays "empty".
SYSTEM_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")


def staged(run: RunDir) -> Path:
    """Where the new run's top-level files wait until the commit."""
    return run.checkpoints / "staged"


def working_logs(run: RunDir) -> Path:
    """CSV and TensorBoard logs of the run in progress (moved to ``logs/`` at commit)."""
    return run.checkpoints / "logs"


def read_state(run: RunDir) -> Dict[str, Any]:
    """checkpoints/state.json, checked ({} before training wrote one)."""
    return runjson.read_state(run.checkpoints / STATE, run.path)


def trained_together(run: RunDir, options: TrainOptions) -> bool:
    """A multi-worker task whose collective training had ended before it was killed:
    the head phase and, when the run fine-tunes, the fine-tuning phase are flagged done
    (each task flags its own state when the phase's last collective step is behind it)."""
    state = read_state(run)
    return bool(state.get("head_done")) and (
        not options.fine_tune_epochs or bool(state.get("fine_tune_done"))
    )


def write_state(run: RunDir, **values: Any) -> None:
    atomic.write_json(run.checkpoints / STATE, {**read_state(run), **values})


def started(run: RunDir) -> bool:
    """Training got past its setup: a log, an epoch's checkpoint or a finished phase
    exists. A run that failed in its setup (a weights file that does not fit, no
    readable image) is not worth keeping, so the corrected command is not refused."""
    if not run.checkpoints.is_dir():
        return False
    return any(
        path.is_file() and path.relative_to(run.checkpoints).as_posix() not in SETUP_FILES
        for path in run.checkpoints.rglob("*")
    )


def holds_a_run(run: RunDir) -> bool:
    return started(run) or any((run.path / name).exists() for name in TRAINING_FILES)


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def check_out_folder(
    run: RunDir, data_folder: Optional[Path], resume: bool, force: bool
) -> Optional[str]:
    """Refuse an ``--out`` that would lose or mix up the user's files; touches nothing.

    Returns ``"finished"`` for ``--resume`` on a finished run (nothing to do),
    ``"resume"`` when an interrupted run will be continued, otherwise None.
    """
    path = run.path
    unchanged = "(nothing was changed)"
    if path.exists() and not path.is_dir():
        raise BadInput(f"--out {path}: is a file; give a folder for the run {unchanged}")
    if data_folder is not None and data_folder.is_dir() and _inside(path, data_folder):
        raise BadInput(
            f"--out {path} is inside --data {data_folder}: the run would be written into your "
            f"dataset (and read back as a class); choose an --out outside it {unchanged}"
        )
    if resume:
        if not run.is_marked() or not run.saved_options.is_file():
            raise BadInput(
                f"--resume: {path} holds no interrupted edgetl run; train without --resume "
                f"{unchanged}"
            )
        return "finished" if read_state(run).get("done") else "resume"
    if not path.is_dir():
        return None
    entries = sorted(entry.name for entry in path.iterdir() if entry.name not in SYSTEM_FILES)
    if not entries:
        return None
    if not run.is_marked():
        shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        raise BadInput(
            f"--out {path} holds files that are not an edgetl run ({shown}); edgetl writes only "
            f"into a new or empty folder or one of its own runs: choose another --out {unchanged}"
        )
    if holds_a_run(run) and not force:
        interrupted = started(run) and not read_state(run).get("done")
        raise BadInput(
            f"--out {path} holds an interrupted run: pass --resume to continue it or --force "
            f"to start over {unchanged}"
            if interrupted
            else f"--out {path} already holds a run; pass --force to replace it (its exports "
            f"and parity reports go too, once the new model is saved), --resume to continue "
            f"an interrupted one, or choose another --out {unchanged}"
        )
    return None


def claim(run: RunDir, options: TrainOptions) -> None:
    """Mark the folder as edgetl's; a fresh start clears the old working state only,
    then saves its options for ``--resume``."""
    fresh = not options.resume
    run.path.mkdir(parents=True, exist_ok=True)
    if not run.is_marked():
        atomic.write_json(run.marker, {"edgetl_version": __version__, "kind": "training run"})
    if fresh and run.checkpoints.is_dir():
        shutil.rmtree(run.checkpoints)
    run.checkpoints.mkdir(exist_ok=True)
    working_logs(run).mkdir(exist_ok=True)
    staged(run).mkdir(exist_ok=True)
    if fresh:
        atomic.write_json(run.saved_options, options.to_dict())


def resumed_options(run: RunDir) -> TrainOptions:
    """The interrupted run's own options (a moved run keeps its new place), checked
    again: an edited file is named here, not as a crash later."""
    saved = run.saved_options
    values = runjson.read_json_object(
        saved, "--resume cannot go on from it: start over with --force"
    )
    # A run saved before --out-of-class or --average-epochs existed trained without
    # them (then the defaults).
    values = {"out_of_class": False, "average_epochs": 0, **values}
    try:
        return checked_options(
            replace(TrainOptions.from_dict(values), resume=True, out=str(run.path))
        )
    except BadInput as error:
        raise BadInput(
            f"--resume: {saved} holds a bad option ({error}); start over with --force"
        ) from None
    except (ValueError, TypeError, AttributeError, OSError) as error:
        raise BadInput(f"--resume: {saved} is damaged ({error}); start over with --force") from None


def commit(run: RunDir, log) -> List[str]:
    """Put the staged run in place: stale derived files out, new files in, config last,
    then drop the phases' per-epoch backups (the best weights stay).

    Safe to call again after a kill part-way (``--resume`` does): what was
    already moved is not touched twice. Returns the derived files removed.
    """
    state = read_state(run)
    waiting = staged(run)
    installing = state.get("installing")
    logs = state.get("installing_logs")
    if installing is None:  # decided once, so a second call after a kill moves the rest
        installing = [name for name in TRAINING_FILES if (waiting / name).is_file()]
        logs = [n for n in (*LOG_FILES, TENSORBOARD) if (working_logs(run) / n).exists()]
        write_state(run, installing=installing, installing_logs=logs)
    removed = []
    for name in DERIVED_FILES:
        path = run.path / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    for name in DERIVED_FOLDERS:  # edgetl's own, by exact name; a link is not followed
        path = run.path / name
        if path.is_symlink():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
            removed.append(f"{name}/")
    if removed:
        log(f"removed {len(removed)} file(s) derived from the old model: {', '.join(removed)}")
    _install_logs(run, logs or [])
    for name in sorted(TRAINING_FILES, key=lambda n: n == CONFIG):  # config.json last
        source, target = waiting / name, run.path / name
        if name in installing:
            if source.is_file():
                os.replace(source, target)
        elif target.is_file():
            target.unlink()  # the old run's file that the new run does not have
    atomic.fsync_directory(run.path)
    shutil.rmtree(waiting, ignore_errors=True)
    write_state(run, done=True, installing=None, installing_logs=None)
    # BackupAndRestore folders of toolchain.train.phases, and the weight-average sums
    for phase in ("head", "fine_tune", averaging.FOLDER):
        shutil.rmtree(run.checkpoints / phase, ignore_errors=True)
    # and the fine-tuned weights kept for a kill before the commit (model.keras has them)
    kept = run.checkpoints / AFTER_FINE_TUNE
    legacy = run.checkpoints / LEGACY_WRITING
    for path in [kept, legacy, *atomic.left_by_a_kill(kept, time.time())]:
        path.unlink(missing_ok=True)
    return removed


def _install_logs(run: RunDir, names: List[str]) -> None:
    """The new run's CSV and TensorBoard logs replace the old ones in ``logs/``; an old
    log the new run does not have goes (it would describe another model)."""
    new_logs = working_logs(run)
    run.logs.mkdir(exist_ok=True)
    for name in (*LOG_FILES, TENSORBOARD):
        source, target = new_logs / name, run.logs / name
        if name not in names:
            if target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
        elif source.exists():  # not yet moved (a call after a kill skips what was)
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(source, target)
