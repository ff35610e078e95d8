"""Several reviewers on one queue (issue 21 #8), on SQLite and on a real PostgreSQL: the photo in front of one is
left out of what the others are served while its lease lives, and served again once it ends; the overlap photos
come back, blind, to a second reviewer, and `review stats` compares the two answers."""

import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from fashiontag.cli import app
from fashiontag.review.routes import review_router
from fashiontag.review.stats import review_stats
from fashiontag.review.store import InvalidChange, ReviewStore, photos

TASKS = ["baseColour", "season"]
MODEL = {"version": "two", "tasks": TASKS, "id_column": "id", "hierarchy": None,
         "vocabs": {"baseColour": ["Black", "Blue", "Navy Blue"], "season": ["Summer", "Winter"]},
         "thresholds": {"baseColour": 0.9, "season": 0.9}}


def _store(url: str, n: int, overlap_share: float) -> ReviewStore:
    store = ReviewStore(url)
    store.set_model(MODEL)
    store.add_photos([{"path": f"/p/{i}.jpg", "item_id": str(i), "error": "", "tags": {
        "baseColour": {"label": "Navy Blue", "confidence": 0.5 + i / 100, "threshold": 0.9,
                       "runners_up": [["Blue", 0.3], ["Black", 0.1]]},
        "season": {"label": "Summer", "confidence": 0.6, "threshold": 0.9, "runners_up": [["Winter", 0.4]]}}}
        for i in range(n)], overlap_share=overlap_share)
    return store


def _ids(store, who, **query):
    return [p["id"] for p in store.page(viewer=who, limit=100, **query)["photos"]]


def _accept(store, photo, who, **labels):
    store.review(photo["id"], {t: {"label": labels.get(t, tag["label"]), "version": tag["version"]}
                               for t, tag in photo["tags"].items()}, who)


def test_a_photo_in_front_of_one_reviewer_is_not_served_to_another_until_its_lease_ends(db_url):
    store = _store(db_url, 6, overlap_share=0.0)
    try:
        first = _ids(store, "ann")[0]
        assert store.lease("ann", [first]) == {"leased": [first], "held": {}, "seconds": 120}
        # bob's list leaves ann's photo out; asked for it all the same, he is told whose it is
        assert first not in _ids(store, "bob") and len(_ids(store, "bob")) == 5
        assert store.lease("bob", [first]) == {"leased": [], "held": {first: "ann"}, "seconds": 120}
        assert _ids(store, "ann")[0] == first  # her own lease does not hide it from her
        # ann moves on: her lease follows her, and the photo she left is served to bob again
        second = _ids(store, "ann")[1]
        store.lease("ann", [second])
        assert first in _ids(store, "bob") and second not in _ids(store, "bob")
        # an action gives its photo back (and here takes it out of "needs review": done)
        _accept(store, store.photo(second), "ann")
        assert second in _ids(store, "bob", status="all")
        # a lease that is not renewed ends by itself
        store.lease("ann", [first], seconds=0.5)
        assert first not in _ids(store, "bob")
        time.sleep(0.7)
        assert first in _ids(store, "bob")
        assert store.lease("bob", [first])["leased"] == [first]
        with pytest.raises(InvalidChange, match="lease of 0"):
            store.lease("bob", [first], seconds=0)
    finally:
        store.close()


