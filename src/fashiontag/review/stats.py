"""How the auto-accept thresholds do on the shop's own photos, measured while the review queue runs.

A random share of the tags at or above their threshold is queued for a person all the same, marked as audits
(queue.fill_queue's audit_share). Per task, the audits a person decided are a random sample of the auto-accepted
tags: accepted ones were right, corrected ones wrong, and their share is the live precision of auto-accept, with a
95% Wilson interval. A task whose interval lies wholly below the precision its threshold promises
(model.json's threshold_precision) is "below its promise". Beside it: the share of the queue's tags at or above
their thresholds against the share of validation photos the thresholds accepted, and each reviewer's throughput.
Agreement: on the overlap photos (store.OVERLAP_SHARE of them, served blind to a second reviewer once a first had
decided them), per task the share of the second answers equal to the first, with their count.

`reviewed_tags` gives the tags people decided (not bulk-accepted unseen), with their confidence and whether the
model was right: what `fashiontag calibrate --reviews` fits thresholds on (refit.calibrate_from_reviews).
"""

from __future__ import annotations

import json

import numpy as np
from sqlalchemy import func, select

from fashiontag.inference.thresholds import precision_lower_bound, precision_upper_bound
from fashiontag.model_folder import PHOTO_ONLY
from fashiontag.review.store import REVIEWED, ReviewStore, actions, changes, opinions, photos, tags

# The actions whose tags a person looked at one by one: a photo's review, or a page of one task's tiles.
SEEN = ("review", "task_accept")
# A two-sided 95% interval: each bound holds with 97.5% confidence.
INTERVAL_Z = 1.96
CONDITIONS = {"": "with titles", PHOTO_ONLY: "photo alone"}


def _by_condition(model: dict, task: str, rows: list) -> dict[str, list]:
    """A task's tags by the record of the model that judged them (_record_key). Never empty: a task without tags
    gets the record its tags would most likely have been judged by."""
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(_record_key(model, task, r.titled, r.threshold), []).append(r)
    return groups or {_record_key(model, task, None, None): []}


def _record_key(model: dict, task: str, titled: bool | None, threshold: float | None) -> str:
    """Which record of the model ("" top level, "photo_only") judged a tag: a photo + title model's by whether its
    photo was tagged with its title, as the queue recorded it; where it did not (queued by a fashiontag from
    before), the record whose threshold the tag carries (the queue stores each tag's threshold), else photo alone:
    a queue's photos came without titles unless a loaded predict output had them."""
    if PHOTO_ONLY not in model:
        return ""
    if titled is not None:
        return "" if titled else PHOTO_ONLY
    for key in (PHOTO_ONLY, ""):
        given = (model[key] if key else model).get("thresholds", {}).get(task)
        if given is not None and threshold is not None and abs(float(given) - threshold) < 1e-9:
            return key
    return PHOTO_ONLY


def review_stats(store: ReviewStore, z: float = INTERVAL_Z) -> dict:
    """{tasks: {name: {...}}, reviewers: [...], below_promise: [names], audits_pending: n}. A name is the task's,
    or for a photo + title model whose queue holds the task's tags in both conditions, one per condition ("season
    (photo alone)"): each condition has its own thresholds and promise. Per task (and condition): task, promise
    (target precision), audits (decided audits), right, precision, low, high (Wilson, z), below_promise, pending
    (audits not decided yet), tags (the queue's tags), auto_share (share at or above their threshold),
    val_share (validation's coverage at the threshold, None where the queue did not record it), condition
    ("with titles"/"photo alone" for a photo + title model, else None). Reviewers: name, tags (decided one by one),
    bulk (accepted with "Accept all sure photos"), hours (clock hours with any action), per_hour. Agreement: per
    task answered twice, n, equal, share (_agreement)."""
    model = store.model() or {}
    task_list = list(model.get("tasks") or [])
    with store.engine.connect() as conn:
        rows = conn.execute(select(tags.c.task, tags.c.status, tags.c.audit, tags.c.confidence, tags.c.threshold,
                                   photos.c.titled).join(photos, photos.c.id == tags.c.photo_id)).all()
        done = []
        for record in (changes, opinions):  # a second look's answers are its opinions, any other action's its changes
            done += conn.execute(select(actions.c.reviewer, actions.c.kind, actions.c.at,
                                        func.count(record.c.action_id).label("n"))
                                 .join(record, record.c.action_id == actions.c.id)
                                 .where(actions.c.undone_by.is_(None), actions.c.kind != "undo")
                                 .group_by(actions.c.id, actions.c.reviewer, actions.c.kind, actions.c.at)).all()
        pairs = conn.execute(select(opinions.c.task, opinions.c.label, tags.c.label.label("first"))
                             .join(tags, (tags.c.photo_id == opinions.c.photo_id) & (tags.c.task == opinions.c.task))
                             .where(tags.c.status.in_(REVIEWED), tags.c.reviewer != opinions.c.reviewer)).all()
    by_task: dict[str, list] = {}
    for r in rows:
        by_task.setdefault(r.task, []).append(r)
    task_list += sorted(set(by_task) - set(task_list))
    out = {}
    for t in task_list:
        groups = _by_condition(model, t, by_task.get(t, []))
        for key, rs in groups.items():
            name = t if len(groups) == 1 else f"{t} ({CONDITIONS[key]})"
            out[name] = _measured(model, t, key, rs, z)
    return {"tasks": out, "reviewers": _throughput(done), "below_promise": [t for t, s in out.items()
                                                                            if s["below_promise"]],
            "audits_pending": sum(s["pending"] for s in out.values()), "z": z,
            "agreement": _agreement(pairs, task_list)}


