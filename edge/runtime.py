"""Find a TFLite interpreter on this machine and say which one ran.

Order (README, *Traps we measured*): ``ai_edge_litert`` (maintained, XNNPACK for INT8), then
``tflite_runtime`` (2.14, the last release: Pi OS Bookworm, numpy<2), then
``tensorflow.lite`` as a last resort on a workstation. TensorFlow is only
imported here, lazily, when neither device runtime is installed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Tuple

from edge.errors import BadInput, MissingEnvironment

RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    version: str
    threads: int
    warning: str = ""

    def describe(self) -> str:
        text = f"runtime: {self.name} {self.version}, {self.threads} thread(s)"
        return text + (f"\nwarning: {self.warning}" if self.warning else "")


@contextlib.contextmanager
def redirected(fds: Tuple[int, ...] = (2,), log_path: Optional[str] = None) -> Iterator[None]:
    """Point OS-level file descriptors (C++ logs included) at ``log_path`` (appended),
    or at /dev/null; Python-level errors still raise. The one fd redirection of edgetl:
    the interpreters' load line here, the converters' pages in ``toolchain.quiet``."""
    _flush()
    target = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    saved: List[Tuple[int, int]] = []
    try:
        for fd in fds:
            saved.append((fd, os.dup(fd)))
            os.dup2(target, fd)
        yield
    finally:
        try:
            _flush()  # what was written while redirected goes to the log, not the terminal
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            os.close(target)


def _flush() -> None:
    """Flush Python's buffers before file descriptors move; a closed or missing stream
    (a broken pipe, ``sys.stdout`` None under some launchers) must not stop the restore."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()


def quiet_stderr() -> contextlib.AbstractContextManager:
    """Silence the C++ side's informational line on file descriptor 2."""
    return redirected((2,))


def quiet_tensorflow_logs() -> None:
    """Before ``import tensorflow``: its C++ start-up lines and the deprecation warning
    of ``tf.lite.Interpreter`` say nothing a user can act on."""
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")


def _dist_version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _interpreter_class(name: str) -> Tuple[Callable[..., Any], str]:
    """Import one runtime's Interpreter class; ImportError if it is absent."""
    if name == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, _dist_version("ai-edge-litert")
    if name == "tflite_runtime":
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, _dist_version("tflite-runtime")
    if name == "tensorflow":
        quiet_tensorflow_logs()
        import tensorflow as tf

        return tf.lite.Interpreter, tf.__version__
    raise BadInput(f"unknown runtime {name!r}: choose one of {', '.join(RUNTIMES)}")


def slow_runtime_warning(name: str, quantized: bool) -> str:
    """A warning where a runtime was measured to be slow for this model kind (README,
    *Traps we measured*)."""
    if name == "tflite_runtime" and quantized and platform.machine() in ("x86_64", "AMD64"):
        return (
            "tflite-runtime 2.14 runs INT8 models without XNNPACK on x86 (about 10x slower "
            "than float, slower with more threads); install ai-edge-litert for full speed"
        )
    return ""


def usable_cores() -> int:
    """The cores this process may run on: ``taskset``, a cgroup cpuset or a container
    limit it to fewer than ``os.cpu_count()``, and one thread per core it cannot use
    only waits (a Pi running a camera service beside edgetl is often pinned this way)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads(name: str, quantized: bool) -> int:
    """All usable cores, except where more threads were measured to hurt (tflite-runtime
    INT8 on x86)."""
    if slow_runtime_warning(name, quantized):
        return 1
    return usable_cores()


def load_interpreter(
    model_path: str,
    runtime: Optional[str] = None,
    threads: Optional[int] = None,
    quantized: bool = False,
) -> Tuple[Any, RuntimeInfo]:
    """Return an allocated interpreter for ``model_path`` and what ran it.

    ``runtime`` forces one of ``RUNTIMES``; otherwise the first importable wins.
    ``quantized`` only tunes the default thread count and the slow-runtime warning.
    """
    names = (runtime,) if runtime else RUNTIMES
    errors = []
    for name in names:
        try:
            interpreter_class, version = _interpreter_class(name)
        except ImportError as error:
            errors.append(f"{name}: {error}")
            continue
        chosen_threads = threads if threads and threads > 0 else default_threads(name, quantized)
        try:
            with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate" per load
                interpreter = interpreter_class(
                    model_path=str(model_path), num_threads=chosen_threads
                )
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError, SystemError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            if "numpy" in message.lower() or isinstance(error, SystemError):
                raise MissingEnvironment(
                    f"{name} {version} could not start ({message}); tflite-runtime needs numpy<2: "
                    "pip install 'numpy<2'"
                ) from error
            raise BadInput(f"{model_path}: {name} cannot load this model ({message})") from error
        warning = slow_runtime_warning(name, quantized)
        return interpreter, RuntimeInfo(name, version, chosen_threads, warning)
    if runtime:
        raise MissingEnvironment(
            f"runtime {runtime} is not installed ({errors[0]}); pip install "
            + {
                "ai_edge_litert": "ai-edge-litert",
                "tflite_runtime": "tflite-runtime",
                "tensorflow": "tensorflow",
            }.get(runtime, runtime)
        )
    raise MissingEnvironment(
        "no TFLite runtime found: pip install 'edgetl[edge]' (ai-edge-litert) "
        "or 'edgetl[edge-legacy]' (tflite-runtime 2.14)"
    )
