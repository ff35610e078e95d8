"""Filling a review queue: photos tagged now (files and folders), a `predict` output (CSV, TSV, JSON lines) loaded
as it is, or a catalog audit (`fashiontag audit`'s audit.csv: one product per item, its flagged tasks to review
with the catalog's label beside the model's suggestion), each photo's tags stored with their runners-up and
thresholds.

The queue records the folders its photos come from (the folders given, or the predict output's folder, plus any
`roots`), and the review page is served photo files from inside those only: a symlink in a photo folder or a path
in a loaded file that leads elsewhere (`/etc/shadow`) is skipped here, and refused again when served."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import random
from pathlib import Path
from typing import Iterable, Iterator

from fashiontag.data.photos import Problems, iter_image_paths
from fashiontag.data.spreadsheet import restored
from fashiontag.inference.predict import FORMATS, Photo, printable, tag_results
from fashiontag.inference.tagger import PhotoResult, Tagger, check_options
from fashiontag.model_folder import MULTI, PHOTO_ONLY, ModelFolder
from fashiontag.review.store import OVERLAP_SHARE, ReviewStore

# Runners-up kept per tag: keys 1-9 on the page take one.
TOP_K = 10
DB_SUFFIX = ".review.db"
# The share of auto-accepted tags queued for a person all the same (audits): what measures the thresholds' promise
# on the shop's own photos (review/stats.py).
AUDIT_SHARE = 0.02
# The columns that tell a catalog audit (training/audit.py's audit.csv) from a predict output.
AUDIT_COLUMNS = ("catalog_label", "suggested_label")


def default_db(paths: list[str]) -> str:
    """SQLite beside the photos' list: tags.csv -> tags.review.db, photos/ -> photos.review.db."""
    first = Path(paths[0]).resolve()
    name = (first.stem if first.is_file() else first.name) + DB_SUFFIX
    return f"sqlite:///{first.with_name(name)}"


def model_record(model: ModelFolder) -> dict:
    """What the queue keeps of the model (see ReviewStore.set_model), with what its thresholds promise and the
    share of validation photos they accepted (thresholds_val's threshold, coverage, n per task) for review stats,
    and the temperatures its confidences came from (calibrate --reviews refits on top of those): under
    "photo_only" the same for the photo alone, for a photo + title model."""
    meta, hierarchy = model.record, model.hierarchy

    def promise(m: dict) -> dict:
        return {"temperatures": m.get("temperatures", {}),
                "thresholds": m.get("thresholds", {}), "threshold_precision": m.get("threshold_precision", {}),
                "thresholds_val": {t: {k: v for k, v in c.items() if k in ("threshold", "coverage", "n")}
                                   for t, c in (m.get("thresholds_val") or {}).items() if isinstance(c, dict)}}

    photo_only = meta.get(PHOTO_ONLY)
    return {"version": model.version[:12], "tasks": model.tasks, "vocabs": model.vocabs,
            "hierarchy": {"tasks": hierarchy[0], "combinations": hierarchy[1]} if hierarchy else None,
            **promise(meta), "id_column": model.catalog.get("id_column") or "id", "titles": model.takes_titles,
            **({PHOTO_ONLY: promise({**meta, **photo_only})} if isinstance(photo_only, dict) else {})}


def audit_draws(path: str, tasks: Iterable[str], share: float) -> set[str]:
    """The tasks of a photo whose tag is audited (if auto-accepted): each with probability `share`, drawn from a
    generator seeded by the photo's path, so filling the same photos again draws the same."""
    if share <= 0:
        return set()
    rng = random.Random(int.from_bytes(hashlib.sha256(path.encode("utf-8", "surrogatepass")).digest()[:8], "big"))
    return {t for t in tasks if rng.random() < share}


def mark_audits(items: list[dict], share: float) -> int:
    """Mark the drawn auto-accepted tags of items (audit_draws) as audits; returns how many. A catalog audit's tags
    are none of them: they need review anyway, and were picked for disagreeing, no random sample of the sure tags."""
    marked = 0
    for item in items:
        drawn = audit_draws(item["path"], item["tags"], share)
        for t, tag in item["tags"].items():
            if t in drawn and tag["confidence"] >= tag["threshold"] and not tag.get("catalog_label"):
                tag["audit"] = True
                marked += 1
    return marked


def is_tag_list(path: str) -> bool:
    return Path(path).suffix.lower() in FORMATS and Path(path).is_file()


