"""``edgetl serve`` (``edge/web/server.py``): what it hands a phone, and nothing else.

The browser itself runs in ``make web-check`` (headless Chromium); these tests hold
the server's promises with real sockets and the real CLI: it serves the model, its
card and MediaPipe's runtime, refuses every other path, binds only the address it
is given, blocks the page from reaching anywhere else, and fails in one line."""

from __future__ import annotations

import http.client
import json
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, edgetl_here

from edge import answer
from edge.errors import BadInput, MissingEnvironment
from edge.modelfile import read_model_card
from edge.web import server, site


@pytest.fixture
def runtime_dir(tmp_path) -> Path:
    """A stand-in for ``@mediapipe/tasks-vision``: the five files the page loads (their
    contents do not matter to the server), plus one it must not serve."""
    folder = tmp_path / "tasks-vision"
    for name in site.RUNTIME_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(f"runtime file {name}".encode())
    (folder / "package.json").write_text("{}")
    return folder


@pytest.fixture
def served(micro_run, runtime_dir):
    model = micro_run / "model_int8.tflite"
    with server.in_background(
        server.bind(site.build_site(model, runtime_dir), "127.0.0.1", 0)
    ) as httpd:
        yield model, httpd


def get(httpd, path: str, method: str = "GET", body: bytes | None = None, host_header=None):
    host, port = httpd.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Host": host_header} if host_header else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def test_serves_the_model_its_card_and_the_runtime(served, runtime_dir):
    model, httpd = served
    response, data = get(httpd, "/model.tflite")
    assert response.status == 200 and data == model.read_bytes()
    response, data = get(httpd, "/config.json")
    config = json.loads(data)
    card = read_model_card(model)
    assert config["labels"] == card.labels and config["card"] == card.metadata
    assert config["card"]["unknown"]["index"] == len(card.labels) - 1  # the out-of-class output
    assert config["check"] is None  # no check routes outside make web-check
    for name in site.RUNTIME_FILES:
        response, data = get(httpd, f"/mediapipe/{name}")
        assert response.status == 200 and data == (runtime_dir / name).read_bytes()
    response, _ = get(httpd, "/mediapipe/wasm/vision_wasm_internal.wasm")
    assert response.getheader("Content-Type") == "application/wasm"  # instantiateStreaming
    response, data = get(httpd, "/")
    assert response.status == 200 and b'src="app.js"' in data
    for page_file in ("app.js", "answer.js"):
        assert get(httpd, f"/{page_file}")[0].status == 200


def test_the_page_may_reach_only_this_server(served):
    """MediaPipe's web package posts usage metrics to Google; the policy blocks that."""
    _, httpd = served
    for path in ("/", "/app.js", "/model.tflite", "/config.json"):
        policy = get(httpd, path)[0].getheader("Content-Security-Policy")
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert directives["connect-src"] == "'self'"
        assert directives["default-src"] == "'self'"
        assert "googleapis" not in policy and "*" not in policy
    cdn = site.policy(cdn=True)
    assert site.CDN in cdn and "googleapis" not in cdn


@pytest.mark.parametrize(
    "path",
    [
        "/../pyproject.toml",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/mediapipe/../../pyproject.toml",
        "/mediapipe/package.json",  # in the runtime folder, but not one of its files
        "/mediapipe/wasm/",
        "/app.js/../../edge/web/server.py",
        "/index.html",
        "/model_int8.tflite",
        "/check/image/0",  # check routes exist only under make web-check
        "//etc/passwd",
        "/config.json%00.tflite",
    ],
)
def test_refuses_every_other_path(served, path):
    _, httpd = served
    response, data = get(httpd, path)
    assert response.status == 404
    assert b"root:" not in data and b"[project]" not in data


def test_a_page_that_names_the_server_by_another_name_is_refused(served):
    """DNS rebinding: a page elsewhere points its own name at this machine; the
    browser then sends that name as Host. The printed URL uses an IP address."""
    model, httpd = served
    port = httpd.server_address[1]
    for host in (f"attacker.example:{port}", "attacker.example", "127.0.0.1.nip.io"):
        response, data = get(httpd, "/model.tflite", host_header=host)
        assert response.status == 421 and data != model.read_bytes()
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "192.168.1.20"):
        assert get(httpd, "/config.json", host_header=host)[0].status == 200, host


