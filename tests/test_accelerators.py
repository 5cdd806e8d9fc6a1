"""Accelerator targets: files an Edge TPU or an Ethos-U NPU takes, and the checks that say so.

The Edge TPU rules are checked on real conversions that each break one rule (and on
a stand-in interpreter for the two no small Keras model makes: several subgraphs and
a static batch above one). Vela, Arm's real compiler, judges the exported files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from conftest import assert_one_line_error, edgetl_here

from edge.edgetpu_check import check, summary
from edge.runtime import load_interpreter
from edge.tensors import operators


def _convert(model, int8: bool = True) -> bytes:
    from toolchain.core.quiet import tensorflow

    tf = tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        shape = [1, *model.inputs[0].shape[1:]]
        rng = np.random.default_rng(0)

        def dataset():
            for _ in range(8):
                yield [rng.uniform(0, 255, shape).astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


@pytest.fixture(scope="module")
def rule_files(tmp_path_factory) -> Dict[str, Path]:
    """Tiny real .tflite files: one that keeps every rule, and one per broken rule."""
    from toolchain.core.quiet import keras
    from toolchain.quantize.accelerator_form import static_batch

    keras = keras()
    layers = keras.layers

    def model(*middle):
        return keras.Sequential(
            [
                keras.Input((16, 16, 3)),
                layers.Rescaling(1 / 127.5, offset=-1),
                layers.Conv2D(4, 3, strides=2, activation="relu"),
                *middle,
                layers.GlobalAveragePooling2D(),
                layers.Dense(3, activation="softmax"),
            ]
        )

    folder = tmp_path_factory.mktemp("rules")
    dynamic = _convert(model())  # the converter leaves the batch open
    files = {
        "ok": static_batch(dynamic),
        "dynamic batch": dynamic,
        "float": static_batch(_convert(model(), int8=False)),
        "unsupported op": static_batch(_convert(model(layers.LeakyReLU(0.1)))),
    }
    for name, flatbuffer in files.items():
        (folder / f"{name.replace(' ', '_')}.tflite").write_bytes(flatbuffer)
    return {name: folder / f"{name.replace(' ', '_')}.tflite" for name in files}


def verdict_of(path: Path) -> Dict:
    interpreter, _ = load_interpreter(str(path), threads=1)
    return check(interpreter)


def test_a_file_that_keeps_every_rule_passes_and_says_which_runtime_it_needs(rule_files):
    verdict = verdict_of(rule_files["ok"])
    assert verdict["ok"] and verdict["broken"] == [], verdict
    assert verdict["ops_before_first_unmappable"] == verdict["n_ops"]
    assert "none broken" in summary(verdict) and "-m 1" in summary(verdict)


@pytest.mark.parametrize(
    "name, rule",
    [
        ("dynamic batch", "static shapes"),
        ("float", "8-bit tensors only"),
        ("unsupported op", "operators the Edge TPU runs: op #"),
    ],
)
def test_each_broken_rule_is_named_with_where(rule_files, name, rule):
    verdict = verdict_of(rule_files[name])
    assert not verdict["ok"]
    assert any(line.startswith(rule) for line in verdict["broken"]), verdict["broken"]
    assert "Edge TPU rules broken" in summary(verdict)
    if name == "unsupported op":
        assert "LEAKY_RELU" in " ".join(verdict["broken"])
        assert verdict["ops_before_first_unmappable"] < verdict["n_ops"]


class StandIn:
    """An interpreter's tables for shapes no small Keras model converts to."""

    def __init__(self, shape, subgraphs=1):
        self.shape = shape
        self._interpreter = type("Inner", (), {"NumSubgraphs": lambda _: subgraphs})()

    def get_tensor_details(self):
        return [
            {"index": 0, "name": "in", "dtype": np.uint8, "shape": self.shape},
            {"index": 1, "name": "out", "dtype": np.int8, "shape": self.shape},
        ]

    def get_input_details(self):
        return self.get_tensor_details()[:1]

    def _get_ops_details(self):
        return [{"op_name": "QUANTIZE", "inputs": [0], "outputs": [1]}]


