"""Coral's ``edgetpu_compiler``, run where it is installed, as the final word on the Edge TPU.

The compiler ships only from Coral's apt repository (Debian x86-64 and arm64), so
most machines that export do not have it; ``edge.edgetpu_check`` covers them
with the documented rules. Where ``edgetpu_compiler`` is on the PATH (or named by
``EDGETL_EDGETPU_COMPILER``), ``--target edgetpu`` runs it with ``-s`` (the
operator table) and ``-m`` set to the runtime version the operators need, and
records how many operators it mapped to the Edge TPU and how many it left on the
CPU. It prints the two "Number of operations that will run on ..." lines only
when some operator is left out; otherwise the table's "Mapped to Edge TPU" rows
count them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from edge.errors import MissingEnvironment
from toolchain.accelerators.failed import CompilerFailed, last_line, run_compiler

TIMEOUT_S = 600  # the compiler's own timer is 180 s per segment
MAPPED = "Mapped to Edge TPU"


def find_compiler() -> Optional[str]:
    """``EDGETL_EDGETPU_COMPILER``, else ``edgetpu_compiler`` on the PATH, else None."""
    named = os.environ.get("EDGETL_EDGETPU_COMPILER")
    if named:
        if not (Path(named).is_file() and os.access(named, os.X_OK)):
            raise MissingEnvironment(
                f"EDGETL_EDGETPU_COMPILER={named} is not an executable file; point it at "
                "Coral's edgetpu_compiler or unset it"
            )
        return named
    return shutil.which("edgetpu_compiler")


def parse_log(text: str) -> Dict[str, Any]:
    """The compiler's printed summary as figures."""
    total = re.search(r"^Total number of operations: (\d+)", text, re.M)
    if not total:
        raise CompilerFailed(
            f"edgetpu_compiler printed no operation count (last line: {last_line(text)})"
        )
    rows = re.findall(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*?)\s*$", text, re.M)
    mapped = sum(int(count) for _, count, status in rows if status == MAPPED)
    on_cpu = re.search(r"^Number of operations that will run on CPU: (\d+)", text, re.M)
    n_ops = int(total.group(1))
    cpu = int(on_cpu.group(1)) if on_cpu else n_ops - mapped
    subgraphs = re.search(r"^Number of Edge TPU subgraphs: (\d+)", text, re.M)
    version = re.search(r"^Edge TPU Compiler version (\S+)", text, re.M)
    return {
        "compiler": f"edgetpu_compiler {version.group(1)}" if version else "edgetpu_compiler",
        "n_ops": n_ops,
        "edgetpu_ops": n_ops - cpu,
        "cpu_ops": cpu,
        "cpu_ops_named": [
            {"op": op, "count": int(count), "status": status}
            for op, count, status in rows
            if status != MAPPED
        ],
        "edgetpu_subgraphs": int(subgraphs.group(1)) if subgraphs else None,
    }


def compile_model(compiler: str, model: Path, min_runtime: int) -> Dict[str, Any]:
    """Run the compiler on ``model`` in a temporary folder; its verdict and command."""
    with tempfile.TemporaryDirectory(prefix="edgetl-edgetpu-") as folder:
        command = [compiler, "-s", "-m", str(min_runtime), "-o", folder, str(model)]
        text = run_compiler("edgetpu_compiler", command, model.name, TIMEOUT_S)
        verdict = parse_log(text)
    return {**verdict, "command": f"edgetpu_compiler -s -m {min_runtime} {model.name}"}


def verdict_line(verdict: Dict[str, Any]) -> str:
    line = (
        f"Edge TPU ({verdict['compiler']}): {verdict['edgetpu_ops']} of {verdict['n_ops']} ops "
        "mapped to the Edge TPU"
    )
    if verdict["cpu_ops_named"]:
        first = verdict["cpu_ops_named"][0]
        line += f"; on the CPU: {first['op']} ({first['status']})"
    return line
