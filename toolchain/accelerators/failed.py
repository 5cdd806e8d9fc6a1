"""An accelerator compiler as a process, and the one error its own failure raises."""

from __future__ import annotations

import subprocess
from typing import List

from edge.errors import MissingEnvironment
from toolchain.core.text import single_line


class CompilerFailed(MissingEnvironment):
    """A compiler that could not start, crashed or printed no summary: the tool failed,
    not the model (exit 3, an environment problem; a gate's exit 1 is kept for
    operators the compiler leaves on the CPU)."""


def last_line(text: str) -> str:
    """The last non-empty line a compiler printed, on one line."""
    lines = [line for line in text.splitlines() if line.strip()]
    return single_line(lines[-1]) if lines else "no output"


def run_compiler(name: str, command: List[str], model: str, timeout_s: int) -> str:
    """Run ``command`` (compiler ``name`` on ``model``); what it printed, or
    ``CompilerFailed`` when it cannot start, runs past ``timeout_s`` or exits non-zero."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        raise CompilerFailed(f"{name} did not finish {model} in {timeout_s} s") from None
    except OSError as error:  # a moved venv's script, a wrong architecture
        raise CompilerFailed(f"{name} ({command[0]}) cannot start: {single_line(error)}") from None
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise CompilerFailed(
            f"{name} failed on {model} (exit {done.returncode}: {last_line(text)})"
        )
    return text
