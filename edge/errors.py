"""One family of errors, each carrying the exit code the CLI turns it into.

Library code raises these and never calls ``sys.exit``; ``toolchain.cli``
prints ``str(error)`` as one line on stderr and exits with ``exit_code``.
The codes are the contract in DESIGN.md: 1 gate failed, 2 bad input,
3 environment (a package, a runtime, a camera or the network is absent).
"""

from __future__ import annotations


class EdgetlError(Exception):
    """Base of every error a user can cause or fix; the message names the fix."""

    exit_code = 2


class BadInput(EdgetlError):
    """A path, file or option the user gave is wrong (exit 2)."""

    exit_code = 2


class MissingEnvironment(EdgetlError):
    """A package, runtime, device or the network is not there (exit 3)."""

    exit_code = 3


class GateFailed(EdgetlError):
    """A quality gate such as ``--max-drop`` was not met (exit 1)."""

    exit_code = 1
