"""The QAT worker's failures, faked with real processes: a crash never exits 0, a hang
is stopped by the no-progress limit, the worker dies with its parent, and no kill
leaves its arrays behind.

The fakes are small scripts written into ``tmp_path`` and named as the worker's
Python (``EDGETL_QAT_PYTHON``, or ``run_worker``'s ``python``): the product has no
test switch. A fake is started as ``FAKE -I worker.py SPEC_JSON``, like the real
worker, and the parent-death fake imports the real ``worker`` to use its
lifeline and its memory-mapped inputs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edge.errors import BAD_INPUT, ENVIRONMENT, INTERNAL, EdgetlError
from tests.conftest import REPO, assert_one_line_error, run_cli, without_out_of_class
from tests.test_faults import snapshot
from toolchain.export.qat import supervisor
from toolchain.export.qat.finetune import qat_python, spill
from toolchain.export.qat.supervisor import crash_error, run_worker, stall_seconds


def fake_python(tmp_path: Path, body: str, name: str = "fake-python") -> Path:
    """An executable that stands in for the QAT venv's interpreter."""
    script = tmp_path / name
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return script


def spec_for(folder: Path, handles) -> dict:
    names = ("weights", "train", "teacher", "calibration", "model")
    return {
        "fds": dict(zip(names, [h.fileno() for h in handles])),
        "scratch": str(folder / ".qat-work"),
        "train_images": 4,
        "calibration_images": 0,
        "image_size": 8,
        "num_classes": 2,
    }


@pytest.fixture
def handles(tmp_path):
    files = [tempfile.TemporaryFile(dir=tmp_path) for _ in range(5)]  # noqa: SIM115
    yield files
    for handle in files:
        handle.close()


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_stall_limit_comes_from_the_environment_and_bad_values_are_refused(monkeypatch):
    monkeypatch.delenv("EDGETL_QAT_STALL_SECONDS", raising=False)
    assert stall_seconds() == supervisor.DEFAULT_STALL_SECONDS
    monkeypatch.setenv("EDGETL_QAT_STALL_SECONDS", "2.5")
    assert stall_seconds() == 2.5
    for bad in ("soon", "0", "-3", "inf", "nan"):
        monkeypatch.setenv("EDGETL_QAT_STALL_SECONDS", bad)
        with pytest.raises(EdgetlError) as caught:
            qat_python()  # export checks it up front, before any work
        assert caught.value.exit_code == BAD_INPUT
        assert "EDGETL_QAT_STALL_SECONDS" in str(caught.value)


@pytest.mark.parametrize(
    "code, exit_code, fragment",
    [
        (3, ENVIRONMENT, "lacks a package"),
        (6, ENVIRONMENT, "out of memory"),
        (7, INTERNAL, "bug in edgetl"),
        (1, INTERNAL, "bug in edgetl"),
        (-signal.SIGKILL, ENVIRONMENT, "out-of-memory killer"),
        (-signal.SIGTERM, ENVIRONMENT, "SIGTERM"),
        (-signal.SIGILL, ENVIRONMENT, "CPU instructions"),
        (-signal.SIGSEGV, INTERNAL, "SIGSEGV"),
        (-signal.SIGABRT, INTERNAL, "SIGABRT"),
    ],
)
def test_each_way_a_worker_can_end_maps_to_environment_or_bug(code, exit_code, fragment):
    error = crash_error("/venv/bin/python", code, ["out of memory"])
    assert error.exit_code == exit_code and fragment in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    "body, exit_code, fragments",
    [
        ("raise ValueError('tensor shapes disagree')\n", INTERNAL, ["exit 1", "ValueError"]),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", ENVIRONMENT, ["SIGKILL"]),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", INTERNAL, ["SIGSEGV"]),
        ("import sys\nprint('qat-error: No space left on device', file=sys.stderr)\nsys.exit(6)\n",
         ENVIRONMENT, ["No space left"]),
    ],
)  # fmt: skip
def test_a_crashing_worker_raises_with_the_code_of_its_cause(
    tmp_path, handles, body, exit_code, fragments
):
    python = fake_python(tmp_path, body)
    with pytest.raises(EdgetlError) as caught:
        run_worker(str(python), spec_for(tmp_path, handles), log=lambda line: None)
    assert caught.value.exit_code == exit_code
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)
    assert not (tmp_path / ".qat-work").exists()


def test_a_hung_worker_is_stopped_by_the_no_progress_limit(tmp_path, handles, monkeypatch):
    monkeypatch.setenv("EDGETL_QAT_STALL_SECONDS", "1")
    pid_file = tmp_path / "pid"
    python = fake_python(
        tmp_path,
        f"""
        import os, sys, time
        print("qat: starting", file=sys.stderr, flush=True)
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        while True:  # hangs: no progress ever again
            time.sleep(0.1)
        """,
    )
    lines = []
    began = time.monotonic()
    with pytest.raises(EdgetlError) as caught:
        run_worker(str(python), spec_for(tmp_path, handles), log=lines.append)
    assert caught.value.exit_code == ENVIRONMENT
    message = str(caught.value)
    assert "no progress for 1s" in message and "EDGETL_QAT_STALL_SECONDS=" in message
    assert lines == ["qat: starting"]
    assert gone(int(pid_file.read_text()))
    assert time.monotonic() - began < 30  # stopped by the limit, not by the test's timeout


