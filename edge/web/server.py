"""``edgetl serve MODEL``: a page that classifies on the phone itself.

The workstation (or the Pi) only hands out files: the page, the model, its card
and MediaPipe's web runtime (``@mediapipe/tasks-vision``). The phone's browser
decodes each photo and runs the model on its own CPU (WebAssembly), so a user
tries a model on the device they carry without building an app.

What the server promises, and the tests check:

- **Only what it names.** Every URL it answers is in one table built at start
  (``Site.routes``): the page, ``config.json``, the model read once into memory,
  and the runtime's five files. Anything else is 404, so no path, however
  spelled (``..``, ``%2e%2e``, a symlink in the runtime folder), reaches a file
  outside them.
- **Only where it is told.** It binds the one address given (default: this
  machine's LAN address, the one a phone on the same network reaches), never
  every interface unless ``--host 0.0.0.0`` says so.
- **Nothing from the page leaves the phone.** MediaPipe's web package sends
  usage metrics to Google (its README's privacy notice) and has no switch to
  turn that off, so every response carries a Content-Security-Policy that lets
  the page reach this server only (and the pinned CDN with ``--cdn``): the
  browser blocks the metrics request before it is sent. Photos never leave the
  phone at all: the page has no upload path.

The live camera needs a secure context (https, or localhost); over plain http
on a LAN the page takes photos through the phone's camera app
(``<input capture>``), which browsers allow anywhere.
"""

from __future__ import annotations

import errno
import http.server
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

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
MAX_POST_BYTES = 16 << 20
DEFAULT_PORT = 8000


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
        data = model.read_bytes()
    except FileNotFoundError:
        raise BadInput(
            f"{model}: no such model file; give the .tflite that export shipped"
        ) from None
    except IsADirectoryError:
        raise BadInput(f"{model} is a folder; give a .tflite file inside it") from None
    except OSError as error:
        raise BadInput(f"{model}: cannot read it ({error.strerror})") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise BadInput(f"{model}: not a TFLite model (no TFL3 identifier); give a .tflite file")
    return data


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


class Handler(http.server.BaseHTTPRequestHandler):
    """GET (and HEAD) from the route table; POST only to a check's results."""

    site: Site
    server_version = "edgetl"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: a phone's requests are not the user's business on the terminal."""

    def headers_for(self, route: Route, length: int) -> None:
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Security-Policy", self.site.csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def answer(self, send_body: bool) -> None:
        route = self.site.routes.get(urlsplit(self.path).path)
        if route is None:
            self.send_error(404, "not served here")
            return
        if route.body is not None:
            self.send_response(200)
            self.headers_for(route, len(route.body))
            if send_body:
                self.wfile.write(route.body)
            return
        try:
            with open(route.file, "rb") as handle:
                size = handle.seek(0, 2)
                handle.seek(0)
                self.send_response(200)
                self.headers_for(route, size)
                if send_body:
                    while block := handle.read(1 << 20):
                        self.wfile.write(block)
        except OSError:
            self.send_error(404, "not served here")

    def do_GET(self) -> None:  # noqa: N802 (http.server's spelling)
        self.answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self.answer(False)

    def do_POST(self) -> None:  # noqa: N802
        check = self.site.check
        if check is None or urlsplit(self.path).path != "/check/results":
            self.send_error(404, "not served here")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_POST_BYTES:
            self.send_error(413, "results too large or empty")
            return
        try:
            results = json.loads(self.rfile.read(length))
        except ValueError:
            self.send_error(400, "results are not JSON")
            return
        self.send_response(204)
        self.end_headers()
        check.on_results(results if isinstance(results, dict) else {"error": "not an object"})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def lan_address() -> Optional[str]:
    """The address this machine's default route leaves from: what a phone on the same
    network reaches. A UDP connect sends no packet; it only asks the routing table."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("0.") else address


def bind(site: Site, host: str, port: int, tls: Optional[Tuple[Path, Path]] = None) -> Server:
    """The server on exactly ``host``:``port``; one line when that cannot be."""
    handler = type("SiteHandler", (Handler,), {"site": site})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("SiteServer", (Server,), {"address_family": family})
    try:
        server = server_class((host, port), handler)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise BadInput(
                f"port {port} on {host} is in use; pass --port N (0 picks a free one)"
            ) from None
        if error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            raise BadInput(
                f"--host {host} is not an address of this machine; give one of its addresses, "
                "127.0.0.1 for this machine only, or 0.0.0.0 for every interface"
            ) from None
        if error.errno == errno.EACCES:
            raise BadInput(
                f"port {port} needs root here; pass --port 8000 or any port above 1023"
            ) from None
        if isinstance(error, socket.gaierror):
            raise BadInput(
                f"--host {host} is not an address; give an IP address such as 127.0.0.1"
            ) from None
        raise
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(str(tls[0]), str(tls[1]))
        except (OSError, ssl.SSLError) as error:
            server.server_close()
            raise BadInput(
                f"--cert {tls[0]} / --key {tls[1]}: cannot load them ({error}); give a PEM "
                "certificate and its private key"
            ) from None
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def url_of(server: Server, tls: bool) -> str:
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}/"


def serve_in_background(server: Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="edgetl-serve", daemon=True)
    thread.start()
    return thread


def terminal_qr(text: str) -> Optional[str]:
    """The URL as a QR code drawn with half blocks, or None without ``segno``."""
    try:
        import segno
    except ImportError:
        return None
    import io

    buffer = io.StringIO()
    segno.make(text, error="m", micro=False).terminal(out=buffer, compact=True, border=2)
    return buffer.getvalue()


def startup_lines(site: Site, url: str, host: str, tls: bool) -> List[str]:
    secure = tls or host in ("127.0.0.1", "::1", "localhost")
    camera = (
        "live camera: on (secure context)"
        if secure
        else "live camera: needs https (--cert/--key) or localhost; over http the page takes "
        "photos with the phone's camera app"
    )
    everywhere = host in ("0.0.0.0", "::")
    return [
        f"serving {site.model_name} ({len(site.labels)} outputs) at {url}",
        f"bound to {host} only" if not everywhere else "bound to every interface (--host 0.0.0.0)",
        camera,
        "the page runs the model on the phone; its Content-Security-Policy blocks MediaPipe's "
        "usage metrics. Ctrl-C stops.",
    ]


def start(
    model: Path,
    host: Optional[str],
    port: int,
    web_runtime: Optional[str],
    cdn: bool,
    cert: Optional[str],
    key: Optional[str],
) -> Tuple[Server, str, List[str]]:
    """``edgetl serve``'s server, bound and checked, its URL, and what to tell the user;
    every mistake (model, runtime, address, certificate) is one line before it binds."""
    if (cert is None) != (key is None):
        raise BadInput("--cert and --key go together: give the PEM certificate and its key")
    if cdn and web_runtime:
        raise BadInput("--cdn and --web-runtime both say where MediaPipe comes from; give one")
    tls = (Path(cert), Path(key)) if cert and key else None
    site = build_site(model, Path(web_runtime) if web_runtime else None, cdn=cdn)
    host = host or lan_address() or "127.0.0.1"
    httpd = bind(site, host, port, tls)
    url = url_of(httpd, tls is not None)
    lines = startup_lines(site, url, host, tls is not None)
    code = terminal_qr(url)
    return httpd, url, lines + ([code] if code else [])
