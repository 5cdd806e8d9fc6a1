"""Export's flag matrix, run as a user would run it, one command after another on one
run, with one shared invariant checked after every command (``check_run``):

- every ``model_*.tflite`` without ``.rejected`` meets the budget recorded for it in
  ``export_report.json`` (or the report says it was never validated);
- the report names exactly the model files on disk, and at most one INT8 file ships;
- nothing the previous export shipped is lost after a failure, and an export in
  which every requested mode missed leaves the run's files byte for byte.

Real conversions and validations of the session's micro run (``conftest.micro_run``:
a four-layer CNN that TFLite converts in a second a mode, where MobileNetV2 takes
~17 s; what is tested here is what export does with files and reports, whatever the
network). A real INT8 miss comes from ``make_int8_hostile`` (float untouched, INT8
broken), as ``test_parity`` does to MobileNetV2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest
from conftest import REPO, make_int8_hostile
from typer.testing import CliRunner

from edge.gate import agreement_misses, drop_misses
from edge.modelfile import read_embedded
from toolchain import runlock
from toolchain.cli import app
from toolchain.export import transaction

SHIPPABLE_INT8 = ("model_int8.tflite", "model_int8_mixed.tflite")


def model_files(run: Path) -> Dict[str, str]:
    """Every exported model file (shippable or set aside) and its digest."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in run.iterdir()
        if p.name.startswith("model_") and ".tflite" in p.name
    }


def derived_state(run: Path) -> Dict[str, str]:
    """Digest of every top-level file an export may write: a failed export keeps it all."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in run.iterdir()
        if p.is_file()
        and (p.name.startswith(("model_", "parity")) or p.name == "export_report.json")
        and p.suffix != ".keras"
    }


def shippable(files: Dict[str, str]) -> Dict[str, str]:
    return {n: d for n, d in files.items() if not n.endswith(".rejected")}


def check_run(run: Path, before: Dict[str, str], code: int, modes_missed_all: bool = False):
    """The invariant after any export command (see the module docstring)."""
    assert not (run / transaction.STAGING).exists(), "staging folder left behind"
    report = json.loads((run / "export_report.json").read_text())
    on_disk = model_files(run)
    named = [entry["path"] for entry in report["models"]]
    assert sorted(named) == sorted(on_disk), (named, sorted(on_disk))
    for entry in report["models"]:
        if entry["path"].endswith(".rejected"):
            assert entry["status"] == "rejected", entry["path"]
            continue
        assert entry["status"] in ("passed", "not validated"), (entry["path"], entry["status"])
        if entry["status"] == "passed":
            budget, test = entry["budget"], entry["test"]
            # a drop past the bound passes only where the test images cannot tell
            assert not drop_misses(test["top1_drop_pts"], test["p_worse"], budget["max_drop"])
            assert not agreement_misses(
                test["agreement"], test["agreement_images"], budget["min_agreement"]
            ), entry["path"]
    int8 = [n for n in on_disk if n in SHIPPABLE_INT8]
    assert len(int8) <= 1, int8
    for name in on_disk:  # every file a device may get answers with the export's floor
        card = read_embedded(run / name) or {}
        if "unknown" in card and report.get("answer") is not None:
            assert card["answer"]["floor"] == report["answer"]["floor"], name
    if report.get("shipped") is not None:
        assert report["shipped"]["int8"] == (int8[0] if int8 else None), report["shipped"]
    if code != 0:  # every slot that shipped before still ships something
        for name in shippable(before):
            slot = SHIPPABLE_INT8 if name in SHIPPABLE_INT8 else (name,)
            assert any(n in on_disk for n in slot), f"{name} was lost by a failed export"
    json.loads((run / "export_report.json").read_text(), parse_constant=_no_constants)


def _no_constants(name: str):
    raise AssertionError(f"export_report.json holds {name}: not strict JSON")


def edgetl(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def export_and_check(run: Path, *args: str, expect: Optional[int] = None) -> str:
    before, state = model_files(run), derived_state(run)
    code, output = edgetl("export", str(run), *args)
    assert code in (0, 1, 2), (code, output)
    if expect is not None:
        assert code == expect, (code, output)
    check_run(run, before, code)
    if code == 2:  # refused up front: nothing changed
        assert derived_state(run) == state
    return output


@pytest.fixture(scope="module")
def hostile_run(micro_run, tmp_path_factory) -> Path:
    """The micro run with a model INT8 cannot hold (float unchanged), as its previous
    export left it: model_int8.tflite from the healthy model, its report and parity."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    shutil.copytree(micro_run, run)
    make_int8_hostile(run)
    return run


