"""The exit-code contract: the README's table is the code's, and every code is reachable.

A CI job reads 1 as "accuracy was lost"; it must never see 1 for a crash, a
typo or a full disk. Each code is produced here by a real command.
"""

from __future__ import annotations

import re

import pytest

from edge.errors import EXIT_CODES
from tests.conftest import REPO
from tests.test_faults import cli, refused, write_image


def readme_table() -> dict:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    return {
        int(code): meaning.strip()
        for code, meaning in re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)
    }


def test_readme_table_is_the_code():
    assert readme_table() == EXIT_CODES


def test_0_success(tiny_run):
    assert cli("info", tiny_run / "model_int8.tflite").exit_code == 0


def test_1_only_for_a_failed_gate(run_copy):
    """Even a tiny model loses something at an impossible budget: agreement above 1."""
    result = cli("validate", run_copy, "--min-agreement", "1.0", "--max-drop", "0")
    if result.exit_code == 0:
        pytest.skip("this INT8 model happens to match Keras exactly on every test image")
    refused(result, 1, "gate failed")


def test_2_bad_input(tmp_path):
    refused(cli("info", tmp_path / "missing.tflite"), 2, "missing.tflite")


def test_3_environment(tiny_run, tmp_path):
    """A runtime asked for by name and not installed here (the workstation venv has no
    tflite-runtime; where it has, TensorFlow's own interpreter stands in)."""
    import importlib.util

    runtime = "tflite_runtime" if importlib.util.find_spec("tflite_runtime") is None else None
    if runtime is None:
        pytest.skip("tflite_runtime is installed here")
    photo = write_image(tmp_path / "x.png")
    result = cli(
        "classify", tiny_run / "model_int8.tflite", "--source", photo, "--runtime", runtime
    )
    refused(result, 3, "tflite_runtime")


def test_4_internal_error_says_it_is_a_bug(tiny_run, monkeypatch):
    """A bug (here: an exception edgetl does not expect, from inside the bench loop) is
    exit 4 with a request to report it; --debug adds the traceback."""
    import edge.bench

    def broken(*args, **kwargs):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(edge.bench, "invoke_latency", broken)
    result = cli("bench", tiny_run / "model_int8.tflite", "--runs", "1")
    refused(result, 4, "internal error", "ZeroDivisionError", "bug", "--debug")
    debug = cli("--debug", "bench", tiny_run / "model_int8.tflite", "--runs", "1")
    assert debug.exit_code == 4
    assert "Traceback" in debug.stderr and "simulated bug" in debug.stderr


def test_130_interrupted(tiny_run, monkeypatch):
    import edge.bench

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(edge.bench, "invoke_latency", interrupted)
    refused(cli("bench", tiny_run / "model_int8.tflite"), 130, "interrupted")


def test_every_code_of_the_contract_is_walked():
    walked = {0, 1, 2, 3, 4, 130}
    assert walked == set(EXIT_CODES)
