"""Per-task label vocabularies, built from the training split and saved with the model."""

from __future__ import annotations

from collections import Counter

import numpy as np

OTHER = "Other"
UNKNOWN = -1  # index for an empty label cell: that row is left out of that task's loss and metrics


def build_vocab(labels: list[str], min_count: int, other: bool = True) -> list[str]:
    """Classes with at least min_count training examples, most frequent first; rarer ones share `Other`.

    `Other` is kept only when the rare classes together reach min_count, so it is learnable too, and only for
    single-label tasks (other=True): in a multi-label task a rare value is simply not predicted."""
    counts = Counter(v for v in labels if v)
    kept = [c for c, n in counts.most_common() if n >= min_count and c != OTHER]
    rare = sum(n for c, n in counts.items() if c not in kept)
    return kept + [OTHER] if other and rare >= min_count else kept


def encode(labels: list[str], vocab: list[str]) -> list[int]:
    """Label strings to indices: unknown cells and classes out of the vocabulary (without `Other`) become UNKNOWN."""
    index = {c: i for i, c in enumerate(vocab)}
    other = index.get(OTHER, UNKNOWN)
    return [index.get(v, other) if v else UNKNOWN for v in labels]


def split_values(cell: str, separator: str) -> list[str]:
    """The values of a multi-label cell: `casual|party` -> [casual, party]."""
    return [v.strip() for v in cell.split(separator) if v.strip()]


def encode_multi(cells: list[str], vocab: list[str], separator: str) -> np.ndarray:
    """(N, classes) int8: 1 where the row has the class, 0 where not, and a whole row of UNKNOWN for an empty cell."""
    index = {c: i for i, c in enumerate(vocab)}
    out = np.zeros((len(cells), len(vocab)), np.int8)
    for r, cell in enumerate(cells):
        values = split_values(cell, separator)
        if not values:
            out[r] = UNKNOWN
        for v in values:
            if v in index:
                out[r, index[v]] = 1
    return out
