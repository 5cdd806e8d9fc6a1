"""Import TensorFlow without a page of C++ log lines, and silence converters.

Measured (README, *Traps we measured*): ``import tensorflow`` writes ~8 lines to stderr before absl logging
starts, and ``TF_CPP_MIN_LOG_LEVEL`` removes only two. We point file
descriptor 2 at /dev/null around the import (Python-level errors are still
raised), then lower absl and the TF logger. Converters print ~270 lines per
call on the C++ side; ``captured_output`` sends both descriptors to a log
file that is kept beside the artefact, so nothing is lost, only moved.
"""

from __future__ import annotations

import os
import warnings

from edge.errors import MissingEnvironment
from edge.runtime import quiet_tensorflow_logs, redirected

_tf = None


def captured_output(log_path: str | os.PathLike | None = None):
    """Redirect OS-level stdout and stderr (C++ logs included) to ``log_path``."""
    return redirected((1, 2), os.fspath(log_path) if log_path else None)


def tensorflow():
    """Return the ``tensorflow`` module, imported once and quietly.

    Raises ``MissingEnvironment`` (exit 3) on an edge-only install.
    """
    global _tf
    if _tf is not None:
        return _tf
    quiet_tensorflow_logs()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        with captured_output():
            import tensorflow as tf
    except ImportError as error:
        raise MissingEnvironment(
            f"TensorFlow is not installed ({error}); this command runs on the workstation: "
            "pip install 'edgetl[train]'"
        ) from error
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel("ERROR")
    warnings.filterwarnings("ignore", module="keras")
    # TF1-style input stats do not apply: edgetl calibrates the input range (export.py).
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
    _tf = tf
    return tf


def keras():
    tensorflow()
    import keras as keras_module

    return keras_module