def _measured(model: dict, task: str, key: str, rs: list, z: float) -> dict:
    """One task's tags judged by one record of the model (key): review_stats' figures for them."""
    audits = [r for r in rs if r.audit and r.status in REVIEWED]
    right = sum(r.status == "accepted" for r in audits)
    n = len(audits)
    record = model.get(key, {}) if key else model
    promise = record.get("threshold_precision", {}).get(task, model.get("threshold_precision", {}).get(task))
    val = (record.get("thresholds_val") or {}).get(task) or {}
    high = float(precision_upper_bound(right, n, z)) if n else None
    return {"task": task, "promise": float(promise) if promise is not None else None, "audits": n, "right": right,
            "precision": right / n if n else None, "low": float(precision_lower_bound(right, n, z)) if n else None,
            "high": high, "below_promise": bool(n and promise is not None and high < float(promise)),
            "pending": sum(bool(r.audit) and r.status not in REVIEWED for r in rs),
            "tags": len(rs), "auto_share": sum(r.confidence >= r.threshold for r in rs) / len(rs) if rs else None,
            "val_share": val.get("coverage"), "val_n": val.get("n"),
            "condition": CONDITIONS[key] if PHOTO_ONLY in model else None}


def _agreement(pairs, task_list: list[str]) -> dict:
    """Per task with any second answer: n (tags answered twice), equal (the second answer the first's), share."""
    out = {}
    for t in task_list:
        answers = [r.label == r.first for r in pairs if r.task == t]
        if answers:
            out[t] = {"n": len(answers), "equal": sum(answers), "share": sum(answers) / len(answers)}
    return out


def _throughput(done) -> list[dict]:
    """Per reviewer: tags decided one by one (second looks included), tags bulk-accepted, clock hours (UTC) with any
    action, tags decided per such hour."""
    people: dict[str, dict] = {}
    for r in done:
        p = people.setdefault(r.reviewer, {"reviewer": r.reviewer, "tags": 0, "bulk": 0, "hours": set()})
        p["bulk" if r.kind == "bulk_accept" else "tags"] += r.n
        p["hours"].add(r.at[:13])  # ISO time to the hour
    out = []
    for p in sorted(people.values(), key=lambda p: p["reviewer"]):
        hours = len(p["hours"])
        out.append({**p, "hours": hours, "per_hour": p["tags"] / hours if hours else None})
    return out


