"""edgetl export: every mode's tensors, runtime checks, atomic files, no silent overwrite."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edge import atomic
from edge.classifier import Classifier
from tests.conftest import REPO, assert_one_line_error, edgetl_here, run_cli
from toolchain.quantize.calibration import stratified_sample


def test_calibration_is_stratified_by_class():
    labels = [0] * 90 + [1] * 9 + [2] * 1  # heavily imbalanced training split
    chosen = stratified_sample(labels, 12, seed=0)
    picked = [labels[i] for i in chosen]
    assert picked.count(2) == 1 and picked.count(1) == 5 and picked.count(0) == 6
    assert len(set(chosen)) == len(chosen) and stratified_sample(labels, 12, seed=0) == chosen


@pytest.mark.slow
def test_every_mode_has_the_io_dtypes_it_names_and_loads_on_each_runtime(run_copy):
    result = run_cli("export", str(run_copy), "--quant", "all", "--force", "--no-validate")
    assert result.returncode == 0, result.stderr
    expected = {"int8": "uint8", "float16": "float32", "dynamic": "float32", "float32": "float32"}
    report = {
        m["quant"]: m for m in json.loads((run_copy / "export_report.json").read_text())["models"]
    }
    assert set(report) == set(expected)
    for quant, dtype in expected.items():
        classifier = Classifier(run_copy / f"model_{quant}.tflite")
        assert classifier.input_dtype == np.dtype(dtype), quant
        assert [t["dtype"] for t in report[quant]["tensors"]] == [dtype, dtype]
        assert report[quant]["ops"] and report[quant]["min_runtime_version"]
        runtimes = {c["runtime"] for c in report[quant]["compatibility"] if c["ok"]}
        assert "ai_edge_litert" in runtimes, report[quant]["compatibility"]
        if os.environ.get("EDGETL_RUNTIME_PYTHONS"):  # make test: the TF-free venvs too
            assert "tflite_runtime" in runtimes, report[quant]["compatibility"]
            assert all(
                c["environment"] != "this process" or c["runtime"] == "ai_edge_litert"
                for c in report[quant]["compatibility"]
            )
    assert report["int8"]["size_ratio_to_float32"] <= 0.45
    assert report["int8"]["calibration"]["train_pixel_mean"] > 0


def test_int8_io_option(micro_copy):
    result = edgetl_here(
        "export",
        str(micro_copy),
        "--io",
        "int8",
        "--force",
        "--no-validate",
        "--calibration-samples",
        "20",
    )
    assert result.returncode == 0, result.stderr
    classifier = Classifier(micro_copy / "model_int8.tflite")
    assert classifier.input_dtype == np.int8 and classifier.input_zero_point == -128
    assert "int8" in result.stderr and "zero point -128" in result.stderr


def test_existing_models_are_not_overwritten_without_force(micro_copy):
    before = (micro_copy / "model_int8.tflite").read_bytes()
    result = run_cli("export", str(micro_copy))
    assert_one_line_error(result, 2, "model_int8.tflite exists", "--force")
    assert (micro_copy / "model_int8.tflite").read_bytes() == before


def test_atomic_write_never_leaves_a_partial_final_file(tmp_path):
    target = tmp_path / "model.tflite"
    atomic.write_bytes(target, b"old")
    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half a mod")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    # A process killed in the middle of writing cannot clean up, but the final path holds.
    code = (
        f"import os,sys; sys.path.insert(0, {str(REPO)!r})\n"
        "from edge.atomic import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    tmp.write_bytes(b'partial'); os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert target.read_bytes() == b"old"
