"""``shipped_set.plan`` and the transaction's bookkeeping as plain Python: what a run
keeps after an export, from names and reports alone (no TensorFlow)."""

from __future__ import annotations

from toolchain.core.rundir import RunDir
from toolchain.export import shipped_set, transaction

BUDGET = {"max_drop": 1.0, "min_agreement": 0.95, "defaulted": True, "source": "default"}


def new_report(*names: str, shipped=None):
    return {
        "budget": BUDGET,
        "models": [{"path": n, "quant": n.split("_")[1].split(".")[0]} for n in names],
        "shipped": shipped,
    }


def test_a_passing_mode_takes_its_slot_and_the_other_int8_name_goes():
    run = {"model_int8_mixed.tflite", "model_int8.tflite.rejected", "parity.json", "rejected"}
    staged = {"model_int8.tflite", "export_report.json", "parity.json"}
    shipped = {"int8": "model_int8.tflite", "why": "full INT8 meets the budget"}
    plan = shipped_set.plan(
        run, staged, ["int8"], {}, new_report("model_int8.tflite", shipped=shipped), None, True
    )
    assert set(plan.remove) == {"model_int8_mixed.tflite", "model_int8.tflite.rejected", "rejected"}
    assert [e["path"] for e in plan.report["models"]] == ["model_int8.tflite"]
    assert plan.report["models"][0]["status"] == "passed"
    assert plan.report["models"][0]["budget"] == BUDGET


def test_an_older_reports_file_is_only_passed_when_that_report_vouched_for_it():
    """An older edgetl left a float16 that missed under its shippable name."""
    old = {
        "budget": BUDGET,
        "models": [{"path": "model_float16.tflite"}, {"path": ["not", "a", "name"]}, 7],
        "shipped": {"int8": None, "why": "pending"},
    }
    run = {"model_float16.tflite", "model_int8.tflite"}
    staged = {"model_dynamic.tflite", "export_report.json", "parity.json"}
    plan = shipped_set.plan(
        run, staged, ["dynamic"], {}, new_report("model_dynamic.tflite"), old, True
    )
    statuses = {e["path"]: e["status"] for e in plan.report["models"]}
    assert statuses == {
        "model_dynamic.tflite": "passed",
        "model_float16.tflite": "not validated",
        "model_int8.tflite": "not validated",
    }
    assert "not validated" in plan.report["shipped"]["why"]


def test_without_validation_the_old_parity_report_goes_with_the_models_it_described():
    run = {"model_int8.tflite", "parity.json", "parity.md", "parity_reference.json"}
    staged = {"model_int8.tflite", "export_report.json"}
    report = new_report("model_int8.tflite", shipped={"int8": "model_int8.tflite", "why": "x"})
    plan = shipped_set.plan(run, staged, ["int8"], {}, {**report, "budget": None}, None, False)
    assert {"parity.json", "parity.md", "parity_reference.json"} <= set(plan.remove)
    assert plan.report["models"][0]["status"] == "not validated"


def test_a_miss_keeps_the_previous_file_and_names_it_as_shipped():
    old = {"budget": BUDGET, "models": [{"path": "model_int8.tflite", "status": "passed"}],
           "shipped": {"int8": "model_int8.tflite", "why": "met"}}  # fmt: skip
    run = {"model_int8.tflite"}
    staged = {"model_int8.tflite.rejected", "model_float16.tflite", "export_report.json"}
    missed = {"int8": "INT8 budget missed: ..."}
    report = new_report("model_int8.tflite.rejected", "model_float16.tflite")
    plan = shipped_set.plan(run, staged, ["int8", "float16"], missed, report, old, True)
    assert "model_int8.tflite" not in plan.remove
    kept = next(e for e in plan.report["models"] if e["path"] == "model_int8.tflite")
    assert kept["kept_from_previous_export"] and kept["status"] == "passed"
    assert plan.report["shipped"]["int8"] == "model_int8.tflite"
    assert plan.report["modes"]["int8"]["status"] == "missed"


def test_a_kill_inside_reject_keeps_one_set_of_evidence(tmp_path):
    run = RunDir(tmp_path)
    older = tmp_path / ".rejected.older"  # the old evidence, moved aside, then the kill
    older.mkdir()
    (older / "export_report.json").write_text("{}")
    out = transaction.begin(run)  # begin() recovers first
    assert (tmp_path / "rejected" / "export_report.json").is_file() and not older.exists()
    (out.path / "model_int8.tflite.rejected").write_bytes(b"new")
    transaction.reject(run)
    assert (tmp_path / "rejected" / "model_int8.tflite.rejected").read_bytes() == b"new"
    assert not older.exists() and not out.path.exists()