def test_heartbeats_keep_a_slow_worker_alive_past_the_limit(tmp_path, handles, monkeypatch):
    """The limit is on silence, not on total time: 3 s of heartbeats outlive a 1 s limit."""
    monkeypatch.setenv("EDGETL_QAT_STALL_SECONDS", "1")
    python = fake_python(
        tmp_path,
        """
        import json, os, sys, time
        spec = json.loads(sys.argv[3])
        end = time.monotonic() + 3
        while time.monotonic() < end:
            print("qat-alive", file=sys.stderr, flush=True)
            time.sleep(0.2)
        os.pwrite(spec["fds"]["model"], b"flatbuffer", 0)
        print('qat-report: {"history": []}', file=sys.stderr, flush=True)
        """,
    )
    report = run_worker(str(python), spec_for(tmp_path, handles), log=lambda line: None)
    assert report == {"history": [], "exit_code": 0}
    handles[4].seek(0)
    assert handles[4].read() == b"flatbuffer"


PARENT = """
import json, sys, tempfile
from pathlib import Path
import numpy as np
from toolchain.export.qat.finetune import spill
from toolchain.export.qat.supervisor import run_worker

run = Path(sys.argv[1])
pixels = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)
handles = [tempfile.TemporaryFile(dir=run) for _ in range(5)]
handles[1] = spill(pixels, run, np.uint8)
spec = {
    "fds": dict(zip(("weights", "train", "teacher", "calibration", "model"),
                    [h.fileno() for h in handles])),
    "scratch": str(run / ".qat-work"), "train_images": 4, "calibration_images": 0,
    "image_size": 8, "num_classes": 2,
}
run_worker(sys.argv[2], spec, print)
"""


def test_the_worker_dies_with_its_parent_and_leaves_nothing_in_the_run(tmp_path):
    """kill -9 of the exporting process: the worker (the real lifeline of the worker)
    exits, its scratch folder goes, and the unlinked array files were never visible."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_text("the user's files stay")
    before = sorted(os.listdir(run))
    ready = tmp_path / "ready"
    python = fake_python(
        tmp_path,
        f"""
        import importlib.util, json, os, sys, time
        spec = json.loads(sys.argv[3])
        load = importlib.util.spec_from_file_location("qat_worker", sys.argv[2])
        worker = importlib.util.module_from_spec(load)
        load.loader.exec_module(worker)
        worker.watch_parent(spec["scratch"])
        pixels = worker.mapped_rows(spec["fds"]["train"], 4, (8, 8, 3), "uint8")
        assert int(pixels[3, 7, 7, 2]) == (4 * 8 * 8 * 3 - 1) % 256  # the parent's bytes
        open(os.path.join(os.environ["TMPDIR"], "tmp-savedmodel"), "w").write("x")
        open({str(ready)!r}, "w").write(str(os.getpid()))
        while True:
            worker.alive()
            time.sleep(0.1)
        """,
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(run), str(python)], cwd=REPO, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: ready.exists() and ready.read_text(), 60, "the worker to start")
        worker_pid = int(ready.read_text())
        assert (run / ".qat-work" / "tmp-savedmodel").exists()
        assert sorted(os.listdir(run)) == sorted([*before, ".qat-work"])  # arrays: unlinked
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        wait_for(lambda: gone(worker_pid), 30, "the orphaned worker to exit")
        wait_for(lambda: sorted(os.listdir(run)) == before, 30, "the scratch folder to go")
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait()
    assert (run / "model.keras").read_text() == "the user's files stay"


def test_spill_streams_rows_into_an_unlinked_file(tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (300, 4, 4, 3), dtype=np.uint8)
    handle = spill(rows, tmp_path, np.uint8)
    try:
        assert os.listdir(tmp_path) == []
        handle.seek(0)
        assert np.array_equal(np.frombuffer(handle.read(), np.uint8).reshape(rows.shape), rows)
    finally:
        handle.close()


@pytest.mark.parametrize(
    "body, code, fragment",
    [
        ("pass\n", 4, "exited 0 without writing a model"),  # the crash that once exited 0
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", 3, "SIGKILL"),
    ],
)
@pytest.mark.slow
def test_export_qat_exits_non_zero_in_one_line_when_the_worker_fails(
    micro_copy, tmp_path, body, code, fragment
):
    python = fake_python(tmp_path, body)
    without_out_of_class(micro_copy)  # QAT rebuilds the classes alone (README)
    before = snapshot(micro_copy)
    result = run_cli(
        "export", str(micro_copy), "--qat", "--force", env={"EDGETL_QAT_PYTHON": str(python)}
    )
    assert_one_line_error(result, code, "--qat", fragment)
    log = str(micro_copy / "export.log")  # the converter's own log is rewritten by every export
    after = snapshot(micro_copy)
    # no model or report written, nothing left behind (.qat-work and array files included)
    assert {k: v for k, v in after.items() if k != log} == {
        k: v for k, v in before.items() if k != log
    }
