"""Per-task label vocabularies, built from the training split and saved with the model."""

from __future__ import annotations

from collections import Counter

OTHER = "Other"
UNKNOWN = -1  # index for an empty label cell: that row is left out of that task's loss and metrics


def build_vocab(labels: list[str], min_count: int) -> list[str]:
    """Classes with at least min_count training examples, most frequent first; rarer ones share `Other`.

    `Other` is kept only when the rare classes together reach min_count, so it is learnable too.
    """
    counts = Counter(v for v in labels if v)
    kept = [c for c, n in counts.most_common() if n >= min_count and c != OTHER]
    rare = sum(n for c, n in counts.items() if c not in kept)
    return kept + [OTHER] if rare >= min_count else kept


def encode(labels: list[str], vocab: list[str]) -> list[int]:
    """Label strings to indices: unknown cells and classes out of the vocabulary (without `Other`) become UNKNOWN."""
    index = {c: i for i, c in enumerate(vocab)}
    other = index.get(OTHER, UNKNOWN)
    return [index.get(v, other) if v else UNKNOWN for v in labels]
