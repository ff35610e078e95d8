"""Catalog audit: which of the labels already in a catalog are likely wrong (issue 24).

A label is judged by a model that did not learn it: on a catalog the model was not trained on, its predictions for
every row; on the model's own catalog, its predictions for the sides of its split it never trained on (validation
and test), and cross-fitted ones for its training side (training/crossfit.py: heads refit per fold on the network's
features), since on its training photos it has learnt the catalog's labels, wrong ones included. cleanlab ranks the
labels from those probabilities; a multi-label task's classes are each a label of their own (has it or not).

    from fashiontag.training.audit import audit
    result = audit("path/to/catalog", side="all")
    result.to_csv("audit.csv")
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fashiontag.atomic import replacing
from fashiontag.data.spreadsheet import inert_row
from fashiontag.data.text import ClassNames, name_spans
from fashiontag.data.vocab import OTHER, split_values
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import MULTI
from fashiontag.training.crossfit import FOLDS, CrossFit, cross_fit, model_outputs
from fashiontag.training.evaluate import is_own_catalog, model_dataset, rows_to_score

COLUMNS = ["id", "task", "catalog_label", "suggested_label", "score", "path", "title", "runners_up", "cleanlab_issue"]
LEVELS = (0.5, 0.8, 0.95)
# cleanlab's label quality "self_confidence" is p(label), so a score (1 - quality) of 0.5 or more means the model
# gives the catalog's label less than even odds. On planted errors it found more than cleanlab's
# "normalized_margin" and "confidence_weighted_entropy" (benchmarks/audit.py): those also raise labels the model
# is merely unsure between, which the catalog has many of (colours).
METHOD = "self_confidence"
RUNNERS_UP = 3
PAIRS = 5  # label / title pairs per task in the report
# Which rows each side scores on the model's own catalog, and how: by the model, or cross-fitted.
SIDES = ("unseen", "val", "test", "train", "all")


@dataclass
class Flag:
    """One label of one product that the model disagrees with."""
    id: str
    task: str
    catalog_label: str
    suggested_label: str
    score: float              # 1 - cleanlab's label quality: 0.5 and more, the label has under even odds
    path: str
    title: str
    runners_up: str           # the model's most probable classes, "label p; label p; ..."
    cleanlab_issue: bool      # cleanlab.filter.find_label_issues flags it (confident learning)

    def row(self) -> dict:
        return {c: round(self.score, 4) if c == "score" else getattr(self, c) for c in COLUMNS}


@dataclass
class TaskScores:
    """Every scored label of one task: catalog rows, their scores and cleanlab's verdicts, in row order."""
    rows: np.ndarray          # catalog row positions
    labels: np.ndarray        # the catalog's class indices
    suggested: np.ndarray     # the model's class indices (never the catalog's own: its best other class then)
    score: np.ndarray
    issue: np.ndarray         # bool
    classes: np.ndarray | None = None  # multi-label: the class each label is about (labels then 0/1: has it or not)


