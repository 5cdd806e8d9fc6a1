"""Prove an exported file loads where it will run: each device runtime, each in
its own TensorFlow-free environment.

The environments are Python interpreters listed in ``EDGETL_RUNTIME_PYTHONS``
(``os.pathsep``-separated); without it, the ``.venv-edge`` (ai-edge-litert)
and ``.venv-legacy`` (tflite-runtime 2.14, numpy<2) that ``make setup-edge``
builds in the current folder are used when present. They are found from the
folder the user works in, not from where edgetl's source lies, so an
installed edgetl checks the same runtimes as a checkout. Each runs ``python
-m edge.compat MODEL`` with its own installed edgetl (``pip install
'edgetl[edge]'``), exactly as a device would; the in-process ai-edge-litert is
always checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List

from edge.compat import probe

DEVICE_VENVS = (".venv-edge", ".venv-legacy")


def runtime_pythons() -> List[str]:
    configured = os.environ.get("EDGETL_RUNTIME_PYTHONS")
    if configured is not None:
        return [p for p in configured.split(os.pathsep) if p]
    found = [Path.cwd() / name / "bin" / "python" for name in DEVICE_VENVS]
    return [str(p) for p in found if p.exists()]


def check(model_path: Path) -> List[Dict[str, Any]]:
    """One entry per (environment, runtime) that is installed there."""
    results = [{**probe(str(model_path), "ai_edge_litert"), "environment": "this process"}]
    results = [r for r in results if r["installed"]]
    for python in runtime_pythons():
        try:
            completed = subprocess.run(
                # -I: the venv's own edgetl, never an edge/ folder where the user stands
                [python, "-I", "-m", "edge.compat", str(Path(model_path).resolve())],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            results.append(
                {"environment": python, "ok": False, "runtime": "?", "error": str(error)}
            )
            continue
        rows = [line for line in completed.stdout.splitlines() if line.startswith("{")]
        for line in rows:
            results.append({**json.loads(line), "environment": python})
        if not rows:  # no runtime there, edgetl missing there, or a crash: said, not skipped
            lines = completed.stderr.strip().splitlines()
            error = (
                lines[-1] if completed.returncode and lines else "no TFLite runtime installed there"
            )
            results.append({"environment": python, "ok": False, "runtime": "?", "error": error})
    return results


def describe(results: List[Dict[str, Any]]) -> List[str]:
    lines = []
    for r in results:
        where = (
            "this process"
            if r["environment"] == "this process"
            else Path(r["environment"]).parents[1].name
        )
        status = "loads and runs" if r["ok"] else f"FAILS: {r.get('error', '')}"
        lines.append(
            f"  {r['runtime']} {r.get('version', '?')} (numpy {r.get('numpy', '?')}, {where}): {status}"
        )
    return lines
