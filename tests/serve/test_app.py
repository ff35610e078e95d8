"""The HTTP service and its web page: tags per photo, every kind of bad upload, micro-batching, a short load test on
loopback, and a real browser (Debian's chromium, driven by Playwright) using the page."""

from __future__ import annotations

import asyncio
import builtins
import csv
import io
import shutil
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from browser import live_server, open_page, screenshot, set_threshold, shown_tags, upload_and_wait
from fashiontag.inference.tagger import Tagger
from fashiontag.serve import SERVE_ENGINE, MicroBatcher, create_app

with warnings.catch_warnings():  # starlette would rather its test client used httpx2; httpx works
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

KiB, MiB = 1024, 1024 * 1024
LIMITS = dict(max_files=6, max_file_bytes=3 * MiB, max_upload_bytes=5 * MiB)


# ------------------------------------------------------------------------------------------------------------ helpers

def png_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose header declares width x height, with (almost) no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bomb_png() -> bytes:
    """8000 x 8000 pixels (over MAX_PIXELS) that compress to a few KB."""
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG")
    return buf.getvalue()


def file_part(name: str, data: bytes, content_type: str = "image/jpeg"):
    return ("files", (name, data, content_type))


@pytest.fixture(scope="module")
def photos(catalog) -> dict[str, bytes]:
    """Eight good catalog photos by file name."""
    images = catalog.root / "images"
    return {f"{pid}.jpg": (images / f"{pid}.jpg").read_bytes() for pid in catalog.good_ids[:8]}


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """A private copy of the trained model: the service exports its ONNX graph into the model folder."""
    dest = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(trained, dest)
    return dest


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served, max_batch=16, **LIMITS)) as c:
        yield c


@pytest.fixture(scope="module")
def direct(served):
    """The same model used directly, to check that the service returns what Tagger says."""
    return Tagger.load(served, engine=SERVE_ENGINE)


def expected(direct: Tagger, data: bytes, top_k: int = 1) -> dict:
    return direct.tag_pixels(direct.prepare(data)[None], top_k)[0].to_row(top_k)


# ---------------------------------------------------------------------------------------------------------- the API

