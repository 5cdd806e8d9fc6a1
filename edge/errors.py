"""One family of errors, each carrying the exit code the CLI turns it into.

Library code raises these and never calls ``sys.exit``; ``toolchain.cli``
prints ``str(error)`` as one line on stderr and exits with ``exit_code``.
``EXIT_CODES`` is the whole contract (the README's table is checked against
it by a test): 1 means a quality gate failed and nothing else, so a CI job
can tell an accuracy loss from a crash.
"""

from __future__ import annotations

OK = 0
GATE_FAILED = 1
BAD_INPUT = 2
ENVIRONMENT = 3
INTERNAL = 4
INTERRUPTED = 130

EXIT_CODES = {
    OK: "success",
    GATE_FAILED: "a quality gate failed (`--max-drop`, `--min-agreement`), and nothing else",
    BAD_INPUT: "bad input or usage: a missing, unreadable or damaged path or file, a bad option",
    ENVIRONMENT: "environment: a package, runtime, device, disk space or the network is missing",
    INTERNAL: "internal error: a bug in edgetl; run again with `--debug` and report the traceback",
    INTERRUPTED: "interrupted (Ctrl-C); files already written are complete",
}


class EdgetlError(Exception):
    """Base of every error a user can cause or fix; the message names the fix."""

    exit_code = BAD_INPUT


class BadInput(EdgetlError):
    """A path, file or option the user gave is wrong (exit 2)."""

    exit_code = BAD_INPUT


class MissingEnvironment(EdgetlError):
    """A package, runtime, device or the network is not there (exit 3)."""

    exit_code = ENVIRONMENT


class GateFailed(EdgetlError):
    """A quality gate such as ``--max-drop`` was not met (exit 1)."""

    exit_code = GATE_FAILED


class NotFinite(GateFailed):
    """A model outputs NaN or infinity (exit 1: the model is not fit to ship).

    Raised before any figure is computed or report written: ``argmax`` of NaN is
    class 0 on both sides, so such a model would otherwise agree with itself 100%.
    """
