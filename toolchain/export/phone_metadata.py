"""Standard TFLite model metadata, so phone runtimes take the file as it is.

MediaPipe Tasks' ``ImageClassifier`` (and the TFLite Task Library) need the
image-classifier metadata: input normalisation, and the labels as an
associated file of the output tensor. We write it with MediaPipe's own
metadata writer. Its wheels (0.10.30 and later) lack one compiled helper,
``_pywrap_metadata_version.GetMinimumMetadataParserVersion``; we provide a
pure-Python stand-in before importing the writer (README, *Traps we measured*).

What the values must be (measured): edgetl models rescale inside
the graph, so mean 0 and std 1. With uint8 input MediaPipe feeds raw pixels
and ignores them; with float32 input it feeds (pixel - mean) / std, and
127.5/127.5 there would silently double-normalise.
"""

from __future__ import annotations

import gc
import sys
import types
from typing import List, Optional

from toolchain.core.quiet import captured_output

# The image-classifier writer emits only fields that the metadata schema has had
# since its first version (names, image properties, normalisation, stats, an
# axis-labels file), so the minimum parser version it needs is 1.0.0.
MIN_PARSER_VERSION = "1.0.0"


def _install_version_helper() -> None:
    name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    if name in sys.modules:
        return
    helper = types.ModuleType(name)
    helper.GetMinimumMetadataParserVersion = lambda buffer: MIN_PARSER_VERSION
    for package in (
        "mediapipe.tasks.cc",
        "mediapipe.tasks.cc.metadata",
        "mediapipe.tasks.cc.metadata.python",
    ):
        sys.modules.setdefault(package, types.ModuleType(package))
    sys.modules[name] = helper
    sys.modules["mediapipe.tasks.cc.metadata.python"]._pywrap_metadata_version = helper


def writer_available() -> bool:
    try:
        _install_version_helper()
        from mediapipe.tasks.python.metadata.metadata_writers import image_classifier  # noqa: F401
    except ImportError:
        return False
    return True


def with_image_classifier_metadata(flatbuffer: bytes, labels: List[str]) -> Optional[bytes]:
    """The model with standard metadata and ``labels.txt``; None without mediapipe."""
    if not writer_available():
        return None
    from mediapipe.tasks.python.metadata.metadata_writers import image_classifier, metadata_writer

    with captured_output():
        writer = image_classifier.MetadataWriter.create(
            bytearray(flatbuffer),
            input_norm_mean=[0.0],
            input_norm_std=[1.0],
            labels=metadata_writer.Labels().add(list(labels)),
        )
        model, _ = writer.populate()
        # Its __del__ removes a temp folder; run it now, not at interpreter exit
        # where it fails noisily because `os` is already gone.
        del writer
        gc.collect()
    return bytes(model)
