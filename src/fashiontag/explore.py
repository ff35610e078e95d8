"""Exploration of a catalog before training: class distributions, broken rows and photos, duplicate groups."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from fashiontag import TASKS, plots
from fashiontag.cache import build_cache
from fashiontag.catalog import read_catalog
from fashiontag.split import duplicate_groups


def explore(data: str | Path, out: str | Path = "reports/explore", cache_dir: str | None = None,
            progress: bool = True) -> dict:
    catalog = read_catalog(data)
    cache = build_cache(catalog, cache_dir, progress=progress)
    usable = np.flatnonzero(cache.ok)
    groups = duplicate_groups(cache.hashes[usable])
    members: dict[int, list[int]] = {}
    for row, g in zip(usable, groups):
        members.setdefault(int(g), []).append(catalog.ids[row])
    dup_groups = sorted((m for m in members.values() if len(m) > 1), key=len, reverse=True)
    counts = {t: dict(Counter(v if v else "(empty)" for v in catalog.labels[t]).most_common()) for t in TASKS}
    summary = {"data": str(data), "rows": len(catalog), "malformed_rows": catalog.problems,
               "unusable_photos": {str(k): v for k, v in cache.errors.items()},
               "duplicate_groups": len(dup_groups), "photos_in_duplicate_groups": sum(map(len, dup_groups)),
               "duplicate_group_ids": dup_groups, "class_counts": counts}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "explore.json").write_text(json.dumps(summary, indent=1))
    plots.class_distributions(out / "class_distributions.png", counts, "catalog rows per class")
    lines = [f"# Catalog `{data}`", "", f"- {len(catalog):,} rows; {len(catalog.problems)} problems in styles.csv (listed below)",
             f"- {cache.report()}",
             f"- {len(dup_groups):,} groups of re-listed photos (equal perceptual hash) holding "
             f"{summary['photos_in_duplicate_groups']:,} photos; largest: {[len(g) for g in dup_groups[:5]]}",
             "", "![class distributions](class_distributions.png)"]
    for p in catalog.problems[:20]:
        lines.append(f"- {p}")
    for t, c in counts.items():
        lines += ["", f"## {t} ({len(c)} classes)", "", "| class | rows | share |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {v / len(catalog):.2%} |" for k, v in c.items()]
    (out / "explore.md").write_text("\n".join(lines) + "\n")
    return summary
