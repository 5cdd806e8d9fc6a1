"""How any exception becomes one line on stderr and an exit code.

The contract is ``edge.errors.EXIT_CODES``. edgetl's own errors carry their
code; what the operating system says (a full disk, a read-only card, a path
that is a folder) is the user's environment or input, never a failed gate;
anything else is a bug in edgetl and says so, so CI never reads a crash as an
accuracy loss.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Tuple

from edge.errors import BAD_INPUT, ENVIRONMENT, INTERNAL, EdgetlError

# errno -> (exit code, what to do); anything not listed is the environment's.
_OS_ERRORS = {
    errno.ENOSPC: (ENVIRONMENT, "the disk is full: free some space or write elsewhere"),
    errno.EDQUOT: (ENVIRONMENT, "the disk quota is used up: free some space or write elsewhere"),
    errno.EROFS: (ENVIRONMENT, "the filesystem is read-only: write elsewhere"),
    errno.EIO: (ENVIRONMENT, "input/output error: the disk or SD card may be failing"),
    errno.ENOMEM: (ENVIRONMENT, "out of memory: close other programs or use smaller inputs"),
    errno.EMFILE: (ENVIRONMENT, "too many open files: raise `ulimit -n`"),
    errno.ENFILE: (ENVIRONMENT, "too many open files on this system"),
    errno.EPIPE: (ENVIRONMENT, "the program reading edgetl's output closed it early"),
    errno.EACCES: (
        BAD_INPUT,
        "permission denied: check its owner and mode, or choose another path",
    ),
    errno.EPERM: (BAD_INPUT, "operation not permitted: choose another path"),
    errno.ENOENT: (BAD_INPUT, "no such file or folder: check the path"),
    errno.EISDIR: (BAD_INPUT, "is a folder: give a file name"),
    errno.ENOTDIR: (BAD_INPUT, "part of the path is a file, not a folder: check the path"),
    errno.EEXIST: (BAD_INPUT, "already exists: choose another name"),
    errno.ENAMETOOLONG: (BAD_INPUT, "the name is too long: choose a shorter path"),
    errno.ELOOP: (BAD_INPUT, "too many symbolic links: check the path"),
}


def _os_error(error: OSError) -> Tuple[int, str]:
    code, advice = _OS_ERRORS.get(error.errno, (ENVIRONMENT, "the system refused the operation"))
    where = error.filename if error.filename is not None else ""
    detail = error.strerror or type(error).__name__
    prefix = f"{where}: " if where else ""
    return code, f"{prefix}{detail} ({advice})"


# TensorFlow's errors when a collective operation loses a peer: another worker of a
# multi-worker run was killed, crashed or cannot be reached. Matched by name so this
# module does not import TensorFlow.
_PEER_LOST = ("UnavailableError", "DeadlineExceededError", "AbortedError", "CancelledError")
# Out of memory, in Python or in TensorFlow (a tensor the device cannot allocate),
# also matched by name. The environment's limit, not a bug: say what makes it smaller.
OUT_OF_MEMORY_HINT = (
    "out of memory: use a smaller --batch-size or --image-size, or close other programs"
)
_OUT_OF_MEMORY = ("ResourceExhaustedError",)
REASON_CHARS = 300  # an exception's text can hold whole tensors (a PerReplica repr)


def describe_failure(error: BaseException) -> Tuple[int, str]:
    """The exit code and the one-line message for ``error`` (a pure function).

    Messages never span lines: a multi-line exception text is folded into one.
    """
    if isinstance(error, EdgetlError):
        code, message = error.exit_code, str(error)
    elif isinstance(error, OSError):
        code, message = _os_error(error)
    elif isinstance(error, UnicodeError):
        code, message = BAD_INPUT, f"a file or name is not valid text ({error}); check the input"
    elif isinstance(error, json.JSONDecodeError):
        code, message = BAD_INPUT, f"a file is not valid JSON ({error.msg}, line {error.lineno})"
    elif isinstance(error, MemoryError):
        code, message = ENVIRONMENT, OUT_OF_MEMORY_HINT
    elif type(error).__module__.startswith("tensorflow") and type(error).__name__ in _OUT_OF_MEMORY:
        reason = " ".join(str(error).split())[:REASON_CHARS]
        code, message = ENVIRONMENT, f"{OUT_OF_MEMORY_HINT} ({type(error).__name__}: {reason})"
    elif (
        type(error).__module__.startswith("tensorflow")
        and type(error).__name__ in _PEER_LOST
        and os.environ.get("TF_CONFIG")  # only a multi-worker run has other workers
    ):
        reason = " ".join(str(error).split())[:REASON_CHARS]
        code, message = (
            ENVIRONMENT,
            f"training lost contact with another worker ({type(error).__name__}: {reason}); "
            "start every worker again with the same command and --resume",
        )
    else:
        reason = " ".join((str(error) or "no message").split())
        if len(reason) > REASON_CHARS:
            reason = reason[:REASON_CHARS] + " …"
        code, message = (
            INTERNAL,
            f"internal error ({type(error).__name__}: {reason}); this is a bug in edgetl: "
            "please report it with the output of `edgetl --debug …` (or EDGETL_DEBUG=1)",
        )
    return code, " ".join(message.split())