def test_a_batch_above_one_and_several_subgraphs_are_named():
    batch = check(StandIn(np.array([2, 8, 8, 3])))
    assert any("at most 3 dimensions larger than 1" in line for line in batch["broken"])
    assert check(StandIn(np.array([1, 8, 8, 3])))["ok"]
    subgraphs = check(StandIn(np.array([1, 8, 8, 3]), subgraphs=2))
    assert subgraphs["broken"] == ["one subgraph: the file has 2"]


def test_the_cpu_input_rewrite_is_what_the_check_names_first(micro_run):
    """The CPU target's file starts with DEQUANTIZE (fast_input), which no Edge TPU
    maps: the check says so, and that nothing before it would be mapped."""
    verdict = verdict_of(micro_run / "model_int8.tflite")
    assert verdict["broken"][0].startswith("operators the Edge TPU runs: op #0 DEQUANTIZE")
    assert verdict["ops_before_first_unmappable"] == 0


def _accelerator_export(run: Path, target: str, env: dict | None = None):
    budget = ("--max-drop", "5", "--min-agreement", "0.9")  # the fixture's own budget
    return edgetl_here("export", run, "--force", "--target", target, *budget, env=env)


def test_ethos_u_ships_a_batch_one_file_with_every_op_on_the_npu(micro_copy):
    result = _accelerator_export(micro_copy, "ethos-u")
    assert result.returncode == 0, result.stderr
    path = micro_copy / "model_int8.tflite"
    interpreter, _ = load_interpreter(str(path), threads=1)
    (detail,) = interpreter.get_input_details()
    assert list(detail["shape_signature"]) == [1, *detail["shape"][1:]]  # no open batch
    assert np.dtype(detail["dtype"]) == np.uint8  # camera bytes still go straight in
    first = operators(interpreter)[0]["op_name"]
    assert first == "QUANTIZE", first  # the converter's own requantize, no DEQUANTIZE
    report = json.loads((micro_copy / "export_report.json").read_text())
    entry = next(m for m in report["models"] if m["path"] == "model_int8.tflite")
    compilers = entry["accelerators"]
    assert compilers["edgetpu_rules"]["ok"], compilers["edgetpu_rules"]
    vela = compilers["ethos_u"]
    assert vela["cpu_ops"] == 0 and vela["npu_ops"] > 0, vela  # Vela: every op on the NPU
    assert vela["sram_kib"] > 0


def test_ethos_u_without_vela_is_one_line_and_changes_nothing(micro_copy, tmp_path):
    before = (micro_copy / "model_int8.tflite").read_bytes()
    missing = tmp_path / "no-vela"
    result = _accelerator_export(micro_copy, "ethos-u", env={"EDGETL_VELA": str(missing)})
    assert_one_line_error(result, 3, "EDGETL_VELA", "ethos-u-vela")
    assert (micro_copy / "model_int8.tflite").read_bytes() == before


def test_info_shows_the_edge_tpu_verdict(micro_run):
    result = edgetl_here("info", micro_run / "model_int8.tflite")
    assert result.returncode == 0, result.stderr
    assert "Edge TPU rules broken: operators the Edge TPU runs: op #0 DEQUANTIZE" in result.stdout


COMPILER_LOG = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 812 ms.

Input model: model_int8.tflite
Number of Edge TPU subgraphs: 1
Total number of operations: {total}
Operation log: model_int8_edgetpu.log
{partial}
Operator                       Count      Status

