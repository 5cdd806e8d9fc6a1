"""``edgetl serve MODEL``: a page that classifies on the phone itself.

The workstation (or the Pi) only hands out files: the page, the model, its card
and MediaPipe's web runtime (``@mediapipe/tasks-vision``). The phone's browser
decodes each photo and runs the model on its own CPU (WebAssembly), so a user
tries a model on the device they carry without building an app.

What the server promises, and the tests check:

- **Only what it names.** Every URL it answers is in one table built at start
  (``site.py``); anything else is 404.
- **Only where it is told.** It binds the one address given (default: this
  machine's LAN address, the one a phone on the same network reaches), never
  every interface unless ``--host 0.0.0.0`` says so.
- **Nothing from the page leaves the phone.** Every response carries the
  site's Content-Security-Policy (``site.policy``: MediaPipe's usage metrics are
  blocked in the browser). Photos never leave the phone: the page has no upload
  path.
- **No traceback, no stall.** A phone that drops a download is not news; an
  https handshake happens in the connection's own thread; a silent connection
  is let go after 30 s.

The live camera needs a secure context (https, or localhost); over plain http
on a LAN the page takes photos through the phone's camera app
(``<input capture>``), which browsers allow anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import ipaddress
import json
import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

from edge.errors import BadInput
from edge.web.site import Route, Site, build_site

MAX_POST_BYTES = 16 << 20
QUIET_ERRORS = (ConnectionError, TimeoutError, ssl.SSLError)  # a phone that went away
DEFAULT_PORT = 8000


class Handler(http.server.BaseHTTPRequestHandler):
    """GET (and HEAD) from the route table; POST only to a check's results."""

    site: Site
    server_version = "edgetl"
    sys_version = ""
    timeout = 30  # a connection that sends nothing (or less than it announced) lets go

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

    def addressed_by_ip(self) -> bool:
        """The request names this server by an IP address or localhost, as the printed
        URL does. A page elsewhere that points its own DNS name at this machine (DNS
        rebinding) names it by that name instead, and is refused, so it cannot read
        the model through the phone's browser."""
        host = urlsplit(f"//{self.headers.get('Host', '')}").hostname or ""
        if host == "localhost":
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    def answer(self, send_body: bool) -> None:
        if not self.addressed_by_ip():
            self.send_error(421, "open the address edgetl serve printed (an IP address)")
            return
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
            handle = open(route.file, "rb")  # noqa: SIM115 (a 404 only before any header)
        except OSError:
            self.send_error(404, "not served here")
            return
        with handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            self.send_response(200)
            self.headers_for(route, size)
            if send_body:
                while block := handle.read(1 << 20):
                    self.wfile.write(block)

    def do_GET(self) -> None:  # noqa: N802 (http.server's spelling)
        self.answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self.answer(False)

    def do_POST(self) -> None:  # noqa: N802
        check = self.site.check
        if (
            check is None
            or urlsplit(self.path).path != "/check/results"
            or not self.addressed_by_ip()
        ):
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
    tls: Optional[ssl.SSLContext] = None

    def get_request(self) -> Tuple[socket.socket, Any]:
        """With https, the handshake happens in the connection's own thread (on its
        first read), so one silent client cannot hold the accepting loop."""
        connection, address = self.socket.accept()
        if self.tls is not None:
            connection = self.tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A phone that drops a download or a bad handshake is not news on the terminal;
        anything else is printed in one line, never as a traceback."""
        error = sys.exc_info()[1]
        if not isinstance(error, QUIET_ERRORS):
            print(
                f"edgetl serve: {client_address[0]}: {type(error).__name__}: {error}",
                file=sys.stderr,
            )


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
        if error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL):
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

        def no_passphrase() -> str:  # OpenSSL would prompt on the terminal instead
            raise ValueError("the key is encrypted; give an unencrypted PEM key")

        try:
            context.load_cert_chain(str(tls[0]), str(tls[1]), password=no_passphrase)
        except (OSError, ssl.SSLError, ValueError) as error:
            server.server_close()
            reason = getattr(error, "strerror", None) or str(error)
            raise BadInput(
                f"--cert {tls[0]} / --key {tls[1]}: cannot load them ({reason}); give a PEM "
                "certificate and its unencrypted private key"
            ) from None
        server.tls = context
    return server


def url_of(server: Server, tls: bool) -> str:
    """The address to open: on every interface, the LAN one (0.0.0.0 opens nothing)."""
    host, port = server.server_address[:2]
    if host in ("0.0.0.0", "::"):
        host = lan_address() or "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}/"


@contextlib.contextmanager
def in_background(server: Server) -> Iterator[Server]:
    """``server`` answering from a thread for the ``with`` block, then shut down and
    its socket closed (``make web-check`` and the tests; ``edgetl serve`` serves in
    the foreground)."""
    thread = threading.Thread(target=server.serve_forever, name="edgetl-serve", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


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
