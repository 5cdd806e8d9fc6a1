"""Two and three workers on 127.0.0.1 train one model with ``--strategy multiworker``,
as machines would: each started with its own ``TF_CONFIG``, the chief alone writing
``--out``; then export (and validate) the run like any other, and compare it with one
worker trained on the same kind of data.

Both runs give the workers uneven shares on purpose (a split that does not divide by
the global batch, so one worker has a step more than another before padding): the
crash real data showed ("Collective instance ... expected data_type 9 but got
data_type 1"). Loopback only, each process bounded by a timeout and killed in
``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
from conftest import REPO, run_cli

WORKER_SECONDS = 420  # two TensorFlow processes on two cores: ~100 s measured here
# The options of the session's tiny run (conftest.TINY), which is the one-worker
# run the two workers are compared with: the same generated images, seed and epochs.
TRAIN = [
    "--data", "synthetic", "--synthetic-per-class", "80", "--seed", "7",
    "--image-size", "96", "--alpha", "0.35", "--weights", "none", "--epochs", "1",
    "--fine-tune-epochs", "10", "--fine-tune-learning-rate", "3e-3", "--patience", "0",
    "--no-out-of-class",
]  # fmt: skip
# Two workers split each batch of 32 into two of 16 (BatchNorm statistics per
# replica) and see their images in another order, so they cannot match one worker
# exactly. Measured here: val top-1 0.975 against 1.000, test 0.875 against 0.900
# (40 images each, so one image is 0.025); 0.15 is six images.
ACCURACY_TOLERANCE = 0.15


def free_ports(count: int) -> List[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: List[int], index: int) -> str:
    workers = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def start_workers(out: Path, options: List[str], count: int = 2) -> List[subprocess.Popen]:
    ports = free_ports(count)
    return [
        subprocess.Popen(
            [sys.executable, "-m", "toolchain.cli", "train", "--out", str(out),
             "--strategy", "multiworker", *options],
            env={**os.environ, "TF_CONFIG": tf_config(ports, index)},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(count)
    ]  # fmt: skip


def finish(workers: List[subprocess.Popen]) -> List[tuple]:
    """Each worker's (exit code, stderr); any still running at the deadline is killed."""
    deadline = time.monotonic() + WORKER_SECONDS
    results = []
    try:
        for worker in workers:
            left = max(1.0, deadline - time.monotonic())
            _, stderr = worker.communicate(timeout=left)
            results.append((worker.returncode, stderr))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the workers did not finish within {WORKER_SECONDS}s")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    return results


def train_together(tmp_path: Path, options: List[str], count: int) -> dict:
    """``count`` workers train one run; every one exits 0 without a traceback, the chief
    wrote the run and nothing else is left beside it. Returns the run's results."""
    out = tmp_path / "run"
    start = time.perf_counter()
    results = finish(start_workers(out, options, count))
    for code, stderr in results:
        assert code == 0, stderr[-3000:]
        assert "Traceback" not in stderr
    assert f"with {count} replica(s)" in results[0][1]  # one strategy over every worker
    assert (out / "model.keras").is_file() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    results = json.loads((out / "config.json").read_text())["results"]
    print(f"{count} workers: {time.perf_counter() - start:.0f}s {results}")
    return results


def assert_close_to_one_worker(results: dict, tiny_run: Path) -> None:
    one = json.loads((tiny_run / "config.json").read_text())["results"]
    print(f"one worker: {one}")
    assert results["val_top1"] > 0.5, results  # five classes: chance is 0.2
    for split in ("val_top1", "test_top1"):
        assert abs(results[split] - one[split]) <= ACCURACY_TOLERANCE, (results, one)


