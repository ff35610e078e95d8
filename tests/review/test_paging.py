"""The queue paged, filtered and sorted in the database (issue 21 #7), on SQLite and on a real PostgreSQL: on a
generated queue whose keys tie often, the pages of every list cover its photos once each, in order; the filters
keep what they say; the page keys follow the decisions; a queue made by the version before paging opens and pages."""

import json
import random

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fashiontag.review.routes import review_router
from fashiontag.review.store import KEYSET_INDEXES, REVIEWED, UNTOUCHED, InvalidQuery, ReviewStore, schema_info

TASKS = ["articleType", "baseColour", "season", "gender", "usage"]
# Few labels, confidences and thresholds: many photos share a sort key, and only the photo id tells them apart.
LABELS = ["Black", "Blue", "Green", "Red", "White"]
MODEL = {"version": "paging", "tasks": TASKS, "id_column": "id", "vocabs": {t: LABELS for t in TASKS},
         "hierarchy": None, "thresholds": {t: 0.8 for t in TASKS}}
N = 700


def _queue(url: str, seed: int = 0) -> ReviewStore:
    rng = random.Random(seed)
    store = ReviewStore(url)
    store.set_model(MODEL)
    items = []
    for n in range(N):
        tags = {}
        for t in TASKS:
            label = rng.choice(LABELS)
            tags[t] = {"label": label, "confidence": rng.choice([0.3, 0.5, 0.8, 0.9]),
                       "threshold": rng.choice([0.8, 0.9]),
                       "runners_up": [[x, 0.1] for x in LABELS if x != label][:3]}
            if n % 50 == 7 and t == "baseColour":  # a catalog audit's tag now and then
                tags[t]["catalog_label"] = tags[t]["runners_up"][0][0]
        items.append({"path": f"/photos/{n}.jpg", "item_id": str(n), "error": "", "tags": tags})
    items.append({"path": "/photos/broken.jpg", "item_id": "broken", "error": "unreadable", "tags": {}})
    store.add_photos(items, overlap_share=0.0)
    # Some photos decided by two reviewers: accepted whole, one tag corrected, or every tag needing review set.
    for p in store.photos()[:300:3]:
        who = "ann" if p["id"] % 2 else "bob"
        tags = p["tags"]
        if p["id"] % 3 == 0:
            decisions = {t: {"label": tag["label"], "version": tag["version"]} for t, tag in tags.items()}
        elif p["id"] % 3 == 1:
            decisions = {"season": {"label": tags["season"]["runners_up"][0][0], "version": tags["season"]["version"]}}
        else:
            decisions = {t: {"label": tag["label"], "version": tag["version"]} for t, tag in tags.items()
                         if tag["status"] == "needs_review"}
        if decisions:
            store.review(p["id"], decisions, who)
    return store


def _margin(tag: dict) -> float:
    if tag["catalog_label"]:
        return next(c for label, c in tag["runners_up"] if label == tag["catalog_label"]) - 1
    return tag["confidence"] - tag["threshold"]


def _expected(photos: list[dict], status: str, task, cls, decided_by, sort: str) -> list[int]:
    """The list as the page's rules say it, worked out here from the photos' tags alone."""
    key_task = task or (TASKS[0] if sort in ("confidence", "class") else None)
    out = []
    for p in photos:
        tags = p["tags"]
        statuses = {t["status"] for t in tags.values()}
        if p["error"] or (key_task and key_task not in tags):
            continue
        if status == "needs" and not (tags[task]["status"] == "needs_review" if task else "needs_review" in statuses):
            continue
        if status == "reviewed" and ("needs_review" in statuses or statuses.isdisjoint(REVIEWED)):
            continue
        if cls and tags[task]["label"] != cls:
            continue
        if decided_by and not any(t["reviewer"] == decided_by and t["status"] in REVIEWED for t in tags.values()):
            continue
        out.append((_key(tags, sort, task, key_task), p["id"]))
    return [pid for _, pid in sorted(out)]


def _key(tags: dict, sort: str, task, key_task):
    if sort == "uncertain":
        return _margin(tags[task]) if task else min((_margin(t) for t in tags.values() if t["status"] in UNTOUCHED),
                                                    default=float("inf"))
    return {"confidence": tags[key_task]["confidence"] if key_task else 0,
            "class": tags[key_task]["label"] if key_task else "", "queue": 0}[sort]


def _walk(store: ReviewStore, limit: int, **query) -> list[int]:
    ids, after = [], None
    while True:
        page = store.page(after=after, limit=limit, **query)
        assert len(page["photos"]) <= limit
        ids += [p["id"] for p in page["photos"]]
        assert len(ids) <= N, "a page came back again"
        if page["next"] is None:
            return ids
        after = page["next"]