def reviewed_tags(store: ReviewStore) -> dict[str, dict[str, np.ndarray]]:
    """Per task, the tags a person decided (accepted or corrected in a review action; tags accepted unseen with
    "Accept all sure photos" are left out, as are undone decisions, and a catalog audit's tags, chosen because the
    model disagreed with the catalog, which would bias any precision fitted on them): confidence, correct (the
    model's label kept), audit (an audit tag), titled (judged as tagged with its title: _record_key), probs (N,
    K + 1: the confidences the queue keeps, the model's tag first and its runners-up after, 0 past them, and last
    what they leave of 1) and truth (where the label people settled on is in probs; the last column when it is
    none of the kept classes)."""
    model = store.model() or {}
    with store.engine.connect() as conn:
        last = (select(changes.c.photo_id, changes.c.task, func.max(changes.c.id).label("last"))
                .group_by(changes.c.photo_id, changes.c.task).subquery())
        rows = conn.execute(
            select(tags.c.task, tags.c.confidence, tags.c.status, tags.c.audit, photos.c.titled, tags.c.threshold,
                   tags.c.model_label, tags.c.runners_up, tags.c.label)
            .join(photos, photos.c.id == tags.c.photo_id)
            .join(last, (last.c.photo_id == tags.c.photo_id) & (last.c.task == tags.c.task))
            .join(changes, changes.c.id == last.c.last).join(actions, actions.c.id == changes.c.action_id)
            .where(tags.c.status.in_(REVIEWED), actions.c.kind.in_(SEEN), tags.c.catalog_label.is_(None))).all()
    out: dict[str, dict[str, list]] = {}
    for r in rows:
        d = out.setdefault(r.task, {"confidence": [], "correct": [], "audit": [], "titled": [], "kept": []})
        d["confidence"].append(r.confidence)
        d["correct"].append(r.status == "accepted")
        d["audit"].append(bool(r.audit))
        d["titled"].append(_record_key(model, r.task, r.titled, r.threshold) == "")
        d["kept"].append(([r.model_label, *(c for c, _ in json.loads(r.runners_up))],
                          [r.confidence, *(p for _, p in json.loads(r.runners_up))], r.label))
    return {t: {**{k: np.asarray(v, float if k == "confidence" else bool) for k, v in d.items() if k != "kept"},
                **_kept_probabilities(d["kept"])} for t, d in out.items()}


def _kept_probabilities(kept: list[tuple[list[str], list[float], str]]) -> dict[str, np.ndarray]:
    """probs and truth (reviewed_tags) from each tag's kept classes, their confidences and the settled label."""
    width = max(len(labels) for labels, _, _ in kept)
    probs, truth = np.zeros((len(kept), width + 1)), np.full(len(kept), width)
    for i, (labels, confidences, label) in enumerate(kept):
        probs[i, :len(confidences)] = confidences
        probs[i, width] = max(0.0, 1.0 - sum(confidences))
        if label in labels:
            truth[i] = labels.index(label)
    return {"probs": probs, "truth": truth}


def print_stats(stats: dict, file=None) -> None:
    """The stats as two readable tables (rich): per task, and per reviewer."""
    from rich.console import Console
    from rich.table import Table

    def pct(x):
        return "-" if x is None else f"{x:.1%}"
    conditions = {s["condition"] for s in stats["tasks"].values()} - {None}
    tasks = Table(title="Auto-accepted tags measured by audits (95% Wilson interval)")
    for name in ("task", "live precision", "interval", "audits", "pending", "promise", "", "auto-accepted",
                 "validation" + (" (condition)" if conditions else ""), "tags"):
        tasks.add_column(name, justify="left" if name in ("task", "") else "right")
    for t, s in stats["tasks"].items():
        tasks.add_row(t, pct(s["precision"]), f"{pct(s['low'])} - {pct(s['high'])}" if s["audits"] else "-",
                      str(s["audits"]), str(s["pending"]), pct(s["promise"]),
                      "[bold red]below its promise[/]" if s["below_promise"] else "", pct(s["auto_share"]),
                      pct(s["val_share"]) + (f" ({s['condition']})" if s["condition"] else ""), str(s["tags"]))
    people = Table(title="Reviewers")
    for name in ("reviewer", "tags decided", "bulk-accepted", "active hours", "tags / hour"):
        people.add_column(name, justify="left" if name == "reviewer" else "right")
    for p in stats["reviewers"]:
        people.add_row(p["reviewer"], str(p["tags"]), str(p["bulk"]), str(p["hours"]),
                       "-" if p["per_hour"] is None else f"{p['per_hour']:.0f}")
    console = Console(file=file, width=160)
    console.print(tasks)
    console.print(people if stats["reviewers"] else "no reviewer actions yet")
    if stats.get("agreement"):
        agree = Table(title="Agreement on photos two reviewers answered (the second blind)")
        for name in ("task", "equal answers", "of"):
            agree.add_column(name, justify="left" if name == "task" else "right")
        for t, a in stats["agreement"].items():
            agree.add_row(t, pct(a["share"]), str(a["n"]))
        console.print(agree)
    if stats["below_promise"]:
        console.print(f"[bold red]below its promise:[/] {', '.join(stats['below_promise'])}: the audited "
                      "precision's upper bound is under the target; recalibrate (`fashiontag calibrate --reviews`)")
