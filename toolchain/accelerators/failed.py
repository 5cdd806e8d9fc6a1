"""The one error an accelerator compiler's own failure raises."""

from __future__ import annotations

from edge.errors import MissingEnvironment


class CompilerFailed(MissingEnvironment):
    """A compiler that could not start, crashed or printed no summary: the tool failed,
    not the model (exit 3, an environment problem; a gate's exit 1 is kept for
    operators the compiler leaves on the CPU)."""