def test_posts_are_refused_outside_a_check(served):
    _, httpd = served
    assert get(httpd, "/check/results", "POST", b"{}")[0].status == 404
    assert get(httpd, "/", "POST", b"{}")[0].status == 404


def test_check_results_are_bounded_and_parsed(micro_run, runtime_dir):
    posted = []
    check = site.Check([], "files", posted.append)
    pages = site.build_site(micro_run / "model_int8.tflite", runtime_dir, check=check)
    with server.in_background(server.bind(pages, "127.0.0.1", 0)) as httpd:
        assert get(httpd, "/check/results", "POST", b"not json")[0].status == 400
        assert get(httpd, "/check/results", "POST", b"")[0].status == 413
        assert get(httpd, "/check/results", "POST", b'{"rows": []}')[0].status == 204
    assert posted == [{"rows": []}]


def test_binds_only_the_address_it_is_given(micro_run, runtime_dir):
    pages = site.build_site(micro_run / "model_int8.tflite", runtime_dir)
    with server.in_background(server.bind(pages, "127.0.0.1", 0)) as httpd:
        port = httpd.server_address[1]
        assert get(httpd, "/")[0].status == 200
        others = ["127.0.0.2"] + [a for a in [server.lan_address()] if a and a != "127.0.0.1"]
        for other in others:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((other, port), timeout=5).close()


def test_a_runtime_file_that_escapes_its_folder_is_refused(micro_run, runtime_dir, tmp_path):
    outside = tmp_path / "outside.wasm"
    outside.write_bytes(b"secret")
    target = runtime_dir / "wasm" / "vision_wasm_internal.wasm"
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(MissingEnvironment, match="make web-runtime"):
        site.build_site(micro_run / "model_int8.tflite", runtime_dir)


def test_not_a_model_is_bad_input(tmp_path, runtime_dir):
    photo = tmp_path / "photo.tflite"
    photo.write_bytes(b"\xff\xd8\xff\xe0 a jpeg, renamed")
    with pytest.raises(BadInput, match="not a TFLite model"):
        site.build_site(photo, runtime_dir)
    bare = tmp_path / "bare.tflite"  # a flatbuffer header with no card and no labels.txt
    bare.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    with pytest.raises(BadInput, match="no labels"):
        site.build_site(bare, runtime_dir)


def test_cli_errors_are_one_line(micro_run, runtime_dir, tmp_path):
    model = str(micro_run / "model_int8.tflite")
    runtime = ["--web-runtime", str(runtime_dir)]
    assert_one_line_error(
        edgetl_here("serve", str(tmp_path / "none.tflite"), *runtime), 2, "no such model"
    )
    assert_one_line_error(edgetl_here("serve", str(micro_run), *runtime), 2, "is a folder")
    missing = ["--web-runtime", str(tmp_path / "nowhere")]
    assert_one_line_error(edgetl_here("serve", model, *missing), 3, "make web-runtime", "--cdn")
    assert_one_line_error(
        edgetl_here("serve", model, "--cert", model, *runtime), 2, "--cert and --key"
    )
    assert_one_line_error(edgetl_here("serve", model, "--cdn", *runtime), 2, "give one")
    # 192.0.2.0/24 is reserved for documentation; .123 is not one of this machine's
    assert server.lan_address() != "192.0.2.123"
    assert_one_line_error(
        edgetl_here("serve", model, "--host", "192.0.2.123", "--port", "0", *runtime),
        2,
        "not an address of this machine",
    )
    assert_one_line_error(
        edgetl_here("serve", model, "--host", "no such host!", *runtime), 2, "--host"
    )
    bad_pem = tmp_path / "cert.pem"
    bad_pem.write_text("not a certificate")
    tls = ["--cert", str(bad_pem), "--key", str(bad_pem), "--host", "127.0.0.1", "--port", "0"]
    assert_one_line_error(edgetl_here("serve", model, *tls, *runtime), 2, "cannot load them")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = edgetl_here("serve", model, "--host", "127.0.0.1", "--port", port, *runtime)
        assert_one_line_error(result, 2, "in use", "--port")


