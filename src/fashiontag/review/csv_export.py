"""`fashiontag review export`: the reviewed tags back in the catalog's own schema (styles.csv's columns)."""

from __future__ import annotations

import csv
from pathlib import Path

from fashiontag.atomic import replacing
from fashiontag.data.spreadsheet import inert_row
from fashiontag.inference.predict import check_out
from fashiontag.review.store import ReviewStore, StoreError


def export_reviewed(db: str, out: str | Path, *, include_pending: bool = False, force: bool = False) -> dict:
    """Write one row per photo: the catalog's id column, then each of the model's tasks with its label as the
    queue holds it now, then `path`, the photo's absolute path (`train --extra` finds each photo by it, wherever
    the file is written). A photo with a tag still needing review is left out unless include_pending (its model
    guesses are then written). Text cells are made safe to open in a spreadsheet (spreadsheet.py).

    A catalog audit queues only the tasks it flagged: a task no written photo holds has no column (`train --extra`
    keeps the catalog's labels of a column the file lacks), and a product's cell of a task it was not flagged on is
    left empty.

    The file appears whole or not at all; an existing one is replaced only with force, and a database that holds
    no review queue is an error, never created. Returns counts: written, pending (left out or written
    unreviewed), failed (photos never tagged)."""
    check_out(str(out))
    out = Path(out)
    if out.exists() and not force:
        raise ValueError(f"--out {out} exists: pass --force to replace it")
    store = ReviewStore(db, create=False)
    try:
        model = store.model()
        if model is None:
            raise StoreError(f"{db}: no review queue here (nothing was ever tagged into it)")
        items = store.photos()
    finally:
        store.close()
    tasks, id_column = model["tasks"], model.get("id_column", "id")
    tagged = [p for p in items if not p["error"]]
    pending = {p["id"] for p in tagged if any(t["status"] == "needs_review" for t in p["tags"].values())}
    rows = tagged if include_pending else [p for p in tagged if p["id"] not in pending]
    held = [t for t in tasks if any(t in p["tags"] for p in rows)] if rows else tasks
    try:
        with replacing(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=[id_column, *held, "path"])
            writer.writeheader()
            for p in rows:
                writer.writerow(inert_row({id_column: p["item_id"], **{t: p["tags"][t]["label"] for t in held
                                                                       if t in p["tags"]}, "path": p["path"]}))
    except OSError as e:
        raise ValueError(f"--out {out}: cannot be written ({e.strerror or e})") from None
    return {"written": len(rows), "pending": len(pending), "failed": len(items) - len(tagged)}