def test_one_photo_gets_every_task_with_label_and_confidence(client, photos, direct):
    name, data = next(iter(photos.items()))
    r = client.post("/v1/tag", files=[file_part(name, data)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tagged"] == 1 and body["failed"] == 0 and body["top_k"] == 1
    (result,) = body["results"]
    assert result["file"] == name and set(result["tags"]) == set(direct.tasks)
    want = expected(direct, data)
    for task, tag in result["tags"].items():
        assert tag["label"] == want[task] and tag["label"] in direct.vocabs[task]
        assert tag["confidence"] == pytest.approx(want[f"{task}_confidence"], abs=2e-4) and 0 <= tag["confidence"] <= 1
        assert "top" not in tag


def test_many_photos_with_top_k_keep_order_and_hierarchy(client, photos, direct):
    names = list(photos)[:5]
    r = client.post("/v1/tag", params={"top_k": 3}, files=[file_part(n, photos[n]) for n in names])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["file"] for x in results] == names and [x["index"] for x in results] == list(range(5))
    levels, *combos = direct.meta["hierarchy"]
    for name, result in zip(names, results):
        tags = result["tags"]
        assert tuple(tags[t]["label"] for t in levels) in {tuple(c) for c in combos}
        want = expected(direct, photos[name], top_k=3)
        for task, tag in tags.items():
            assert tag["label"] == want[task]
            top = tag["top"]
            assert top[0] == {"label": tag["label"], "confidence": tag["confidence"]}
            assert len(top) == min(3, len(direct.vocabs[task]))
            assert len({t["label"] for t in top}) == len(top)
            assert top[1:] == sorted(top[1:], key=lambda t: -t["confidence"])


def test_options_also_come_as_form_fields(client, photos):
    name, data = next(iter(photos.items()))
    r = client.post("/v1/tag", data={"top_k": "2"}, files=[file_part(name, data)])
    assert r.status_code == 200 and all(len(t["top"]) == 2 for t in r.json()["results"][0]["tags"].values())


def test_below_min_confidence_the_guess_is_kept_and_flagged(client, photos):
    files = [file_part(n, d) for n, d in list(photos.items())[:LIMITS["max_files"]]]
    plain = client.post("/v1/tag", params={"min_confidence": 0}, files=files).json()["results"]
    assert not any(t["needs_review"] for p in plain for t in p["tags"].values())
    confidences = sorted(t["confidence"] for p in plain for t in p["tags"].values())
    threshold = confidences[len(confidences) // 2] + 0.00005  # between two rendered (4-decimal) confidences
    strict = client.post("/v1/tag", params={"min_confidence": threshold}, files=files).json()["results"]
    flagged = 0
    for p, s in zip(plain, strict):
        for task, tag in s["tags"].items():
            assert (tag["label"], tag["confidence"]) == (p["tags"][task]["label"], p["tags"][task]["confidence"])
            assert tag["needs_review"] == (tag["confidence"] < threshold)
            flagged += tag["needs_review"]
    assert 0 < flagged < len(confidences)


def test_model_health_readiness_and_docs(client, direct):
    m = client.get("/v1/model").json()
    assert m["tasks"] == direct.tasks and m["classes"] == direct.vocabs
    assert len(m["version"]) == 12 and m["arch"] == "rescnn"
    assert m["metrics"]["val_acc"].keys() == direct.meta["val_acc"].keys()
    assert m["hierarchy"]["tasks"] == ["articleType", "subCategory", "masterCategory"]
    assert m["limits"]["max_files"] == LIMITS["max_files"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static-offline-docs/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text and "https://" not in docs.text
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    op = client.get("/openapi.json").json()["paths"]["/v1/tag"]["post"]
    body = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"] == {"type": "array", "items": {"type": "string", "format": "binary"},
                                           "title": "Files", "description": body["properties"]["files"]["description"]}
    assert body["required"] == ["files"] and {"top_k", "min_confidence", "partial"} <= set(body["properties"])
    query = {p["name"]: p["schema"] for p in op["parameters"] if p["in"] == "query"}
    assert (query["top_k"]["minimum"], query["top_k"]["maximum"]) == (1, 20)
    # optional: absent, each task's own auto-accept threshold judges
    number = next(s for s in query["min_confidence"]["anyOf"] if s["type"] == "number")
    assert (number["minimum"], number["maximum"]) == (0, 1)
    assert query["partial"]["type"] == "boolean"
    assert {"413", "415", "422"} <= set(op["responses"])


def test_readyz_is_503_while_the_model_is_not_serving(served):
    app = create_app(served)
    with TestClient(app) as c:  # lifespan ran: loaded and warmed up
        assert c.get("/readyz").status_code == 200
    c = TestClient(app)  # no lifespan: the batcher was stopped
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["error"] == "not_ready"
    assert c.get("/healthz").status_code == 200


def test_web_page_and_its_files_are_served_from_memory(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file-input"' in page.text and "http://" not in page.text and "https://" not in page.text
    for name in ("app.js", "style.css", "favicon.svg"):
        r = client.get(f"/web/{name}")
        assert r.status_code == 200 and b"https://" not in r.content
    for bad in ("/web/nope.js", "/web/..%2Fserve.py", "/web/%2e%2e/serve.py", "/web/../serve.py", "/web/"):
        r = client.get(bad)
        assert r.status_code == 404 and "import" not in r.text


# ------------------------------------------------------------------------------------------------------- bad uploads

def bad_cases(catalog_images: Path) -> dict:
    """name -> (files, expected status, words the reason must contain)."""
    big_junk = b"\xff" * (3 * MiB + 1)
    return {
        "not an image": ([file_part("notes.jpg", (catalog_images / "9004.jpg").read_bytes())], 422, "not a readable"),
        "empty": ([file_part("empty.jpg", b"")], 422, "empty"),
        "truncated": ([file_part("cut.jpg", (catalog_images / "9003.jpg").read_bytes())], 422, "unreadable"),
        "zero-pixel": ([file_part("zero.png", png_header(0, 10), "image/png")], 422, "zero-pixel"),
        "enormous dimensions": ([file_part("bomb.png", bomb_png(), "image/png")], 422, "too large"),
        "header claims 10^10 pixels": ([file_part("huge.png", png_header(100_000, 100_000, 1, 0), "image/png")],
                                       422, "too large"),
        "over the per-photo limit": ([file_part("big.jpg", big_junk)], 413, "limit per photo"),
        "wrong content type": ([file_part("notes.txt", b"hello", "text/plain")], 415, "not an image"),
    }


@pytest.mark.parametrize("case", ["not an image", "empty", "truncated", "zero-pixel", "enormous dimensions",
                                  "header claims 10^10 pixels", "over the per-photo limit", "wrong content type"])
def test_each_bad_file_gets_a_4xx_naming_it(client, catalog, photos, case):
    files, status, words = bad_cases(catalog.root / "images")[case]
    good = next(iter(photos.items()))
    r = client.post("/v1/tag", files=[file_part(*good)] + files)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == "bad_file" and files[0][1][0] in body["message"]
    assert body["files"] == [{"file": files[0][1][0], "index": 1, "reason": body["files"][0]["reason"]}]
    assert words in body["files"][0]["reason"], body
    # partial=true tags the good photo and reports the bad one in its place
    r = client.post("/v1/tag", params={"partial": "true"}, files=[file_part(*good)] + files)
    assert r.status_code == 200, r.text
    good_result, bad_result = r.json()["results"]
    assert "tags" in good_result and bad_result["status"] == status and words in bad_result["error"]
    # and the server carries on
    assert client.post("/v1/tag", files=[file_part(*good)]).status_code == 200


def test_too_many_pixels_names_the_limit_the_model_advertises(client):
    """Issue 10 #11: the bomb error said 80,000,000 pixels while /v1/model advertised 40,000,000."""
    limit = client.get("/v1/model").json()["limits"]["max_pixels"]
    for name, data in (("bomb.png", bomb_png()), ("huge.png", png_header(100_000, 100_000, 1, 0))):
        r = client.post("/v1/tag", files=[file_part(name, data, "image/png")])
        reason = r.json()["files"][0]["reason"]
        assert r.status_code == 422 and f"{limit:,} pixels" in reason, reason
        assert f"{2 * limit:,}" not in reason and str(2 * limit) not in reason


def test_whole_request_refusals(client, photos):
    name, data = next(iter(photos.items()))
    cases = [
        (dict(content=b'{"files": []}', headers={"content-type": "application/json"}), 415, "unsupported_media_type"),
        (dict(content=b"", headers={"content-type": "multipart/form-data"}), 400, "bad_multipart"),
        (dict(data={"top_k": "2"}, files=[("other", ("x.txt", b"x", "text/plain"))]), 400, "unexpected_field"),
        (dict(data={"files": "not a file"}, files=[file_part(name, data)]), 400, "not_a_file"),
        (dict(data={"colour": "red"}, files=[file_part(name, data)]), 400, "unexpected_field"),
        (dict(files=[("other", (name, data, "image/jpeg"))]), 400, "unexpected_field"),
        (dict(files=[file_part(f"{i}.jpg", data) for i in range(LIMITS["max_files"] + 1)]), 413, "too_many_files"),
        (dict(files=[file_part(f"{i}.jpg", b"\xff" * (2 * MiB)) for i in range(3)]), 413, "upload_too_large"),
        (dict(params={"top_k": "0"}, files=[file_part(name, data)]), 422, "invalid_option"),
        (dict(params={"min_confidence": "lots"}, files=[file_part(name, data)]), 422, "invalid_option"),
        (dict(params={"partial": "maybe"}, files=[file_part(name, data)]), 422, "invalid_option"),
    ]
    for kwargs, status, code in cases:
        r = client.post("/v1/tag", **kwargs)
        assert (r.status_code, r.json()["error"]) == (status, code), (kwargs.keys(), r.text)
        assert r.json()["message"]
    r = client.post("/v1/tag", content=b"--x\r\n", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400
    r = client.post("/v1/tag", files=[file_part(f"{i}.jpg", b"\xff" * (2 * MiB)) for i in range(3)])
    assert "2.jpg" in r.json()["files"][0]["file"]  # names the file that crossed the limit
    assert client.get("/v1/tag").status_code == 405
    assert client.post("/v1/tag", files=[file_part(name, data)]).status_code == 200


def test_uploads_stay_in_memory_and_names_are_never_paths(client, photos, catalog, monkeypatch):
    """A 2 MB photo (Starlette's own parser would spool it to a temporary file) is tagged with no file opened; a
    file name that points at a real file on disk is only echoed (last component), never read."""
    import tempfile
    name, data = next(iter(photos.items()))
    padded = data + b"\0" * (2 * MiB)  # JPEG readers stop at the end-of-image marker
    opened = []
    real_open = builtins.open

    def spy_open(file, *args, **kwargs):
        opened.append(file)
        return real_open(file, *args, **kwargs)

    def no_temp(*args, **kwargs):
        raise AssertionError("an upload went to a temporary file")

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", no_temp)
    monkeypatch.setattr(tempfile, "TemporaryFile", no_temp)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_temp)
    real_path = str(catalog.root / "images" / name)
    r = client.post("/v1/tag", params={"partial": "true"},
                    files=[file_part("big.jpg", padded), file_part(real_path, b""),
                           file_part("../../etc/passwd", data)])
    monkeypatch.undo()
    assert r.status_code == 200, r.text
    big, empty, passwd = r.json()["results"]
    assert "tags" in big and "tags" in passwd
    assert empty["file"] == name and empty["error"] == "empty file"  # not the photo on disk with that name
    assert passwd["file"] == "passwd"
    assert opened == []


# ---------------------------------------------------------------------------------------------------- micro-batching

class CountingTagger:
    """A Tagger whose forward passes are counted (and can be slowed down to let a queue build up)."""

    def __init__(self, tagger: Tagger, delay: float = 0.0):
        self.inner, self.delay, self.batches = tagger, delay, []
        self.input_hw, self.tasks = tagger.input_hw, tagger.tasks

    def tag_pixels(self, pixels, top_k=1, min_confidence=None, titles=None):
        self.batches.append(len(pixels))
        time.sleep(self.delay)
        return self.inner.tag_pixels(pixels, top_k, min_confidence, titles)


def test_micro_batcher_gathers_concurrent_requests_into_few_passes(direct, photos):
    arrays = [direct.prepare(d)[None] for d in photos.values()] * 3  # 24 single-photo requests
    counting = CountingTagger(direct)

    async def scenario():
        batcher = MicroBatcher(counting, max_batch=10, max_wait_ms=50)
        await batcher.start(warm_up=False)
        try:
            return await asyncio.gather(*(batcher.tag(a, top_k=1 + i % 3) for i, a in enumerate(arrays)))
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert counting.batches == [10, 10, 4]  # 24 requests, 3 forward passes, none over max_batch
    for i, (a, results) in enumerate(zip(arrays, results)):  # each request got its own photo's tags back
        want = direct.tag_pixels(a, 1 + i % 3)[0].to_row()
        got = results[0].to_row()
        assert len(results) == 1 and {k: got[k] for k in want if "confidence" not in k} == \
            {k: v for k, v in want.items() if "confidence" not in k}
        assert [got[k] for k in want if "confidence" in k] == pytest.approx(
            [v for k, v in want.items() if "confidence" in k], abs=2e-4)


def test_concurrent_http_requests_share_forward_passes(served, photos, direct):
    app = create_app(served, max_batch=64)
    counting = CountingTagger(direct, delay=0.3)
    with TestClient(app) as c:
        app.state.batcher.tagger = counting  # after warm-up; every pass now takes 0.3 s, so requests queue up
        names = list(photos)
        out: dict[str, dict] = {}

        def one(name):
            out[name] = c.post("/v1/tag", files=[file_part(name, photos[name])]).json()

        threads = [threading.Thread(target=one, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = c.get("/v1/stats").json()
    assert sum(counting.batches) == len(names) and len(counting.batches) < len(names) / 2, counting.batches
    assert stats["batches"] == len(counting.batches) and stats["largest_batch"] == max(counting.batches)
    for name in names:  # and nobody got somebody else's tags
        want = expected(direct, photos[name])
        assert {t: v["label"] for t, v in out[name]["results"][0]["tags"].items()} == \
               {t: want[t] for t in direct.tasks}


@pytest.mark.slow
def test_short_load_test_on_loopback_has_no_errors(served, photos):
    """A few concurrent clients against a real uvicorn for ~2.5 s: every request answered correctly."""
    app = create_app(served, max_batch=32)
    payloads = list(photos.items())
    errors, latencies, lock = [], [], threading.Lock()
    with live_server(app) as url:
        stop = time.monotonic() + 2.5

        def client_loop(k: int):
            with httpx.Client(base_url=url, timeout=30) as http:
                i = k
                while time.monotonic() < stop:
                    batch = [payloads[(i + j) % len(payloads)] for j in range(1 + (k % 2) * 3)]  # 1 or 4 photos
                    t0 = time.perf_counter()
                    try:
                        r = http.post("/v1/tag", files=[file_part(n, d) for n, d in batch])
                        ok = r.status_code == 200 and len(r.json()["results"]) == len(batch)
                    except httpx.HTTPError as e:
                        ok, r = False, e
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        if not ok:
                            errors.append(repr(r))
                    i += 1

        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # a bad upload mid-way is refused and the server keeps going
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.post("/v1/tag", files=[file_part("x.jpg", b"")]).status_code == 422
            assert http.post("/v1/tag", files=[file_part(*payloads[0])]).status_code == 200
            stats = http.get("/v1/stats").json()
    assert errors == []
    assert len(latencies) >= 20, len(latencies)
    assert stats["photos"] >= len(latencies) and stats["batches"] <= stats["requests"]


# ---------------------------------------------------------------------------------------------------------------- CLI

def test_cli_serve_passes_its_options(monkeypatch):
    from typer.testing import CliRunner

    import fashiontag.serve as serve_mod
    from fashiontag.cli import app
    calls = []
    monkeypatch.delenv("FASHIONTAG_TOKEN", raising=False)
    monkeypatch.setattr(serve_mod, "serve", lambda host, port, model, **kw: calls.append((host, port, model, kw)))
    result = CliRunner().invoke(app, ["serve", "--port", "8123", "--model", "some/dir"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["serve", "--no-access-log", "--engine", "torch"])
    assert result.exit_code == 0, result.output
    limits = {"token": None, "allowed_hosts": ["localhost", "127.0.0.1", "[::1]"], "upload_deadline": 60.0,
              "min_upload_rate": 10240.0}
    assert calls == [("127.0.0.1", 8123, "some/dir", {"access_log": True, "engine": "onnx", **limits}),
                     ("127.0.0.1", 8000, None, {"access_log": False, "engine": "torch", **limits})]
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert "--host" in result.output and "--port" in result.output and "--model" in result.output


def test_cli_serve_with_a_missing_model_fails_clearly(tmp_path):
    from typer.testing import CliRunner

    from fashiontag.cli import app
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not a model folder" in result.output


# ------------------------------------------------------------------------------------------------------- the browser

def test_browser_uploads_tags_corrects_and_downloads_csv(browser, served, catalog, direct, tmp_path):
    images = catalog.root / "images"
    good = [images / f"{pid}.jpg" for pid in catalog.good_ids[:4]]
    not_image = images / "9004.jpg"
    with live_server(create_app(served)) as url, open_page(browser, url) as page:
        upload_and_wait(page, good + [not_image])
        assert page.locator(".card.done").count() == 4
        error_card = page.locator('.card.error[data-file="9004.jpg"]')
        assert "not a readable image" in error_card.locator(".state").inner_text()
        for path in good:
            want = direct.tag_pixels(direct.prepare(str(path))[None])[0].to_row()
            assert shown_tags(page, path.name) == {t: want[t] for t in direct.tasks}
            bar = page.locator(f'.card[data-file="{path.name}"] tr[data-task="gender"] .bar')
            assert float(bar.get_attribute("aria-valuenow")) == pytest.approx(want["gender_confidence"], abs=1e-3)

        # correct the article type by hand; its subcategory and category follow
        first = good[0].name
        before = shown_tags(page, first)
        new_article = next(a for a in ("Watches", "Jeans", "Tshirts") if a != before["articleType"])
        page.locator(f'.card[data-file="{first}"] tr[data-task="articleType"] select').select_option(new_article)
        after = shown_tags(page, first)
        parents = {tuple(c[1:]) for c in direct.meta["hierarchy"][1:] if c[0] == new_article}
        assert after["articleType"] == new_article and (after["subCategory"], after["masterCategory"]) in parents
        assert page.locator(f'.card[data-file="{first}"] .badge').is_visible()
        assert page.locator(f'.card[data-file="{first}"] tr.corrected').count() >= 1

        # a review threshold with tags on both sides of it: the page shows the server's flags, asked again
        results = {p.name: direct.tag_pixels(direct.prepare(str(p))[None])[0] for p in good}
        confidences = [tag.confidence for r in results.values() for tag in r.tags.values()]
        percent = next(v for v in range(5, 100, 5) if 0 < sum(c < v / 100 for c in confidences) < len(confidences))
        set_threshold(page, percent)
        corrected = {t for t, label in after.items() if label != before[t]}
        for name, result in results.items():
            flagged = {row.get_attribute("data-task")
                       for row in page.locator(f'.card[data-file="{name}"] tr.review').all()}
            want = result.with_min_confidence(percent / 100).tags
            assert flagged == {t for t, tag in want.items() if tag.needs_review
                               and not (name == first and t in corrected)}, name

        with page.expect_download() as dl:
            page.click("#download")
        rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
        page.screenshot(path=str(tmp_path / "web.png"), full_page=True)
    assert [r["file"] for r in rows] == [p.name for p in good] + ["9004.jpg"]
    by_file = {r["file"]: r for r in rows}
    assert by_file[first]["articleType"] == new_article and by_file[first]["articleType_corrected"] == "yes"
    assert by_file[first]["articleType_model"] == before["articleType"]
    assert by_file[good[1].name]["articleType_corrected"] == "" and by_file[good[1].name]["error"] == ""
    for name, result in results.items():  # the model's guess stays, flagged when below the threshold
        for t, tag in result.tags.items():
            assert by_file[name][f"{t}_model"] == tag.label
            assert by_file[name][f"{t}_needs_review"] == ("yes" if tag.confidence < percent / 100 else "")
    assert "not a readable image" in by_file["9004.jpg"]["error"] and by_file["9004.jpg"]["gender"] == ""
    assert (tmp_path / "web.png").stat().st_size > 10_000


@pytest.mark.real
def test_browser_with_the_real_model(browser, real_data, tmp_path):
    """With the shipped (or $FASHIONTAG_MODEL) model and real photos the page tags every photo and takes a
    correction: what `make screenshot` saves as docs/screenshot-web.png, here into a temporary folder."""
    from fashiontag.model_folder import default_model_dir
    try:
        model = default_model_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    screenshot(browser, model, real_data, tmp_path / "web.png")
    assert (tmp_path / "web.png").stat().st_size > 10_000
