"""Filling a review queue: photos tagged now (files and folders) or a `predict` output (CSV, TSV, JSON lines)
loaded as it is, each photo's tags stored with their runners-up and thresholds."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable, Iterator

from fashiontag.model_meta import hierarchy_of, load_meta, model_folder, model_version
from fashiontag.predict import FORMATS, Problems, iter_image_paths, tag_paths
from fashiontag.review.store import ReviewStore
from fashiontag.tagger import Tagger, check_options

# Runners-up kept per tag: keys 1-9 on the page take one.
TOP_K = 10
DB_SUFFIX = ".review.db"


def default_db(paths: list[str]) -> str:
    """SQLite beside the photos' list: tags.csv -> tags.review.db, photos/ -> photos.review.db."""
    first = Path(paths[0]).resolve()
    name = (first.stem if first.is_file() else first.name) + DB_SUFFIX
    return f"sqlite:///{first.with_name(name)}"


def model_record(meta: dict, folder: Path) -> dict:
    """What the queue keeps of the model (see ReviewStore.set_model)."""
    hierarchy = hierarchy_of(meta)
    return {"version": model_version(folder)[:12], "tasks": list(meta["vocabs"]), "vocabs": meta["vocabs"],
            "hierarchy": {"tasks": hierarchy[0], "combinations": hierarchy[1]} if hierarchy else None,
            "thresholds": meta.get("thresholds", {}), "id_column": meta.get("catalog", {}).get("id_column") or "id"}


def is_tag_list(path: str) -> bool:
    return Path(path).suffix.lower() in FORMATS and Path(path).is_file()


def read_tag_list(path: Path) -> Iterator[dict]:
    """The rows of a `predict` output file, by its extension."""
    with open(path, newline="", encoding="utf-8") as f:
        if FORMATS[path.suffix.lower()] == "jsonl":
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}, line {n}: not JSON ({e.msg})") from None
        else:
            yield from csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")


def queue_item(row: dict, tasks: list[str], thresholds: dict[str, float], base: Path) -> dict:
    """A predict row (path, id, <task>, <task>_confidence, <task>_topN[_confidence], error) as the store takes it.
    A relative path is taken from the working folder, else from the tag list's folder."""
    path = Path(row["path"])
    if not path.is_absolute() and not path.exists():
        path = base / path
    error = row.get("error") or ""
    tags = {}
    if not error:
        for t in tasks:
            if not row.get(t):
                raise ValueError(f"{row['path']}: no {t} column: tag it with this model (its tasks: "
                                 f"{', '.join(tasks)})")
            runners = [(row[f"{t}_top{r}"], float(row[f"{t}_top{r}_confidence"]))
                       for r in range(2, TOP_K + 1) if row.get(f"{t}_top{r}")]
            tags[t] = {"label": row[t], "confidence": float(row[f"{t}_confidence"]), "runners_up": runners,
                       "threshold": thresholds[t]}
    return {"path": str(path.resolve()), "item_id": str(row.get("id") or path.stem), "error": error, "tags": tags}


def fill_queue(store: ReviewStore, paths: Iterable[str], model: str | Path | None = None,
               min_confidence: float | None = None, engine: str = "onnx") -> dict:
    """Add to the queue the photos under `paths` that it does not hold yet (tagging them now), or the rows of
    one predict output file. min_confidence replaces the model's thresholds. Returns counts: added, queued (photos
    in the queue now), errors (photos added that could not be read), missing (paths)."""
    check_options(1, min_confidence)
    paths = [str(p) for p in paths]
    folder = model_folder(model)
    meta = load_meta(folder)
    store.set_model(model_record(meta, folder))
    tasks = list(meta["vocabs"])
    thresholds = {t: float(meta.get("thresholds", {}).get(t, 0.0)) if min_confidence is None else min_confidence
                  for t in tasks}
    problems = Problems()
    known = store.known_paths()
    if len(paths) == 1 and is_tag_list(paths[0]):
        tag_list = Path(paths[0])
        rows: Iterable[dict] = read_tag_list(tag_list)
        base = tag_list.parent
    else:
        todo = [p for p in iter_image_paths(paths, problems) if str(p.resolve()) not in known]
        tagger = Tagger.load(folder, engine=engine)
        rows = tag_paths(tagger, todo, top_k=TOP_K, min_confidence=min_confidence, problems=problems) if todo else []
        base = Path.cwd()
    items = [queue_item(r, tasks, thresholds, base) for r in rows]
    added = store.add_photos(items)
    return {"added": added, "queued": len(known) + added, "errors": sum(bool(i["error"]) for i in items),
            "missing": len(problems.missing)}