@dataclass
class Audit:
    flags: list[Flag]                              # grouped by product, most likely wrong product first
    scores: dict[str, TaskScores]                  # per task, every label scored (for benchmarks and notebooks)
    summary: dict[str, dict]                       # per task: scored, unknown, flagged at LEVELS, cleanlab
    duplicates: list[dict]                         # exact-duplicate photos whose labels disagree
    titles: list[dict]                             # labels their own title contradicts (COLUMNS, no score)
    scope: str                                     # which rows were scored and why
    ids: list[str]                                 # the catalog's ids by row: TaskScores.rows index them
    notes: list[str] = field(default_factory=list)
    crossfit: CrossFit | None = None               # the rows cross-fitted, and which fold's heads scored each

    def to_csv(self, path: str | Path) -> None:
        """The flags, most likely wrong first, as spreadsheet-safe CSV, written atomically."""
        def write(f):
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(inert_row(flag.row()) for flag in self.flags)
        _atomically(Path(path), write)

    def to_markdown(self, top: int = 20) -> str:
        lines = ["# Catalog audit", "", (f"Scored: {self.scope}. Score = 1 - cleanlab's label quality "
                 f"({METHOD}: 1 - the model's probability of the catalog's label); 0.5 and more: under even odds."), "",
                 "| task | labels scored | not the model's classes | score >= 0.5 | >= 0.8 | >= 0.95 | cleanlab issues |",
                 "|---|---|---|---|---|---|---|"]
        for t, s in self.summary.items():
            lines.append(f"| {t} | {s['scored']:,} | {s['unknown']:,} | " + " | ".join(
                f"{s[f'at_{x}']:,}" for x in LEVELS) + f" | {s['cleanlab']:,} |")
        lines += [f"- {n}" for n in self.notes]
        products = _products(self.flags)[:top]
        lines += ["", f"## The {len(products)} products most likely mislabelled", "",
                  "| id | task | catalog | suggested | score | title |", "|---|---|---|---|---|---|"]
        for flags in products:
            for f in flags:
                lines.append(f"| {_md(f.id)} | {f.task} | {_md(f.catalog_label)} | {_md(f.suggested_label)} | "
                             f"{f.score:.3f} | {_md(f.title)} |")
        lines += ["", f"## Identical photos with different labels: {len(self.duplicates):,} groups", ""]
        for g in self.duplicates[:50]:
            lines.append(f"- {', '.join(g['ids'])}: " + "; ".join(
                f"{t} {' / '.join(sorted(set(v)))}" for t, v in g["labels"].items()))
        lines += ["", f"## Labels their own title contradicts: {len(self.titles):,}", "",
                  (f"The title names one class of the task and the label is another: the {PAIRS} most common pairs "
                   "per task; every product is in the titles CSV."), "",
                  "| task | label | the title names | products | e.g. |", "|---|---|---|---|---|"]
        pairs = Counter((c["task"], c["catalog_label"], c["suggested_label"]) for c in self.titles)
        example = {(c["task"], c["catalog_label"], c["suggested_label"]): c for c in reversed(self.titles)}
        for t in self.summary:
            for key, n in sorted(((k, n) for k, n in pairs.items() if k[0] == t), key=lambda kn: -kn[1])[:PAIRS]:
                e = example[key]
                lines.append(f"| {t} | {_md(key[1])} | {_md(key[2])} | {n:,} | {_md(e['id'])}: {_md(e['title'])} |")
        return "\n".join(lines) + "\n"

    def write_report(self, path: str | Path) -> None:
        _atomically(Path(path), lambda f: f.write(self.to_markdown()))

    def titles_to_csv(self, path: str | Path) -> None:
        """The labels their own title contradicts in audit.csv's columns, the class the title names as the
        suggestion and score, runners-up and cleanlab's verdict blank (no model judged them), so that `fashiontag
        review` queues them as it queues the flags."""
        def write(f):
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(inert_row(c) for c in self.titles)
        _atomically(Path(path), write)

    def save(self, csv_path: str | Path) -> tuple[Path, Path]:
        """The flags to csv_path, the labels their title contradicts to <its stem>-titles.csv and the report to
        audit.md beside it; returns the report's path and the titles CSV's."""
        csv_path = Path(csv_path)
        report = csv_path.with_name("audit.md" if csv_path.name != "audit.md" else "audit.report.md")
        titles = csv_path.with_name(f"{csv_path.stem}-titles.csv")
        self.to_csv(csv_path)
        self.titles_to_csv(titles)
        self.write_report(report)
        return report, titles


