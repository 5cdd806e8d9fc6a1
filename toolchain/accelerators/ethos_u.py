"""Arm's Ethos-U NPU compiler (Vela) as the judge of "every op on the accelerator".

Why a compiler and not a claim: an all-INT8 file can still put operators on the
microcontroller's CPU (Vela declines an op for its data type, its shape or its
parameters), and only the compiler knows. ``ethos-u-vela`` installs from PyPI as a
binary wheel and compiles a MobileNetV2 in about a second, so every accelerator
export runs it where it is installed and records its verdict: how many operators
run on the NPU and how many on the CPU (each named, with Vela's reason), and the
SRAM and flash the network needs.

The configuration is one common part, an Ethos-U55 with 128 MACs per cycle in
Arm's "high-end embedded" system with shared SRAM (Vela's own defaults are the
256-MAC part and warn that the result "may be invalid"): what runs on the NPU
is the same for every U55 size; the memory figures are this part's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from edge.errors import MissingEnvironment
from toolchain.accelerators.failed import CompilerFailed, last_line, run_compiler
from toolchain.core.text import single_line

VELA_VERSION = "5.2.0"  # the pinned wheel (pyproject's `accelerators` extra)
ACCELERATOR = "ethos-u55-128"
# Vela resolves the relative config name against the files it ships.
SYSTEM = (
    "--config",
    "Arm/vela.ini",
    "--system-config",
    "Ethos_U55_High_End_Embedded",
    "--memory-mode",
    "Shared_Sram",
)
TIMEOUT_S = 300


def find_vela() -> str:
    """The ``vela`` executable: ``EDGETL_VELA``, else the PATH, else beside this Python."""
    named = os.environ.get("EDGETL_VELA")
    if named:
        if not (Path(named).is_file() and os.access(named, os.X_OK)):
            raise MissingEnvironment(
                f"EDGETL_VELA={named} is not an executable file; point it at Arm's `vela` "
                f"or unset it (pip install ethos-u-vela=={VELA_VERSION})"
            )
        return named
    found = shutil.which("vela") or shutil.which("vela", path=str(Path(sys.executable).parent))
    if not found:
        raise MissingEnvironment(
            f"vela (Arm's Ethos-U compiler) is not installed: pip install "
            f"ethos-u-vela=={VELA_VERSION} (`make setup` installs it), or set EDGETL_VELA"
        )
    return found


def runnable_vela() -> str:
    """``find_vela``, proven to start (``vela --version``): a moved venv keeps a ``vela``
    script whose interpreter is gone, and ``--target ethos-u`` should say so before
    minutes of conversion, not after."""
    vela = find_vela()
    try:
        done = subprocess.run([vela, "--version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CompilerFailed(f"vela ({vela}) cannot start: {single_line(error)}") from None
    if done.returncode != 0:
        raise CompilerFailed(
            f"vela ({vela}) cannot start: `vela --version` exits {done.returncode}"
        )
    return vela


def compile_model(model: Path, out_dir: Path) -> Dict[str, Any]:
    """Run Vela on ``model`` into ``out_dir``; its verdict (``parse_summary``) plus the
    compiled file's name and the exact command. ``CompilerFailed`` when Vela fails."""
    vela = find_vela()
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [vela, str(model), "--output-dir", str(out_dir), "--accelerator-config"]
    command += [ACCELERATOR, *SYSTEM]
    text = run_compiler("vela", command, model.name, TIMEOUT_S)
    verdict = parse_summary(text)
    compiled = out_dir / f"{model.stem}_vela.tflite"
    return {
        "compiler": f"vela {VELA_VERSION}",
        "accelerator": ACCELERATOR,
        **verdict,
        "compiled": compiled.name if compiled.is_file() else None,
        "command": " ".join(["vela", model.name, "--accelerator-config", ACCELERATOR, *SYSTEM]),
    }


def parse_summary(text: str) -> Dict[str, Any]:
    """Vela's printed summary as figures: NPU and CPU operator counts, the CPU ones
    named with Vela's reason, SRAM and off-chip flash used (KiB)."""
    counts = {
        side: int(m.group(1))
        for side in ("NPU", "CPU")
        for m in [re.search(rf"^{side} operators = (\d+)", text, re.M)]
        if m
    }
    if "NPU" not in counts:
        raise CompilerFailed(f"vela printed no operator summary (last line: {last_line(text)})")
    declined: List[Dict[str, str]] = []
    for m in re.finditer(
        r"^Warning \(supported operators\) operator: (\S+), ofm: '([^']*)'\s*\nReason: (.*)$",
        text,
        re.M,
    ):
        declined.append({"op": m.group(1), "tensor": m.group(2), "reason": m.group(3).strip()})

    def kib(label: str) -> Any:
        m = re.search(rf"^Total {label} used\s+([\d.]+) KiB", text, re.M)
        return float(m.group(1)) if m else None

    return {
        "npu_ops": counts["NPU"],
        "cpu_ops": counts.get("CPU", 0),
        "cpu_ops_named": declined,
        "sram_kib": kib("SRAM"),
        "flash_kib": kib("Off-chip Flash"),
    }


def verdict_line(verdict: Dict[str, Any]) -> str:
    total = verdict["npu_ops"] + verdict["cpu_ops"]
    line = (
        f"Ethos-U ({verdict['compiler']}, {verdict['accelerator']}): {verdict['npu_ops']} of "
        f"{total} ops on the NPU, SRAM {verdict['sram_kib']} KiB"
    )
    if verdict["cpu_ops_named"]:
        first = verdict["cpu_ops_named"][0]
        line += f"; on the CPU: {first['op']} ({first['reason']})"
        if len(verdict["cpu_ops_named"]) > 1:
            line += f" and {len(verdict['cpu_ops_named']) - 1} more"
    return line


def check_file(model: Path) -> Dict[str, Any]:
    """Vela's verdict on ``model`` with its outputs in a temporary folder (what the
    export records; the user compiles for the device with the ``command`` given)."""
    with tempfile.TemporaryDirectory(prefix="edgetl-vela-") as folder:
        return compile_model(model, Path(folder))