@pytest.fixture
def queue(db_url):
    store = _queue(db_url)
    yield store
    store.close()


def test_pages_cover_every_photo_once_in_order_for_every_filter_and_sort(queue):
    photos = queue.photos()
    lists = 0
    for status in ("needs", "all", "reviewed"):
        for sort in ("uncertain", "confidence", "class", "queue"):
            for task, cls in ((None, None), ("season", None), ("baseColour", "Blue")):
                want = _expected(photos, status, task, cls, None, sort)
                got = _walk(queue, 37, status=status, task=task, cls=cls, sort=sort)
                assert got == want, (status, sort, task, cls)
                assert len(set(got)) == len(got)
                lists += bool(want)
    assert lists >= 30  # the lists are not empty: the comparison above compared something
    for who in ("ann", "bob"):
        want = _expected(photos, "all", None, None, who, "uncertain")
        assert want and _walk(queue, 50, status="all", decided_by=who) == want
    # the broken photo is in no list, and the "needs" list is what the progress line counts
    assert _walk(queue, 500, status="needs") == _expected(photos, "needs", None, None, None, "uncertain")
    assert len(_walk(queue, 500, status="needs")) == queue.progress()["needs_review"]
    assert len(_walk(queue, 500, status="reviewed")) == queue.progress()["reviewed"]
    assert len(_walk(queue, 500, status="all")) == queue.progress()["total"] == N


def test_page_keys_follow_decisions_and_undo(queue):
    first = queue.page(status="needs", limit=1)["photos"][0]
    decisions = {t: {"label": tag["label"], "version": tag["version"]} for t, tag in first["tags"].items()}
    queue.review(first["id"], decisions, "cy")
    assert first["id"] not in _walk(queue, 200, status="needs")
    assert first["id"] in _walk(queue, 200, status="reviewed", decided_by="cy")
    queue.undo("cy")
    assert _walk(queue, 200, status="needs")[0] == first["id"]
    assert _walk(queue, 200, status="all", decided_by="cy") == []


def test_bad_pages_are_refused_saying_why(queue):
    app = FastAPI()
    app.include_router(review_router(queue))
    client = TestClient(app)
    page = client.get("/review/api/page", params={"limit": 5, "sort": "confidence", "task": "season"}).json()
    assert len(page["photos"]) == 5 and json.loads(page["next"])[1] == page["photos"][-1]["id"]
    following = client.get("/review/api/page", params={"limit": 5, "sort": "confidence", "task": "season",
                                                       "after": page["next"]}).json()
    assert {p["id"] for p in following["photos"]}.isdisjoint(p["id"] for p in page["photos"])
    for params, says in (({"status": "later"}, "status 'later'"), ({"sort": "size"}, "sort 'size'"),
                         ({"task": "fabric"}, "unknown task 'fabric'"), ({"cls": "Blue"}, "needs a task"),
                         ({"task": "season", "cls": "Mauve"}, "not a class of season"),
                         ({"after": "[1, 2, 3]"}, "not a page position"), ({"after": "{"}, "not a page position"),
                         ({"sort": "queue", "after": '["x"]'}, "not a page position")):
        answer = client.get("/review/api/page", params=params)
        assert answer.status_code == 422 and says in answer.json()["message"], params
    assert client.get("/review/api/page", params={"limit": 0}).status_code == 422
    summary = client.get("/review/api/summary").json()
    assert summary["progress"] == queue.progress() and summary["model"]["version"] == "paging"
    with pytest.raises(InvalidQuery, match="limit 501"):
        queue.page(limit=501)


def test_a_queue_from_before_paging_opens_with_its_keys(db_url):
    """A version-2 database (as fashiontag wrote it before paging: no page keys, leases, opinions or keyset
    indexes) gains them when opened, worked out from its tags, and pages as a new one."""
    store = _queue(db_url)
    photos = store.photos()
    with store.engine.begin() as conn:
        for index in KEYSET_INDEXES:
            conn.exec_driver_sql(f"DROP INDEX {index.name}")
        conn.exec_driver_sql("DROP TABLE leases")
        conn.exec_driver_sql("DROP TABLE opinions")
        for table, column in (("photos", "needs"), ("photos", "reviewed"), ("photos", "margin"),
                              ("photos", "overlap"), ("photos", "second_due"), ("photos", "first_reviewer"),
                              ("tags", "margin")):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute(schema_info.update().values(version=2))
    store.close()
    reopened = ReviewStore(db_url, create=False)
    try:
        assert reopened.photos() == photos
        for status in ("needs", "reviewed"):
            assert _walk(reopened, 100, status=status) == _expected(photos, status, None, None, None, "uncertain")
        assert reopened.progress()["total"] == N
        assert reopened.lease("ann", [photos[0]["id"]])["leased"] == [photos[0]["id"]]
    finally:
        reopened.close()
