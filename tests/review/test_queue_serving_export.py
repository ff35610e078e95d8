"""The review loop against hostile or broken input (issues 20 and 21): photos served only from the queue's folders,
loaded labels that are not the model's classes, a database that goes away, export's refusals, the progress count,
spreadsheet formulas in file names, and reviewed rows that must train."""

from __future__ import annotations

import csv
import io
import json
import random
import re
import warnings

import pytest
from typer.testing import CliRunner

from fashiontag.cli import app as cli
from fashiontag.data.catalog import read_catalog, with_reviewed
from fashiontag.data.spreadsheet import inert, restored
from fashiontag.inference.predict import predict
from fashiontag.inference.tagger import Tagger
from fashiontag.review.csv_export import export_reviewed
from fashiontag.review.queue import fill_queue
from fashiontag.review.store import ReviewStore, engine_for
from fashiontag.serve import create_app
from fashiontag.training.dataset import load_dataset
from helpers import tiny_config
from synthetic import draw

with warnings.catch_warnings():  # starlette would rather its test client used httpx2; httpx works
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

SECRET = "root:x:0:0:SECRET-LINE:/root:/bin/bash\n"
FORMULA = '=HYPERLINK("evil.example";"x")'


@pytest.fixture(scope="module")
def tagger():
    return Tagger.load(None, engine="onnx", threads=1)  # the shipped model: nothing to train


def _photo(path, colour="Red"):
    path.parent.mkdir(parents=True, exist_ok=True)
    draw("Tshirts", colour, "Men").save(path, "JPEG")
    return path


def _tag_list(path, tagger, rows: list[dict]):
    """A predict CSV for the shipped model: every task at its first class unless a row says otherwise."""
    columns = ["path", "id", *(c for t in tagger.tasks for c in (t, f"{t}_confidence")), "error"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**{t: tagger.vocabs[t][0] for t in tagger.tasks},
                             **{f"{t}_confidence": 0.99 for t in tagger.tasks}, "error": "", **row})
    return path


# ------------------------------------------------------------------------- issue 20 #1: only the queue's photos

def test_photos_outside_the_queues_folders_are_never_served(db_url, tmp_path, tagger, capsys):
    photos = tmp_path / "photos"
    good = _photo(photos / "good.jpg")
    _photo(photos / "other.jpg", "Blue")
    (photos / "notes.jpg").write_text("not a photo, though inside the folder")
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    private = _photo(tmp_path / "private" / "p.jpg", "Green")
    (photos / "leak.jpg").symlink_to(secret)
    (photos / "elsewhere.jpg").symlink_to(private)
    store = ReviewStore(db_url)

    counts = fill_queue(store, [str(photos)], engine="onnx")
    # the two symlinks leading out of photos/ are named and skipped; notes.jpg is queued as unreadable
    assert (counts["added"], counts["errors"], counts["skipped"]) == (3, 1, 2)
    err = capsys.readouterr().err
    assert "leak.jpg: the photo lies outside the folders this review serves" in err and "elsewhere.jpg" in err
    tag_list = _tag_list(photos / "tags.csv", tagger, [{"path": str(secret), "id": "shadow"},
                                                        {"path": "other.jpg", "id": "other"}])
    counts = fill_queue(store, [str(tag_list)], engine="onnx")
    assert (counts["added"], counts["skipped"]) == (0, 1)  # other.jpg is queued already; the secret is not
    assert f"{tag_list}, line 2: the photo lies outside" in capsys.readouterr().err
    assert store.roots() == [str(photos.resolve())]
    # What fill_queue keeps out may still be in a queue: one filled by an older fashiontag, or a file replaced
    # by a symlink after it was queued. Serving checks again.
    store.add_photos([{"path": p, "item_id": "x" + str(i), "error": "", "tags": {}}
                      for i, p in enumerate([str(photos / "leak.jpg"), str(secret), str(private)])])
    queued_good = good.resolve()
    good.rename(photos / "moved.jpg")
    good.symlink_to(secret)

    by_path = {p["path"]: p["id"] for p in store.photos()}
    with TestClient(create_app(tagger=tagger, review=store)) as client:
        def get(path):
            return client.get(f"/review/api/photos/{by_path[str(path)]}/image")

        served = get((photos / "other.jpg").resolve())
        assert served.status_code == 200 and served.content == (photos / "other.jpg").read_bytes()
        assert served.headers["content-type"] == "image/jpeg" and served.headers["x-content-type-options"] == "nosniff"
        for path, status in ((photos / "leak.jpg", 403), (secret, 403), (private, 403), (queued_good, 403),
                             ((photos / "notes.jpg").resolve(), 404)):
            answer = get(path)
            assert answer.status_code == status, path
            assert "SECRET" not in answer.text and answer.json()["error"] in ("forbidden", "not_found")
        assert client.get("/review/api/photos/999999/image").status_code == 404
    store.close()


