"""The service under a real uvicorn against unlucky and hostile clients (issue 10, items 6 and 11): idle and slow
connections, HEAD, refusals from below the app, clients that leave mid-upload, bodies cut short. Loopback only,
with short timeouts and a bounded number of sockets."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from browser import live_server
from fashiontag.serve import create_app

HEADER_TIMEOUT = 2.0  # seconds for a request's headers (10 in `fashiontag serve`)
BODY_TIMEOUT = 2.0    # seconds an upload may stall (30)
MAX_UPLOADS = 4
BOUNDARY = "b0undary"


@pytest.fixture(scope="module")
def url(trained, tmp_path_factory):
    model = tmp_path_factory.mktemp("hardening") / "model"
    shutil.copytree(trained, model)  # the service exports its ONNX graph into the model folder
    app = create_app(model, max_uploads=MAX_UPLOADS, body_timeout=BODY_TIMEOUT)
    with live_server(app, header_timeout=HEADER_TIMEOUT) as url:
        yield url


@pytest.fixture(scope="module")
def photo(catalog) -> tuple[str, bytes, str]:
    pid = catalog.good_ids[0]
    return f"{pid}.jpg", (catalog.root / "images" / f"{pid}.jpg").read_bytes(), "image/jpeg"


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends before it closes the connection; fails if it is still open at the deadline."""
    received = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open; it sent {received[:200]!r}") from None
        if not chunk:
            return received
        received += chunk


def json_answer(raw: bytes) -> tuple[int, dict, dict]:
    """Status, lower-cased headers and JSON body of one raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines))
    assert headers["content-type"].startswith("application/json"), raw[:300]
    return int(status_line.split()[1]), headers, json.loads(body)


def upload_head(length: int) -> bytes:
    return (f"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def part(name: str, data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + b"\r\n"


@contextmanager
def stalled_uploads(url: str, n: int):
    """n uploads whose headers and first bytes arrived, and then nothing."""
    with ExitStack() as stack:
        socks = [stack.enter_context(connect(url)) for _ in range(n)]
        for s in socks:
            s.sendall(upload_head(100_000) + part("slow.jpg", b"\xff\xd8")[:-2])
        yield socks


def wait_until_no_uploads(url: str) -> None:
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/v1/stats").json()["uploading"]:
        assert time.monotonic() < deadline, "uploads still counted after their clients left"
        time.sleep(0.05)


def test_idle_and_slow_connections_are_closed_and_health_checks_answer_meanwhile(url):
    """Issue 10 #6: connections that send nothing, half a request line or one header line and stop used to be
    held forever (1,030 of them made everyone, /healthz included, get 503)."""
    starts = [b"", b"GET /healthz HTT", b"POST /v1/tag HTTP/1.1\r\nHost: x\r\n"]
    with ExitStack() as stack:
        t0 = time.monotonic()
        slow = [stack.enter_context(connect(url)) for _ in range(150)]
        for i, s in enumerate(slow):
            s.sendall(starts[i % 3])
        stalled = stack.enter_context(stalled_uploads(url, 3))
        with httpx.Client(base_url=url, timeout=5) as http:
            for _ in range(5):
                assert http.get("/healthz").json() == {"status": "ok"}
        assert time.monotonic() - t0 < HEADER_TIMEOUT  # all of that while every slow client was still connected
        for s in slow:
            status, headers, body = json_answer(until_closed(s, t0 + HEADER_TIMEOUT + 3))
            assert status == 408 and body["error"] == "timeout" and headers["connection"] == "close"
        for s in stalled:
            status, _, body = json_answer(until_closed(s, t0 + BODY_TIMEOUT + 3))
            assert status == 408 and body["error"] == "timeout" and "upload" in body["message"]
    assert httpx.get(f"{url}/healthz").status_code == 200
    wait_until_no_uploads(url)


def test_head_answers_like_get_without_a_body(url):
    """Issue 10 #11: HEAD on the GET endpoints answered 405."""
    with httpx.Client(base_url=url, timeout=10) as http:
        for path in ("/healthz", "/readyz", "/v1/model", "/", "/web/app.js", "/docs", "/openapi.json"):
            get, head = http.get(path), http.head(path)
            assert (head.status_code, head.content) == (200, b""), path
            assert head.headers["content-type"] == get.headers["content-type"], path
            assert head.headers["content-length"] == str(len(get.content)), path
        head = http.head("/v1/tag")  # POST only: as GET would be
        assert head.status_code == 405 and head.headers["content-type"] == "application/json"