def audit(catalog: str | Path, *, model: str | Path | Tagger | None = None, tasks: tuple[str, ...] | None = None,
          side: str = "unseen", cache_dir: str | None = None, progress: bool = True, titles: bool = True,
          min_score: float = 0.5, folds: int = FOLDS) -> Audit:
    """Score every label of `catalog` from predictions that did not see it, for each task (default: all the
    model's), and flag those scoring min_score or more or that cleanlab finds; see the module's docstring.

    side, on the model's own catalog (another catalog is scored whole by the model): "unseen" (default: validation
    and test), "val", "test", scored by the model; "train", cross-fitted in `folds` folds; "all", both. A flag's
    product also lists its other flagged tasks (a wrong articleType drags subCategory)."""
    if side not in SIDES:
        raise ValueError(f"side {side!r}: use {', '.join(SIDES)}")
    tagger = model if isinstance(model, Tagger) else Tagger.load(model)
    chosen_tasks = _check_tasks(tasks, tagger)
    ds = model_dataset(tagger, catalog, cache_dir, progress)
    by_model, fitted, scope = _rows_to_audit(ds, side)
    rows = np.concatenate([by_model, fitted])
    if len(rows) == 0:
        raise ValueError(f"{catalog}: no usable photos to audit")
    with_titles = titles and tagger.tokenizer is not None
    outputs = model_outputs(tagger, ds.cache.pixels, ds.catalog.titles if with_titles else None, rows)
    probs = {t: p[:len(by_model)] for t, p in outputs.probs.items()}
    suggested = tagger.choose(probs)
    crossfit = None
    if len(fitted):
        crossfit = _cross_fitted(tagger, ds, chosen_tasks, fitted, outputs.features[len(by_model):], folds)
        chosen = tagger.choose(crossfit.probs)
        probs = {t: np.concatenate([probs[t], crossfit.probs[t]]) for t in crossfit.probs}
        suggested = {t: np.concatenate([suggested[t], chosen[t]]) for t in chosen}
    scores, summary = {}, {}
    for t in chosen_tasks:
        labels = ds.targets[t][rows]
        known = (labels.min(1) if labels.ndim == 2 else labels) >= 0
        known &= np.isfinite(probs[t]).all(1)
        if not known.any():
            seen = sorted({ds.catalog.columns[t][i] for i in rows} - {""})[:5]
            raise ValueError(f"{ds.catalog.source}: none of its {t} labels are classes of the model "
                             f"(e.g. {', '.join(map(repr, seen))}; the model's: {', '.join(tagger.vocabs[t][:5])}, ...); "
                             "leave the task out with --tasks")
        scores[t] = (score_classes(labels[known], probs[t][known], rows[known]) if tagger.kinds[t] == MULTI else
                     score_labels(labels[known], probs[t][known], suggested[t][known], tagger.vocabs[t], rows[known]))
        summary[t] = summarise(scores[t], unknown=int((~known).sum()))
    by_row = {t: dict(zip(rows.tolist(), probs[t])) for t in scores}
    flags = _flags(ds, scores, by_row, tagger.vocabs, min_score)
    return Audit(flags, scores, summary, duplicate_disagreements(ds, tuple(scores)),
                 title_contradictions(ds, [t for t in scores if tagger.kinds[t] != MULTI], tagger.vocabs),
                 scope + ("; with their titles" if with_titles else ""), ds.catalog.ids,
                 [f"{t}: multi-label, one label per product and class (has it or not)"
                  for t in chosen_tasks if tagger.kinds[t] == MULTI], crossfit)


def _rows_to_audit(ds, side: str) -> tuple[np.ndarray, np.ndarray, str]:
    """The rows the model scores itself, the rows to cross-fit, and what they are."""
    if not is_own_catalog(ds) or side in ("unseen", "val", "test"):
        rows, scope = rows_to_score(ds, side if side in ("unseen", "val", "test") else "unseen")
        return rows, np.zeros(0, int), f"{len(rows):,} products, {scope}"
    by_model = np.union1d(ds.rows["val"], ds.rows["test"]) if side == "all" else np.zeros(0, int)
    fitted = ds.rows["train"]
    scope = f"{len(fitted):,} cross-fitted (the training side: heads refit per fold on the model's features)"
    if len(by_model):
        scope = f"{len(by_model):,} products by the model (the validation and test sides of its split) and {scope}"
    return by_model, fitted, scope


