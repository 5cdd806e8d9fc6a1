"""Which device environments ``edgetl export`` checks a file in, found the same way
for a checkout and for an installed edgetl, and never skipped in silence."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from toolchain.core import runtimes

REPO = Path(__file__).resolve().parents[1]


def test_device_venvs_are_found_in_the_working_folder_not_the_source_tree(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGETL_RUNTIME_PYTHONS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert runtimes.runtime_pythons() == []
    python = tmp_path / ".venv-edge" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    assert runtimes.runtime_pythons() == [str(python)]


def test_the_environment_variable_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_RUNTIME_PYTHONS", os.pathsep.join(["/a/python", "", "/b/python"]))
    monkeypatch.chdir(tmp_path)
    assert runtimes.runtime_pythons() == ["/a/python", "/b/python"]


def test_an_environment_without_edgetl_is_a_failed_check_not_a_silent_one(tmp_path, monkeypatch):
    """A Python without edgetl installed cannot run ``-m edge.compat``: no source-tree
    PYTHONPATH rescues it, and the report says so."""
    bare = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if bare is None or Path(bare).resolve() == Path(sys.executable).resolve():
        pytest.skip("no Python outside this venv to stand for a bare device environment")
    monkeypatch.setenv("EDGETL_RUNTIME_PYTHONS", bare)
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model.tflite"
    model.write_bytes(b"not a model")
    results = [r for r in runtimes.check(model) if r["environment"] == bare]
    assert len(results) == 1 and results[0]["ok"] is False
    assert "edge" in results[0]["error"]  # "No module named edge"
    assert any("FAILS" in line for line in runtimes.describe(results))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_default_threads_follow_the_cores_the_process_may_use():
    """Pinned to one core (taskset, a cpuset), the runner must not start a thread per
    core of the machine: the extra threads could only wait."""
    import subprocess

    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "from edge.runtime import default_threads; print(default_threads('ai_edge_litert', True))"
    )
    pinned = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert pinned.stdout.strip() == "1"
    from edge.runtime import default_threads

    assert default_threads("ai_edge_litert", True) == len(os.sched_getaffinity(0))