def test_overlap_photos_come_back_blind_to_a_second_reviewer_and_stats_measure_agreement(db_url, tmp_path):
    store = _store(db_url, 4, overlap_share=1.0)  # every photo drawn for two reviewers
    try:
        queued = store.photos()
        # ann decides all four: photo 0 and 1 as the model said; 2 and 3 baseColour Blue
        for p in queued:
            _accept(store, p, "ann", **({"baseColour": "Blue"} if p["item_id"] in "23" else {}))
        assert _ids(store, "ann") == [] and store.progress()["reviewed"] == 4
        # bob is served them for a second look, as the model proposed them, not as ann answered
        served = store.page(viewer="bob")["photos"]
        assert sorted(p["id"] for p in served) == sorted(p["id"] for p in queued)
        looked = {p["item_id"]: p for p in served}
        assert looked["2"]["second_look"] is True
        assert {t: (x["label"], x["status"], x["reviewer"]) for t, x in looked["2"]["tags"].items()} == {
            "baseColour": ("Navy Blue", "needs_review", None), "season": ("Summer", "needs_review", None)}
        # bob answers photo 1's season first: it stays due (baseColour unanswered), his answer shown to him
        store.review(looked["1"]["id"], {"season": {"label": "Winter", "version": 0}}, "bob")
        again = {p["item_id"]: p for p in store.page(viewer="bob")["photos"]}["1"]
        assert {t: (x["label"], x["status"]) for t, x in again["tags"].items()} == {
            "baseColour": ("Navy Blue", "needs_review"), "season": ("Winter", "corrected")}
        # bob: photo 0 agrees on both tasks, 1 differs on season, 2 agrees with ann's Blue, 3 differs (Black)
        answers = {"0": {}, "1": {"season": "Winter"}, "2": {"baseColour": "Blue"}, "3": {"baseColour": "Black"}}
        for item, labels in answers.items():
            _accept(store, looked[item], "bob", **labels)
        assert store.photos_by_id([looked["3"]["id"]], viewer="bob")[0]["tags"]["baseColour"]["label"] == "Black"
        # his answers are kept beside ann's, which stay the photos' tags
        assert {p["item_id"]: p["tags"]["baseColour"]["label"] for p in store.photos()} == {
            "0": "Navy Blue", "1": "Navy Blue", "2": "Blue", "3": "Blue"}
        assert _ids(store, "bob") == [] and _ids(store, "cy") == []  # two answers each: no more looks due
        stats = review_stats(store)
        assert stats["agreement"] == {"baseColour": {"n": 4, "equal": 3, "share": 0.75},
                                      "season": {"n": 4, "equal": 3, "share": 0.75}}
        people = {p["reviewer"]: p for p in stats["reviewers"]}
        assert people["ann"]["tags"] == people["bob"]["tags"] == 8  # an answer given again counts once
        # undoing a second look takes bob's answers back: the photo is due for a second look again
        store.undo("bob")
        assert [p["item_id"] for p in store.page(viewer="bob")["photos"]] == ["3"]
        assert review_stats(store)["agreement"]["baseColour"] == {"n": 3, "equal": 3, "share": 1.0}
        shown = CliRunner().invoke(app, ["review", "stats", "--db", db_url])
        assert shown.exit_code == 0, shown.output
        assert "Agreement" in shown.output and "100.0%" in shown.output
    finally:
        store.close()


def test_about_the_overlap_share_of_photos_is_drawn_and_the_same_again(tmp_path):
    store = _store(f"sqlite:///{tmp_path / 'q.db'}", 400, overlap_share=0.05)
    again = _store(f"sqlite:///{tmp_path / 'r.db'}", 400, overlap_share=0.05)
    try:
        drawn = [p["item_id"] for p in store.photos() if _overlap(store, p["id"])]
        assert 8 <= len(drawn) <= 36  # 20 expected; a binomial's 99.9% range
        assert drawn == [p["item_id"] for p in again.photos() if _overlap(again, p["id"])]
    finally:
        store.close()
        again.close()


def _overlap(store, photo_id) -> bool:
    with store.engine.connect() as conn:
        return conn.execute(select(photos.c.overlap).where(photos.c.id == photo_id)).scalar()


def test_the_routes_lease_and_serve_around_leases(tmp_path):
    store = _store(f"sqlite:///{tmp_path / 'q.db'}", 3, overlap_share=0.0)
    app = FastAPI()
    app.include_router(review_router(store))
    client = TestClient(app)
    try:
        first = client.get("/review/api/page", params={"as": "ann"}).json()["photos"][0]["id"]
        assert client.post("/review/api/lease", json={"reviewer": "ann", "photo_ids": [first]}).json()["leased"] == [
            first]
        assert first not in [p["id"] for p in client.get("/review/api/page", params={"as": "bob"}).json()["photos"]]
        assert client.post("/review/api/lease", json={"reviewer": "bob", "photo_ids": [first]}).json()["held"] == {
            str(first): "ann"}
        assert client.post("/review/api/lease", json={"reviewer": "", "photo_ids": [first]}).status_code == 422
        # the page gives every lease back when it leaves the photo (an empty list)
        client.post("/review/api/lease", json={"reviewer": "ann", "photo_ids": []})
        assert first in [p["id"] for p in client.get("/review/api/page", params={"as": "bob"}).json()["photos"]]
    finally:
        store.close()
