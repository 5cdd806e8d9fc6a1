"""What a run ships after an export, and the report that names exactly that.

Each export mode is a *slot* of the run (``model_float16.tflite``; for int8 the
full or the mixed file, one at a time). After an export whose files were judged
in the staging folder (``transaction``):

- a mode whose new model met its budget takes its slot: every older file of that
  mode goes (for int8: the other INT8 name and any set-aside ``.rejected`` file);
- a mode whose new model missed comes in as ``.rejected`` only; what the previous
  export shipped in that slot stays, with its entry from the previous report,
  which carries the budget that file was held to;
- a mode this export did not make is left alone, entry and all.

So every ``model_*.tflite`` in a run has an entry in ``export_report.json`` with
the budget it met (``status`` ``passed``), or says it was never judged (``not
validated``); every ``.rejected`` file is named as such; and the report names
nothing that is not on disk. A pure function of names and reports: no file is
touched here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set

from toolchain.core.rundir import EXPORT_REJECTED, MODEL_NAMES, PARITY_PICTURES

REJECTED_SUFFIX = ".rejected"
PARITY_FILES = ("parity.json", "parity.md", "parity_reference.json")  # validate's, as a set
PASSED, MISSED, NOT_VALIDATED, REJECTED = "passed", "missed", "not validated", "rejected"


def slot(mode: str) -> List[str]:
    """The shippable names of one mode; the first is what a full export writes."""
    names = [f"model_{mode}.tflite"]
    return names + ["model_int8_mixed.tflite"] if mode == "int8" else names


def in_slot(mode: str, names: Set[str]) -> Optional[str]:
    """The one shippable file of ``mode`` among ``names``, or None."""
    return next((n for n in slot(mode) if n in names), None)


def set_aside_name(name: str) -> str:
    return name + REJECTED_SUFFIX


def model_files(names: Iterable[str]) -> Set[str]:
    """The exported models (shippable or set aside) among ``names``."""
    known = set(MODEL_NAMES) | {set_aside_name(n) for n in MODEL_NAMES}
    return {n for n in names if n in known}


@dataclass(frozen=True)
class Plan:
    install: List[str]  # staged names, moved into the run
    remove: List[str]  # the run's names that go
    report: Dict[str, Any]  # the export_report.json the run gets


def plan(
    run_files: Set[str],
    staged: Set[str],
    modes: Sequence[str],
    missed: Dict[str, str],
    new_report: Dict[str, Any],
    old_report: Optional[Dict[str, Any]],
    validated: bool,
) -> Plan:
    """The commit of one export: ``run_files`` and ``staged`` are file names in the run
    and in the staging folder, ``missed`` the modes whose new model missed (and why)."""
    remove: List[str] = []
    for mode in modes:
        names = slot(mode)
        rejected = [set_aside_name(n) for n in names]
        remove += [n for n in (rejected if mode in missed else names + rejected) if n not in staged]
    # Validated: the new parity report replaces the old one and its pictures. Not
    # validated: the old one describes files this export replaced, so it goes too.
    remove += [n for n in (*PARITY_FILES, *PARITY_PICTURES.values()) if n not in staged]
    remove.append(EXPORT_REJECTED)  # an earlier failed export's evidence is stale now
    remove = [n for n in dict.fromkeys(remove) if n in run_files]
    final = (model_files(run_files) - set(remove)) | model_files(staged)
    report = _report(final, staged, modes, missed, new_report, old_report or {}, validated)
    install = sorted(staged - {"commit.json"})
    return Plan(install, remove, report)


def _report(
    final: Set[str],
    staged: Set[str],
    modes: Sequence[str],
    missed: Dict[str, str],
    new: Dict[str, Any],
    old: Dict[str, Any],
    validated: bool,
) -> Dict[str, Any]:
    budget = new.get("budget") if validated else None
    entries = []
    for entry in new.get("models", []):
        if entry["path"] in staged:
            status = REJECTED if entry["path"].endswith(REJECTED_SUFFIX) else PASSED
            entries.append(
                {**entry, "status": status if validated else NOT_VALIDATED, "budget": budget}
            )
    listed = old.get("models") if isinstance(old.get("models"), list) else []
    old_entries = {
        e["path"]: e for e in listed if isinstance(e, dict) and isinstance(e.get("path"), str)
    }
    old_budget = old.get("budget") if isinstance(old.get("budget"), dict) else None
    previous = old.get("shipped") if isinstance(old.get("shipped"), dict) else {}
    for name in sorted(final - staged):
        shipped_before = previous.get("int8") == name
        entries.append(_carried(name, old_entries.get(name), old_budget, shipped_before))
    report = {**new, "models": entries}
    report["modes"] = {
        mode: _mode_outcome(mode, final, staged, missed, validated) for mode in modes
    }
    report["shipped"] = _shipped(final, staged, modes, missed, new, old)
    return report


def _carried(
    name: str, entry: Optional[Dict[str, Any]], old_budget: Any, shipped_before: bool
) -> Dict[str, Any]:
    """A file an earlier export left and this one keeps: its own entry and budget.
    Only what that report says passed (or shipped, for a report without statuses)
    stays ``passed``: an older edgetl left files that missed under shippable names."""
    entry = dict(entry) if entry else {"path": name, "note": "no entry in the previous report"}
    entry.setdefault("budget", old_budget)
    if name.endswith(REJECTED_SUFFIX):
        entry["status"] = REJECTED
    elif entry.get("status") != PASSED:
        vouched = "status" not in entry and shipped_before and entry.get("budget")
        entry["status"] = PASSED if vouched else NOT_VALIDATED
    entry["kept_from_previous_export"] = True
    return entry


def _mode_outcome(
    mode: str, final: Set[str], staged: Set[str], missed: Dict[str, str], validated: bool
) -> Dict[str, Any]:
    shippable = in_slot(mode, final)
    if mode in missed:
        return {"status": MISSED, "why": missed[mode], "file": shippable}
    new = in_slot(mode, staged)
    return {"status": PASSED if validated else NOT_VALIDATED, "file": new}


def _shipped(
    final: Set[str],
    staged: Set[str],
    modes: Sequence[str],
    missed: Dict[str, str],
    new: Dict[str, Any],
    old: Dict[str, Any],
) -> Optional[Dict[str, Any]]:
    """The INT8 model the run ships, and why: this export's, or the one it keeps."""
    kept = in_slot("int8", final)
    if "int8" not in modes:
        previous = old.get("shipped")
        if isinstance(previous, dict) and previous.get("int8") == kept:
            return previous
        if kept is None:
            return None
        return {
            "int8": kept,
            "why": "left by an earlier export that did not record it as shipped: not validated; run `edgetl validate`",
        }
    if "int8" not in missed:
        return new.get("shipped")
    if kept is None:
        return {"int8": None, "why": missed["int8"]}
    return {"int8": kept, "why": f"{missed['int8']}; the previous export's {kept} stays"}
