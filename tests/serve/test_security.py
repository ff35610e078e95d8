"""Running the services for a team (issue 20 items 3 and 4): reviewer accounts, roles, sessions, CSRF, allowed
hosts, the rule against exposing an open review beyond loopback, the tagging API's bearer token, and uploads that
trickle their body cut off by a total deadline and a minimum rate."""

from __future__ import annotations

import io
import socket
import threading
import time
import warnings

import httpx
import pytest
from typer.testing import CliRunner

from browser import live_server
from fashiontag.cli import app as cli
from fashiontag.inference.tagger import Tagger
from fashiontag.review import auth
from fashiontag.review.queue import fill_queue
from fashiontag.review.store import ReviewStore
from fashiontag.serve import create_app
from fashiontag.serve.app import read_token
from fashiontag.serve.hosts import serve_hosts
from synthetic import draw

with warnings.catch_warnings():  # starlette would rather its test client used httpx2; httpx works
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

TOKEN = "a-long-enough-token-0123456789"


@pytest.fixture(scope="module")
def tagger():
    return Tagger.load(None, engine="onnx", threads=1)  # the shipped model: nothing to train


def _jpeg(colour="Red") -> bytes:
    buf = io.BytesIO()
    draw("Tshirts", colour, "Men").save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture()
def store(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate(["Red", "Blue", "Black"]):
        (photos / f"{i}.jpg").write_bytes(_jpeg(colour))
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}")
    fill_queue(store, [str(photos)], engine="onnx")
    yield store
    store.close()


def _accept(client, photo, csrf=None, reviewer="mallory"):
    decisions = {t: {"label": tag["label"], "version": tag["version"]} for t, tag in photo["tags"].items()}
    return client.post(f"/review/api/photos/{photo['id']}/review", json={"reviewer": reviewer, "decisions": decisions},
                       headers={"X-CSRF-Token": csrf} if csrf else {})


def _sign_in(client, name, password):
    r = client.post("/review/api/sign-in", json={"name": name, "password": password})
    assert r.status_code == 200, r.text
    return client.cookies.get(auth.CSRF_COOKIE)


