"""Tags reviewed per minute on the review page: photo by photo against review by task, on the same queue, driven by
a scripted browser (Playwright and Debian's chromium, as tests/review/test_page.py).

Run by hand (not a test); one command, a few minutes on 2 cores:

    .venv/bin/python benchmarks/review_by_task.py --data ../shared/data/fashion-small --photos 100

1. --photos products of the test side of the shipped model's split (never trained on) are tagged into a review
   queue by the shipped model, as `fashiontag review` does (no audits); the queue is copied, one copy per way.
2. A scripted reviewer who knows each product's catalog label clears every tag that needs review:
   - photo by photo: on each photo of "needs review, least certain first", each tag to review whose label is wrong
     is focused (Tab) and set (its runner-up's key 1-9, else `e` and the class typed), then Enter accepts the photo;
   - by task: for each task, the grid of its tags to review, grouped by proposed label; each wrong tile is clicked
     and set the same way, then `a` accepts the page; until the task's list is empty.
   A label the model does not know (a class pooled away) is left as proposed.
3. Reports per way: tags that needed review, minutes, tags per minute, and the reviewer's keys and clicks per tag.
   The script presses keys as fast as the page answers, so its minutes measure the page and the server, not a
   person's eyes: keys and clicks per tag are the figure that carries over to a person.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser import chromium, live_server, open_page
from fashiontag.data.split import load_split
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import DEFAULT_MODEL_DIR
from fashiontag.review.queue import fill_queue
from fashiontag.review.store import ReviewStore
from fashiontag.serve import create_app

STATE = "window.fashiontag.state"


class Reviewer:
    """The scripted reviewer: presses keys on a page, counting them, and waits for the server's answers."""

    def __init__(self, page, truth: dict[str, dict[str, str]], vocabs: dict[str, list[str]]):
        self.page, self.truth, self.vocabs, self.keys = page, truth, vocabs, 0

    def press(self, key: str) -> None:
        self.keys += 1
        self.page.keyboard.press(key)

    def wanted(self, photo: dict, task: str) -> str | None:
        """The catalog's label of a tag the model got wrong (and knows), else None."""
        true = self.truth.get(photo["item_id"], {}).get(task)
        return true if true and true in self.vocabs[task] and true != photo["tags"][task]["label"] else None

    def set_label(self, photo: dict, task: str, label: str) -> None:
        """Set the focused tag to label: its runner-up's key, else the type-ahead; wait until the server has it."""
        runners = [r[0] for r in photo["tags"][task]["runners_up"][:9]]
        if label in runners:
            self.press(str(runners.index(label) + 1))
        else:
            self.press("e")
            self.keys += len(label)
            self.page.keyboard.type(label)
            if self.page.locator("#editor-list li.active").text_content() != label:
                self.page.locator("#editor-list li", has_text=label).first.dispatch_event("mousedown")
            else:
                self.press("Enter")
        self.page.wait_for_function(f"{STATE}.photos.find((p) => p.id === {photo['id']}).tags[{task!r}].label === "
                                    f"{label!r}", timeout=15000)

    def current(self) -> dict | None:
        return self.page.evaluate("window.fashiontag.current() || null")

    def photo_by_photo(self) -> None:
        done = set()
        while (photo := self.current()) and photo["id"] not in done:
            done.add(photo["id"])
            for task, tag in photo["tags"].items():
                if tag["status"] != "needs_review" or not (label := self.wanted(photo, task)):
                    continue
                while self.page.locator(".card.current tr.focus").get_attribute("data-task") != task:
                    self.press("Tab")
                self.set_label(photo, task, label)
                photo = self.current()
            self.press("Enter")
            self.page.wait_for_function(f"{STATE}.photos.find((p) => p.id === {photo['id']}).tags && Object.values("
                                        f"{STATE}.photos.find((p) => p.id === {photo['id']}).tags).every((t) => "
                                        "t.status !== 'needs_review')", timeout=15000)
            # on to the next photo, unless this was the list's last
            self.page.wait_for_function(f"window.fashiontag.current().id !== {photo['id']} || ({STATE}.next === null "
                                        f"&& {STATE}.order[{STATE}.order.length - 1] === {photo['id']})",
                                        timeout=15000)

    def by_task(self, tasks: list[str]) -> None:
        self.page.select_option("#view", "task")
        self.page.wait_for_selector("body[data-busy=false]")
        for task in tasks:
            self.page.select_option("#f-task", task)
            self.page.wait_for_selector("body[data-busy=false]")
            self.keys += 1  # choosing the task
            while photos := self.page.evaluate("window.fashiontag.shown()"):
                for photo in photos:
                    if label := self.wanted(photo, task):
                        self.keys += 1  # a click on the tile
                        self.page.locator(f".tile[data-id='{photo['id']}']").click()
                        self.set_label(photo, task, label)
                self.press("a")
                self.page.wait_for_function("document.body.dataset.busy === 'false' && "
                                            f"!{STATE}.order.includes({photos[0]['id']})", timeout=30000)


