"""The review page on a queue of a million tags: how long its requests take, served from PostgreSQL.

Run by hand (not a test); one command, a few minutes on 2 cores (most of it filling the queue):

    .venv/bin/python benchmarks/review_queue.py --tags 1000000

1. A throwaway PostgreSQL server (tests/reviewdb.py's, Debian's binaries) gets a queue of the shipped model's tasks
   and classes: --tags tags over tags / 7 photos, random confidences, a third of the photos already decided by one
   of three reviewers; rows written with COPY, each photo's page keys (needs, reviewed, margin) and each tag's margin
   worked out by the store's own functions. `--db sqlite:///PATH` fills a SQLite file instead.
2. The review routes (review_router, in-process: the times include FastAPI and JSON, not a network) are asked what
   the page asks: opening it (GET /summary, then the first page of "needs review, least certain first"), the next
   pages, a page deep in the list, the filters (status, task, class, reviewer) and sorts, a decision (POST review,
   which answers with the progress), a lease. Each request is timed --repeat times; the median is reported.
   --whole also times GET /queue once, the whole queue as the page read it before paging.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from fashiontag.inference.decode import needs_review
from fashiontag.model_folder import DEFAULT_MODEL_DIR, ModelFolder
from fashiontag.review.queue import model_record
from fashiontag.review.routes import review_router
from fashiontag.review.store import NONE_LEFT, UNTOUCHED, ReviewStore, photo_keys, tag_margin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
REVIEWERS = ("ann", "bob", "cy")


def generate(n_tags: int, model: dict, seed: int):
    """(photo rows, tag rows) of a queue of about n_tags tags, as add_photos would write them."""
    rng = random.Random(seed)
    tasks, vocabs, thresholds = model["tasks"], model["vocabs"], model["thresholds"]
    photo_rows, tag_rows = [], []
    for pid in range(1, n_tags // len(tasks) + 1):
        decided_by = rng.choice(REVIEWERS) if rng.random() < 1 / 3 else None
        tags = []
        for t in tasks:
            classes = vocabs[t]
            picks = rng.sample(classes, min(4, len(classes)))
            confidence = rng.betavariate(5, 1.2)
            threshold = float(thresholds.get(t) or 0.9)
            tag = {"label": picks[0], "confidence": confidence, "threshold": threshold,
                   "runners_up": [[c, (1 - confidence) / 3] for c in picks[1:]]}
            status = "needs_review" if needs_review(picks[0], confidence, threshold) else "auto"
            if decided_by:
                status = "corrected" if rng.random() < 0.1 else "accepted"
            tags.append((t, tag, status, tag_margin(tag)))
        keys = photo_keys({s for *_, s, _ in tags}, [m for *_, s, m in tags if s in UNTOUCHED])
        photo_rows.append((pid, f"/photos/{pid}.jpg", str(pid), "", keys["needs"], keys["reviewed"], keys["margin"]))
        for t, tag, status, margin in tags:
            tag_rows.append((pid, t, tag["label"], tag["confidence"], json.dumps(tag["runners_up"]), tag["threshold"],
                             tag["label"], status, 2 if decided_by else 1, decided_by, margin))
    return photo_rows, tag_rows


PHOTO_COLUMNS = ("id", "path", "item_id", "error", "needs", "reviewed", "margin")
TAG_COLUMNS = ("photo_id", "task", "model_label", "confidence", "runners_up", "threshold", "label", "status",
               "version", "reviewer", "margin")


def fill(store: ReviewStore, photo_rows: list, tag_rows: list) -> None:
    """Write the rows: COPY on PostgreSQL, executemany on SQLite."""
    if store.engine.dialect.name == "postgresql":
        raw = store.engine.raw_connection()
        try:
            with raw.cursor() as cur:
                for table, columns, rows in (("photos", PHOTO_COLUMNS, photo_rows), ("tags", TAG_COLUMNS, tag_rows)):
                    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                cur.execute("SELECT setval('photos_id_seq', (SELECT max(id) FROM photos))")
                cur.execute("ANALYZE")
            raw.commit()
        finally:
            raw.close()
        return
    with store.engine.begin() as conn:
        for table, columns, rows in (("photos", PHOTO_COLUMNS, photo_rows), ("tags", TAG_COLUMNS, tag_rows)):
            conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                 f"({', '.join('?' * len(columns))})", rows)
        conn.execute(text("ANALYZE"))


def timed(call, repeat: int) -> tuple[float, object]:
    """The median milliseconds of `repeat` calls, and the last answer."""
    times, answer = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        answer = call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), answer


def measure(client: TestClient, store: ReviewStore, model: dict, repeat: int, whole: bool
            ) -> list[tuple[str, float, str]]:
    def get(path, **params):
        answer = client.get("/review/api" + path, params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    rows = []

    def row(name, call, note=lambda a: ""):
        ms, answer = timed(call, repeat)
        rows.append((name, ms, note(answer)))
        return answer

    def pages(a):
        return f"{len(a['photos'])} photos"

    row("open: GET /summary", lambda: get("/summary"),
        lambda a: f"{a['progress']['total']:,} photos, {a['progress']['needs_review']:,} need review")
    first = row("open: first page (needs review, least certain first)", lambda: get("/page", limit=50), pages)
    row("open: both requests", lambda: (get("/summary"), get("/page", limit=50)))
    # the next pages, each from the one before (a reviewer working down the list)
    after, times = first["next"], []
    for _ in range(20):
        started = time.perf_counter()
        page = get("/page", limit=50, after=after)
        times.append((time.perf_counter() - started) * 1000)
        after = page["next"]
    rows.append(("next page (median of the 20 pages after the first)", statistics.median(times), pages(page)))
    # a page deep in the list (50,000 photos, or the last where the list is shorter): keyset pagination starts from
    # the key, however deep, where OFFSET would count the rows before it
    deep, depth = store.page(limit=500), 500
    while depth < 50_000 and deep["next"] and (following := store.page(limit=500, after=deep["next"]))["next"]:
        deep, depth = following, depth + 500
    row(f"a page {depth:,} photos deep", lambda: get("/page", limit=50, after=deep["next"]), pages)
    colour = "baseColour" if "baseColour" in model["tasks"] else model["tasks"][0]
    common = "Navy Blue" if "Navy Blue" in model["vocabs"][colour] else model["vocabs"][colour][0]
    for name, params in (("filter: all photos", {"status": "all"}),
                         ("filter: reviewed", {"status": "reviewed"}),
                         (f"filter: task {colour} needs review", {"task": colour}),
                         (f"filter: {colour} = {common}, all", {"status": "all", "task": colour, "cls": common}),
                         ("filter: decided by ann", {"status": "all", "decided_by": "ann"}),
                         (f"sort: by {colour}'s confidence", {"sort": "confidence", "task": colour}),
                         (f"sort: by {colour}'s class, all", {"status": "all", "sort": "class", "task": colour}),
                         ("sort: queue order", {"sort": "queue"}),
                         ("as a reviewer (leases and second looks)", {"as": "dee"})):
        row(name, lambda params=params: get("/page", limit=50, **params), pages)
    # a decision: the photo at the top of the list, every tag as the model said (answers with the progress)
    photo = first["photos"][0]
    started = time.perf_counter()
    answer = client.post(f"/review/api/photos/{photo['id']}/review", json={
        "reviewer": "dee", "confirm": True, "decisions": {t: {"label": g["label"], "version": g["version"]}
                                         for t, g in photo["tags"].items()}})
    assert answer.status_code == 200, answer.text
    rows.append(("decide a photo (POST review, with the progress)", (time.perf_counter() - started) * 1000, "once"))
    row("lease the photo in front of the reviewer", lambda: client.post(
        "/review/api/lease", json={"reviewer": "dee", "photo_ids": [first["photos"][1]["id"]]}).json())
    row("progress alone (store.progress)", store.progress)
    if whole:
        ms, answer = timed(lambda: get("/queue"), 1)
        rows.append(("the whole queue at once (GET /queue, what the page read before paging)", ms,
                     f"{len(answer['photos']):,} photos"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", type=int, default=1_000_000)
    ap.add_argument("--db", default=None, help="a database URL to fill (empty); default: a throwaway PostgreSQL")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the figures as JSON here too")
    ap.add_argument("--whole", action="store_true", help="also time GET /queue once: the whole queue, as the page "
                    "loaded it before paging")
    args = ap.parse_args()
    model = model_record(ModelFolder.open(DEFAULT_MODEL_DIR))
    with ExitStack() as stack:
        url = args.db
        if url is None:
            from reviewdb import fresh_postgres_db, postgres_missing, postgres_server
            if reason := postgres_missing():
                sys.exit(f"no PostgreSQL here: {reason}")
            url = fresh_postgres_db(stack.enter_context(postgres_server()), "review_queue")
        store = ReviewStore(url)
        stack.callback(store.close)
        store.set_model(model)
        started = time.perf_counter()
        photo_rows, tag_rows = generate(args.tags, model, args.seed)
        fill(store, photo_rows, tag_rows)
        filled = time.perf_counter() - started
        assert all(r[6] <= NONE_LEFT for r in photo_rows)
        app = FastAPI()
        app.include_router(review_router(store))
        rows = measure(TestClient(app), store, model, args.repeat, args.whole)
    backend = url.split(":", 1)[0]
    print(f"\n{len(tag_rows):,} tags, {len(photo_rows):,} photos on {backend} (filled in {filled:.0f} s); median "
          f"of {args.repeat} requests each, ms:")
    for name, ms, note in rows:
        print(f"{ms:9.1f}  {name}" + (f"  ({note})" if note else ""))
    if args.out:
        Path(args.out).write_text(json.dumps({"tags": len(tag_rows), "photos": len(photo_rows), "backend": backend,
                                              "rows": [{"request": n, "ms": ms, "note": note}
                                                       for n, ms, note in rows]}, indent=1))


if __name__ == "__main__":
    main()