CONV_2D                        {conv}          Mapped to Edge TPU
{cpu_rows}"""
PARTIAL = (
    "\nModel successfully compiled but not all operations are supported by the Edge TPU.\n"
    "Number of operations that will run on Edge TPU: {mapped}\n"
    "Number of operations that will run on CPU: {cpu}\n"
)


def compiler_log(mapped: int, cpu: int) -> str:
    rows = f"LEAKY_RELU                     {cpu}          Operation not supported\n"
    return COMPILER_LOG.format(
        total=mapped + cpu,
        partial=PARTIAL.format(mapped=mapped, cpu=cpu) if cpu else "",
        conv=mapped,
        cpu_rows=rows if cpu else "",
    )


def test_the_edge_tpu_compilers_log_is_read_whether_or_not_all_ops_map():
    from toolchain.accelerators.edgetpu import parse_log

    whole = parse_log(compiler_log(12, 0))
    assert (whole["n_ops"], whole["edgetpu_ops"], whole["cpu_ops"]) == (12, 12, 0)
    assert whole["compiler"] == "edgetpu_compiler 16.0.384591198"
    part = parse_log(compiler_log(10, 2))
    assert (part["edgetpu_ops"], part["cpu_ops"]) == (10, 2)
    assert part["cpu_ops_named"] == [
        {"op": "LEAKY_RELU", "count": 2, "status": "Operation not supported"}
    ]


def stand_in_compiler(folder: Path, log: str) -> Path:
    """Coral's compiler is not installable here: a script that prints its log."""
    script = folder / "edgetpu_compiler"
    (folder / "log.txt").write_text(log)
    script.write_text(f"#!/bin/sh\ncat '{folder / 'log.txt'}'\n")
    script.chmod(0o755)
    return script


def test_target_edgetpu_runs_the_compiler_where_present_and_fails_on_cpu_ops(micro_copy, tmp_path):
    part = stand_in_compiler(tmp_path, compiler_log(28, 2))
    shipped = (micro_copy / "model_int8.tflite").read_bytes()
    result = _accelerator_export(micro_copy, "edgetpu", {"EDGETL_EDGETPU_COMPILER": str(part)})
    assert_one_line_error(result, 1, "--target edgetpu", "28 of 30 ops mapped", "LEAKY_RELU")
    assert (micro_copy / "model_int8.tflite").read_bytes() == shipped  # nothing changed
    report = json.loads((micro_copy / "rejected" / "export_report.json").read_text())
    entry = next(m for m in report["models"] if m["path"].startswith("model_int8"))
    assert entry["accelerators"]["edgetpu_compiler"]["edgetpu_ops"] == 28  # kept as evidence


def test_named_targets_refuse_no_validate_in_one_line(micro_copy):
    result = edgetl_here("export", micro_copy, "--force", "--target", "ethos-u", "--no-validate")
    assert_one_line_error(result, 2, "--target ethos-u", "--no-validate")


def test_a_vela_that_cannot_start_is_not_checked_or_exit_3_when_named(micro_copy, tmp_path):
    """A moved venv leaves a ``vela`` script whose interpreter is gone: the generic
    target ships and says Vela did not check it; ``ethos-u`` stops before any work."""
    broken = tmp_path / "vela"
    broken.write_text("#!/nonexistent/python\n")
    broken.chmod(0o755)
    env = {"EDGETL_VELA": str(broken)}
    before = (micro_copy / "model_int8.tflite").read_bytes()
    result = _accelerator_export(micro_copy, "ethos-u", env)
    assert_one_line_error(result, 3, "vela", "cannot start")
    assert (micro_copy / "model_int8.tflite").read_bytes() == before
    result = _accelerator_export(micro_copy, "accelerator", env)
    assert result.returncode == 0, result.stderr  # Vela only informs this target
    path = micro_copy / "model_int8.tflite"
    interpreter, _ = load_interpreter(str(path), threads=1)
    assert operators(interpreter)[0]["op_name"] == "QUANTIZE"
    report = json.loads((micro_copy / "export_report.json").read_text())
    entry = next(m for m in report["models"] if m["path"] == "model_int8.tflite")
    assert "cannot start" in entry["accelerators"]["ethos_u"]["not_checked"]
    assert entry["accelerators"]["edgetpu_rules"]["ok"]
