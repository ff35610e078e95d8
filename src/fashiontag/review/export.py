"""`fashiontag review export`: the reviewed tags back in the catalog's own schema (styles.csv's columns)."""

from __future__ import annotations

import csv
import os
from pathlib import Path, PurePath

from fashiontag.review.store import ReviewStore, StoreError


def export_reviewed(db: str, out: str | Path, include_pending: bool = False) -> dict:
    """Write one row per photo: the catalog's id column, then each of the model's tasks with its label as the
    queue holds it now, plus `path` when some photo's file name is not its id. A photo with a tag still needing
    review is left out unless include_pending (its model guesses are then written). The file appears whole or not
    at all. Returns counts: written, pending (left out or written unreviewed), failed (photos never tagged)."""
    store = ReviewStore(db)
    try:
        model = store.model()
        if model is None:
            raise StoreError(f"{db}: no review queue here (nothing was ever tagged into it)")
        items = store.photos()
    finally:
        store.close()
    tasks, id_column = model["tasks"], model.get("id_column", "id")
    tagged = [p for p in items if not p["error"]]
    pending = [p for p in tagged if any(t["status"] == "needs_review" for t in p["tags"].values())]
    rows = tagged if include_pending else [p for p in tagged if p not in pending]
    with_path = any(PurePath(p["path"]).stem != p["item_id"] for p in rows)
    columns = [id_column] + tasks + (["path"] if with_path else [])
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for p in rows:
            writer.writerow({id_column: p["item_id"], **{t: p["tags"][t]["label"] for t in tasks},
                             **({"path": p["path"]} if with_path else {})})
    os.replace(tmp, out)
    return {"written": len(rows), "pending": len(pending), "failed": len(items) - len(tagged)}
