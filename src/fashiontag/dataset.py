"""Assembles catalog, image cache, split and vocabularies into the arrays that training and evaluation use."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashiontag import TASKS
from fashiontag.cache import ImageCache, build_cache
from fashiontag.catalog import Catalog, read_catalog
from fashiontag.config import protocol_name
from fashiontag.split import SIDES, duplicate_groups, load_split, make_split
from fashiontag.vocab import build_vocab, encode

# The original notebook's filtering (protocol "notebook", once "seed"): these master categories, sub-categories
# with at least a 1% share of what remains, and its three tasks.
SEED_MASTER = ("Accessories", "Apparel", "Footwear", "Personal Care")
SEED_MIN_SHARE = 0.01
SEED_TASKS = ("gender", "masterCategory", "subCategory")


@dataclass
class TrainingData:
    catalog: Catalog
    cache: ImageCache
    split: dict                          # side -> product ids, plus "meta"
    vocabs: dict[str, list[str]]         # task -> class names
    targets: dict[str, np.ndarray]       # task -> class index per catalog row (-1: unknown)
    rows: dict[str, np.ndarray]          # side -> catalog row positions with a usable photo

    def hierarchy(self) -> list[list[str]]:
        """(articleType, subCategory, masterCategory) combinations seen in training, for consistent predictions."""
        tasks = [t for t in ("articleType", "subCategory", "masterCategory") if t in self.vocabs]
        if len(tasks) < 2:
            return []
        r = self.rows["train"]
        combos = set(zip(*(self.targets[t][r] for t in tasks)))
        return [tasks] + sorted([self.vocabs[t][i] for t, i in zip(tasks, c)]
                                for c in combos if min(c) >= 0)

    def class_counts(self, task: str, side: str = "train") -> np.ndarray:
        y = self.targets[task][self.rows[side]]
        return np.bincount(y[y >= 0], minlength=len(self.vocabs[task]))


def notebook_rows(catalog: Catalog) -> np.ndarray:
    master = np.array(catalog.labels["masterCategory"])
    keep = np.isin(master, SEED_MASTER)
    sub = np.array(catalog.labels["subCategory"])
    counts = Counter(sub[keep])
    big = [s for s, n in counts.items() if n >= SEED_MIN_SHARE * keep.sum()]
    return np.flatnonzero(keep & np.isin(sub, big))


def load_dataset(data: str | Path, tasks=TASKS, protocol: str = "all", split_path: str | Path | None = None,
                 vocabs: dict[str, list[str]] | None = None, min_count: int = 10, seed: int = 0,
                 cache_dir: str | Path | None = None, progress: bool = True, framing: bool = False) -> TrainingData:
    """Read and cache the catalog (photos framed with `framing`); load the split from split_path or make one;
    build or reuse vocabularies.

    A task with fewer than two classes of min_count training photos is left out, with a warning."""
    catalog = read_catalog(data)
    cache = build_cache(catalog, cache_dir or None, progress=progress, framing=framing)
    usable = np.flatnonzero(cache.ok)
    if split_path and Path(split_path).exists():
        split = load_split(split_path)
    else:
        groups = duplicate_groups(cache.hashes[usable])
        split = make_split([catalog.ids[i] for i in usable], [catalog.labels["articleType"][i] for i in usable],
                           groups, seed=seed)
    if protocol_name(protocol) == "notebook":
        tasks = tuple(t for t in tasks if t in SEED_TASKS)
        usable = np.intersect1d(usable, notebook_rows(catalog))
    row_of = {pid: i for i, pid in enumerate(catalog.ids)}
    usable_set = set(usable.tolist())
    rows = {s: np.array(sorted(row_of[p] for p in split[s] if p in row_of and row_of[p] in usable_set), dtype=np.int64)
            for s in SIDES}
    if vocabs is None:
        train_rows = rows["train"]
        vocabs = {t: build_vocab([catalog.labels[t][i] for i in train_rows], min_count) for t in tasks}
        # One class or none is nothing to learn, and an empty head would crash training.
        for t in [t for t, v in vocabs.items() if len(v) < 2]:
            print(f"warning: task {t} left out: fewer than two of its classes have {min_count} training photos "
                  "(min_count); its column is empty or too sparse", file=sys.stderr)
            del vocabs[t]
        if not vocabs:
            raise ValueError(f"{data}: no task has two classes with {min_count} training photos (min_count)")
    targets = {t: np.array(encode(catalog.labels[t], vocabs[t]), dtype=np.int64) for t in vocabs}
    return TrainingData(catalog, cache, split, vocabs, targets, rows)