def _cross_fitted(tagger: Tagger, ds, tasks: list[str], rows: np.ndarray, features: np.ndarray, folds: int
                  ) -> CrossFit:
    """Cross-fitted probabilities for rows, for the tasks audited and the hierarchy's (the suggestion is chosen
    jointly over the hierarchy, as the model chooses)."""
    hierarchy = set(tagger.model.hierarchy[0]) if tagger.model.hierarchy else set()
    fit = [t for t in tagger.tasks if t in tasks or t in hierarchy]
    return cross_fit(features, {t: ds.targets[t][rows] for t in fit}, {t: len(tagger.vocabs[t]) for t in fit},
                     tagger.kinds, rows, ds.cache.hashes[rows], folds)


def score_labels(labels: np.ndarray, pred_probs: np.ndarray, suggested: np.ndarray | None = None,
                 classes: list[str] | None = None, rows: np.ndarray | None = None, method: str = METHOD) -> TaskScores:
    """Scores (1 - cleanlab's label quality) and cleanlab's label issues for one task's labels (class indices)
    given out-of-sample probabilities; suggested: the model's pick per row (default: the most probable class);
    rows: their catalog rows (default: 0, 1, ...)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    p = np.asarray(pred_probs, np.float64)
    p = p / p.sum(1, keepdims=True)  # float32 sums off by 1e-7 trip cleanlab's checks
    quality = get_label_quality_scores(labels, p, method=method)
    # Confident learning estimates each class's noise from its own labels; it warns once per class with few of them,
    # which a catalog's rare classes always are: the scores still rank those labels.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="May not flag all label issues", module="cleanlab")
        issue = find_label_issues(labels, p, filter_by="prune_by_noise_rate", n_jobs=1) if len(labels) > 1 else \
            np.zeros(len(labels), bool)
    best_other = np.where(np.arange(p.shape[1])[None] == labels[:, None], -1.0, p)
    if classes is not None and OTHER in classes:
        best_other[:, classes.index(OTHER)] = -1.0  # the pooled rare classes name no label to suggest
    other = best_other.argmax(1)
    if suggested is None:
        suggested = p.argmax(1)
    suggested = np.where((suggested == labels) | _is_other(suggested, classes), other, suggested)
    return TaskScores(np.arange(len(labels)) if rows is None else rows, labels, suggested, 1.0 - quality, np.asarray(issue, bool))


def score_classes(labels: np.ndarray, pred_probs: np.ndarray, rows: np.ndarray) -> TaskScores:
    """A multi-label task's labels scored class by class: each class a binary label (the catalog has it or not)
    scored by score_labels from the class's own probability; one TaskScores over every (row, class)."""
    parts = [score_labels(labels[:, c].astype(np.int64), np.stack([1 - pred_probs[:, c], pred_probs[:, c]], 1),
                          rows=rows) for c in range(labels.shape[1])]
    return TaskScores(*(np.concatenate([getattr(s, f) for s in parts]) for f in ("rows", "labels", "suggested",
                                                                                "score", "issue")),
                      classes=np.repeat(np.arange(labels.shape[1]), len(rows)))


def summarise(s: TaskScores, unknown: int = 0) -> dict:
    return {"scored": len(s.score), "unknown": unknown, "cleanlab": int(s.issue.sum()),
            **{f"at_{x}": int((s.score >= x).sum()) for x in LEVELS}}


def duplicate_disagreements(ds, tasks: tuple[str, ...]) -> list[dict]:
    """Groups of catalog rows whose cached photos are byte for byte identical and whose labels differ on a task:
    one of them is wrong whatever the model thinks. The whole catalog is searched, training side included."""
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i in np.flatnonzero(ds.cache.ok):
        groups[hashlib.blake2b(np.ascontiguousarray(ds.cache.pixels[i]).tobytes(), digest_size=16).digest()].append(i)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        labels = {t: [ds.catalog.columns[t][i] for i in members] for t in tasks}
        differ = {t: v for t, v in labels.items() if len(set(v) - {""}) > 1}
        if differ:
            out.append({"ids": [ds.catalog.ids[i] for i in members], "labels": differ})
    return sorted(out, key=lambda g: (-len(g["labels"]), g["ids"]))