def test_sign_in_sessions_csrf_and_actions_under_the_signed_in_reviewer(tagger, store):
    auth.add_user(store, "ann", "ann-password", "reviewer")
    with pytest.raises(auth.AuthError, match="already"):
        auth.add_user(store, "ann", "another-password")
    with pytest.raises(auth.AuthError, match="8 characters"):
        auth.add_user(store, "bob", "short")
    assert "ann-password" not in str(auth.list_users(store)) and auth.get_user(store, "ann")["hash"].startswith(
        "$argon2id$")
    with TestClient(create_app(tagger=tagger, review=store)) as client:
        assert client.get("/review/api/queue").status_code == 401
        assert client.get(f"/review/api/photos/{store.photos()[0]['id']}/image").status_code == 401
        assert client.get("/review/api/session").json() == {"accounts": True, "user": None, "role": None}
        assert client.get("/healthz").status_code == 200
        bad = client.post("/review/api/sign-in", json={"name": "ann", "password": "wrong-password"})
        assert bad.status_code == 401 and bad.json()["error"] == "bad_credentials"
        assert client.post("/review/api/sign-in", json={"name": "nobody", "password": "x" * 9}).status_code == 401

        r = client.post("/review/api/sign-in", json={"name": "ann", "password": "ann-password"})
        assert r.status_code == 200 and r.json() == {"user": "ann", "role": "reviewer"}
        cookies = r.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith(auth.SESSION_COOKIE))
        csrf_cookie = next(c for c in cookies if c.startswith(auth.CSRF_COOKIE))
        assert "HttpOnly" in session and "samesite=strict" in session.lower() and "Secure" not in session
        assert "HttpOnly" not in csrf_cookie and "samesite=strict" in csrf_cookie.lower()
        csrf = client.cookies.get(auth.CSRF_COOKIE)
        assert client.get("/review/api/session").json()["user"] == "ann"

        photo = client.get("/review/api/queue").json()["photos"][0]
        refused = _accept(client, photo)  # no CSRF header
        assert refused.status_code == 403 and refused.json()["error"] == "csrf"
        assert _accept(client, photo, csrf="forged").status_code == 403
        r = _accept(client, photo, csrf)
        assert r.status_code == 200, r.text
        # recorded under the session's account, whatever name the body gives
        assert {t["reviewer"] for t in store.photo(photo["id"])["tags"].values()} == {"ann"}
        assert store.reviewers() == ["ann"]

        # a forged session cookie, a removed account: signed out
        token = client.cookies.get(auth.SESSION_COOKIE)
        client.cookies.set(auth.SESSION_COOKIE, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
        assert client.get("/review/api/queue").status_code == 401
        client.cookies.set(auth.SESSION_COOKIE, token)
        assert client.get("/review/api/queue").status_code == 200
        assert auth.remove_user(store, "ann")
        auth.add_user(store, "boss", "boss-password", "admin")
        assert client.get("/review/api/queue").status_code == 401

        # failed sign-ins for a name are throttled
        for _ in range(auth.FAILURES_ALLOWED):
            client.post("/review/api/sign-in", json={"name": "boss", "password": "nope-nope"})
        assert client.post("/review/api/sign-in", json={"name": "boss", "password": "boss-password"}
                           ).status_code == 429


def test_cookies_are_secure_behind_tls(tagger, store):
    auth.add_user(store, "ann", "ann-password")
    with TestClient(create_app(tagger=tagger, review=store), base_url="https://127.0.0.1") as client:
        r = client.post("/review/api/sign-in", json={"name": "ann", "password": "ann-password"})
        assert all("Secure" in c for c in r.headers.get_list("set-cookie"))
    with TestClient(create_app(tagger=tagger, review=store, cookie_secure=True)) as client:
        r = client.post("/review/api/sign-in", json={"name": "ann", "password": "ann-password"})
        assert all("Secure" in c for c in r.headers.get_list("set-cookie"))


def test_reviewers_undo_their_own_actions_admins_anyones(tagger, store):
    auth.add_user(store, "ann", "ann-password", "reviewer")
    auth.add_user(store, "bob", "bob-password", "reviewer")
    auth.add_user(store, "boss", "boss-password", "admin")
    with TestClient(create_app(tagger=tagger, review=store)) as client:
        jars = {}
        for name in ("ann", "bob", "boss"):
            client.cookies.clear()
            _sign_in(client, name, f"{name}-password")
            jars[name] = dict(client.cookies)

        def as_(name):  # one client, each reviewer's cookies in turn (one app, one lifespan)
            client.cookies.clear()
            client.cookies.update(jars[name])
            return client, {"X-CSRF-Token": jars[name][auth.CSRF_COOKIE]}

        c, h = as_("ann")
        photos = c.get("/review/api/queue").json()["photos"]
        action = _accept(c, photos[0], h["X-CSRF-Token"]).json()["action"]
        c, h = as_("bob")
        r = c.post("/review/api/undo", json={"action_id": action}, headers=h)
        assert r.status_code == 403 and "only an admin" in r.json()["message"]
        r = c.post("/review/api/undo", json={}, headers=h)
        assert r.status_code == 404  # bob has nothing of his own to undo
        c, h = as_("boss")
        r = c.post("/review/api/undo", json={"action_id": action}, headers=h)
        assert r.status_code == 200 and r.json()["undone"] == action
        c, h = as_("ann")
        action = _accept(c, c.get(f"/review/api/photos/{photos[1]['id']}").json(), h["X-CSRF-Token"]).json()["action"]
        r = c.post("/review/api/undo", json={"action_id": action}, headers=h)
        assert r.status_code == 200
        r = c.post("/review/api/sign-out", headers=h)
        assert r.status_code == 200
        assert sorted(x.split("=")[0] for x in r.headers.get_list("set-cookie") if "Max-Age=0" in x) == sorted(
            [auth.CSRF_COOKIE, auth.SESSION_COOKIE])


def test_without_accounts_the_review_stays_open_but_refuses_cross_site_writes(tagger, store):
    with TestClient(create_app(tagger=tagger, review=store)) as client:
        assert client.get("/review/api/session").json()["accounts"] is False
        photo = client.get("/review/api/queue").json()["photos"][0]
        assert _accept(client, photo, reviewer="ann").status_code == 200
        assert store.reviewers() == ["ann"]
        decisions = {t: {"label": tag["label"], "version": tag["version"]}
                     for t, tag in client.get(f"/review/api/photos/{photo['id']}").json()["tags"].items()}
        r = client.post(f"/review/api/photos/{photo['id']}/review", json={"reviewer": "x", "decisions": decisions},
                        headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and r.json()["error"] == "cross_origin"


def test_a_foreign_host_header_is_refused(tagger):
    assert serve_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert serve_hosts("10.1.2.3", ["review.example.com"])[-2:] == ["10.1.2.3", "review.example.com"]
    assert serve_hosts("0.0.0.0") == ["*"]
    with TestClient(create_app(tagger=tagger, allowed_hosts=serve_hosts("127.0.0.1", ["review.example.com"])),
                    base_url="http://127.0.0.1:8000") as client:
        assert client.get("/healthz").status_code == 200
        for host in ("localhost:8000", "[::1]:8000", "review.example.com"):
            assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
        # DNS rebinding: a page of attacker.example whose name now resolves to 127.0.0.1
        assert client.get("/healthz", headers={"Host": "attacker.example:8000"}).status_code == 400
        assert client.get("/v1/model", headers={"Host": "attacker.example"}).status_code == 400


def test_the_tagging_api_token(tagger, tmp_path, monkeypatch):
    with TestClient(create_app(tagger=tagger, token=TOKEN)) as client:
        files = {"files": ("a.jpg", _jpeg(), "image/jpeg")}
        r = client.post("/v1/tag", files=files)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert client.post("/v1/tag", files=files, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/tag", files=files, headers={"Authorization": TOKEN}).status_code == 401
        r = client.post("/v1/tag", files=files, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["tagged"] == 1
        assert client.get("/healthz").status_code == 200
    (tmp_path / "token").write_text(TOKEN + "\n")
    monkeypatch.delenv("FASHIONTAG_TOKEN", raising=False)
    assert read_token(tmp_path / "token") == TOKEN and read_token(None) is None
    monkeypatch.setenv("FASHIONTAG_TOKEN", TOKEN)
    assert read_token(None) == TOKEN
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match="16 characters"):
        read_token(tmp_path / "short")


def test_serving_beyond_loopback_needs_accounts_or_no_auth(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(_jpeg())
    db = f"sqlite:///{tmp_path / 'review.db'}"
    runner = CliRunner()
    r = runner.invoke(cli, ["review", str(photos), "--db", db, "--host", "0.0.0.0"])
    assert r.exit_code != 0 and "no accounts" in r.output and "--no-auth" in r.output
    store = ReviewStore(db)
    try:
        assert store.photos() == []  # refused before anything was queued
        assert auth.check_exposure(store, "127.0.0.1") is None and auth.check_exposure(store, "::1") is None
        assert "warning" in auth.check_exposure(store, "0.0.0.0", no_auth=True)
        with pytest.raises(auth.AuthError):
            auth.check_exposure(store, "192.168.1.5")
    finally:
        store.close()

    # accounts from the CLI: then binding beyond loopback is allowed
    r = runner.invoke(cli, ["review", "users", "add", "boss", "--db", db, "--role", "admin", "--password-stdin"],
                      input="boss-password\n")
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["review", "users", "add", "eve", "--db", db, "--role", "root", "--password-stdin"],
                      input="eve-password\n")
    assert r.exit_code != 0 and "role" in r.output
    r = runner.invoke(cli, ["review", "users", "list", "--db", db])
    assert r.exit_code == 0 and r.stdout.startswith("boss\tadmin\t")
    store = ReviewStore(db)
    try:
        assert auth.check_exposure(store, "0.0.0.0") is None
        assert auth.verify(store, "boss", "boss-password")["role"] == "admin"
    finally:
        store.close()
    r = runner.invoke(cli, ["review", "users", "remove", "boss", "--db", db])
    assert r.exit_code == 0
    assert runner.invoke(cli, ["review", "users", "remove", "boss", "--db", db]).exit_code != 0


def _trickler(url: str, period: float, chunk: bytes, stop: float, answers: list) -> None:
    """A client that sends its headers, then `chunk` every `period` seconds until the server answers or `stop`."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    try:
        sock.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 10000000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"files\"; "
                     b"filename=\"slow.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n")
        sock.settimeout(period)
        received = b""
        while time.monotonic() < stop:
            try:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
                if b"\r\n\r\n" in received:
                    break
            except TimeoutError:
                pass
            try:
                sock.sendall(chunk)
            except OSError:
                break
        answers.append((time.monotonic(), received))
    finally:
        sock.close()


def test_trickling_uploads_are_cut_off_and_real_uploads_get_through(tagger):
    """A bounded slow-body attack on 127.0.0.1: a few clients trickling a byte every 0.2 s take every upload slot;
    the minimum rate cuts them off after its grace period, a client fast enough but endless meets the total
    deadline, and a real upload goes through right after."""
    app = create_app(tagger=tagger, max_uploads=3, upload_deadline=2.5, min_upload_rate=10 * 1024, rate_grace=1.0,
                     body_timeout=5.0)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        files = {"files": ("a.jpg", _jpeg(), "image/jpeg")}
        assert client.post("/v1/tag", files=files).status_code == 200
        start = time.monotonic()
        answers: list = []
        threads = [threading.Thread(target=_trickler, args=(url, 0.2, b"x", start + 8, answers), daemon=True)
                   for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        busy = client.post("/v1/tag", files=files)
        assert busy.status_code == 503 and busy.json()["error"] == "busy"  # the attack works without the limits
        while (r := client.post("/v1/tag", files=files)).status_code == 503:
            assert time.monotonic() - start < 4, "the trickling clients still hold every upload slot"
            time.sleep(0.1)
        assert r.status_code == 200 and r.json()["tagged"] == 1
        for t in threads:
            t.join(10)
        assert len(answers) == 3
        for at, raw in answers:
            assert raw.startswith(b"HTTP/1.1 408") and b"too slow" in raw and at - start < 3, raw[:300]

        # 20 KiB/s is over the minimum rate, but the whole body may not take more than the deadline
        start = time.monotonic()
        fast: list = []
        _trickler(url, 0.2, b"x" * 4096, start + 8, fast)
        (at, raw), = fast
        assert raw.startswith(b"HTTP/1.1 408") and b"took over 2.5 s" in raw, raw[:300]
        assert 2.4 < at - start < 4.5


def test_a_teams_accounts_can_be_added_before_its_first_photos(tmp_path):
    db = f"sqlite:///{tmp_path / 'team.db'}"
    added = CliRunner().invoke(cli, ["review", "users", "add", "alice", "--role", "admin", "--db", db,
                                     "--password-stdin"], input="a long password\n")
    assert added.exit_code == 0, added.output
    listed = CliRunner().invoke(cli, ["review", "users", "list", "--db", db])
    assert listed.output.startswith("alice\tadmin")
    missing = CliRunner().invoke(cli, ["review", "users", "list", "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert missing.exit_code == 2 and not (tmp_path / "none.db").exists()
