"""Assembles catalog, image cache, split and vocabularies into the arrays that training and evaluation use."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fashiontag.data.cache import ImageCache, build_cache
from fashiontag.data.catalog import (
    NOTEBOOK_MASTER,
    NOTEBOOK_MIN_SHARE,
    NOTEBOOK_TASKS,
    Catalog,
    CatalogSpec,
    with_reviewed,
)
from fashiontag.data.split import SIDES, duplicate_groups, load_split, make_split
from fashiontag.data.taxonomy import MULTI, SINGLE, Taxonomy, default_image_size, photo_trouble, resolve_taxonomy
from fashiontag.data.vocab import OTHER, build_vocab, encode, encode_multi, split_values
from fashiontag.training.config import protocol_name


@dataclass
class TrainingData:
    catalog: Catalog
    cache: ImageCache
    split: dict                          # side -> product ids, plus "meta"
    vocabs: dict[str, list[str]]         # task -> class names
    # task -> per catalog row: a class index (-1: unknown) for single-label tasks; for multi-label ones a row of
    # 0/1 per class (all -1: unknown)
    targets: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]          # side -> catalog row positions with a usable photo
    taxonomy: Taxonomy
    spec: CatalogSpec
    hw: tuple[int, int]                  # the photos' size in the cache: the model's input
    hw_note: str = ""                    # how hw was chosen

    @property
    def kinds(self) -> dict[str, str]:
        return {t: self.taxonomy.kinds[t] for t in self.vocabs}

    def hierarchy(self) -> list[list[str]]:
        """The hierarchy's label combinations seen in training (first row: its tasks, finest first), so that
        predictions are consistent."""
        tasks = [t for t in self.taxonomy.hierarchy if t in self.vocabs]
        if len(tasks) < 2:
            return []
        r = self.rows["train"]
        combos = set(zip(*(self.targets[t][r] for t in tasks)))
        return [tasks] + sorted([self.vocabs[t][i] for t, i in zip(tasks, c)]
                                for c in combos if min(c) >= 0)

    def with_start_vocabs(self, start: dict[str, list[str]]) -> tuple[TrainingData, list[str]]:
        """This data with a start model's vocabulary for each task it has under the same name and whose classes it
        covers (fine-tuning keeps its heads and their classes), the targets encoded again; and those tasks. A task
        the start model lacks, or one with classes it does not know (a shop's own words), keeps its own
        vocabulary and gets a fresh head."""
        kept = [t for t, v in self.vocabs.items() if t in start and set(v) <= set(start[t])]
        vocabs = {t: list(start[t]) if t in kept else v for t, v in self.vocabs.items()}
        targets = {t: (np.array(encode(self.catalog.columns[t], vocabs[t]), dtype=np.int64) if self.kinds[t] == SINGLE
                       else encode_multi(self.catalog.columns[t], vocabs[t], self.spec.separator)) if t in kept
                   else y for t, y in self.targets.items()}
        return replace(self, vocabs=vocabs, targets=targets), kept

    def class_counts(self, task: str, side: str = "train") -> np.ndarray:
        y = self.targets[task][self.rows[side]]
        if y.ndim == 2:
            return np.maximum(y, 0).sum(0)
        return np.bincount(y[y >= 0], minlength=len(self.vocabs[task]))


def notebook_rows(catalog: Catalog) -> np.ndarray:
    master = np.array(catalog.columns["masterCategory"])
    keep = np.isin(master, NOTEBOOK_MASTER)
    sub = np.array(catalog.columns["subCategory"])
    counts = Counter(sub[keep])
    big = [s for s, n in counts.items() if n >= NOTEBOOK_MIN_SHARE * keep.sum()]
    return np.flatnonzero(keep & np.isin(sub, big))


def load_dataset(data: CatalogSpec | str | Path, tasks: tuple[str, ...] = (), protocol: str = "all",
                 split_path: str | Path | None = None, vocabs: dict[str, list[str]] | None = None,
                 min_count: int = 10, seed: int = 0, cache_dir: str | Path | None = None, progress: bool = True,
                 framing: bool | float = False, hw: tuple[int, int] | None = None, hierarchy: tuple[str, ...] = (),
                 taxonomy: Taxonomy | None = None, extra: tuple[str, ...] = ()) -> TrainingData:
    """Read and cache the catalog (photos at hw, default the catalog's typical size; framed with `framing`); load
    the split from split_path or make one; build or reuse vocabularies.

    tasks and hierarchy: see taxonomy.resolve_taxonomy; a trained model passes its own `taxonomy` instead. A task
    with fewer than two classes of min_count training photos (one, if multi-label) is left out, with a warning.
    extra: reviewed-tags files (catalog.with_reviewed) whose rows train, and never validate or test: a row on the
    validation or test side of the split, or whose photo equals one there, is left out."""
    spec = data if isinstance(data, CatalogSpec) else CatalogSpec(str(data))
    catalog = spec.read()
    reviewed: set[str] = set()
    origin: dict[str, str] = {}  # reviewed id -> the file it was last read from
    for path in extra:
        catalog, ids = with_reviewed(catalog, path, spec.id_column)
        reviewed |= ids
        origin.update(dict.fromkeys(ids, path))
    if taxonomy is None:
        taxonomy = resolve_taxonomy(catalog, tuple(tasks), spec.separator, tuple(hierarchy))
    else:
        missing = [t for t in taxonomy.tasks if t not in catalog.columns]
        if missing:
            raise ValueError(f"{catalog.source}: the model's task column(s) {', '.join(missing)} do not exist")
    hw_note = "given"
    if hw is None:
        hw, hw_note = default_image_size(catalog)
    cache = build_cache(catalog, cache_dir or None, hw=hw, progress=progress, framing=framing)
    # Trained on the few photos left, a wrongly described catalog would fail later, blaming its labels.
    trouble = photo_trouble(catalog, cache.errors, spec.image_column, spec.separator)
    if trouble:
        raise ValueError(f"{catalog.source.name}: {trouble}")
    _check_reviewed_photos(origin, catalog, cache)
    usable = np.flatnonzero(cache.ok)
    if split_path and Path(split_path).exists():
        split = load_split(split_path)
    else:
        held = np.array([catalog.ids[i] not in reviewed for i in usable], bool)
        usable_before, usable = usable, usable[held]  # the split is the catalog's own; reviewed rows join below
        strata_task = _strata_task(taxonomy, catalog)
        strata = [catalog.columns[strata_task][i] if strata_task else "" for i in usable]
        groups = duplicate_groups(cache.hashes[usable])
        split = make_split([catalog.ids[i] for i in usable], strata, groups, seed=seed, stratified_on=strata_task)
        usable = usable_before
    if reviewed:
        split = _with_reviewed_rows(split, reviewed, catalog, cache)
    kinds = dict(taxonomy.kinds)
    if protocol_name(protocol) == "notebook":
        if not catalog.kaggle:
            raise ValueError('protocol "notebook" is the Kaggle catalog\'s (styles.csv); use "all" for this catalog')
        kinds = {t: k for t, k in kinds.items() if t in NOTEBOOK_TASKS}
        usable = np.intersect1d(usable, notebook_rows(catalog))
    row_of = {pid: i for i, pid in enumerate(catalog.ids)}
    usable_set = set(usable.tolist())
    rows = {s: np.array(sorted(row_of[p] for p in split[s] if p in row_of and row_of[p] in usable_set), dtype=np.int64)
            for s in SIDES}
    if vocabs is None:
        vocabs = _vocabs(catalog, kinds, rows["train"], min_count, spec.separator)
    targets = {t: (np.array(encode(catalog.columns[t], vocabs[t]), dtype=np.int64) if kinds[t] == SINGLE
                   else encode_multi(catalog.columns[t], vocabs[t], spec.separator)) for t in vocabs}
    return TrainingData(catalog, cache, split, vocabs, targets, rows, taxonomy, spec, tuple(hw), hw_note)


def _check_reviewed_photos(origin: dict[str, str], catalog: Catalog, cache: ImageCache) -> None:
    """A reviewed row without a usable photo is an error, not a skipped photo: a person checked its tags, and a
    run that quietly trains without them loses that work."""
    row_of = {pid: i for i, pid in enumerate(catalog.ids)}
    bad: dict[str, list[str]] = {}
    for pid, path in origin.items():
        if not cache.ok[row_of[pid]]:
            bad.setdefault(path, []).append(pid)
    problems = []
    for path, pids in bad.items():
        named = "; ".join(f"id {pid}: {catalog.photos[row_of[pid]]}, {cache.errors.get(pid, 'unreadable')}"
                          for pid in pids[:3])
        problems.append(f"--extra {path}: {len(pids):,} of {list(origin.values()).count(path):,} reviewed rows "
                        f"have no usable photo ({named}{'; ...' if len(pids) > 3 else ''})")
    if problems:
        raise ValueError("; ".join(problems) + ". Give each row its photo's path in a path column "
                         "(`fashiontag review export` writes it)")


def _with_reviewed_rows(split: dict, reviewed: set[str], catalog: Catalog, cache: ImageCache) -> dict:
    """The split with the reviewed rows on its training side, except those whose id or photo is held out."""
    held_out = set(split["val"]) | set(split["test"])
    row_of = {pid: i for i, pid in enumerate(catalog.ids)}
    held_hashes = {int(cache.hashes[row_of[p]]) for p in held_out if p in row_of and cache.ok[row_of[p]]}
    leaking = {p for p in reviewed if p in held_out or int(cache.hashes[row_of[p]]) in held_hashes}
    if leaking:
        print(f"note: {len(leaking):,} reviewed rows left out of training: their id or photo is on the validation "
              f"or test side (e.g. {sorted(leaking)[0]})", file=sys.stderr)
    train = set(split["train"]) | (reviewed - leaking)
    return {**split, "train": sorted(train), "reviewed": sorted(reviewed - leaking)}


def _vocabs(catalog: Catalog, kinds: dict[str, str], train_rows: np.ndarray, min_count: int,
            separator: str) -> dict[str, list[str]]:
    vocabs = {}
    for t, kind in kinds.items():
        cells = [catalog.columns[t][i] for i in train_rows]
        if kind == MULTI:
            vocabs[t] = build_vocab([v for c in cells for v in split_values(c, separator)], min_count, other=False)
        else:
            vocabs[t] = build_vocab(cells, min_count)
        # One class or none is nothing to learn (a multi-label class alone still is), and an empty head would crash.
        if len(vocabs[t]) < (1 if kind == MULTI else 2):
            print(f"warning: task {t} left out: too few of its classes have {min_count} training photos "
                  "(min_count); its column is empty or too sparse", file=sys.stderr)
            del vocabs[t]
        elif kind == SINGLE:
            _say_pooled(t, vocabs[t], catalog.columns[t], min_count)
    if not vocabs:
        raise ValueError(f"{catalog.source}: no task has two classes with {min_count} training photos (min_count)")
    return vocabs


def _say_pooled(task: str, vocab: list[str], cells: list[str], min_count: int) -> None:
    """Say how many classes and products of the catalog a single-label task's rare classes (under min_count training
    photos) are: pooled into Other, or left out of the task where together they are too few to learn Other from."""
    pooled = [v for v in cells if v and v not in vocab]
    if not pooled:
        return
    rare, products = len(set(pooled)), len(pooled)
    fate = (f"pooled into {OTHER}" if OTHER in vocab else
            f"left out of this task (together under {min_count} training photos, too few for an {OTHER} class)")
    print(f"note: task {task}: {rare:,} classes with fewer than {min_count} training photos (min_count), "
          f"{products:,} products of the catalog, {fate}", file=sys.stderr)


def _strata_task(taxonomy: Taxonomy, catalog: Catalog) -> str:
    """The task the split keeps in proportion: the hierarchy's finest, else the single-label task with most classes."""
    if taxonomy.hierarchy:
        return taxonomy.hierarchy[0]
    single = [t for t, k in taxonomy.kinds.items() if k == SINGLE]
    return max(single, key=lambda t: len(set(catalog.columns[t])), default="")