def test_serve_prints_its_address_serves_and_stops_on_ctrl_c(micro_run, runtime_dir):
    model = micro_run / "model_int8.tflite"
    command = [sys.executable, "-m", "toolchain.cli", "serve", str(model), "--host", "127.0.0.1",
               "--port", "0", "--web-runtime", str(runtime_dir)]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 120)
        assert ready, "edgetl serve printed no address"
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        host, port = url[len("http://") : -1].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", "/model.tflite")
        assert connection.getresponse().read() == model.read_bytes()
        connection.close()
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in err
    assert "bound to 127.0.0.1 only" in err and "live camera: on" in err
    assert "▀" in err or "█" in err  # the QR code


def certificate(folder: Path, passphrase: str | None = None) -> tuple[Path, Path]:
    """A self-signed certificate and its key (encrypted with ``passphrase``), by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    secret = ["-passout", f"pass:{passphrase}"] if passphrase else ["-nodes"]
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", *secret, "-subj", "/CN=127.0.0.1",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_serves_and_a_silent_client_does_not_hold_it(micro_run, runtime_dir, tmp_path):
    """The handshake runs in each connection's thread: one client that connects and
    says nothing must not keep a phone from loading the page."""
    cert, key = certificate(tmp_path)
    pages = site.build_site(micro_run / "model_int8.tflite", runtime_dir)
    with server.in_background(server.bind(pages, "127.0.0.1", 0, (cert, key))) as httpd:
        host, port = httpd.server_address[:2]
        with socket.create_connection((host, port), timeout=5):  # the silent client
            context = ssl.create_default_context(cafile=str(cert))
            context.check_hostname = False
            connection = http.client.HTTPSConnection(host, port, timeout=10, context=context)
            connection.request("GET", "/model.tflite")
            model = (micro_run / "model_int8.tflite").read_bytes()
            assert connection.getresponse().read() == model
            connection.close()
        assert server.url_of(httpd, True).startswith("https://127.0.0.1:")


def test_an_encrypted_key_is_one_line_not_a_prompt(micro_run, runtime_dir, tmp_path):
    cert, key = certificate(tmp_path, passphrase="secret")
    result = edgetl_here(
        "serve", str(micro_run / "model_int8.tflite"), "--cert", str(cert), "--key", str(key),
        "--host", "127.0.0.1", "--port", "0", "--web-runtime", str(runtime_dir),
    )  # fmt: skip
    assert_one_line_error(result, 2, "encrypted")


def test_the_page_answers_as_the_runner_does(tmp_path):
    """``answer.js`` (the page) and ``edge/answer.py`` (the runner) on the same scores."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the page's answer rule is checked where it is")
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(400):
        n = int(rng.integers(2, 7))
        scores = rng.dirichlet(np.ones(n) * 0.7)
        if rng.random() < 0.2:  # ties between the unknown output and the best class
            scores[-1] = scores[:-1].max()
        unknown = None if rng.random() < 0.3 else int(rng.integers(0, n))
        floor = float(rng.choice([0.0, 0.3, 0.5, 0.8]))
        cases.append({"scores": scores.tolist(), "unknown": unknown, "floor": floor})
    labels = [f"c{i}" for i in range(7)]
    page = (REPO / "edge/web/page/answer.js").as_uri()
    script = (
        f"import {{decide}} from {json.dumps(page)};\n"
        f"const cases = {json.dumps(cases)}; const labels = {json.dumps(labels)};\n"
        "console.log(JSON.stringify(cases.map(c => decide(c.scores, labels, c.unknown, c.floor))));"
    )
    result = subprocess.run(
        [node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for case, page_answer in zip(cases, json.loads(result.stdout)):
        expected = answer.decide(np.array(case["scores"]), labels, case["unknown"], case["floor"])
        assert page_answer["answer"] == expected.answer, case
        assert page_answer["flagged"] == expected.out_of_class, case
