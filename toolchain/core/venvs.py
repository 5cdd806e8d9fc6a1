"""The Python of a venv of its own (QAT's, the IMX500 converter's): one rule to find it.

Why its own venv: each pins a TensorFlow/Keras that cannot share edgetl's (see
``toolchain.export.qat`` and ``toolchain.export.imx500``). The user points at it
with an environment variable, else the make target's folder in the directory
they work in; a missing one is exit 3 with the line that builds it.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import MissingEnvironment


def own_python(variable: str, venv: str, needs: str, install: str) -> str:
    """``$variable``, else ``./venv/bin/python``; ``MissingEnvironment`` saying ``needs``
    and ``install`` when it is not an executable file."""
    given = os.environ.get(variable)
    candidate = Path(given) if given else Path.cwd() / venv / "bin" / "python"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    where = f"{variable}={given}" if given else f"{venv}/bin/python"
    raise MissingEnvironment(f"{needs}, and {where} is not there: {install}")