def test_the_hostile_model_is_the_same_float_function(micro_run, hostile_run):
    from toolchain.core.quiet import keras

    load = keras().models.load_model
    probe = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3)).astype(np.float32)
    healthy = load(micro_run / "model.keras", compile=False).predict(probe, verbose=0)
    hostile = load(hostile_run / "model.keras", compile=False).predict(probe, verbose=0)
    assert np.allclose(healthy, hostile, atol=1e-4)


def test_the_flag_matrix_keeps_the_run_consistent_after_every_command(micro_copy):
    run = micro_copy
    """Healthy model: modes one by one and together, with and without --force, a budget
    met and one too tight to meet, --no-validate, both targets."""
    check_run(run, {}, 0)  # the fixture's own export
    export_and_check(run, "--quant", "float16", expect=0)  # new file, int8 kept
    export_and_check(run, "--quant", "float16", expect=2)  # exists, no --force
    export_and_check(run, "--quant", "all", expect=2)
    # A budget no quantized model can be sure to meet: each mode passes or is set aside.
    export_and_check(run, "--quant", "all", "--force", "--max-drop", "0", "--min-agreement", "1")
    export_and_check(run, "--quant", "dynamic", "--force", "--no-validate", expect=0)
    report = json.loads((run / "export_report.json").read_text())
    dynamic = next(e for e in report["models"] if e["path"] == "model_dynamic.tflite")
    assert dynamic["status"] == "not validated" and dynamic["budget"] is None
    export_and_check(run, "--quant", "int8", "--force", "--no-validate", expect=0)
    export_and_check(
        run, "--force", "--target", "accelerator", "--max-drop", "5", "--min-agreement", "0.9"
    )  # the fixture's own budget: full INT8 ships, every op INT8
    report = json.loads((run / "export_report.json").read_text())
    assert report["shipped"]["int8"] == "model_int8.tflite"
    assert {"model_float16.tflite", "model_dynamic.tflite", "model_float32.tflite"} <= set(
        model_files(run)
    )  # modes this export did not make are kept, with their own entries


