"""The review page in Debian's chromium (Playwright), from the keyboard: accept a photo, take a runner-up, edit
with type-ahead, undo, bulk-accept, then reload and find everything as it was left."""


from browser import live_server, open_page
from fashiontag.review.queue import fill_queue
from fashiontag.review.store import ReviewStore
from fashiontag.serve import create_app


def _current(page) -> int:
    return page.evaluate("window.fashiontag.visible()[window.fashiontag.state.cursor].id")


def _wait_saved(page, store, photo_id, task, want):
    page.wait_for_function(f"window.fashiontag.state.photos.find((p) => p.id === {photo_id})"
                           f".tags[{task!r}].label === {want!r}", timeout=15000)
    assert store.photo(photo_id)["tags"][task]["label"] == want


def test_keyboard_review_flow_survives_a_reload(browser, trained, catalog, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for pid in catalog.good_ids[:24]:
        (photos / f"{pid}.jpg").write_bytes((catalog.root / "images" / f"{pid}.jpg").read_bytes())
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}")
    # Half the tags below a middle threshold: some photos need review, others are sure.
    fill_queue(store, [str(photos)], trained, min_confidence=0.6, engine="torch")
    app = create_app(trained, engine="torch", review=store, threads=1)
    with live_server(app) as url, open_page(browser, url) as page:
        page.fill("#reviewer", "ann")
        page.select_option("#f-status", "all")
        page.locator("body").click(position={"x": 5, "y": 5})
        progress = page.locator("#progress").text_content()
        assert progress.startswith("0 / 24 photos reviewed")

        # Enter accepts the current photo: every tag, as the model said
        first = _current(page)
        page.keyboard.press("Enter")
        page.wait_for_function(f"window.fashiontag.state.photos.find((p) => p.id === {first})"
                               ".tags.gender.status === 'accepted'")
        assert all(t["status"] == "accepted" and t["reviewer"] == "ann" for t in store.photo(first)["tags"].values())
        assert page.locator("#progress").text_content().startswith("1 / 24")

        # 1 takes the focused tag's first runner-up (Tab moves the focus to gender)
        second = _current(page)
        assert second != first
        while page.locator(".card.current tr.focus").get_attribute("data-task") != "gender":
            page.keyboard.press("Tab")
        runner = store.photo(second)["tags"]["gender"]["runners_up"][0][0]
        page.keyboard.press("1")
        _wait_saved(page, store, second, "gender", runner)
        assert store.photo(second)["tags"]["gender"]["status"] == "corrected"

        # e edits with type-ahead over the sorted classes; articleType sets its parents
        page.keyboard.press("j")
        third = _current(page)
        while page.locator(".card.current tr.focus").get_attribute("data-task") != "articleType":
            page.keyboard.press("Tab")
        page.keyboard.press("e")
        assert page.locator("#editor-list li").all_text_contents() == sorted(store.model()["vocabs"]["articleType"])
        page.keyboard.type("jea")
        assert page.locator("#editor-list li.active").text_content() == "Jeans"
        page.keyboard.press("Enter")
        _wait_saved(page, store, third, "articleType", "Jeans")
        assert store.photo(third)["tags"]["subCategory"]["label"] == "Bottomwear"

        # u takes the edit back, parents included
        before = {t: tag["label"] for t, tag in store.photos()[[p["id"] for p in store.photos()].index(third)]
                  ["tags"].items()}
        page.keyboard.press("u")
        page.wait_for_function(f"window.fashiontag.state.photos.find((p) => p.id === {third})"
                               ".tags.articleType.status !== 'corrected'")
        after = store.photo(third)["tags"]
        assert after["articleType"]["label"] != "Jeans" or after["articleType"]["model_label"] == "Jeans"
        assert after["articleType"]["status"] in ("needs_review", "auto") and before["articleType"] == "Jeans"

        # bulk accept: every photo whose tags are all above threshold
        sure = [p["id"] for p in store.photos() if all(t["status"] == "auto" for t in p["tags"].values())]
        page.click("#bulk")
        page.wait_for_function(f"window.fashiontag.state.progress.reviewed === {len(sure) + 1}")
        assert all(t["status"] == "accepted" for pid in sure for t in store.photo(pid)["tags"].values())

        # a reload shows the queue exactly as the database holds it
        shown_before = page.evaluate("window.fashiontag.state.photos")
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        assert page.evaluate("window.fashiontag.state.photos") == shown_before == store.photos()
        assert page.locator("#reviewer").input_value() == "ann"
        page.select_option("#f-status", "all")
        statuses = {int(c.get_attribute("data-id")): {r.get_attribute("data-task"): r.get_attribute("data-status")
                                                       for r in c.locator("tr[data-task]").all()}
                    for c in page.locator(".card").all()}
        assert statuses == {p["id"]: {t: tag["status"] for t, tag in p["tags"].items()} for p in store.photos()}
        assert page.locator("#progress").text_content().startswith(f"{store.progress()['reviewed']} / 24")

        # the large photo on click
        page.locator(".card .thumb img").first.click()
        assert page.locator("#zoom").is_visible()
    store.close()