def photo_roots(paths: list[str]) -> list[str]:
    """The folders a queue filled from `paths` serves photos from: each folder given and the folder of each file
    given (a tag list's too), resolved."""
    return [str(p.resolve() if p.is_dir() else p.absolute().parent.resolve()) for p in map(Path, paths)
            if p.exists()]


def within(real: Path, roots: list[str]) -> bool:
    """Whether a resolved path lies inside one of the roots."""
    return any(real.is_relative_to(root) for root in roots)


class RowRefused(ValueError):
    """A row of a tag list that cannot be queued; the others can."""


def read_tag_list(path: Path) -> Iterator[tuple[int, dict]]:
    """The rows of a `predict` output file, by its extension, each with its line number. CSV and TSV cells are
    taken back as predict wrote them before making them safe for spreadsheets."""
    with open(path, newline="", encoding="utf-8") as f:
        if FORMATS[path.suffix.lower()] == "jsonl":
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}, line {n}: not JSON ({e.msg})") from None
        else:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            for row in reader:
                yield reader.line_num, {k: restored(v) if isinstance(v, str) else v for k, v in row.items()}


def _confidence(row: dict, column: str) -> float:
    try:
        value = float(row[column])
    except (KeyError, TypeError, ValueError):
        raise RowRefused(f"{column} {row.get(column)!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise RowRefused(f"{column} {value} is not a confidence between 0 and 1")
    return value


def queue_item(row: dict, vocabs: dict[str, list[str]], thresholds: dict[str, float], base: Path,
               separators: dict[str, str] | None = None) -> dict:
    """A predict row (path, id, <task>, <task>_confidence, <task>_topN[_confidence], error) as the store takes it.
    A relative path is taken from the working folder, else from the tag list's folder. A row without a path, or
    whose labels (runners-up too) are not the model's classes, is refused (RowRefused): review would show them as
    choices and export would write them into the training catalog. separators: multi-label task -> the separator
    joining its labels (none held is a label too)."""
    if not isinstance(row, dict):
        raise RowRefused("not a JSON object")
    if not isinstance(row.get("path"), str) or not row["path"]:
        raise RowRefused("no path")
    path = Path(row["path"])
    if not path.is_absolute() and not path.exists():
        path = base / path
    error = row.get("error") or ""
    tags = {}
    if not error:
        for t, classes in vocabs.items():
            separator = (separators or {}).get(t)
            label = row.get(t)
            if label is None or (label == "" and not separator):
                raise RowRefused(f"no {t} label")
            runners = [(row[f"{t}_top{r}"], _confidence(row, f"{t}_top{r}_confidence"))
                       for r in range(2, TOP_K + 1) if row.get(f"{t}_top{r}")]
            held = (label.split(separator) if label else []) if separator and isinstance(label, str) else [label]
            unknown = [c for c in [*held, *(c for c, _ in runners)] if c not in classes]
            if unknown:
                raise RowRefused(f"{t} {unknown[0]!r} is not one of the model's classes")
            tags[t] = {"label": row[t], "confidence": _confidence(row, f"{t}_confidence"), "runners_up": runners,
                       "threshold": thresholds[t]}
    return {"path": str(path.resolve()), "item_id": str(row.get("id") or path.stem), "error": str(error),
            "tags": tags}


def is_audit(row: object) -> bool:
    """Whether a row read by read_tag_list comes from a catalog audit: its file has the audit's label columns."""
    return isinstance(row, dict) and all(c in row for c in AUDIT_COLUMNS)


def _listed(text: str) -> dict[str, float]:
    """An audit's runners_up cell, "label p; label p; ...", as {label: p}."""
    out = {}
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        label, _, value = part.rpartition(" ")
        try:
            p = float(value)
        except ValueError:
            p = math.nan
        if not label or not 0.0 <= p <= 1.0:
            raise RowRefused(f"runners_up {part!r} is not a label and its probability")
        out[label] = p
    return out


def audit_item(row: dict, vocabs: dict[str, list[str]], thresholds: dict[str, float], base: Path) -> dict:
    """One row of a catalog audit (id, task, catalog_label, suggested_label, score, path, title, runners_up) as the
    store takes it: its product's photo with the one task, read by queue_item as a predict row of that task alone.
    The model's suggestion is the tag's label, with its probability as the confidence (0 where the audit does not
    list it among its runners-up: unknown, so it sorts as least sure), the catalog's label its `catalog_label`, and
    the other classes listed its runners-up, the catalog's among them at 1 - score (unlisted where the score is
    blank: audit-titles.csv, whose suggestion is the class the title names). A row whose task the model
    lacks, whose labels are not its classes, whose numbers are not probabilities or whose photo is missing is
    refused (RowRefused)."""
    if not isinstance(row, dict):
        raise RowRefused("not a JSON object")
    task, catalog, suggested = row.get("task"), row.get("catalog_label"), row.get("suggested_label")
    if task not in vocabs:
        raise RowRefused(f"task {task!r} is not one of the model's ({', '.join(vocabs)})")
    if not catalog or not suggested:
        raise RowRefused(f"no {'catalog_label' if not catalog else 'suggested_label'}")
    if catalog not in vocabs[task]:
        raise RowRefused(f"{task} {catalog!r} is not one of the model's classes")
    if catalog == suggested:
        raise RowRefused(f"the suggested {task} is the catalog's own ({catalog!r}): nothing to review")
    listed = _listed(row.get("runners_up"))
    if row.get("score") not in (None, ""):  # blank: no model scored the label (audit-titles.csv)
        listed.setdefault(catalog, round(1.0 - _confidence(row, "score"), 4))
    runners = sorted(((c, p) for c, p in listed.items() if c != suggested), key=lambda cp: -cp[1])[:TOP_K - 1]
    predicted = {"path": row.get("path"), "id": row.get("id"), task: suggested,
                 f"{task}_confidence": listed.get(suggested, 0.0),
                 **{k: v for r, (c, p) in enumerate(runners, start=2)
                    for k, v in ((f"{task}_top{r}", c), (f"{task}_top{r}_confidence", p))}}
    item = queue_item(predicted, {task: vocabs[task]}, thresholds, base)
    if not Path(item["path"]).is_file():
        raise RowRefused(f"no photo at {item['path']}")
    item["tags"][task]["catalog_label"] = catalog
    return item


def add_to_product(products: dict[str, dict], item: dict) -> None:
    """Merge one audit row's item into its product's (by id): one review item per product, with every task flagged.
    The same id with another photo, or a task listed twice, is refused (RowRefused)."""
    known = products.setdefault(item["item_id"], {**item, "tags": {}})
    if known["path"] != item["path"]:
        raise RowRefused(f"id {item['item_id']} was listed with another photo ({known['path']})")
    (task, tag), = item["tags"].items()
    if task in known["tags"]:
        raise RowRefused(f"{task} of id {item['item_id']} is listed twice")
    known["tags"][task] = tag


def result_item(path: Path, result: PhotoResult) -> dict:
    """A photo tagged now (its tags judged by the tagger's thresholds, or min_confidence) as the store takes it,
    confidences to 4 places as in a tag list."""
    tags = {t: {"label": tag.label, "confidence": round(tag.confidence, 4),
                "runners_up": [(label, round(c, 4)) for label, c in tag.runners_up[:TOP_K - 1]],
                "threshold": tag.threshold} for t, tag in result.tags.items()}
    return {"path": str(path.resolve()), "item_id": path.stem, "error": result.error, "tags": tags, "titled": False}


def fill_queue(store: ReviewStore, paths: Iterable[str], model: str | Path | None = None,
               min_confidence: float | None = None, engine: str = "onnx", roots: Iterable[str] = (),
               audit_share: float = AUDIT_SHARE, overlap_share: float = OVERLAP_SHARE) -> dict:
    """Add to the queue the photos under `paths` that it does not hold yet (tagging them now), or the rows of
    one predict output or catalog audit file (told apart by the audit's columns, AUDIT_COLUMNS: see audit_item and
    add_to_product). min_confidence replaces the model's thresholds. roots: more folders that photos may come from
    (a predict output's or an audit's photos elsewhere than its own folder, such as the catalog's images/;
    symlinked photos' folders). A photo outside the queue's folders, or a row of a file that cannot be queued, is
    skipped with a warning naming it.
    audit_share: the share of auto-accepted tags of the photos added that is queued for review all the same, marked
    as audits (audit_draws). overlap_share: the share of photos served to a second reviewer, blind
    (ReviewStore.add_photos). Thresholds: a photo + title model's photos are judged by the record of what they came
    with (a loaded row with a title by model.json's top level, else by its photo_only record), as Tagger does, and
    each photo records which (titled), for `calibrate --reviews`. Returns counts: added, queued (photos in the queue
    now), errors (photos added that could not be read), missing (paths), skipped (photos and rows), audits (tags of
    the photos added marked as audits)."""
    check_options(1, min_confidence)
    if not (math.isfinite(audit_share) and 0.0 <= audit_share <= 1.0):
        raise ValueError(f"--audit-share {audit_share}: a share between 0 and 1")
    paths = [str(p) for p in paths]
    extra_roots = [Path(r) for r in roots]
    for r in extra_roots:
        if not r.is_dir():
            raise ValueError(f"--root {r}: no such folder")
    folder = ModelFolder.open(model)
    store.set_model(model_record(folder))
    vocabs = folder.vocabs
    separators = {t: folder.separator for t, kind in folder.kinds.items() if kind == MULTI}
    thresholds, photo_thresholds = ({t: c.thresholds[t] if min_confidence is None else min_confidence for t in vocabs}
                                    for c in (folder.calibration, folder.photo_alone))
    problems = Problems()
    known = store.known_paths()
    allowed = store.add_roots(photo_roots(paths) + [str(r.resolve()) for r in extra_roots])
    skipped = 0

    def outside(shown: str, real: Path) -> bool:
        nonlocal skipped
        if within(real, allowed):
            return False
        skipped += 1
        problems.warn(f"{shown}: the photo lies outside the folders this review serves ({', '.join(allowed)}); "
                      f"skipped (--root {real.parent} would serve its folder)")
        return True

    items = []
    if len(paths) == 1 and is_tag_list(paths[0]):
        tag_list = Path(paths[0])
        rows = read_tag_list(tag_list)
        first = next(rows, None)
        from_audit = first is not None and is_audit(first[1])
        products: dict[str, dict] = {}
        for line, row in itertools.chain([first] if first else [], rows):
            # A file of another model's tags is refused whole: every row of it would be.
            if not from_audit and isinstance(row, dict) and not row.get("error") and (
                    missing := [t for t in vocabs if t not in row]):
                raise ValueError(f"{tag_list}, line {line}: no {', '.join(missing)} column: tag it with this "
                                 f"model (its tasks: {', '.join(vocabs)})")
            # A row with a title was tagged with it (predict --data), where the model reads titles.
            titled = folder.takes_titles and isinstance(row, dict) and bool(row.get("title"))
            chosen = thresholds if titled else photo_thresholds
            try:
                if from_audit:
                    item = {**audit_item(row, vocabs, chosen, tag_list.parent), "titled": titled}
                    if not outside(f"{tag_list}, line {line}", Path(item["path"])):
                        add_to_product(products, item)
                    continue
                item = {**queue_item(row, vocabs, chosen, tag_list.parent, separators), "titled": titled}
            except RowRefused as e:
                skipped += 1
                problems.warn(f"{tag_list}, line {line}: {e}; skipped")
                continue
            if not outside(f"{tag_list}, line {line}", Path(item["path"])):
                items.append(item)
        items += products.values()
    else:
        # A missing path is reported as missing, not as outside.
        todo = [p for p in iter_image_paths(paths, problems)
                if str(p.resolve()) not in known and (not p.exists() or not outside(str(p), p.resolve()))]
        # A file name that is not UTF-8 (a Latin-1 "café.jpg") no database text column can hold: queued as an error
        # under its escaped name (predict.printable), so a person sees it and renames it; the rest are tagged.
        unnamed = [p for p in todo if printable(str(p)) != str(p)]
        todo = [p for p in todo if p not in unnamed]
        tagger = Tagger.load(folder, engine=engine)
        items = [result_item(photo.path, result) for photo, result in
                 tag_results(tagger, map(Photo, todo), top_k=TOP_K, min_confidence=min_confidence)] if todo else []
        items += [{"path": printable(str(p.resolve())), "item_id": printable(p.stem), "tags": {},
                   "error": "the file name is not UTF-8: rename the file to review it"} for p in unnamed]
    audits = mark_audits([i for i in items if i["path"] not in known], audit_share)
    added = store.add_photos(items, overlap_share)
    return {"added": added, "queued": len(known) + added, "errors": sum(bool(i["error"]) for i in items),
            "missing": len(problems.missing), "skipped": skipped, "audits": audits}