def test_a_queue_without_recorded_folders_serves_no_photo(tmp_path, tagger):
    """A database from before the folders were recorded: nothing says where its photos may be, so none is served
    until `fashiontag review PATH` records them (it does so before serving)."""
    photos = tmp_path / "photos"
    photo = _photo(photos / "a.jpg")
    store = ReviewStore(f"sqlite:///{tmp_path / 'old.db'}")
    store.add_photos([{"path": str(photo), "item_id": "a", "error": "", "tags": {}}])
    with TestClient(create_app(tagger=tagger, review=store)) as client:
        answer = client.get(f"/review/api/photos/{store.photos()[0]['id']}/image")
        assert answer.status_code == 404 and "run `fashiontag review PATH" in answer.json()["message"]
        store.add_roots([str(photos.resolve())])
        assert client.get(f"/review/api/photos/{store.photos()[0]['id']}/image").status_code == 200
    store.close()


# --------------------------------------------------------------- issue 20 #6: labels that are not the model's

def test_loaded_rows_with_labels_not_the_models_classes_are_skipped_and_named(tmp_path, tagger, capsys):
    photos = tmp_path / "photos"
    for name in ("a", "b", "c", "d", "e"):
        _photo(photos / f"{name}.jpg")
    tag_list = _tag_list(photos / "tags.csv", tagger, [
        {"path": "a.jpg", "articleType": "<script>alert(1)</script>"},
        {"path": "b.jpg", "gender": ""},
        {"path": "c.jpg", "usage_confidence": "high"},
        {"path": "d.jpg", "season": "Summer|<b>x</b>"},
        {"path": "e.jpg"}])
    store = ReviewStore(f"sqlite:///{tmp_path / 'q.db'}")
    counts = fill_queue(store, [str(tag_list)], engine="onnx")
    err = capsys.readouterr().err
    assert (counts["added"], counts["skipped"]) == (1, 4)
    for line, words in ((2, "articleType '<script>alert(1)</script>' is not one of the model's classes"),
                        (3, "no gender label"), (4, "usage_confidence 'high' is not a number"),
                        (5, "season 'Summer|<b>x</b>' is not one of the model's classes")):
        assert f"{tag_list}, line {line}: {words}; skipped" in err
    assert [p["item_id"] for p in store.photos()] == ["e"]
    export_reviewed(store.url, tmp_path / "all.csv", include_pending=True)
    assert "<" not in (tmp_path / "all.csv").read_text()
    other_model = tmp_path / "other.csv"
    other_model.write_text("path,id,colour,colour_confidence,error\na.jpg,a,red,0.9,\n")
    with pytest.raises(ValueError, match="no gender, masterCategory.* column: tag it with this model"):
        fill_queue(store, [str(other_model)], engine="onnx")
    store.close()


# ------------------------------------------------------------------- issue 20 #11: a database that goes away

