"""Measured while it runs (issue 23): audits of auto-accepted tags, `review stats` (live precision with its
interval, below its promise, shares, throughput), thresholds refit from the shop's own reviews, and an older
review database gaining the audit column."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from fashiontag.cli import app
from fashiontag.inference.thresholds import PROMISE_Z, choose_threshold
from fashiontag.model_folder import META, WEIGHTS, ModelFolder, default_model_dir, load_meta
from fashiontag.review.queue import audit_draws, fill_queue, mark_audits, model_record
from fashiontag.review.routes import review_router
from fashiontag.review.stats import review_stats, reviewed_tags
from fashiontag.review.store import SCHEMA_VERSION, ReviewStore, photos, schema_info, tags

MODEL = {"version": "abc123", "tasks": ["gender", "usage"], "id_column": "id",
         "vocabs": {"gender": ["Men", "Women"], "usage": ["Casual", "Formal"]}, "hierarchy": None,
         "thresholds": {"gender": 0.8, "usage": 0.8}, "threshold_precision": {"gender": 0.98, "usage": 0.98},
         "thresholds_val": {"gender": {"threshold": 0.8, "coverage": 0.7, "n": 500},
                            "usage": {"threshold": 0.8, "coverage": 0.6, "n": 500}}}


def _item(n: int, conf: dict, audit: tuple = ()) -> dict:
    return {"path": f"/photos/{n}.jpg", "item_id": str(n), "error": "", "tags": {
        t: {"label": MODEL["vocabs"][t][0], "confidence": c, "runners_up": [[MODEL["vocabs"][t][1], 1 - c]],
            "threshold": 0.8, **({"audit": True} if t in audit else {})} for t, c in conf.items()}}


def _decide(store, photo, task, right: bool, reviewer="ann"):
    tag = photo["tags"][task]
    label = tag["model_label"] if right else next(c for c in store.model()["vocabs"][task] if c != tag["model_label"])
    return store.review(photo["id"], {task: {"label": label, "version": tag["version"]}}, reviewer, confirm=True)


def test_audits_draw_about_their_share_stably_and_never_from_unsure_tags(db_url):
    items = [_item(n, {"gender": 0.95, "usage": 0.5 if n % 3 == 0 else 0.9}) for n in range(300)]
    audits = mark_audits(items, 0.2)
    sure = sum(t["confidence"] >= t["threshold"] for i in items for t in i["tags"].values())
    assert sure == 500
    assert abs(audits - 0.2 * sure) <= 4 * math.sqrt(sure * 0.2 * 0.8)  # binomial, 4 sigma
    assert not any(t.get("audit") for i in items for t in i["tags"].values() if t["confidence"] < t["threshold"])
    assert audit_draws("/photos/7.jpg", ["gender", "usage"], 0.2) == audit_draws("/photos/7.jpg", ["gender", "usage"],
                                                                                 0.2)
    assert mark_audits([_item(1, {"gender": 0.95})], 0.0) == 0 and audit_draws("/p.jpg", ["gender"], 1.0) == {"gender"}
    store = ReviewStore(db_url)
    store.set_model(MODEL)
    store.add_photos(items)
    got = [(p, t) for p in store.photos() for t in p["tags"].values()]
    marked = [t for _, t in got if t["audit"]]
    assert len(marked) == audits and all(t["status"] == "needs_review" for t in marked)
    assert all(t["status"] == "auto" for _, t in got if not t["audit"] and t["confidence"] >= 0.8)
    # An audit is not accepted unseen by "Accept all sure photos", and stays an audit once decided.
    audited = {p["id"] for p, t in got if t["audit"]}
    all_sure = {p["id"] for p, t in got if t["confidence"] >= 0.8} - {p["id"] for p, t in got if t["confidence"] < 0.8}
    accepted = set(store.bulk_accept("ann")["accepted"])
    assert accepted == all_sure - audited and audited & all_sure
    photo = store.photo(min(audited))
    task = next(t for t, tag in photo["tags"].items() if tag["audit"])
    after = _decide(store, photo, task, right=False)["photo"]["tags"][task]
    assert (after["status"], after["audit"]) == ("corrected", True)
    store.close()


def _shipped_tag_list(tmp_path, n: int) -> tuple:
    """A predict CSV for the shipped model: every tag at its first class, sure (0.999)."""
    meta = load_meta(default_model_dir())
    rows = [{"path": str(tmp_path / f"p{i}.jpg"), "id": str(i), "error": "",
             **{k: v for t, classes in meta["vocabs"].items()
                for k, v in ((t, classes[0]), (f"{t}_confidence", 0.999))}}
            for i in range(n)]
    path = tmp_path / "tags.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path, meta


def test_fill_queue_audits_its_share_of_sure_tags_and_refills_the_same(tmp_path):
    path, meta = _shipped_tag_list(tmp_path, 120)
    url = f"sqlite:///{tmp_path / 'q.db'}"
    store = ReviewStore(url)
    counts = fill_queue(store, [str(path)], audit_share=0.2)
    photos = store.photos()
    tags_ = [t for p in photos for t in p["tags"].values()]
    sure = [t for t in tags_ if t["confidence"] >= t["threshold"]]
    assert counts["audits"] == sum(t["audit"] for t in tags_) > 0
    assert abs(counts["audits"] - 0.2 * len(sure)) <= 4 * math.sqrt(len(sure) * 0.16)
    # The photo alone is judged by the photo_only thresholds (a predict output without titles).
    assert {t: p["tags"][t]["threshold"] for p in photos[:1] for t in p["tags"]} == pytest.approx(
        meta["photo_only"]["thresholds"])
    assert store.model()["photo_only"]["thresholds_val"]["gender"]["coverage"] == \
        meta["photo_only"]["thresholds_val"]["gender"]["coverage"]
    store.close()
    again = ReviewStore(f"sqlite:///{tmp_path / 'q2.db'}")
    fill_queue(again, [str(path)], audit_share=0.2)
    assert [{t: x["audit"] for t, x in p["tags"].items()} for p in again.photos()] == \
        [{t: x["audit"] for t, x in p["tags"].items()} for p in photos]
    again.close()


def _stats_store(url):
    store = ReviewStore(url)
    store.set_model(MODEL)
    # 50 gender audits (45 right), 20 usage audits (all right), 10 unsure tags, 3 audits not decided yet.
    store.add_photos([_item(n, {"gender": 0.95, "usage": 0.9}, audit=("gender",) + (("usage",) if n < 20 else ()))
                      for n in range(53)] + [_item(100 + n, {"gender": 0.5, "usage": 0.99}) for n in range(10)])
    photos = store.photos()
    for i, p in enumerate(photos[:50]):
        _decide(store, p, "gender", right=i >= 5, reviewer="ann" if i % 2 else "bob")
    for p in photos[:20]:
        _decide(store, p, "usage", right=True, reviewer="ann")
    for p in photos[53:]:  # an unsure tag, decided: not an audit, not counted in live precision
        _decide(store, p, "gender", right=False, reviewer="bob")
    return store


def _wilson(hits, n, z=1.96):
    p = hits / n
    centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def test_stats_live_precision_interval_promise_shares_and_throughput(db_url):
    store = _stats_store(db_url)
    stats = review_stats(store)
    g, u = stats["tasks"]["gender"], stats["tasks"]["usage"]
    assert (g["audits"], g["right"], g["precision"], g["pending"]) == (50, 45, 0.9, 3)
    assert (g["low"], g["high"]) == pytest.approx(_wilson(45, 50))
    assert g["high"] < 0.98 and g["below_promise"] and stats["below_promise"] == ["gender"]
    assert (u["audits"], u["precision"], u["below_promise"]) == (20, 1.0, False)
    assert (u["low"], u["high"]) == pytest.approx(_wilson(20, 20))
    assert g["auto_share"] == pytest.approx(53 / 63) and u["auto_share"] == 1.0
    assert (g["val_share"], u["val_share"], g["promise"], g["condition"]) == (0.7, 0.6, 0.98, None)
    people = {p["reviewer"]: p for p in stats["reviewers"]}
    assert (people["ann"]["tags"], people["bob"]["tags"]) == (45, 35)
    assert people["ann"]["hours"] >= 1 and people["ann"]["per_hour"] == 45 / people["ann"]["hours"]
    # The page's endpoint and the command line say the same.
    api = FastAPI()
    api.include_router(review_router(store))
    with TestClient(api) as client:
        answer = client.get("/review/api/stats").json()
    assert answer["below_promise"] == ["gender"] and answer["tasks"]["gender"]["audits"] == 50
    result = CliRunner().invoke(app, ["review", "stats", "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tasks"]["gender"]["high"] == pytest.approx(g["high"])
    table = CliRunner().invoke(app, ["review", "stats", "--db", db_url])
    assert table.exit_code == 0 and "below its promise" in table.output and "gender" in table.output
    store.close()


def test_stats_measure_each_condition_of_a_photo_and_title_model_on_its_own(db_url):
    """The photos tagged with their titles and those without are judged by different thresholds, with a promise
    each: their audits are measured apart, and one condition below its promise is named as such."""
    model = {**MODEL, "photo_only": {"thresholds": {"gender": 0.9, "usage": 0.9},
                                     "threshold_precision": {"gender": 0.98, "usage": 0.95},
                                     "thresholds_val": {"gender": {"threshold": 0.9, "coverage": 0.3, "n": 500}}}}
    store = ReviewStore(db_url)
    store.set_model(model)
    items = [{**_item(n, {"gender": 0.95}, audit=("gender",)), "titled": n < 30} for n in range(60)]
    for item in items[30:]:
        item["tags"]["gender"]["threshold"] = 0.9
    store.add_photos(items + [{**_item(100, {"usage": 0.99}), "titled": True}])
    for p in store.photos()[:60]:  # with titles all right, alone 20 of 30
        _decide(store, p, "gender", right=int(p["item_id"]) < 50)
    stats = review_stats(store)
    assert set(stats["tasks"]) == {"gender (with titles)", "gender (photo alone)", "usage"}
    titled, alone = stats["tasks"]["gender (with titles)"], stats["tasks"]["gender (photo alone)"]
    assert (titled["audits"], titled["right"], titled["below_promise"], titled["val_share"]) == (30, 30, False, 0.7)
    assert (alone["audits"], alone["right"], alone["below_promise"], alone["val_share"]) == (30, 20, True, 0.3)
    assert titled["task"] == alone["task"] == "gender" and stats["below_promise"] == ["gender (photo alone)"]
    assert stats["tasks"]["usage"]["condition"] == "with titles"
    assert stats["tasks"]["usage"]["promise"] == 0.98  # the with-titles record's, not photo alone's 0.95
    store.close()


def test_an_old_schema_database_gains_the_audit_column(db_url):
    store = ReviewStore(db_url)
    store.set_model(MODEL)
    store.add_photos([_item(1, {"gender": 0.95, "usage": 0.5})])
    with store.engine.begin() as conn:  # as fashiontag wrote it before audits
        conn.exec_driver_sql("ALTER TABLE tags DROP COLUMN audit")
        conn.exec_driver_sql("ALTER TABLE photos DROP COLUMN titled")
        conn.execute(schema_info.update().values(version=1))
    store.close()
    reopened = ReviewStore(db_url, create=False)
    with reopened.engine.connect() as conn:
        assert conn.execute(select(photos.c.titled)).scalars().all() == [None]  # not recorded then
        assert conn.execute(select(schema_info.c.version)).scalar() == SCHEMA_VERSION == 3
        assert conn.execute(select(tags.c.audit)).scalars().all() == [False, False]
    photo = reopened.photos()[0]
    assert {t: (x["status"], x["audit"]) for t, x in photo["tags"].items()} == {
        "gender": ("auto", False), "usage": ("needs_review", False)}
    reopened.add_photos([_item(2, {"gender": 0.95}, audit=("gender",))])
    assert reopened.photos()[1]["tags"]["gender"]["audit"] is True
    reopened.close()


def _refit(conf: np.ndarray, correct: np.ndarray) -> tuple[float, np.ndarray]:
    """What a temperature refit on reviewed tags with no runners-up kept should give, worked out apart from the
    package: the factor on the temperature minimising the NLL of [confidence, the rest] (right: the first), and the
    confidences it makes."""
    from scipy.optimize import minimize_scalar
    logits = np.log(np.stack([conf, 1 - conf], 1))

    def nll(log_factor):
        z = logits / np.exp(log_factor)
        log_p = z - np.logaddexp(z[:, :1], z[:, 1:])
        return -np.where(correct, log_p[:, 0], log_p[:, 1]).mean()
    factor = float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded", options={"xatol": 1e-9}).x))
    z = logits / factor
    return factor, np.exp(z[:, 0] - np.logaddexp(z[:, 0], z[:, 1]))


def test_calibrate_from_reviews_refits_the_temperature_then_gives_choose_thresholds_threshold(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in (META, WEIGHTS):
        shutil.copy(default_model_dir() / name, folder / name)
    meta = load_meta(folder)
    url = f"sqlite:///{tmp_path / 'reviews.db'}"
    store = ReviewStore(url)
    store.set_model(model_record(ModelFolder.open(folder)))
    rng = np.random.default_rng(0)
    conf = np.round(rng.uniform(0.3, 1.0, 300), 4)
    correct = rng.uniform(size=300) < conf ** 0.3
    classes = meta["vocabs"]["gender"]
    store.add_photos([{"path": f"/p/{i}.jpg", "item_id": str(i), "error": "", "tags": {
        "gender": {"label": classes[0], "confidence": float(c), "runners_up": [], "threshold": 0.5}}}
        for i, c in enumerate(conf)] + [{"path": f"/p/sure{i}.jpg", "item_id": f"s{i}", "error": "", "tags": {
            "gender": {"label": classes[0], "confidence": 0.2, "runners_up": [], "threshold": 0.1}}}
        for i in range(20)])
    for p, right in zip(store.photos(), correct):
        _decide(store, p, "gender", bool(right))
    store.bulk_accept("ann")  # accepted unseen: no evidence, left out
    got = reviewed_tags(store)["gender"]
    assert len(got["confidence"]) == 300 and got["correct"].sum() == correct.sum()
    store.close()
    result = CliRunner().invoke(app, ["calibrate", "--model", str(folder), "--reviews", url, "--precision", "0.9"])
    assert result.exit_code == 0, result.output
    assert "photo_only" in result.output and "kept (no reviewed tag)" in result.output
    # Right more often than its confidence says (conf ** 0.3): the refit sharpens the confidences, then the
    # threshold is chosen on what they have become.
    factor, rescaled = _refit(conf, correct)
    assert factor < 0.9 and "gender          temperature x" in result.output
    want = choose_threshold(rescaled, correct, 0.9, PROMISE_Z)
    after = load_meta(folder)
    assert after["photo_only"]["temperatures"]["gender"] == pytest.approx(
        meta["photo_only"]["temperatures"]["gender"] * factor, rel=1e-3)
    assert after["photo_only"]["thresholds"]["gender"] == pytest.approx(want["threshold"], rel=1e-3)
    assert want["coverage"] > 0 and after["photo_only"]["thresholds_val"]["gender"]["n"] == 300
    assert after["photo_only"]["threshold_precision"]["gender"] == 0.9
    # the rest stays: other tasks, the with-titles record
    assert after["photo_only"]["thresholds"]["usage"] == meta["photo_only"]["thresholds"]["usage"]
    assert after["photo_only"]["temperatures"]["usage"] == meta["photo_only"]["temperatures"]["usage"]
    assert after["thresholds"] == meta["thresholds"] and after["temperatures"] == meta["temperatures"]
    # Again on the same queue: the factor applies to the temperature the queue's confidences came from, not twice.
    again = CliRunner().invoke(app, ["calibrate", "--model", str(folder), "--reviews", url, "--precision", "0.9"])
    assert again.exit_code == 0, again.output
    assert load_meta(folder)["photo_only"]["temperatures"]["gender"] == pytest.approx(
        after["photo_only"]["temperatures"]["gender"])


def test_reviews_refit_the_thresholds_of_the_condition_each_photo_was_tagged_in(tmp_path):
    """A photo + title model's queue loaded from a predict output: the rows with a title were judged by the
    with-title thresholds, those without by the photo-alone ones, and each photo's reviewed tags refit its own."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in (META, WEIGHTS):
        shutil.copy(default_model_dir() / name, folder / name)
    meta = load_meta(folder)
    rng = np.random.default_rng(1)
    conf = np.round(rng.uniform(0.3, 1.0, 400), 4)
    titled = np.arange(400) % 2 == 0
    # With a title the model is right more often at the same confidence than without one.
    correct = rng.uniform(size=400) < np.where(titled, conf ** 0.2, conf ** 3)
    first = {t: v[0] for t, v in meta["vocabs"].items()}
    rows = [{"path": f"{i}.jpg", "id": str(i), **({"title": f"Brand {i} shirt"} if titled[i] else {}),
             **first, **{f"{t}_confidence": float(conf[i]) for t in first}} for i in range(400)]
    (tmp_path / "tags.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    url = f"sqlite:///{tmp_path / 'reviews.db'}"
    store = ReviewStore(url)
    fill_queue(store, [str(tmp_path / "tags.jsonl")], model=folder, audit_share=0.0, overlap_share=0.0)
    with store.engine.connect() as conn:
        recorded = dict(conn.execute(select(photos.c.item_id, photos.c.titled)).all())
    assert recorded == {str(i): bool(titled[i]) for i in range(400)}
    queued = {p["item_id"]: p for p in store.photos()}
    assert queued["0"]["tags"]["gender"]["threshold"] == meta["thresholds"]["gender"]
    assert queued["1"]["tags"]["gender"]["threshold"] == meta["photo_only"]["thresholds"]["gender"]
    for i in range(400):
        _decide(store, queued[str(i)], "gender", bool(correct[i]))
    store.close()
    result = CliRunner().invoke(app, ["calibrate", "--model", str(folder), "--reviews", url, "--precision", "0.9"])
    assert result.exit_code == 0, result.output
    assert "photo + title" in result.output and "photo alone" in result.output
    (f_titled, c_titled), (f_alone, c_alone) = _refit(conf[titled], correct[titled]), _refit(conf[~titled],
                                                                                              correct[~titled])
    with_title = choose_threshold(c_titled, correct[titled], 0.9, PROMISE_Z)
    alone = choose_threshold(c_alone, correct[~titled], 0.9, PROMISE_Z)
    assert f_titled < 1 < f_alone  # titled: sharpened; alone: softened
    after = load_meta(folder)
    assert after["temperatures"]["gender"] == pytest.approx(meta["temperatures"]["gender"] * f_titled, rel=1e-3)
    assert after["photo_only"]["temperatures"]["gender"] == pytest.approx(
        meta["photo_only"]["temperatures"]["gender"] * f_alone, rel=1e-3)
    assert after["thresholds"]["gender"] == pytest.approx(with_title["threshold"], rel=1e-3)
    assert after["photo_only"]["thresholds"]["gender"] == pytest.approx(alone["threshold"], rel=1e-3)
    assert after["thresholds_val"]["gender"]["n"] == after["photo_only"]["thresholds_val"]["gender"]["n"] == 200
    assert after["thresholds"]["usage"] == meta["thresholds"]["usage"]  # no reviewed tag: kept


def test_the_page_badges_audits_keeps_them_from_bulk_accept_and_warns_below_promise(browser, tmp_path):
    """Audit tags need review with an "audit" badge and "Accept all sure photos" leaves them; a task measured below
    its promise gets a banner; "reviewed" (filter and data-done) follows the server's rule."""
    from reviewpage import choose

    from browser import live_server, open_page
    from fashiontag.inference.tagger import Tagger
    from fashiontag.review.store import _refresh_photos
    from fashiontag.serve import create_app
    from synthetic import draw
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate(["Red", "Blue", "Black", "Green"]):
        draw("Tshirts", colour, "Men").save(photos / f"{i}.jpg", "JPEG")
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}")
    fill_queue(store, [str(photos)], engine="onnx", min_confidence=0.0, audit_share=0.0)  # every tag sure
    a, b, c, d = (p["id"] for p in store.photos())
    with store.engine.begin() as conn:  # gender of a and b drawn for audit
        conn.execute(tags.update().where(tags.c.photo_id.in_([a, b]), tags.c.task == "gender")
                     .values(audit=True, status="needs_review"))
        _refresh_photos(conn, [a, b])  # their place in the page's lists, as queued
    _decide(store, store.photo(b), "gender", right=False)  # an audit found wrong: 0 of 1, below 98%
    _decide(store, store.photo(d), "usage", right=True)  # d: a person decided a tag, the rest stay the model's
    app = create_app(tagger=Tagger.load(None, engine="onnx", threads=1), review=store)
    with live_server(app) as url, open_page(browser, url) as page:
        assert page.locator("#promise-warning").is_visible()
        assert "gender" in page.locator("#promise-warning").text_content()
        page.fill("#reviewer", "ann")
        choose(page, "#f-status", "all")
        done = {int(el.get_attribute("data-id")): el.get_attribute("data-done") for el in page.locator(".card").all()}
        assert done == {a: "false", b: "true", c: "false", d: "true"}
        audit_row = page.locator(f".card[data-id='{a}'] tr[data-task='gender']")
        assert audit_row.get_attribute("data-audit") == "true" and audit_row.locator(".badge.audit").is_visible()
        assert audit_row.get_attribute("data-status") == "needs_review"
        choose(page, "#f-status", "reviewed")
        assert {int(el.get_attribute("data-id")) for el in page.locator(".card").all()} == {b, d}
        choose(page, "#f-status", "needs")
        assert {int(el.get_attribute("data-id")) for el in page.locator(".card").all()} == {a}
        page.click("#bulk")
        page.wait_for_function("window.fashiontag.state.progress.reviewed === 3", timeout=15000)  # b, c, d
        assert store.photo(c)["tags"]["gender"]["status"] == "accepted"
        assert store.photo(a)["tags"]["gender"]["status"] == "needs_review"
        assert store.photo(a)["tags"]["usage"]["status"] == "auto"
    store.close()