def test_refusals_from_below_the_app_are_json(url, photo):
    """Issue 10 #11: uvicorn's own 400 and 503 were text/plain. Bytes that are not HTTP get a JSON 400; too many
    uploads at once a JSON 503 from the app (uvicorn's connection-counting limit, whose 503 it was, is gone)."""
    with connect(url) as s:
        s.sendall(b"NOT HTTP\x00 AT ALL\r\n\r\n")
        status, _, body = json_answer(until_closed(s, time.monotonic() + 5))
    assert status == 400 and body["error"] == "bad_request" and body["message"] and body["files"] == []
    with stalled_uploads(url, MAX_UPLOADS), httpx.Client(base_url=url, timeout=5) as http:
        r = http.post("/v1/tag", files=[("files", photo)])
        assert r.status_code == 503 and r.json()["error"] == "busy" and r.headers["retry-after"] == "1"
        assert http.get("/healthz").status_code == 200
    wait_until_no_uploads(url)
    assert httpx.post(f"{url}/v1/tag", files=[("files", photo)], timeout=10).status_code == 200


def test_a_client_leaving_mid_upload_is_one_log_line_not_a_traceback(url):
    """Issue 10 #11: every disconnect mid-upload logged a full ASGI traceback."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("uvicorn.error")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with connect(url) as s:
            s.sendall(upload_head(100_000) + part("gone.jpg", b"\xff\xd8\xff"))
            time.sleep(0.2)  # the app is reading the body now
        wait_until_no_uploads(url)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [r.getMessage() for r in records]
    assert len(lines) == 1 and "disconnected during POST /v1/tag" in lines[0], lines
    assert records[0].exc_info is None


def test_a_body_without_its_closing_boundary_is_refused(url, photo):
    """Issue 10 #11: a multipart body cut short before its closing boundary was tagged as if it were whole."""
    name, data = photo[:2]
    whole = part(name, data) + f"--{BOUNDARY}--\r\n".encode()
    cut = part(name, data)
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/v1/tag", content=whole, headers=headers).status_code == 200
        r = http.post("/v1/tag", content=cut, headers=headers)
    assert r.status_code == 400 and r.json()["error"] == "bad_multipart" and "closing boundary" in r.json()["message"]


# ------------------------------------------------------------------------------------ a damaged model (issue 20 #2)

def _post(app, photo, n: int = 2):
    import warnings
    with warnings.catch_warnings():  # starlette would rather its test client used httpx2; httpx works
        warnings.filterwarnings("ignore", message=".*httpx2")
        from fastapi.testclient import TestClient
    with TestClient(app) as client:
        return client.post("/v1/tag", files=[("files", photo)] * n)


def test_a_damaged_onnx_export_is_made_again_and_tags_are_numbers(trained, photo, tmp_path):
    """4 KB written over inside model.onnx: every POST answered 500 (NaN confidences cannot be JSON)."""
    from fashiontag.inference.onnx_export import export_damage, export_onnx
    from helpers import write_over_onnx
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    write_over_onnx(export_onnx(model))
    answer = _post(create_app(model), photo)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["tagged"] == 2 and body["failed"] == 0
    assert all(0 <= t["confidence"] <= 1 for r in body["results"] for t in r["tags"].values())
    assert export_damage(model / "model.onnx") is None


def test_a_model_giving_nan_is_an_error_per_photo_not_a_500(trained, photo, tmp_path, caplog):
    from helpers import nan_model
    model = nan_model(trained, tmp_path / "model")
    with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
        answer = _post(create_app(model, engine="torch"), photo)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["tagged"] == 0 and body["failed"] == 2
    assert all(r["status"] == 500 and "NaN or infinite" in r["error"] and "tags" not in r for r in body["results"])
    assert "the model failed on 2 photos" in caplog.text