def test_a_database_that_goes_away_answers_503_and_readyz_follows(db_url, tmp_path, tagger):
    from reviewdb import _free_port
    store = ReviewStore(db_url)
    store.set_model({"version": "v", "tasks": ["gender"], "vocabs": {"gender": ["Men", "Women"]},
                     "thresholds": {"gender": 0.5}, "id_column": "id", "hierarchy": None})
    store.add_photos([{"path": "/photos/1.jpg", "item_id": "1", "error": "", "tags": {"gender": {
        "label": "Men", "confidence": 0.3, "runners_up": [["Women", 0.2]], "threshold": 0.5}}}])
    with TestClient(create_app(tagger=tagger, review=store)) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/review/api/queue").status_code == 200
        # The database stops answering: a SQLite file whose folder is gone (chmod would not stop root), a
        # PostgreSQL server that is not there.
        store.engine.dispose()
        store.engine = engine_for(f"sqlite:///{tmp_path / 'gone' / 'review.db'}" if db_url.startswith("sqlite")
                                  else f"postgresql://fashiontag@127.0.0.1:{_free_port()}/gone")
        for answer in (client.get("/review/api/queue"), client.get("/review/api/photos/1/image"),
                       client.post("/review/api/photos/1/review", json={
                           "reviewer": "ann", "decisions": {"gender": {"label": "Women", "version": 1}}})):
            assert answer.status_code == 503, answer.text
            body = answer.json()
            assert body["error"] == "database_unavailable"
            assert body["message"].startswith("review database unavailable: ") and len(body["message"]) > 30
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["message"].startswith("review database unavailable: ")
        assert client.get("/healthz").status_code == 200  # the process itself is alive
    store.close()


# --------------------------------------------------------------------------------- issue 20 #12: export refusals

@pytest.fixture
def reviewed_db(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    store = ReviewStore(url)
    store.set_model({"version": "v", "tasks": ["gender"], "vocabs": {"gender": ["Men", "Women"]},
                     "thresholds": {"gender": 0.5}, "id_column": "id", "hierarchy": None})
    store.add_photos([{"path": "/photos/1.jpg", "item_id": "1", "error": "", "tags": {"gender": {
        "label": "Men", "confidence": 0.9, "runners_up": [], "threshold": 0.5}}}])
    store.close()
    return url


def _export(*args):
    return CliRunner().invoke(cli, ["review", "export", *args])


def test_export_refusals_are_one_clear_line_and_leave_nothing(reviewed_db, tmp_path):
    (tmp_path / "adir").mkdir()
    not_a_db = tmp_path / "passwd"
    not_a_db.write_text(SECRET)
    cases = [
        (["--db", reviewed_db, "--out", str(tmp_path / "adir")], "is a folder: name a file"),
        (["--db", reviewed_db, "--out", str(tmp_path / "nowhere" / "r.csv")], f"folder {tmp_path / 'nowhere'} "
                                                                               "does not exist"),
        (["--db", f"sqlite:///{not_a_db}", "--out", str(tmp_path / "r.csv")], "cannot open the database "
                                                                               "(file is not a database)"),
        (["--db", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path / "r.csv")],
         f"{tmp_path / 'none.db'}: no such database file"),
    ]
    for args, words in cases:
        result = _export(*args)
        assert result.exit_code == 2 and words in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and ".partial" not in result.output
    assert not (tmp_path / "none.db").exists() and not_a_db.read_text() == SECRET
    assert not list(tmp_path.rglob("*.partial")) and list((tmp_path / "adir").iterdir()) == []

    out = tmp_path / "r.csv"
    out.write_text("kept\n")
    result = _export("--db", reviewed_db, "--out", str(out))
    assert result.exit_code == 2 and "exists: pass --force to replace it" in result.output
    assert out.read_text() == "kept\n"
    assert _export("--db", reviewed_db, "--out", str(out), "--force").exit_code == 0
    assert out.read_text().splitlines() == ["id,gender,path", "1,Men,/photos/1.jpg"]


# ------------------------------------------------------------------------------- issue 21 #5: the progress count

