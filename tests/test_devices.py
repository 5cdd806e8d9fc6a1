"""Devices and strategies (toolchain/train/devices.py): who the chief of a multi-worker run
is, and MirroredStrategy really training over several (logical CPU) devices."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from toolchain.train.devices import WorkerRole, worker_role


def config(task_type: str, index: int, chief: bool = False) -> str:
    cluster = {"worker": ["a:1", "b:1"], **({"chief": ["c:1"]} if chief else {})}
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_worker_zero_is_the_chief_unless_the_cluster_names_one():
    assert worker_role("multiworker", config("worker", 0)) == WorkerRole(2, 0, True)
    assert worker_role("multiworker", config("worker", 1)) == WorkerRole(2, 1, False)
    assert worker_role("multiworker", config("chief", 0, chief=True)) == WorkerRole(3, 0, True)
    assert worker_role("multiworker", config("worker", 0, chief=True)) == WorkerRole(3, 1, False)


def test_no_role_outside_multiworker_or_with_a_broken_tf_config():
    assert worker_role("auto", config("worker", 1)) is None
    assert worker_role("multiworker", "{not json") is None
    assert worker_role("multiworker", config("worker", 5)) is None


MIRRORED_SCRIPT = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from toolchain.core.options import TrainOptions
from toolchain.train.command import train
result = train(TrainOptions(
    out=sys.argv[1], data="synthetic", synthetic_per_class=16, image_size=32, alpha=0.35,
    weights="none", epochs=2, fine_tune_epochs=1, strategy="mirrored", seed=3, patience=0,
), log=lambda line: print(line, flush=True))
print("top1", result.val_top1, result.test_top1)
"""


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """A Python script in a fresh process (TensorFlow's devices are fixed at its start)."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_mirrored_trains_over_two_logical_cpu_devices(tmp_path):
    out = tmp_path / "run"
    done = run_script(MIRRORED_SCRIPT, str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MirroredStrategy with 2 replica(s)" in done.stdout
    assert "head epoch 2/2" in done.stdout and "fine_tune epoch 1/1" in done.stdout
    # The saved model is a plain one (no distributed variables) that loads and predicts.
    assert (out / "model.keras").is_file()
    top1 = [float(x) for x in done.stdout.split("top1")[-1].split()]
    assert all(0.0 <= x <= 1.0 for x in top1)


MIXED_PRECISION_SCRIPT = """
import sys
from toolchain.train import phases
from toolchain.train import command as train_module
from toolchain.core.options import TrainOptions

# edgetl refuses --mixed-precision without a GPU (float16 on a CPU is emulated and
# slow); TensorFlow still runs it, so the test lifts the refusal to run the path.
def float16_on_cpu(tf, keras):
    keras.mixed_precision.set_global_policy("mixed_float16")
    return "mixed precision: float16 compute on the CPU (test)"

phases.enable_mixed_precision = float16_on_cpu
train_module.require_gpu = lambda: None
train_module.train(TrainOptions(
    out=sys.argv[1], data="synthetic", synthetic_per_class=16, image_size=32, alpha=0.35,
    weights="none", epochs=2, fine_tune_epochs=1, seed=3, patience=0, mixed_precision=True,
), log=lambda line: print(line, flush=True))
"""


@pytest.mark.slow
def test_mixed_precision_trains_on_the_cpu_and_saves_a_float32_model(tmp_path):
    out = tmp_path / "run"
    done = run_script(MIXED_PRECISION_SCRIPT, str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "float16 compute" in done.stdout and "fine_tune epoch 1/1" in done.stdout
    check = run_script(
        "import sys, keras; m = keras.saving.load_model(sys.argv[1]); "
        "print(sorted({layer.dtype_policy.name for layer in m.layers}))",
        str(out / "model.keras"),
    )
    assert check.stdout.strip().splitlines()[-1] == "['float32']", check.stderr[-2000:]
