"""A run folder's JSON files read back: each checked for what later steps index into.

All of them go through ``edge.jsonfile`` (size and depth caps, no NaN or
Infinity), then through the shape check of their own file here, so a damaged
or edited file is one ``BadInput`` line naming it and the fix (exit 2), never a
KeyError, an OverflowError from ``int(Infinity)`` or a RecursionError later
(exit 4). Writers are elsewhere; ``edge.atomic.write_json`` writes strict JSON.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from edge import jsonfile
from edge.errors import BadInput
from edge.jsonfile import NotStrictJSON

EDITED = "it was not written by edgetl or was edited"


def read_json_object(path: Path, fix: str = EDITED) -> Dict[str, Any]:
    """A JSON file that must hold an object; every way it can fail is one line."""
    value = jsonfile.read_json(path, fix)
    if not isinstance(value, dict):
        raise BadInput(
            f"{path}: holds a JSON {type(value).__name__}, not an object; "
            "it was not written by edgetl"
        )
    return value


def read_checked(
    path: Path, check: Callable[[Dict[str, Any]], None], fix: str = EDITED
) -> Dict[str, Any]:
    """``read_json_object`` plus ``check``, whose ``NotStrictJSON`` becomes one line."""
    value = read_json_object(path, fix)
    try:
        check(value)
    except NotStrictJSON as error:
        raise BadInput(f"{path}: {error}; {fix}") from None
    return value


def _strings(value: Any, what: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise NotStrictJSON(f"{what} is not a list of names")


def check_splits(splits: Dict[str, Any]) -> None:
    """splits.json: three lists of ``[file, class index]``, the dataset folder, labels."""
    for name in ("train", "val", "test"):
        entries = splits.get(name)
        if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) for e in entries
        ):
            raise NotStrictJSON(f"'{name}' is not a list of [file, label] pairs")
        for rel, label in entries:
            try:
                jsonfile.whole_number(label)
            except NotStrictJSON as error:
                raise NotStrictJSON(f"a label of split '{name}' ({rel[:60]}): {error}") from None
    if not isinstance(splits.get("root"), str):
        raise NotStrictJSON("'root' (the dataset folder) is missing")
    if not isinstance(splits.get("root_relative"), (str, type(None))):
        raise NotStrictJSON("'root_relative' is not a folder name")
    _strings(splits.get("labels"), "'labels'", optional=True)


def check_state(state: Dict[str, Any]) -> None:
    """checkpoints/state.json: flags and the names a commit in progress moves."""
    for key in ("done", "head_done", "fine_tune_done"):
        if not isinstance(state.get(key), (bool, type(None))):
            raise NotStrictJSON(f"'{key}' is not true or false")
    for key in ("installing", "installing_logs"):
        _strings(state.get(key), f"'{key}'", optional=True)


def read_state(path: Path, run_path: Path) -> Dict[str, Any]:
    """Training's working state; {} before it exists. A damaged one is refused rather
    than read as empty: empty would mean "not committing", and a run stopped during
    its commit (model and config may not match) would pass as finished."""
    if not path.exists():
        return {}
    fix = (
        "if the run finished, remove that file; otherwise start over with "
        f"`edgetl train --out {run_path} --force`"
    )
    return read_checked(path, check_state, fix)


def check_budget(budget: Any) -> Dict[str, Optional[float]]:
    """A budget object (export report, parity reference): both bounds in range, or null."""
    if not isinstance(budget, dict):
        raise NotStrictJSON("'budget' is not an object")
    found: Dict[str, Optional[float]] = {}
    for key, high in (("max_drop", math.inf), ("min_agreement", 1.0)):
        try:
            found[key] = jsonfile.number(budget.get(key), 0.0, high, optional=True)
        except NotStrictJSON as error:
            raise NotStrictJSON(f"budget {key}: {error}") from None
    return found


def read_export_budget(path: Path, run_path: Path) -> Optional[Dict[str, Optional[float]]]:
    """The budget export_report.json recorded; None when there is no report or the export
    did not validate (``--no-validate`` records no budget)."""
    if not path.exists():
        return None
    fix = f"export again with `edgetl export {run_path}`"
    report = read_json_object(path, fix)
    if report.get("budget") is None:
        return None
    try:
        return check_budget(report["budget"])
    except NotStrictJSON as error:
        raise BadInput(f"{path}: {error}; {fix}") from None


def check_figures(entry: Dict[str, Any], where: str) -> None:
    """The figures a gate reads from one model entry of parity.json."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise NotStrictJSON(f"{where} is not a model entry with a path")
    device = entry.get("device_path")
    if not isinstance(device, dict):
        raise NotStrictJSON(f"{where} has no device_path figures")
    for figures, name in ((entry, where), (device, f"{where} device_path")):
        for key, low, high in (("top1", 0, 1), ("agreement", 0, 1), ("top1_drop_pts", -100, 100)):
            try:
                jsonfile.number(figures.get(key), low, high)
            except NotStrictJSON as error:
                raise NotStrictJSON(f"{name} {key}: {error}") from None
        evidence = figures.get("worse_than_keras")  # absent in reports of older edgetl
        if evidence is not None:
            try:
                jsonfile.number(
                    evidence.get("p_worse") if isinstance(evidence, dict) else None, 0, 1
                )
            except NotStrictJSON as error:
                raise NotStrictJSON(f"{name} worse_than_keras p_worse: {error}") from None


def check_parity(parity: Dict[str, Any]) -> None:
    """parity.json: the image count and every model's gated figures."""
    jsonfile.whole_number(parity.get("n_images"), 1)
    models = parity.get("models")
    if not isinstance(models, list):
        raise NotStrictJSON("'models' is not a list")
    for i, entry in enumerate(models):
        check_figures(entry, f"model #{i + 1}")


def read_parity(path: Path, run_path: Path) -> Dict[str, Any]:
    """parity.json, its gated figures checked (what export's repair reads back)."""
    return read_checked(path, check_parity, f"validate again with `edgetl validate {run_path}`")


def check_device_report(report: Dict[str, Any]) -> None:
    """``edgetl parity --json``: per-image probabilities keyed by file digest."""
    device = report.get("device")
    if not isinstance(device, dict) or not isinstance(device.get("runtime"), str):
        raise NotStrictJSON("'device' does not name its runtime")
    images = report.get("images")
    if not isinstance(images, list):
        raise NotStrictJSON("'images' is not a list")
    for i, image in enumerate(images):
        probs = image.get("probabilities") if isinstance(image, dict) else None
        if not isinstance(image, dict) or not isinstance(image.get("sha256"), str):
            raise NotStrictJSON(f"image #{i + 1} has no sha256")
        if not isinstance(probs, list) or not probs:
            raise NotStrictJSON(f"image #{i + 1} has no probabilities")
        for p in probs:
            jsonfile.number(p)