def test_progress_counts_photos_whose_unsure_tags_a_person_set(db_url):
    store = ReviewStore(db_url)
    store.set_model({"version": "v", "tasks": ["articleType", "gender"], "hierarchy": None, "id_column": "id",
                     "vocabs": {"articleType": ["Tshirts", "Jeans"], "gender": ["Men", "Women"]},
                     "thresholds": {"articleType": 0.9, "gender": 0.8}})

    def item(n, gender_conf):
        return {"path": f"/p/{n}.jpg", "item_id": str(n), "error": "", "tags": {
            "articleType": {"label": "Tshirts", "confidence": 0.5, "runners_up": [["Jeans", 0.4]], "threshold": 0.9},
            "gender": {"label": "Men", "confidence": gender_conf, "runners_up": [["Women", 0.1]], "threshold": 0.8}}}

    # 40 photos whose articleType alone is unsure, 2 unsure in both tags, 3 sure in both
    store.add_photos([item(n, 0.95) for n in range(40)] + [item(n, 0.6) for n in range(40, 42)] +
                     [item(n, 0.95) | {"tags": {**item(n, 0.95)["tags"], "articleType": {
                         "label": "Tshirts", "confidence": 0.99, "runners_up": [], "threshold": 0.9}}}
                      for n in range(42, 45)])
    assert store.progress() == {"total": 45, "reviewed": 0, "needs_review": 42}
    for p in store.photos():
        if p["tags"]["articleType"]["status"] == "needs_review":  # the reviewer corrects what needs review only
            store.review(p["id"], {"articleType": {"label": "Jeans", "version": 1}}, "ann")
    # 40 done (gender was sure); the 2 whose gender still needs review are not, nor the 3 nobody looked at
    assert store.progress() == {"total": 45, "reviewed": 40, "needs_review": 2}
    store.close()


# ----------------------------------------------------------------------- issue 20 #5: formulas in spreadsheets

def test_inert_cells_round_trip():
    for text in (FORMULA, "+1", "-x", "@SUM(A1)", "\tx", "\rx", "'quoted", "plain", "", "a=b"):
        assert restored(inert(text)) == text
    assert inert(FORMULA) == "'" + FORMULA and inert("-0.5") == "'-0.5" and inert("plain") == "plain"
    assert inert(-0.5) == -0.5 and inert(True) is True  # numbers stay numbers