def title_contradictions(ds, tasks: list[str], vocabs: dict[str, list[str]]) -> list[dict]:
    """Products whose title names one class of a task and whose label is another of the model's classes (the title
    says "Girl's", the label Women; data.text.ClassNames): one of the two is wrong. A model trained on a batch of
    such labels learns them (the Kaggle catalog's Gini and Jony kidswear labelled Men and Women), so it cannot flag
    them, but the title does. A name inside another task's longer one does not count (the usage "Casual" in the
    article type "Casual Shoes"). The whole catalog is searched, training side included; in catalog order, per
    task."""
    names = {t: ClassNames(c for c in vocabs[t] if c != OTHER) for t in tasks}
    found: dict[str, list[dict]] = {t: [] for t in tasks}
    for i, title in enumerate(ds.catalog.titles):
        spans = name_spans(title) if title else []
        every_name = [(a, b) for classes in names.values() for a, b, _ in classes.found(spans)]
        for t, classes in names.items():
            label, named = ds.catalog.columns[t][i], classes.named(spans, every_name)
            if len(named) == 1 and label in classes.classes and label not in named:
                found[t].append({"id": ds.catalog.ids[i], "task": t, "catalog_label": label,
                                 "suggested_label": named.pop(), "score": "", "path": str(ds.catalog.photos[i]),
                                 "title": title, "runners_up": "", "cleanlab_issue": ""})
    return [c for t in tasks for c in found[t]]


def _flags(ds, scores: dict[str, TaskScores], probs: dict[str, dict], vocabs: dict, min_score: float) -> list[Flag]:
    flags = []
    for t, s in scores.items():
        flagged = np.flatnonzero((s.score >= min_score) | s.issue)
        if s.classes is None:
            picks = [(int(s.rows[k]), vocabs[t][s.suggested[k]], [k]) for k in flagged]
        else:  # a multi-label task: one flag per product, the suggestion its cell with every flagged class toggled
            by_row: dict[int, list[int]] = defaultdict(list)
            for k in flagged:
                by_row[int(s.rows[k])].append(k)
            picks = [(i, _toggled(ds.catalog.columns[t][i], [vocabs[t][s.classes[k]] for k in ks], ds.spec.separator),
                      ks) for i, ks in by_row.items()]
        for i, suggestion, ks in picks:
            p = probs[t][i]
            top = np.argsort(-p)[:RUNNERS_UP]
            flags.append(Flag(ds.catalog.ids[i], t, ds.catalog.columns[t][i], suggestion, float(s.score[ks].max()),
                              str(ds.catalog.photos[i]), ds.catalog.titles[i],
                              "; ".join(f"{vocabs[t][c]} {p[c]:.3f}" for c in top), bool(s.issue[ks].any())))
    return [f for product in _products(flags) for f in product]


def _toggled(cell: str, classes: list[str], separator: str) -> str:
    """A multi-label cell with each of `classes` taken out if it has it, else added."""
    values = split_values(cell, separator)
    for c in classes:
        if c in values:
            values.remove(c)
        else:
            values.append(c)
    return separator.join(values)


def _products(flags: list[Flag]) -> list[list[Flag]]:
    """Flags grouped by product, each product's most likely wrong task first, products by their highest score."""
    by_id: dict[str, list[Flag]] = defaultdict(list)
    for f in flags:
        by_id[f.id].append(f)
    products = [sorted(fs, key=lambda f: -f.score) for fs in by_id.values()]
    return sorted(products, key=lambda fs: (-fs[0].score, fs[0].id))


def _check_tasks(tasks, tagger: Tagger) -> list[str]:
    if not tasks:
        return list(tagger.tasks)
    unknown = [t for t in tasks if t not in tagger.tasks]
    if unknown:
        raise ValueError(f"the model has no task {', '.join(map(repr, unknown))}; its tasks: {', '.join(tagger.tasks)}")
    return list(tasks)


def _is_other(idx: np.ndarray, classes: list[str] | None) -> np.ndarray:
    return idx == classes.index(OTHER) if classes is not None and OTHER in classes else np.zeros(len(idx), bool)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _atomically(path: Path, write) -> None:
    """Write through a temporary file beside `path`, so an interrupted run leaves the old file or none."""
    with replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        write(f)
