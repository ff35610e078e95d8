"""The review queue's store on SQLite and on a real PostgreSQL: actions, conflicts between reviewers, undo, the
export round trip, and a `fashiontag review` server killed mid-review."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from fashiontag.review.csv_export import export_reviewed
from fashiontag.review.store import (
    OVERLAP_SHARE,
    SCHEMA_VERSION,
    Conflict,
    InvalidChange,
    ReviewStore,
    StoreError,
    UnseenCombination,
    _draw,
    schema_info,
)

MODEL = {"version": "abc123", "tasks": ["articleType", "subCategory", "gender"], "id_column": "id",
         "vocabs": {"articleType": ["Tshirts", "Jeans", "Casual Shoes"], "subCategory": ["Topwear", "Bottomwear", "Shoes"],
                    "gender": ["Men", "Women"]},
         "hierarchy": {"tasks": ["articleType", "subCategory"],
                       "combinations": [["Tshirts", "Topwear"], ["Jeans", "Bottomwear"], ["Casual Shoes", "Shoes"]]},
         "thresholds": {"articleType": 0.9, "subCategory": 0.9, "gender": 0.8}}


def _item(n: int, sure: bool) -> dict:
    conf = 0.95 if sure else 0.5
    return {"path": f"/photos/{n}.jpg", "item_id": str(n), "error": "", "tags": {
        "articleType": {"label": "Tshirts", "confidence": conf, "runners_up": [["Jeans", 0.3]], "threshold": 0.9},
        "subCategory": {"label": "Topwear", "confidence": 0.97, "runners_up": [["Bottomwear", 0.02]], "threshold": 0.9},
        "gender": {"label": "Men", "confidence": 0.9, "runners_up": [["Women", 0.1]], "threshold": 0.8}}}


@pytest.fixture
def store(db_url):
    s = ReviewStore(db_url)
    s.set_model(MODEL)
    s.add_photos([_item(n, sure=n % 2 == 0) for n in range(10)] +
                 [{"path": "/photos/broken.jpg", "item_id": "broken", "error": "unreadable", "tags": {}}])
    yield s
    s.close()


def _versions(photo, *tasks):
    return {t: {"label": photo["tags"][t]["label"], "version": photo["tags"][t]["version"]} for t in tasks}


def test_queue_statuses_progress_and_a_repeat_add_keeps_the_review(store):
    photos = store.photos()
    assert len(photos) == 11 and photos[-1]["error"] == "unreadable"
    assert photos[1]["tags"]["articleType"]["status"] == "needs_review"
    assert photos[0]["tags"]["articleType"]["status"] == "auto"
    assert list(photos[0]["tags"]) == MODEL["tasks"]
    assert store.progress() == {"total": 10, "reviewed": 0, "needs_review": 5}
    store.review(photos[0]["id"], _versions(photos[0], *MODEL["tasks"]), "ann")
    assert store.add_photos([_item(0, sure=False), _item(10, sure=True)]) == 1
    assert store.photo(photos[0]["id"])["tags"]["gender"]["status"] == "accepted"
    assert store.progress()["reviewed"] == 1
    with pytest.raises(StoreError, match="holds tags of model abc123"):
        store.set_model(MODEL | {"version": "other"})


def test_accept_correct_undo_and_unseen_combinations(store):
    p = store.photos()[1]
    done = store.review(p["id"], {"articleType": {"label": "Jeans", "version": 1},
                                  "subCategory": {"label": "Bottomwear", "version": 1}}, "ann")
    tags = done["photo"]["tags"]
    assert (tags["articleType"]["label"], tags["articleType"]["status"], tags["articleType"]["reviewer"]) == (
        "Jeans", "corrected", "ann")
    assert tags["articleType"]["version"] == 2 and tags["gender"]["status"] == "auto"
    with pytest.raises(UnseenCombination, match="Casual Shoes \\+ Bottomwear"):
        store.review(p["id"], {"articleType": {"label": "Casual Shoes", "version": 2}}, "ann")
    kept = store.review(p["id"], {"articleType": {"label": "Casual Shoes", "version": 2}}, "ann", confirm=True)
    assert kept["photo"]["tags"]["articleType"]["label"] == "Casual Shoes"
    for bad, words in (({"colour": {"label": "Red", "version": 1}}, "unknown task"),
                       ({"gender": {"label": "Kids", "version": 1}}, "not a class of gender")):
        with pytest.raises(InvalidChange, match=words):
            store.review(p["id"], bad, "ann")
    with pytest.raises(InvalidChange, match="reviewer name"):
        store.review(p["id"], _versions(p, "gender"), " ")

    first = store.undo("ann")  # the confirmed unseen combination
    assert first["undone"] == kept["action"] and store.photo(p["id"])["tags"]["articleType"]["label"] == "Jeans"
    store.undo("ann")  # the correction
    back = store.photo(p["id"])["tags"]
    assert (back["articleType"]["label"], back["articleType"]["status"]) == ("Tshirts", "needs_review")
    assert back["subCategory"]["status"] == "auto"
    with pytest.raises(LookupError, match="nothing to undo"):
        store.undo("ann")


def test_two_reviewers_never_overwrite_each_other(store):
    p = store.photos()[3]
    store.review(p["id"], {"gender": {"label": "Women", "version": 1}}, "ann")
    with pytest.raises(Conflict, match="changed by someone else") as stale:
        store.review(p["id"], {"gender": {"label": "Men", "version": 1}}, "bob")  # bob saw version 1
    assert stale.value.photo["tags"]["gender"]["label"] == "Women"
    # bob's undo of ann's action is refused too once someone wrote the tag after it
    ann = store.review(p["id"], {"articleType": {"label": "Tshirts", "version": 1}}, "ann")
    store.review(p["id"], {"articleType": {"label": "Jeans", "version": 2},
                           "subCategory": {"label": "Bottomwear", "version": 1}}, "bob")
    with pytest.raises(Conflict):
        store.undo("ann", ann["action"])


def test_concurrent_writes_one_winner_per_version_and_no_lost_updates(store):
    p = store.photos()[5]

    def attempt(i):
        try:
            store.review(p["id"], {"gender": {"label": ["Men", "Women"][i % 2], "version": 1}}, f"r{i}")
            return True
        except Conflict:
            return False

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(attempt, range(16))) == 1
    assert store.photo(p["id"])["tags"]["gender"]["version"] == 2
    others = [q for q in store.photos() if not q["error"] and q["id"] != p["id"]]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda q: store.review(q["id"], _versions(q, *MODEL["tasks"]), "crowd"), others))
    assert all(t["status"] == "accepted" for q in others for t in store.photo(q["id"])["tags"].values())


def test_bulk_accept_takes_only_photos_all_above_threshold_and_undoes_as_one(store):
    done = store.bulk_accept("ann")
    sure = [q["id"] for q in store.photos() if q["item_id"] in {str(n) for n in range(0, 10, 2)}]
    assert done["accepted"] == sure
    assert store.progress() == {"total": 10, "reviewed": 5, "needs_review": 5}
    store.undo("ann")
    assert store.progress()["reviewed"] == 0


def test_export_round_trip_in_the_catalogs_schema(store, tmp_path):
    photos = store.photos()
    store.review(photos[1]["id"], {"articleType": {"label": "Jeans", "version": 1},
                                   "subCategory": {"label": "Bottomwear", "version": 1},
                                   "gender": {"label": "Women", "version": 1}}, "ann")
    store.bulk_accept("ann")
    counts = export_reviewed(store.url, tmp_path / "reviewed.csv")
    rows = list(csv.DictReader((tmp_path / "reviewed.csv").open()))
    assert counts == {"written": 6, "pending": 4, "failed": 1}
    # the path even where the file name is the id: training finds each photo by it (issue 21)
    assert list(rows[0]) == ["id", "articleType", "subCategory", "gender", "path"]
    by_id = {r["id"]: r for r in rows}
    for p in store.photos():
        if p["item_id"] in by_id:
            assert by_id[p["item_id"]] == {"id": p["item_id"], **{t: p["tags"][t]["label"] for t in MODEL["tasks"]},
                                           "path": p["path"]}
    assert by_id["1"]["articleType"] == "Jeans" and by_id["1"]["gender"] == "Women"
    store.add_photos([_item(99, True) | {"path": "/elsewhere/front.jpg"}])
    export_reviewed(store.url, tmp_path / "all.csv", include_pending=True)
    rows = list(csv.DictReader((tmp_path / "all.csv").open()))
    assert len(rows) == 11 and rows[-1]["path"] == "/elsewhere/front.jpg" and rows[-1]["id"] == "99"


def test_bad_urls_and_schemas_are_named(db_url, tmp_path):
    with pytest.raises(StoreError, match="foo://x: not a usable database URL"):
        ReviewStore("foo://x")
    with pytest.raises(StoreError, match="cannot open the database"):
        ReviewStore(f"sqlite:///{tmp_path / 'no' / 'such' / 'folder.db'}")
    s = ReviewStore(db_url)
    with s.engine.begin() as conn:
        conn.execute(schema_info.update().values(version=SCHEMA_VERSION + 1))
    s.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        ReviewStore(db_url)
    with pytest.raises(StoreError, match="empty.db: no such database file"):
        export_reviewed(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "x.csv")
    assert not (tmp_path / "empty.db").exists()  # export reads; it never creates a database
    ReviewStore(f"sqlite:///{tmp_path / 'empty.db'}").close()
    with pytest.raises(StoreError, match="no review queue here"):
        export_reviewed(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "x.csv")


# ------------------------------------------------------------------------------------ a server killed mid-review

def _start(photos: Path, db: str, model: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fashiontag", "review", str(photos), "--db", db, "--model",
                             str(model), "--port", str(port), "--engine", "torch"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ready(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the review server did not get ready")


@pytest.mark.slow
def test_a_killed_review_server_loses_nothing_accepted(trained, catalog, db_url, tmp_path):
    from reviewdb import _free_port
    photos = tmp_path / "photos"
    photos.mkdir()
    for pid in catalog.good_ids[:8]:
        (photos / f"{pid}.jpg").write_bytes((catalog.root / "images" / f"{pid}.jpg").read_bytes())
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(photos, db_url, trained, port)
    try:
        _ready(proc, url)
        queue = httpx.get(url + "/review/api/queue").json()
        assert queue["progress"]["total"] == 8 and (httpx.get(url + "/").text.count("review.js") == 1)
        # Photos not drawn for a second reviewer's blind look (by their path, here under tmp_path): on those, a
        # second reviewer's answer is a second opinion, not a stale write.
        first, second = [p for p in queue["photos"] if _draw(p["path"], "overlap") >= OVERLAP_SHARE][:2]
        decisions = {t: {"label": tag["label"], "version": tag["version"]} for t, tag in first["tags"].items()}
        r = httpx.post(f"{url}/review/api/photos/{first['id']}/review", json={"reviewer": "ann",
                                                                              "decisions": decisions})
        assert r.status_code == 200
        stale = httpx.post(f"{url}/review/api/photos/{first['id']}/review",
                           json={"reviewer": "bob", "decisions": decisions})
        assert stale.status_code == 409 and stale.json()["error"] == "conflict"
        other = next(c for c in MODEL_TASKS_WITH_CHOICES if c in second["tags"])
        runner = second["tags"][other]["runners_up"][0][0]
        r = httpx.post(f"{url}/review/api/photos/{second['id']}/review", json={
            "reviewer": "bob", "decisions": {other: {"label": runner, "version": 1}}})
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGKILL)  # no shutdown of any kind
        proc.wait(30)
    proc = _start(photos, db_url, trained, port)
    try:
        _ready(proc, url)
        after = {p["id"]: p for p in httpx.get(url + "/review/api/queue").json()["photos"]}
        assert len(after) == 8  # the restart queued nothing twice
        assert all(t["status"] == "accepted" and t["reviewer"] == "ann" for t in after[first["id"]]["tags"].values())
        assert after[second["id"]]["tags"][other]["label"] == runner
        assert after[second["id"]]["tags"][other]["status"] == "corrected"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


MODEL_TASKS_WITH_CHOICES = ("gender", "baseColour", "season")  # no hierarchy: any runner-up is a valid choice


def test_model_record_is_plain_json(trained):
    from fashiontag.model_folder import ModelFolder
    from fashiontag.review.queue import model_record
    record = model_record(ModelFolder.open(trained))
    assert json.loads(json.dumps(record)) == record and record["id_column"] == "id"
    assert record["hierarchy"]["tasks"][0] == "articleType"
