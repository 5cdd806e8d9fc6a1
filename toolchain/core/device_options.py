"""Options of the commands that run on the device (``classify``, ``parity``, ``bench``,
``serve``), declared like the workstation's (``options.option``). ``edge`` takes
them one by one, since ``edge`` never imports ``toolchain``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edge.runtime import RUNTIMES
from toolchain.core.options import REQUIRED, option


@dataclass(frozen=True)
class ClassifyOptions:
    """``edgetl classify`` on the device; the ``edge`` functions take these one by one,
    since ``edge`` never imports ``toolchain``."""

    source: str = option(
        REQUIRED,
        "An image file, a folder of images (recursive), a video file, or camera / camera:N.",
    )
    top_k: int = option(3, "Classes to report per image.", min=1, max=1000)
    threshold: Optional[float] = option(
        None,
        "Answer only when the top class scores at least this, else answer unknown (default: the answer floor in the model's card, 0 for a model without one). 0 always answers and still flags out-of-class photos.",
        min=0.0,
        max=1.0,
    )
    threads: Optional[int] = option(
        None,
        "Interpreter threads (default: all cores, 1 where more are known to hurt).",
        min=1,
        max=256,
    )
    output: Optional[str] = option(
        None, "Write predictions to FILE.csv or FILE.jsonl, flushed per image.", path=True
    )
    runtime: Optional[str] = option(None, "Force a TFLite runtime.", choices=RUNTIMES)
    data_labels: bool = option(
        False,
        "The folder is labeled (SOURCE/<class>/…): report top-1 accuracy against the folder names.",
    )
    quiet: bool = option(False, "Do not print one line per image.")
    show: bool = option(
        False,
        "Show each frame in a window with its top classes and FPS drawn on it (needs a display and OpenCV with GUI support; q or Esc quits).",
    )


@dataclass(frozen=True)
class ParityOptions:
    """``edgetl parity`` on the device: its runtime against the Keras reference that
    ``edgetl validate`` wrote (``edge.reference``)."""

    reference: str = option(
        REQUIRED,
        "The parity_reference.json that `edgetl validate` wrote beside parity.json.",
        path=True,
    )
    source: str = option(
        REQUIRED,
        "A folder holding the held-out images, copied unchanged (any layout; found by content).",
        path=True,
    )
    max_drop: Optional[float] = option(
        None,
        "Fail (exit 1) past this many points of top-1 below Keras, beyond chance (default: the export's budget).",
        min=0.0,
        max=100.0,
    )
    min_agreement: Optional[float] = option(
        None,
        "Fail (exit 1) below this top-1 agreement with Keras (default: the export's budget).",
        min=0.0,
        max=1.0,
    )
    runtime: Optional[str] = option(None, "Force a TFLite runtime.", choices=RUNTIMES)
    threads: Optional[int] = option(None, "Interpreter threads.", min=1, max=256)
    allow_missing: bool = option(
        False,
        "Measure on the reference images found even when some are not in --source "
        "(default: refuse, since a verdict on part of the split is not the split's).",
    )


@dataclass(frozen=True)
class BenchOptions:
    runs: int = option(100, "Timed invokes after warm-up.", min=1, max=1000000)
    threads: Optional[int] = option(None, "Interpreter threads.", min=1, max=256)
    source: Optional[str] = option(None, "A folder of images for end-to-end throughput.")
    runtime: Optional[str] = option(None, "Force a TFLite runtime.", choices=RUNTIMES)


@dataclass(frozen=True)
class ServeOptions:
    """``edgetl serve``: the model in a phone's browser (``edge.web.server``)."""

    host: Optional[str] = option(
        None,
        "The one address to listen on (default: this machine's LAN address, the one a phone on the same network reaches; 127.0.0.1 for this machine only, where the live camera works over http; 0.0.0.0 for every interface).",
    )
    port: int = option(8000, "Port to listen on (0 picks a free one).", min=0, max=65535)
    web_runtime: Optional[str] = option(
        None,
        "MediaPipe's web runtime, a folder holding @mediapipe/tasks-vision's vision_bundle.mjs and wasm/ (default: build/web/tasks-vision-1.1.0, which `make web-runtime` writes).",
        path=True,
    )
    cdn: bool = option(
        False,
        "Let the phone load MediaPipe's runtime from the pinned jsDelivr URL instead (the phone needs internet).",
    )
    cert: Optional[str] = option(
        None, "PEM certificate: serve https, where phones allow the live camera.", path=True
    )
    key: Optional[str] = option(None, "The certificate's PEM private key.", path=True)
