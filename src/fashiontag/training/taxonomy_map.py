"""The taxonomy map (issue 27): which task of a known model explains each of a catalog's own columns, and how its
classes are made of the known model's ("sneakers = Casual Shoes + Sports Shoes"), for a catalog team to read.

Training records it in model.json (`taxonomy_map`) when a shop's heads read a start model's known heads, `explore`
reports it for a catalog before any training, and `evaluate`'s report (the model card) shows it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from fashiontag.data.taxonomy import SINGLE
from fashiontag.inference.tagger import Tagger

# A known class is part of a catalog class when the known model predicts it for at least this share of its products.
SHARE = 0.2


def taxonomy_map(tagger: Tagger, pixels: np.ndarray, titles: Sequence[str] | None,
                 labels: dict[str, tuple[np.ndarray, list[str]]], share: float = SHARE) -> dict:
    """Per catalog column (labels: task -> (class index per photo, -1 unknown; class names)), the single-label task
    of `tagger` whose predicted class (from the photo, and the title where given) has the highest normalized mutual
    information with the column's label, and per class of the column the known classes predicted for at least
    `share` of its products (a merge lists several)."""
    probabilities = tagger.probabilities(pixels, titles if titles is not None and any(titles) else None)
    known_vocabs = {t: v for t, v in tagger.vocabs.items() if tagger.kinds[t] == SINGLE}
    known = {t: np.nan_to_num(probabilities[t]).argmax(1) for t in known_vocabs}
    out = {}
    for task, (y, classes) in labels.items():
        labelled = y >= 0
        if not labelled.any():
            continue
        scores = {k: float(normalized_mutual_info_score(y[labelled], p[labelled])) for k, p in known.items()}
        best = max(scores, key=scores.get)
        mapped = {}
        for c, name in enumerate(classes):
            hits = known[best][y == c]
            if len(hits):
                counts = np.bincount(hits, minlength=len(known_vocabs[best])) / len(hits)
                mapped[name] = [known_vocabs[best][k] for k in np.argsort(-counts) if counts[k] >= share]
        out[task] = {"known_task": best, "score": round(scores[best], 3), "classes": mapped}
    return out


def map_lines(tmap: dict, shown: int = 6) -> list[str]:
    """A line per column, its merges (a class that several known classes make) first, then renamings."""
    lines = []
    for task, m in tmap.items():
        merges = [f"{c} = {' + '.join(k)}" for c, k in m["classes"].items() if len(k) > 1]
        renames = [f"{c} = {k[0]}" for c, k in m["classes"].items() if len(k) == 1]
        parts = merges + renames
        lines.append(f"{task} ~ {m['known_task']} (NMI {m['score']:.2f}): " + "; ".join(parts[:shown])
                     + (" ..." if len(parts) > shown else ""))
    return lines


def map_markdown(tmap: dict, model: str) -> list[str]:
    """The map as a report section: a table of columns, then every class of each."""
    lines = ["## Taxonomy map", "",
             (f"Which task of `{model}` explains each column (normalized mutual information between its predicted "
             f"class and the column's label: 1 a renaming, near 0 a column it knows nothing of), and which of its "
             f"classes each of the column's classes is made of (predicted for at least {SHARE:.0%} of them)."), "",
             "| column | known task | NMI | classes |", "|---|---|---|---|"]
    for task, m in tmap.items():
        classes = "; ".join(f"{c} = {' + '.join(k) or '(mixed)'}" for c, k in m["classes"].items())
        lines.append(f"| {task} | {m['known_task']} | {m['score']:.2f} | {classes.replace('|', '/')} |")
    return lines
