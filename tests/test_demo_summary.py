"""``make demo``'s last lines name the INT8 file the export shipped, full INT8 or the
repair's mix (a demo whose export shipped a mix once ended in a traceback)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))
from demo_summary import summary_lines  # noqa: E402


@pytest.mark.parametrize(
    "quant, name", [("int8", "model_int8.tflite"), ("int8-mixed", "model_int8_mixed.tflite")]
)
def test_the_summary_names_the_shipped_int8_file(tmp_path, quant, name):
    model = {
        "quant": quant,
        "path": name,
        "top1": 0.94,
        "top1_drop_pts": 2.0,
        "agreement": 0.98,
        "size_bytes": 2048,
    }
    parity = {"n_images": 50, "keras": {"top1": 0.96}, "models": [model]}
    (tmp_path / "parity.json").write_text(json.dumps(parity))
    lines = summary_lines(tmp_path)
    assert f"  model size       2 KiB ({name})" in lines
    assert "  drop             +2.00 points" in lines
