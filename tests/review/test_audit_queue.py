"""A catalog audit into the review loop (issue 24): `fashiontag review audit.csv` queues one item per flagged product
with the catalog's label beside the suggestion, skips (and names) the rows it cannot queue, serves only the folders
it is given; keep / take / other are recorded, exported in the catalog's schema and read back by `train --extra`."""

from __future__ import annotations

import csv
import shutil

import pytest
from reviewpage import choose
from sqlalchemy import select

from browser import live_server, open_page
from fashiontag.data.catalog import read_catalog, with_reviewed
from fashiontag.review.csv_export import export_reviewed
from fashiontag.review.queue import fill_queue
from fashiontag.review.stats import reviewed_tags
from fashiontag.review.store import ReviewStore, schema_info, tags
from fashiontag.serve import create_app
from fashiontag.training.audit import COLUMNS, audit

# The shipped model's classes (no training needed to queue a hand-written audit); ids and photos are the synthetic
# catalog's. Line numbers: the header is line 1.
ROWS = [
    # line 2-3: one product, a wrong articleType that drags its subCategory along
    ("1000", "articleType", "Tshirts", "Jeans", 0.9, "Jeans 0.800; Tshirts 0.100; Shorts 0.050"),
    ("1000", "subCategory", "Topwear", "Bottomwear", 0.85, "Bottomwear 0.800; Topwear 0.150; Innerwear 0.020"),
    # line 4: the suggestion's probability is not among the runners-up listed: unknown
    ("1001", "gender", "Men", "Women", 0.75, "Men 0.250"),
    # line 5
    ("1002", "baseColour", "Red", "Blue", 0.8, "Blue 0.600; Red 0.200; Green 0.100"),
    # line 6-10: cannot be queued
    ("1003", "articleType", "Tee Shirts", "Tshirts", 0.9, "Tshirts 0.900"),     # not a class of the model
    ("1004", "fabric", "Cotton", "Linen", 0.9, ""),                             # a task the model lacks
    ("1005", "baseColour", "Red", "Blue", "high", "Blue 0.600"),               # a score that is no number
    ("1006", "baseColour", "Red", "Blue", 0.8, "Blue 0.600"),                  # no photo (below)
    ("1000", "articleType", "Tshirts", "Jeans", 0.9, "Jeans 0.800"),           # the same task twice
]


