"""Deterministic, stratified, duplicate-aware train/validation/test splits, saved to JSON.

The catalog re-lists the same picture under several ids. Photos whose perceptual hashes are within
`max_distance` bits form one group (union-find), and a group never straddles two sides of the split;
otherwise the test score would partly measure memorisation.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

SIDES = ("train", "val", "test")


def duplicate_groups(hashes: np.ndarray, max_distance: int = 0) -> np.ndarray:
    """Group index per photo; photos within max_distance differing hash bits share a group.

    The default 0 (equal hashes) is measured on the real catalog: 39,664 photos form 31,574 groups; at 1 bit
    similar white-background products chain into one group of 11,490, which would wreck stratification.

    Two hashes within d bits agree exactly on at least one of d+1 disjoint bit bands, so comparing only
    photos that share a band finds every close pair without an all-pairs scan.
    """
    n = len(hashes)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    h = hashes.astype(np.uint64)
    bands = max_distance + 1
    edges = np.linspace(0, 64, bands + 1).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (h >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        sorted_band = band[order]
        starts = np.flatnonzero(np.r_[True, sorted_band[1:] != sorted_band[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], n]):
            if e - s < 2:
                continue
            members = order[s:e]
            dist = _popcount(h[members][:, None] ^ h[members][None, :])
            for a, b in zip(*np.nonzero(np.triu(dist <= max_distance, 1))):
                ra, rb = find(members[a]), find(members[b])
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)])
    return np.unique(roots, return_inverse=True)[1]


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.astype(">u8").view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def make_split(ids: list[str], strata: list[str], groups: np.ndarray, seed: int = 0,
               test_fraction: float = 0.1, val_fraction: float = 0.1, stratified_on: str = "") -> dict:
    """Assign each id to train, val or test; stratified on `strata` (the labels of task `stratified_on`), whole
    duplicate groups at a time."""
    n_folds = round(1 / min(test_fraction, val_fraction))
    n_test, n_val = round(test_fraction * n_folds), round(val_fraction * n_folds)
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.zeros(len(ids), int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when a class has fewer members than folds; that is fine
        for k, (_, held) in enumerate(skf.split(np.zeros(len(ids)), strata, groups)):
            fold[held] = k
    side = np.where(fold < n_test, 2, np.where(fold < n_test + n_val, 1, 0))
    ids_arr = np.asarray(ids)
    split = {s: sorted(str(i) for i in ids_arr[side == k]) for k, s in enumerate(SIDES)}
    split["meta"] = {"seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction,
                     "stratified_on": stratified_on, "duplicate_groups": int(groups.max() + 1) if len(groups) else 0}
    return split


def save_split(split: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(split))


def load_split(path: str | Path) -> dict:
    """A split file; ids are text (older files list the Kaggle catalog's ids as numbers)."""
    split = json.loads(Path(path).read_text())
    missing = [s for s in SIDES if s not in split]
    if missing:
        raise ValueError(f"{path}: not a split file (no {', '.join(missing)})")
    return {k: [str(i) for i in v] if k in SIDES else v for k, v in split.items()}