@pytest.mark.slow
def test_two_workers_with_uneven_shares_train_one_model_that_exports_and_validates(
    tiny_run, tmp_path
):
    # 81 images per class: 325 to train on, which 36 does not divide; each worker's
    # replica takes 18 a step, so its 163 and 162 images are 10 steps and 9 unpadded.
    # The images differ from the tiny run's 80 a class (the generator draws them in
    # turn), but are drawn the same way, so the accuracy is comparable within tolerance.
    uneven = [*TRAIN, "--synthetic-per-class", "81", "--batch-size", "36"]  # the last wins
    results = train_together(tmp_path, uneven, 2)
    assert_close_to_one_worker(results, tiny_run)
    out = tmp_path / "run"
    exported = run_cli("export", str(out), "--quant", "float16")
    assert exported.returncode == 0, exported.stderr[-2000:]
    validated = run_cli("validate", str(out))
    assert validated.returncode == 0, validated.stderr[-2000:]
    assert (out / "parity.json").is_file()


@pytest.mark.slow
def test_three_workers_with_uneven_validation_steps_train_and_export(tmp_path):
    # The tiny run's own data; 39 a step is 13 a replica: the 40 val images split
    # 14, 13, 13 are 2, 1 and 1 steps unpadded (the flowers128 crash had 9 against 8).
    results = train_together(tmp_path, [*TRAIN, "--batch-size", "39"], 3)
    # Learned, not "close to one worker": at 39 a step (13 a replica, BatchNorm statistics
    # per replica, from scratch) it trains another model than the one-worker run's 32 a
    # step, and one fresh-clone CI run measured val 0.8 against that run's 1.0 (40
    # images), past the two-worker test's tolerance, while the previous ones passed it.
    for split in ("val_top1", "test_top1"):
        assert results[split] >= 0.6, results  # five classes: chance is 0.2
    exported = run_cli("export", str(tmp_path / "run"), "--quant", "float16")
    assert exported.returncode == 0, exported.stderr[-2000:]


SMALL = [
    "--data", "synthetic", "--synthetic-per-class", "16", "--seed", "2", "--image-size", "32",
    "--alpha", "0.35", "--weights", "none", "--epochs", "1", "--fine-tune-epochs", "3",
    "--patience", "0",
]  # fmt: skip


@pytest.mark.slow
def test_a_killed_worker_stops_the_chief_in_one_line_and_resume_continues_both(tmp_path):
    out = tmp_path / "run"
    ports = free_ports(2)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]

    def worker(index: int, extra: List[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "toolchain.cli", "train", "--out", str(out),
             "--strategy", "multiworker", *SMALL, *extra],
            env={**os.environ, "TF_CONFIG": tf_config(ports, index)},
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=logs[index].open("w"), text=True,
        )  # fmt: skip

    workers = [worker(0, []), worker(1, [])]
    try:
        deadline = time.monotonic() + WORKER_SECONDS
        # Kill worker 1 once the chief has finished a fine-tuning epoch (checkpointed).
        while "fine_tune epoch 1/3" not in logs[0].read_text():
            assert workers[0].poll() is None, logs[0].read_text()[-2000:]
            assert time.monotonic() < deadline, "no fine-tuning epoch in time"
            time.sleep(0.5)  # polling a log file, not waiting for an outcome
        workers[1].kill()
        workers[0].wait(timeout=180)
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
            process.wait()
    chief_log = logs[0].read_text()
    assert workers[0].returncode == 3, chief_log[-2000:]
    errors = [line for line in chief_log.splitlines() if line.startswith("edgetl: error:")]
    assert len(errors) == 1 and "--resume" in errors[0] and "Traceback" not in chief_log
    assert not (out / "model.keras").exists()

    ports = free_ports(2)  # the old ports may linger in TIME_WAIT
    results = finish([worker(0, ["--resume"]), worker(1, ["--resume"])])
    for (code, _), log in zip(results, logs):
        assert code == 0, log.read_text()[-3000:]
        text = log.read_text()
        # Both continue after the last finished epoch instead of starting over.
        assert "head phase already done" in text and "fine_tune epoch 1/3" not in text
        assert "fine_tune epoch 3/3" in text
    assert (out / "model.keras").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "worker0.log", "worker1.log"]