def _write_audit(path, photos, rows=ROWS):
    """An audit.csv as `fashiontag audit` writes it; photos: id -> the path to write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for pid, task, catalog_label, suggested, score, runners in rows:
            w.writerow({"id": pid, "task": task, "catalog_label": catalog_label, "suggested_label": suggested,
                        "score": score, "path": photos[pid], "title": f"Brand {pid}", "runners_up": runners,
                        "cleanlab_issue": True})
    return path


@pytest.fixture
def shop(catalog, tmp_path):
    """A shop folder: images/ with the synthetic catalog's first photos, audit.csv beside it (relative paths, as
    from a catalog given as a relative path: resolved from the audit's folder), 1006's photo missing."""
    (tmp_path / "shop" / "images").mkdir(parents=True)
    photos = {}
    for pid in ("1000", "1001", "1002", "1003", "1004", "1005", "1006"):
        if pid != "1006":
            shutil.copy(catalog.root / "images" / f"{pid}.jpg", tmp_path / "shop" / "images" / f"{pid}.jpg")
        photos[pid] = f"images/{pid}.jpg"
    return _write_audit(tmp_path / "shop" / "audit.csv", photos)


def test_an_audit_queues_one_item_per_product_with_its_flagged_tasks(shop, tmp_path, capsys):
    store = ReviewStore(f"sqlite:///{tmp_path / 'q.db'}")
    counts = fill_queue(store, [str(shop)], engine="onnx")
    assert (counts["added"], counts["skipped"], counts["audits"]) == (3, 5, 0)
    err = capsys.readouterr().err
    for line, why in ((6, "articleType 'Tee Shirts' is not one of the model's classes"), (7, "task 'fabric' is not one of the "
                      "model's"), (8, "score 'high' is not a number"), (9, "no photo at"),
                      (10, "articleType of id 1000 is listed twice")):
        assert f"{shop}, line {line}: {why}" in err, err
    queued = {p["item_id"]: p for p in store.photos()}
    assert list(queued) == ["1000", "1001", "1002"]  # the audit's order: most likely wrong first
    assert queued["1000"]["path"] == str((shop.parent / "images" / "1000.jpg").resolve())
    assert {t: (tag["catalog_label"], tag["model_label"], tag["label"], tag["status"])
            for t, tag in queued["1000"]["tags"].items()} == {
        "subCategory": ("Topwear", "Bottomwear", "Bottomwear", "needs_review"),
        "articleType": ("Tshirts", "Jeans", "Jeans", "needs_review")}  # the other tasks were not flagged
    article = queued["1000"]["tags"]["articleType"]
    assert article["confidence"] == 0.8 and article["runners_up"] == [["Tshirts", 0.1], ["Shorts", 0.05]]
    gender = queued["1001"]["tags"]["gender"]
    assert gender["confidence"] == 0.0 and gender["runners_up"] == [["Men", 0.25]]  # unlisted: unknown
    assert list(queued["1002"]["tags"]) == ["baseColour"]
    assert store.progress() == {"total": 3, "reviewed": 0, "needs_review": 3}

    # filling again adds nothing; the review goes on
    assert fill_queue(store, [str(shop)], engine="onnx")["added"] == 0
    store.close()


def test_photos_of_an_audit_outside_its_folder_need_root(shop, tmp_path, capsys):
    """audit.csv written elsewhere than the catalog: its photos are served only once --root names their folder."""
    images = shop.parent / "images"
    elsewhere = _write_audit(tmp_path / "reports" / "audit.csv", {pid: str(images / f"{pid}.jpg") for pid in
                                                                   ("1000", "1001", "1002")}, ROWS[:4])
    store = ReviewStore(f"sqlite:///{tmp_path / 'q.db'}")
    counts = fill_queue(store, [str(elsewhere)], engine="onnx")
    assert (counts["added"], counts["skipped"]) == (0, 4)
    err = capsys.readouterr().err
    assert (f"{elsewhere}, line 2: the photo lies outside the folders this review serves "
            f"({elsewhere.parent.resolve()}); skipped (--root {images.resolve()} would serve its folder)") in err
    counts = fill_queue(store, [str(elsewhere)], engine="onnx", roots=[str(images)])
    assert counts["added"] == 3 and str(images.resolve()) in store.roots()
    store.close()


def test_keep_take_other_are_recorded_and_exported_for_train_extra(shop, catalog, tmp_path):
    store = ReviewStore(f"sqlite:///{tmp_path / 'q.db'}")
    fill_queue(store, [str(shop)], engine="onnx")
    queued = {p["item_id"]: p for p in store.photos()}
    a, b, c = queued["1000"], queued["1001"], queued["1002"]
    # keep the catalog's labels (articleType with its parent), take the suggestion, pick another
    store.review(a["id"], {"articleType": {"label": "Tshirts", "version": 1},
                           "subCategory": {"label": "Topwear", "version": 1}}, "ann")
    store.review(b["id"], {"gender": {"label": "Women", "version": 1}}, "ann")
    store.review(c["id"], {"baseColour": {"label": "Green", "version": 1}}, "ann")
    done = {p["item_id"]: {t: (tag["label"], tag["status"]) for t, tag in p["tags"].items()} for p in store.photos()}
    # a kept catalog label is a correction of the model's suggestion: the model was wrong there
    assert done == {"1000": {"subCategory": ("Topwear", "corrected"), "articleType": ("Tshirts", "corrected")},
                    "1001": {"gender": ("Women", "accepted")}, "1002": {"baseColour": ("Green", "corrected")}}
    # picked because the model disagreed with the catalog: no sample of its precision (calibrate --reviews)
    assert reviewed_tags(store) == {}
    store.close()

    out = tmp_path / "exports" / "reviewed.csv"
    out.parent.mkdir()
    assert export_reviewed(store.url, out)["written"] == 3
    rows = list(csv.DictReader(out.open()))
    # the catalog's schema, with only the tasks the audit flagged: the catalog keeps the other columns as they are
    assert list(rows[0]) == ["id", "gender", "subCategory", "articleType", "baseColour", "path"]
    assert [(r["id"], r["gender"], r["subCategory"], r["articleType"], r["baseColour"]) for r in rows] == [
        ("1000", "", "Topwear", "Tshirts", ""), ("1001", "Women", "", "", ""), ("1002", "", "", "", "Green")]

    before = read_catalog(catalog.root)
    merged, ids = with_reviewed(before, out)
    assert ids == {"1000", "1001", "1002"}
    row = {pid: i for i, pid in enumerate(merged.ids)}
    assert (merged.columns["articleType"][row["1000"]], merged.columns["subCategory"][row["1000"]],
            merged.columns["gender"][row["1001"]], merged.columns["baseColour"][row["1002"]]) == (
        "Tshirts", "Topwear", "Women", "Green")
    assert merged.photos[row["1002"]] == shop.parent / "images" / "1002.jpg"
    for column in ("masterCategory", "season", "usage"):  # flagged nowhere: untouched
        assert merged.columns[column] == before.columns[column]
    # flagged for another product only: the export's empty cell keeps the catalog's label
    assert (merged.columns["gender"][row["1000"]], merged.columns["articleType"][row["1001"]],
            merged.columns["subCategory"][row["1002"]]) == (
        before.columns["gender"][row["1000"]], before.columns["articleType"][row["1001"]],
        before.columns["subCategory"][row["1002"]]) != ("", "", "")


def test_labels_their_title_contradicts_queue_with_the_titles_class_as_the_suggestion(shop, tmp_path):
    """audit-titles.csv: audit.csv's columns, the class the title names as the suggestion, no score (no model
    judged the label)."""
    titles = _write_audit(shop.with_name("audit-titles.csv"), {"1000": "images/1000.jpg", "1001": "images/1001.jpg"},
                          rows=[("1000", "gender", "Men", "Women", "", ""), ("1001", "usage", "Casual", "Sports", "", "")])
    store = ReviewStore(f"sqlite:///{tmp_path / 'q.db'}")
    assert fill_queue(store, [str(titles)], engine="onnx")["added"] == 2
    queued = {p["item_id"]: p["tags"] for p in store.photos()}
    assert {pid: {t: (tag["catalog_label"], tag["model_label"], tag["confidence"], tag["runners_up"], tag["status"])
                  for t, tag in tags.items()} for pid, tags in queued.items()} == {
        "1000": {"gender": ("Men", "Women", 0.0, [], "needs_review")},
        "1001": {"usage": ("Casual", "Sports", 0.0, [], "needs_review")}}
    store.close()


def test_an_audit_made_by_fashiontag_audit_queues_as_it_flags(catalog, trained, tmp_path):
    result = audit(catalog.root, model=trained, progress=False)
    assert result.flags
    result.to_csv(tmp_path / "audit.csv")
    store = ReviewStore(f"sqlite:///{tmp_path / 'q.db'}")
    counts = fill_queue(store, [str(tmp_path / "audit.csv")], model=trained, roots=[str(catalog.root / "images")])
    flagged: dict[str, dict] = {}
    for f in result.flags:
        flagged.setdefault(f.id, {})[f.task] = (f.catalog_label, f.suggested_label)
    assert counts["skipped"] == 0 and counts["added"] == len(flagged)
    queued = {p["item_id"]: p for p in store.photos()}
    assert list(queued) == list(flagged)
    for pid, tasks in flagged.items():
        assert {t: (tag["catalog_label"], tag["model_label"]) for t, tag in queued[pid]["tags"].items()} == tasks
        assert all(tag["status"] == "needs_review" for tag in queued[pid]["tags"].values())
    store.close()


def test_a_queue_made_before_catalog_audits_opens_and_takes_one(db_url, shop):
    store = ReviewStore(db_url)
    with store.engine.begin() as conn:  # as fashiontag made its tables before catalog audits (schema version 2)
        conn.exec_driver_sql("ALTER TABLE tags DROP COLUMN catalog_label")
        conn.execute(schema_info.update().values(version=2))
    store.close()
    reopened = ReviewStore(db_url, create=False)
    fill_queue(reopened, [str(shop)], engine="onnx")
    with reopened.engine.connect() as conn:
        assert sorted(conn.execute(select(tags.c.catalog_label)).scalars()) == ["Men", "Red", "Topwear", "Tshirts"]
    reopened.close()


def test_keep_take_other_from_the_keyboard(browser, shop, tmp_path):
    store = ReviewStore(f"sqlite:///{tmp_path / 'q.db'}")
    fill_queue(store, [str(shop)], engine="onnx")
    ids = {p["item_id"]: p["id"] for p in store.photos()}
    app = create_app(None, engine="onnx", review=store, threads=1)

    def wait_for(page, item, task, status):
        page.wait_for_function(f"window.fashiontag.state.photos.find((p) => p.id === {ids[item]})"
                               f".tags[{task!r}].status === {status!r}", timeout=15000)

    with live_server(app) as url, open_page(browser, url) as page:
        page.fill("#reviewer", "ann")
        choose(page, "#sort", "queue")  # the audit's order
        page.locator("body").click(position={"x": 5, "y": 5})
        assert page.evaluate("window.fashiontag.current().item_id") == "1000"
        # the catalog's label beside the suggestion, and the focused tag's c / s answers spelt out
        row = page.locator(".card.current tr[data-task=articleType]")
        assert row.get_attribute("data-catalog") == "Tshirts"
        assert row.locator("td.label").inner_text().split("\n") == ["Jeans", "catalog: Tshirts 10%"]
        assert page.locator(".card.current tr.focus").get_attribute("data-task") == "subCategory"
        assert page.locator(".card.current .audit-choice").all_text_contents() == [
            "c keep the catalog's Topwear", "s take the suggestion Bottomwear 80%"]

        # c on articleType keeps the catalog's, its flagged parent with it
        page.keyboard.press("Tab")
        assert page.locator(".card.current tr.focus").get_attribute("data-task") == "articleType"
        page.keyboard.press("c")
        wait_for(page, "1000", "articleType", "corrected")
        wait_for(page, "1000", "subCategory", "corrected")

        # s takes the suggestion
        page.keyboard.press("j")
        assert page.evaluate("window.fashiontag.current().item_id") == "1001"
        page.keyboard.press("s")
        wait_for(page, "1001", "gender", "accepted")

        # another class: 2 takes the second runner-up (1 would be the catalog's own)
        page.keyboard.press("j")
        page.keyboard.press("2")
        wait_for(page, "1002", "baseColour", "corrected")

    after = {p["item_id"]: {t: (tag["label"], tag["status"], tag["reviewer"]) for t, tag in p["tags"].items()}
             for p in store.photos()}
    assert after == {"1000": {"subCategory": ("Topwear", "corrected", "ann"),
                              "articleType": ("Tshirts", "corrected", "ann")},
                     "1001": {"gender": ("Women", "accepted", "ann")},
                     "1002": {"baseColour": ("Green", "corrected", "ann")}}
    store.close()