def needing_review(url: str) -> int:
    store = ReviewStore(url, create=False)
    try:
        return sum(t["status"] == "needs_review" for p in store.photos() for t in p["tags"].values())
    finally:
        store.close()


def run(way: str, db: Path, truth, model: str, browser) -> dict:
    url = f"sqlite:///{db}"
    todo = needing_review(url)
    store = ReviewStore(url)
    vocabs, tasks = store.model()["vocabs"], store.model()["tasks"]
    app = create_app(tagger=Tagger.load(model, engine="onnx", threads=1), review=store)
    try:
        with live_server(app) as served, open_page(browser, served) as page:
            page.on("dialog", lambda d: d.accept())  # a combination never seen in training: keep the catalog's
            page.fill("#reviewer", "bench")
            page.locator("body").click(position={"x": 5, "y": 5})
            reviewer = Reviewer(page, truth, vocabs)
            started = time.perf_counter()
            reviewer.photo_by_photo() if way == "photo by photo" else reviewer.by_task(tasks)
            minutes = (time.perf_counter() - started) / 60
    finally:
        store.close()
    left = needing_review(url)
    return {"way": way, "tags": todo - left, "left": left, "minutes": minutes,
            "per_minute": (todo - left) / minutes, "keys": reviewer.keys, "keys_per_tag": reviewer.keys / max(
                todo - left, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/fashion-small")
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--photos", type=int, default=100)
    ap.add_argument("--out", default=None, help="write the figures as JSON here too")
    args = ap.parse_args()
    data = Path(args.data)
    with open(data / "styles.csv", newline="", encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    ids = [i for i in sorted(load_split(Path(args.model) / "split.json")["test"])
           if i in rows and (data / "images" / f"{i}.jpg").exists()][:args.photos]
    model = Tagger.load(args.model, engine="onnx", threads=1)
    truth = {i: {t: rows[i].get(t) for t in model.tasks} for i in ids}
    folder = Path(tempfile.mkdtemp(prefix="review-by-task-"))
    try:
        first = folder / "photo.db"
        store = ReviewStore(f"sqlite:///{first}")
        try:
            fill_queue(store, [str(data / "images" / f"{i}.jpg") for i in ids], args.model, audit_share=0.0)
        finally:
            store.close()
        shutil.copy(first, folder / "task.db")
        results = []
        with chromium() as browser:
            for way, db in (("photo by photo", first), ("by task", folder / "task.db")):
                results.append(run(way, db, truth, args.model, browser))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{len(ids)} photos of the shipped model's test side; tags that needed review, cleared:")
    print(f"{'way':16s} {'tags':>5s} {'left':>5s} {'minutes':>8s} {'tags/min':>9s} {'keys+clicks/tag':>16s}")
    for r in results:
        print(f"{r['way']:16s} {r['tags']:5d} {r['left']:5d} {r['minutes']:8.2f} {r['per_minute']:9.0f} "
              f"{r['keys_per_tag']:16.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
