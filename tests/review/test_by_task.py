"""Review by task (issue 21 #6): one task's tag of many photos accepted as one undoable action, the photos' other
tasks untouched; on the page, a grid of that task's tiles, a tile fixed from the keyboard, `a` for the page."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from reviewpage import choose, listed

from browser import live_server, open_page
from fashiontag.inference.tagger import Tagger
from fashiontag.review.routes import review_router
from fashiontag.review.stats import review_stats, reviewed_tags
from fashiontag.review.store import Conflict, InvalidChange, NotFound, ReviewStore
from fashiontag.serve import create_app
from synthetic import draw

MODEL = {"version": "grid", "tasks": ["baseColour", "season"], "id_column": "id", "hierarchy": None,
         "vocabs": {"baseColour": ["Black", "Blue", "Navy Blue"], "season": ["Summer", "Winter"]},
         "thresholds": {"baseColour": 0.9, "season": 0.9}}


def _store(url: str, folder: str = "/p") -> ReviewStore:
    store = ReviewStore(url)
    store.set_model(MODEL)
    store.add_photos([{"path": f"{folder}/{i}.jpg", "item_id": str(i), "error": "", "tags": {
        "baseColour": {"label": "Navy Blue", "confidence": 0.5, "threshold": 0.9,
                       "runners_up": [["Blue", 0.3], ["Black", 0.1]]},
        "season": {"label": "Summer", "confidence": 0.6, "threshold": 0.9, "runners_up": [["Winter", 0.4]]}}}
        for i in range(5)], overlap_share=0.0)
    return store


def _statuses(store, task):
    return {p["id"]: (p["tags"][task]["label"], p["tags"][task]["status"]) for p in store.photos()}


def test_accepting_a_task_of_many_photos_is_one_action_that_leaves_other_tasks(db_url):
    store = _store(db_url)
    try:
        photos = store.photos()
        ids = [p["id"] for p in photos]
        # one tile fixed first, as a reviewer would with 1
        store.review(ids[0], {"baseColour": {"label": "Blue", "version": 1}}, "ann")
        versions = {p["id"]: store.photo(p["id"])["tags"]["baseColour"]["version"] for p in photos[:4]}
        done = store.accept_task("ann", "baseColour", versions)
        assert done["accepted"] == ids[1:4]  # the fixed tile left as it was
        assert _statuses(store, "baseColour") == {ids[0]: ("Blue", "corrected"),
                                                  **{i: ("Navy Blue", "accepted") for i in ids[1:4]},
                                                  ids[4]: ("Navy Blue", "needs_review")}
        assert {s for _, s in _statuses(store, "season").values()} == {"needs_review"}
        assert store.progress()["reviewed"] == 0  # season still needs review on every photo
        assert review_stats(store)["reviewers"][0]["tags"] == 4  # 1 fixed + 3 accepted, looked at one by one
        assert len(reviewed_tags(store)["baseColour"]["confidence"]) == 4
        # one undo takes the page back, and only the page
        undone = store.undo("ann")
        assert undone["undone"] == done["action"] and sorted(p["id"] for p in undone["photos"]) == ids[1:4]
        assert _statuses(store, "baseColour")[ids[1]] == ("Navy Blue", "needs_review")
        assert _statuses(store, "baseColour")[ids[0]] == ("Blue", "corrected")
        # a tag written by someone else since the version seen refuses the whole page
        store.review(ids[2], {"baseColour": {"label": "Black", "version": 3}}, "bob")
        with pytest.raises(Conflict, match="changed by someone else"):
            store.accept_task("ann", "baseColour", {ids[1]: 3, ids[2]: 3})
        assert _statuses(store, "baseColour")[ids[1]] == ("Navy Blue", "needs_review")
        with pytest.raises(InvalidChange, match="unknown task"):
            store.accept_task("ann", "fabric", {ids[1]: 3})
        with pytest.raises(NotFound, match="no baseColour tag on photo 999"):
            store.accept_task("ann", "baseColour", {999: 1})
        app = FastAPI()
        app.include_router(review_router(store))
        answer = TestClient(app).post("/review/api/accept-task", json={
            "reviewer": "cy", "task": "season", "versions": {str(ids[4]): 1}})
        assert answer.status_code == 200 and answer.json()["accepted"] == [ids[4]]
        assert answer.json()["photos"][0]["tags"]["season"]["status"] == "accepted"
    finally:
        store.close()


def test_the_page_reviews_one_task_as_a_grid_and_accepts_it_with_one_key(browser, tmp_path):
    for i in range(5):
        draw("Tshirts", "Blue", "Men").save(tmp_path / f"{i}.jpg", "JPEG")
    store = _store(f"sqlite:///{tmp_path / 'q.db'}", str(tmp_path))
    store.add_roots([str(tmp_path)])
    app = create_app(tagger=Tagger.load(None, engine="onnx", threads=1), review=store)
    ids = [p["id"] for p in store.photos()]
    with live_server(app) as url, open_page(browser, url) as page:
        page.fill("#reviewer", "ann")
        page.locator("body").click(position={"x": 5, "y": 5})
        choose(page, "#f-task", "baseColour")
        choose(page, "#view", "task")
        assert page.locator("#sort").input_value() == "class"
        assert page.locator("#queue .group").all_text_contents() == ["Navy Blue · 5"]
        assert sorted(int(t.get_attribute("data-id")) for t in page.locator(".tile").all()) == ids
        assert "1 Blue 30%" in page.locator("#tile-detail").text_content()
        # 1 fixes the current tile; its photo's season stays as it was
        first = int(page.locator(".tile.current").get_attribute("data-id"))
        page.keyboard.press("1")
        page.wait_for_selector(f".tile[data-id='{first}'][data-status=corrected]")
        assert store.photo(first)["tags"]["baseColour"]["label"] == "Blue"
        page.keyboard.press("ArrowRight")
        assert int(page.locator(".tile.current").get_attribute("data-id")) != first
        # a accepts the page's baseColour tags, the season of every photo untouched, then the list comes again
        page.keyboard.press("a")
        page.wait_for_function("window.fashiontag.state.progress && document.querySelectorAll('.tile').length === 0")
        listed(page)
        assert _statuses(store, "baseColour") == {i: ("Blue", "corrected") if i == first else ("Navy Blue", "accepted")
                                                  for i in ids}
        assert {s for _, s in _statuses(store, "season").values()} == {"needs_review"}
        assert "accepted 4 baseColour tags" in page.locator("#toast").text_content()
        # u takes the whole page back as one action: the tiles come back, the fixed one still fixed
        page.keyboard.press("u")
        page.wait_for_function("document.querySelectorAll('.tile').length === 4")
        assert {s for _, s in _statuses(store, "baseColour").values()} == {"corrected", "needs_review"}
        # the season grid shows every photo's season
        choose(page, "#f-task", "season")
        assert page.locator(".tile").count() == 5
    store.close()