def test_a_failed_int8_export_changes_nothing_and_keeps_its_evidence(hostile_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(hostile_run, run)
    state = derived_state(run)
    for flags in (("--target", "accelerator"), ("--no-auto-fallback",)):
        output = export_and_check(run, "--force", *flags, expect=1)
        assert "INT8 budget missed" in output and "nothing in" in output, output
        assert derived_state(run) == state  # the previous shipped set and its report
        rejected = run / "rejected"
        assert (rejected / "model_int8.tflite.rejected").is_file()
        assert not list(rejected.glob("*.tflite"))  # nothing shippable-named, even there
        evidence = json.loads((rejected / "export_report.json").read_text())
        assert evidence["shipped"]["int8"] is None and evidence["models"][0]["status"] == "rejected"
        assert json.loads((rejected / "parity.json").read_text())["gate"]["passed"] is False


def test_quant_all_keeps_what_passed_sets_aside_what_missed_and_exits_1(hostile_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(hostile_run, run)
    shipped = json.loads((run / "export_report.json").read_text())["shipped"]["int8"]
    previous_int8 = (run / shipped).read_bytes()
    output = export_and_check(run, "--quant", "all", "--force", "--no-auto-fallback", expect=1)
    assert "INT8 budget missed" in output and "the run ships" in output
    files = model_files(run)
    assert {"model_float16.tflite", "model_float32.tflite"} <= set(files)  # float is unharmed
    assert "model_int8.tflite.rejected" in files
    # dynamic range quantizes activations per tensor too: the outlier may sink it as well,
    # and then it is set aside like INT8, never both names at once
    assert ("model_dynamic.tflite" in files) != ("model_dynamic.tflite.rejected" in files)
    assert (run / shipped).read_bytes() == previous_int8  # what shipped stays
    report = json.loads((run / "export_report.json").read_text())
    assert report["modes"]["int8"]["status"] == "missed"
    assert report["modes"]["float16"] == {"status": "passed", "file": "model_float16.tflite"}
    dynamic = report["modes"]["dynamic"]["status"]
    assert dynamic == ("passed" if "model_dynamic.tflite" in files else "missed")
    assert report["shipped"]["int8"] == shipped and "stays" in report["shipped"]["why"]
    kept = next(e for e in report["models"] if e["path"] == shipped)
    assert kept["kept_from_previous_export"] and kept["budget"] is not None
    # `edgetl validate RUN` then gates exactly what the run ships (no .rejected file)
    parity = json.loads((run / "parity.json").read_text())
    assert all(Path(m["path"]).exists() for m in parity["models"])
    # --no-validate afterwards replaces the INT8 slot and clears the set-aside file
    export_and_check(run, "--force", "--no-validate", expect=0)
    assert "model_int8.tflite.rejected" not in model_files(run)


def test_the_repair_ships_a_mix_or_nothing_changes(hostile_run, tmp_path):
    """--target cpu with the automatic fallback, in-process so the layer cap is small."""
    from edge.errors import GateFailed
    from toolchain.core.options import ExportOptions
    from toolchain.export.command import export

    run = tmp_path / "run"
    shutil.copytree(hostile_run, run)
    before, state = model_files(run), derived_state(run)
    options = ExportOptions(force=True, fallback_max_layers=2)
    try:
        export(run, options, log=lambda message: None)
        code = 0
    except GateFailed:
        code = 1
    check_run(run, before, code)
    if code == 1:
        assert derived_state(run) == state
    else:
        files = model_files(run)
        assert "model_int8_mixed.tflite" in files and "model_int8.tflite.rejected" in files
        assert "model_int8.tflite" not in files


def test_an_interrupted_export_leaves_the_run_as_it_was(micro_copy, monkeypatch):
    import toolchain.export.repair as repair

    state = derived_state(micro_copy)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(repair, "validate", interrupted)
    code, output = edgetl("export", str(micro_copy), "--quant", "all", "--force")
    assert code == 130, output
    assert derived_state(micro_copy) == state
    assert not (micro_copy / transaction.STAGING).exists()


def test_a_commit_cut_by_a_kill_is_finished_by_the_next_command(micro_copy):
    """After the commit point a kill leaves a half-moved set; whatever runs next on the
    run finishes it, so no command ever sees two exports' files mixed."""
    from toolchain.core.rundir import RunDir

    run = RunDir(micro_copy)
    out = transaction.begin(run)
    (out.path / "model_float16.tflite").write_bytes(b"new float16")
    (out.path / "export_report.json").write_text('{"models": []}')
    plan = {
        "install": ["model_float16.tflite", "export_report.json"],
        "remove": ["model_int8.tflite"],
    }
    (out.path / transaction.COMMIT).write_text(json.dumps(plan))
    (micro_copy / "model_int8.tflite").unlink()  # the kill fell after the first step
    with runlock.held(micro_copy):  # what `edgetl validate/export/train` do first
        pass
    assert (micro_copy / "model_float16.tflite").read_bytes() == b"new float16"
    assert json.loads((micro_copy / "export_report.json").read_text()) == {"models": []}
    assert not out.path.exists()
    # a staging folder that never reached its commit point is simply dropped
    out = transaction.begin(run)
    (out.path / "model_dynamic.tflite").write_bytes(b"never judged")
    with runlock.held(micro_copy):
        pass
    assert not out.path.exists() and not (micro_copy / "model_dynamic.tflite").exists()


def test_a_second_command_on_a_busy_run_exits_2_naming_the_holder(micro_copy):
    state = derived_state(micro_copy)
    with runlock.held(micro_copy):
        for args in (
            ["export", str(micro_copy), "--force", "--quant", "float16"],
            ["validate", str(micro_copy)],
            ["train", "--out", str(micro_copy), "--force", "--data", "synthetic"],
        ):
            result = subprocess.run(
                [sys.executable, "-m", "toolchain.cli", *args],
                capture_output=True, text=True, cwd=REPO, timeout=120,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )  # fmt: skip
            assert result.returncode == 2, (args, result.stderr)
            line = result.stderr.strip().splitlines()[-1]
            assert "is in use by PID" in line and str(os.getpid()) in line, line
            assert "Traceback" not in result.stderr
    assert derived_state(micro_copy) == state
    code, output = edgetl("export", str(micro_copy), "--force", "--quant", "float16")
    assert code == 0, output  # the lock went with its holder
