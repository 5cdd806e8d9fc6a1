"""What ``edgetl serve`` hands a phone: every URL it will ever answer, decided at start.

The page, ``config.json`` (labels, card, where the runtime is), the model read once
into memory, and MediaPipe's web runtime (``@mediapipe/tasks-vision``: a local copy
``make web-runtime`` unpacks from npm, or the pinned jsDelivr URL with ``--cdn``).
Anything else is 404 (``server.py``), so no path, however spelled (``..``,
``%2e%2e``, a symlink in the runtime folder), reaches a file outside them.

``policy`` is the page's Content-Security-Policy: it may reach this server only
(and the pinned CDN with ``--cdn``). MediaPipe's web package sends usage metrics
to Google (its README's privacy notice) and has no switch to turn that off, so the
browser blocks that request before it is sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from edge.errors import BadInput, MissingEnvironment
from edge.modelfile import read_model_card

PAGE = Path(__file__).resolve().parent / "page"
MEDIAPIPE_VERSION = "1.1.0"
CDN = f"https://cdn.jsdelivr.net/npm/@mediapipe/tasks-vision@{MEDIAPIPE_VERSION}"
RUNTIME_FOLDER = Path("build/web") / f"tasks-vision-{MEDIAPIPE_VERSION}"
# FilesetResolver picks the SIMD or the plain build by what the browser validates.
RUNTIME_FILES = (
    "vision_bundle.mjs",
    "wasm/vision_wasm_internal.js",
    "wasm/vision_wasm_internal.wasm",
    "wasm/vision_wasm_nosimd_internal.js",
    "wasm/vision_wasm_nosimd_internal.wasm",
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",  # instantiateStreaming refuses anything else
    ".tflite": "application/octet-stream",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
}
MAX_MODEL_BYTES = 512 << 20


@dataclass(frozen=True)
class Route:
    """One URL's answer: a file streamed from disk, or bytes held in memory."""

    content_type: str
    file: Optional[Path] = None
    body: Optional[bytes] = None


@dataclass(frozen=True)
class Check:
    """A browser check's extra routes: images to classify and where results go.
    Never set by ``edgetl serve`` itself; ``make web-check`` drives it."""

    images: List[Path]
    mode: str  # "files" or "camera"
    on_results: Callable[[Dict[str, Any]], None]
    frame: Optional[Dict[str, int]] = None  # the fake camera's frame layout


@dataclass(frozen=True)
class Site:
    routes: Dict[str, Route]
    csp: str
    check: Optional[Check] = None
    model_name: str = ""
    labels: List[str] = field(default_factory=list)


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


def model_bytes(model: Path) -> bytes:
    """The model, checked to be a TFLite flatbuffer and read once: the phone gets
    the file as it was when the server started, whatever happens to it later."""
    try:
        if model.is_dir():
            raise BadInput(f"{model} is a folder; give a .tflite file inside it")
        if not model.is_file():  # a device or a pipe would be read for ever
            if not model.exists():
                raise BadInput(f"{model}: no such model file; give the .tflite that export shipped")
            raise BadInput(f"{model}: not a regular file; give a .tflite file")
        with open(model, "rb") as handle:
            header = handle.read(8)
            if len(header) < 8 or header[4:8] != b"TFL3":
                raise BadInput(
                    f"{model}: not a TFLite model (no TFL3 identifier); give a .tflite file"
                )
            if handle.seek(0, 2) > MAX_MODEL_BYTES:
                raise BadInput(
                    f"{model}: larger than {MAX_MODEL_BYTES >> 20} MiB, more than a phone's "
                    "browser should load; export a quantized model"
                )
            handle.seek(0)
            return handle.read()
    except OSError as error:
        raise BadInput(f"{model}: cannot read it ({error.strerror})") from None


def runtime_routes(runtime: Path) -> Dict[str, Route]:
    """The runtime's files, each checked to be a regular file inside ``runtime``."""
    routes = {}
    base = runtime.resolve()
    for name in RUNTIME_FILES:
        path = (runtime / name).resolve()
        if not path.is_file() or base not in path.parents:
            raise MissingEnvironment(
                f"no MediaPipe web runtime at {runtime} ({name} missing); run `make web-runtime` "
                f"(npm pack @mediapipe/tasks-vision@{MEDIAPIPE_VERSION}), pass --web-runtime DIR, "
                "or --cdn"
            )
        routes[f"/mediapipe/{name}"] = Route(content_type(name), file=path)
    return routes


def policy(cdn: bool) -> str:
    """The page may load and fetch from this server only (and the pinned CDN with
    ``--cdn``): MediaPipe's usage metrics are blocked in the browser."""
    remote = f" {CDN}/" if cdn else ""
    return (
        f"default-src 'self'; script-src 'self' 'wasm-unsafe-eval'{remote}; "
        f"connect-src 'self'{remote}; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
        "style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def build_site(
    model: Path, runtime: Optional[Path], cdn: bool = False, check: Optional[Check] = None
) -> Site:
    """Every route the server will ever answer, decided here, before it binds."""
    data = model_bytes(model)
    card = read_model_card(model)
    if not card.labels:  # the page names classes; MediaPipe needs them in the file too
        raise BadInput(
            f"{model}: carries no labels (none embedded, no labels.txt beside it); serve a "
            "model edgetl exported, or put labels.txt beside it"
        )
    runtime_url = CDN if cdn else "./mediapipe"
    config = {
        "model": model.name,
        "model_url": "model.tflite",
        "runtime_url": runtime_url,
        "mediapipe_version": MEDIAPIPE_VERSION,
        "labels": card.labels,
        "card": card.metadata,
        "check": None if check is None else {"mode": check.mode, "count": len(check.images)},
    }
    if check is not None and check.frame is not None:
        config["check"]["frame"] = check.frame
    routes = {
        "/": Route(content_type("index.html"), file=PAGE / "index.html"),
        "/app.js": Route(content_type("app.js"), file=PAGE / "app.js"),
        "/answer.js": Route(content_type("answer.js"), file=PAGE / "answer.js"),
        "/config.json": Route(content_type("x.json"), body=json.dumps(config).encode()),
        "/model.tflite": Route(content_type("x.tflite"), body=data),
    }
    if not cdn:
        routes.update(runtime_routes(runtime or RUNTIME_FOLDER))
    if check is not None:
        for i, path in enumerate(check.images):
            routes[f"/check/image/{i}"] = Route(content_type(path.name), file=path)
    return Site(routes, policy(cdn), check, model.name, card.labels)