def test_formula_file_names_are_inert_in_predict_and_export_and_read_back(tmp_path, monkeypatch, tagger):
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / f"{FORMULA}.jpg")
    for fmt in ("csv", "tsv"):
        predict([f"{FORMULA}.jpg"], out=f"tags.{fmt}", engine="onnx")
        text = (tmp_path / f"tags.{fmt}").read_text()
        row = next(csv.DictReader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t"))
        assert row["id"] == "'" + FORMULA and row["path"] == "'" + FORMULA + ".jpg"
        assert all(float(row[f"{t}_confidence"]) >= 0 for t in tagger.tasks)  # numbers, not prefixed text
        assert not any(cell.startswith(("=", "+", "@")) for line in text.splitlines()[1:]
                       for cell in next(csv.reader([line], delimiter="," if fmt == "csv" else "\t")))
    predict([f"{FORMULA}.jpg"], out="tags.jsonl", engine="onnx")
    assert json.loads((tmp_path / "tags.jsonl").read_text())["id"] == FORMULA  # JSON is not for spreadsheets

    store = ReviewStore(f"sqlite:///{tmp_path / 'q.db'}")
    fill_queue(store, ["tags.csv"], engine="onnx")  # predict's output, read back as it was
    (photo,) = store.photos()
    assert photo["item_id"] == FORMULA and photo["path"] == str((tmp_path / f"{FORMULA}.jpg").resolve())
    store.close()
    (tmp_path / "out").mkdir()
    export_reviewed(store.url, tmp_path / "out" / "reviewed.csv", include_pending=True)
    row = next(csv.DictReader((tmp_path / "out" / "reviewed.csv").open()))
    assert row["id"] == "'" + FORMULA and row["path"] == photo["path"]
    (tmp_path / "catalog.csv").write_text("id,gender\n1,Men\n")
    merged, ids = with_reviewed(read_catalog(tmp_path / "catalog.csv"), tmp_path / "out" / "reviewed.csv")
    assert ids == {FORMULA} and merged.photos[-1] == tmp_path / f"{FORMULA}.jpg"


# --------------------------------------------------------------- issue 21 #1: reviewed rows train, or it fails

def test_review_export_train_extra_round_trip_trains_every_reviewed_row(catalog, tmp_path):
    from fashiontag.training.train import train
    arrivals = tmp_path / "arrivals"  # the new photos: neither beside the catalog nor beside the export
    arrivals.mkdir()
    for n, (article, colour) in enumerate([("Tshirts", "Red"), ("Jeans", "Blue"), ("Watches", "Green"),
                                           ("Casual Shoes", "Black"), ("Tshirts", "Blue"), ("Jeans", "Red")]):
        # jittered, as the catalog's own: an arrival equal to a held-out photo would rightly be left out
        draw(article, colour, "Men" if n % 2 else "Women", rng=random.Random(700 + n)).save(arrivals / f"{7001 + n}.jpg")
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}")
    fill_queue(store, [str(arrivals)], engine="onnx")
    for p in store.photos():  # a person accepts every tag, as Enter on the page does
        store.review(p["id"], {t: {"label": tag["label"], "version": tag["version"]} for t, tag in p["tags"].items()},
                     "ann", confirm=True)
    store.close()
    (tmp_path / "exports").mkdir()
    reviewed = tmp_path / "exports" / "reviewed.csv"
    assert export_reviewed(store.url, reviewed)["written"] == 6
    ids = sorted(f"{7001 + n}" for n in range(6))

    run = tmp_path / "run"
    train(tiny_config(catalog.root, run, epochs=1, extra=(str(reviewed),)))
    assert json.loads((run / "split.json").read_text())["reviewed"] == ids
    data = load_dataset(catalog.root, split_path=run / "split.json", extra=(str(reviewed),), min_count=2,
                        progress=False)
    assert set(ids) <= {data.catalog.ids[i] for i in data.rows["train"]}

    # the export of old, without its path column: every row would be lost, so training refuses to start
    stale = tmp_path / "exports" / "stale.csv"
    stale.write_text("".join(line.rsplit(",", 1)[0] + "\n" for line in reviewed.read_text().splitlines()))
    result = CliRunner().invoke(cli, ["train", "--data", str(catalog.root), "--extra", str(stale), "--out",
                                      str(tmp_path / "run2"), "--epochs", "1", "--no-progress"])
    assert result.exit_code == 2, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert re.search(f"--extra {re.escape(str(stale))}: 6 of 6 reviewed rows have no usable photo \\(id 700[1-6]: "
                     f"{re.escape(str(stale.parent))}/images/700[1-6].jpg", error), result.output


def test_a_file_name_that_is_not_utf8_is_queued_as_an_error_and_the_rest_tagged(db_url, tmp_path, trained, catalog):
    """Issue 20 #7: one Latin-1 name ("caf\\xe9.jpg") among good photos stopped the whole review fill."""
    import os
    import shutil
    photos = tmp_path / "photos"
    photos.mkdir()
    good = sorted((catalog.root / "images").glob("1*.jpg"))[:4]
    for p in good:
        shutil.copy(p, photos / p.name)
    shutil.copy(good[0], os.fsdecode(os.fsencode(photos) + b"/caf\xe9.jpg"))
    store = ReviewStore(db_url)
    counts = fill_queue(store, [str(photos)], model=trained, engine="torch")
    assert counts["added"] == 5 and counts["errors"] == 1
    queued = {p["path"]: p for p in store.photos()}
    odd = queued[str(photos.resolve() / "caf\\xe9.jpg")]
    assert "not UTF-8" in odd["error"] and not odd["tags"]
    assert all(len(p["tags"]) == len(Tagger.load(trained).tasks) for path, p in queued.items() if p is not odd)


def test_a_model_giving_nan_queues_errors_not_null_confidences(tmp_path, trained, catalog):
    """Issue 20 #2: review crashed inserting NULL confidences from a damaged model."""
    from helpers import nan_model
    folder = nan_model(trained, tmp_path / "model")
    store = ReviewStore(f"sqlite:///{tmp_path / 'q.db'}")
    counts = fill_queue(store, [str(p) for p in sorted((catalog.root / "images").glob("1*.jpg"))[:5]],
                        model=folder, engine="torch")
    assert counts["added"] == counts["errors"] == 5
    assert all("NaN or infinite" in p["error"] and not p["tags"] for p in store.photos())
