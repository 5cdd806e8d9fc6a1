"""The exit-code contract: the README's table is the code's, and every code is reachable.

A CI job reads 1 as "accuracy was lost"; it must never see 1 for a crash, a
typo or a full disk. Each code is produced here by a real command.
"""

from __future__ import annotations

import re

import pytest

from edge.errors import EXIT_CODES
from tests.conftest import REPO, assert_one_line_error, edgetl_here, with_hostile_int8
from tests.test_faults import write_image


def readme_table() -> dict:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    return {
        int(code): meaning.strip()
        for code, meaning in re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)
    }


def test_readme_table_is_the_code():
    assert readme_table() == EXIT_CODES


def test_0_success(micro_run):
    assert edgetl_here("info", micro_run / "model_int8.tflite").returncode == 0


def test_1_only_for_a_failed_gate(micro_copy):
    """A model INT8 cannot hold, validated against the default budget."""
    run = with_hostile_int8(micro_copy)
    result = edgetl_here("validate", run, "--min-agreement", "0.95", "--max-drop", "1")
    assert_one_line_error(result, 1, "gate failed")


def test_2_bad_input(tmp_path):
    assert_one_line_error(edgetl_here("info", tmp_path / "missing.tflite"), 2, "missing.tflite")


def test_3_environment(micro_run, tmp_path):
    """A runtime asked for by name and not installed here (the workstation venv has no
    tflite-runtime; where it has, TensorFlow's own interpreter stands in)."""
    import importlib.util

    runtime = "tflite_runtime" if importlib.util.find_spec("tflite_runtime") is None else None
    if runtime is None:
        pytest.skip("tflite_runtime is installed here")
    photo = write_image(tmp_path / "x.png")
    result = edgetl_here(
        "classify", micro_run / "model_int8.tflite", "--source", photo, "--runtime", runtime
    )
    assert_one_line_error(result, 3, "tflite_runtime")


def test_4_internal_error_says_it_is_a_bug(micro_run, monkeypatch):
    """A bug (here: an exception edgetl does not expect, from inside the bench loop) is
    exit 4 with a request to report it; --debug adds the traceback."""
    import edge.bench

    def broken(*args, **kwargs):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(edge.bench, "invoke_latency", broken)
    result = edgetl_here("bench", micro_run / "model_int8.tflite", "--runs", "1")
    assert_one_line_error(result, 4, "internal error", "ZeroDivisionError", "bug", "--debug")
    debug = edgetl_here("--debug", "bench", micro_run / "model_int8.tflite", "--runs", "1")
    assert debug.returncode == 4
    assert "Traceback" in debug.stderr and "simulated bug" in debug.stderr


def test_130_interrupted(micro_run, monkeypatch):
    import edge.bench

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(edge.bench, "invoke_latency", interrupted)
    assert_one_line_error(edgetl_here("bench", micro_run / "model_int8.tflite"), 130, "interrupted")


def test_every_code_of_the_contract_is_walked():
    walked = {0, 1, 2, 3, 4, 130}
    assert walked == set(EXIT_CODES)