def test_a_worker_that_never_joins_ends_the_chief_in_bounded_time_with_exit_3(tmp_path):
    """Only worker 0 of a two-worker cluster is started: TensorFlow would wait for
    worker 1 for ever; EDGETL_WORKER_TIMEOUT bounds it (toolchain/train/cluster_watch.py)."""
    ports = free_ports(2)
    chief = subprocess.Popen(
        [sys.executable, "-m", "toolchain.cli", "train", "--out", str(tmp_path / "run"),
         "--strategy", "multiworker", *SMALL],
        env={**os.environ, "TF_CONFIG": tf_config(ports, 0), "EDGETL_WORKER_TIMEOUT": "3"},
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _, stderr = chief.communicate(timeout=WORKER_SECONDS)
    finally:
        if chief.poll() is None:
            chief.kill()
            chief.wait()
    assert chief.returncode == 3, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("edgetl: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert f"worker 1 (127.0.0.1:{ports[1]}) did not join" in errors[0], errors[0]
    assert "EDGETL_WORKER_TIMEOUT" in errors[0]
    assert not (tmp_path / "run" / "model.keras").exists()


@pytest.mark.slow
def test_a_chief_killed_after_the_workers_finished_completes_the_run_alone(tmp_path):
    """The workers end once the last collective step is behind them and remove their
    folders; a chief killed after that (here while it calibrates) used to wait on
    --resume for a cluster that no longer comes. It now completes the run alone, with
    no epoch trained again, and a worker started again says its part was done."""
    out = tmp_path / "run"
    ports = free_ports(2)
    worker_log = tmp_path / "worker1.log"

    def start(index: int, extra: List[str], **streams) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "toolchain.cli", "train", "--out", str(out),
             "--strategy", "multiworker", *TRAIN, "--fine-tune-epochs", "2", *extra],
            env={**os.environ, "TF_CONFIG": tf_config(ports, index), "PYTHONUNBUFFERED": "1"},
            cwd=REPO, text=True, start_new_session=True, **streams,
        )  # fmt: skip

    # The chief is stopped (with its watched child: one process group) the moment it
    # says it calibrates, held until worker 1 has ended, then killed.
    chief = start(0, [], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    worker = start(1, [], stdout=subprocess.DEVNULL, stderr=worker_log.open("w"))
    try:
        seen = []
        for line in chief.stderr:
            seen.append(line)
            if line.startswith("calibration:"):
                os.killpg(chief.pid, signal.SIGSTOP)
                break
        assert seen and seen[-1].startswith("calibration:"), "".join(seen[-20:])
        assert worker.wait(timeout=WORKER_SECONDS) == 0, worker_log.read_text()[-2000:]
        os.killpg(chief.pid, signal.SIGKILL)
        chief.wait(timeout=60)
    finally:
        for process in (chief, worker):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        chief.stderr.close()
    assert not (out / "model.keras").exists()  # killed before the commit
    assert not (tmp_path / ".run.worker-1").exists()  # the worker had finished

    ports = free_ports(2)
    (chief_code, chief_log), (worker_code, worker_err) = finish(
        [start(0, ["--resume"], stdout=subprocess.PIPE, stderr=subprocess.PIPE),
         start(1, ["--resume"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    )  # fmt: skip
    assert chief_code == 0, chief_log[-3000:]
    assert "completes the run alone" in chief_log and "fine-tune phase already done" in chief_log
    assert "fine_tune epoch" not in chief_log and "Traceback" not in chief_log
    assert (out / "model.keras").is_file()
    assert not (out / "checkpoints" / "after_fine_tune.weights.h5").exists()
    recorded = json.loads((out / "config.json").read_text())["options"]
    assert recorded["strategy"] == "multiworker"  # the model is the cluster's
    errors = [line for line in worker_err.splitlines() if line.startswith("edgetl: error:")]
    assert worker_code == 2 and len(errors) == 1, worker_err[-2000:]
    assert "finished its part" in errors[0] and "Traceback" not in worker_err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "worker1.log"]
