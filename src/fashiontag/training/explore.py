"""Exploration of a catalog before training: its columns and their kinds, class counts, hierarchies, photo sizes,
broken rows and photos, repeated ids and duplicate photos, and the taxonomy map of its columns onto what a known
model (the shipped one by default) already tags."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from fashiontag.data.cache import build_cache
from fashiontag.data.catalog import CatalogSpec
from fashiontag.data.split import duplicate_groups
from fashiontag.data.taxonomy import (
    MULTI,
    SINGLE,
    column_kinds,
    default_image_size,
    find_hierarchies,
    photo_sizes,
    photo_trouble,
    resolve_taxonomy,
)
from fashiontag.data.vocab import split_values
from fashiontag.inference.tagger import Tagger
from fashiontag.model_folder import DEFAULT_MODEL_DIR
from fashiontag.training import plots
from fashiontag.training.taxonomy_map import map_markdown, taxonomy_map

# Photos the taxonomy map reads: a few seconds of the known model's time, and enough products per common class.
MAP_PHOTOS = 3000


def explore(data: str | Path | CatalogSpec, *, out: str | Path = "reports/explore", cache_dir: str | None = None,
            progress: bool = True, map_to: str | Path | None = DEFAULT_MODEL_DIR) -> dict:
    """Explore the catalog `data` into explore.md, explore.json and class_distributions.png in `out`; returns the
    summary. map_to: the model whose tasks the taxonomy map reads the catalog's columns as (None: no map)."""
    spec = data if isinstance(data, CatalogSpec) else CatalogSpec(str(data))
    catalog = spec.read()
    kinds = column_kinds(catalog, spec.separator)
    tasks = resolve_taxonomy(catalog, separator=spec.separator).tasks
    hw, hw_note = default_image_size(catalog)
    cache = build_cache(catalog, cache_dir, hw=hw, progress=progress)
    usable = np.flatnonzero(cache.ok)
    groups = duplicate_groups(cache.hashes[usable])
    members: dict[int, list[str]] = {}
    for row, g in zip(usable, groups):
        members.setdefault(int(g), []).append(catalog.ids[row])
    dup_groups = sorted((m for m in members.values() if len(m) > 1), key=len, reverse=True)
    counts = {}
    for c, kind in kinds.items():
        if kind == MULTI:
            counts[c] = dict(Counter(v for cell in catalog.columns[c] for v in split_values(cell, spec.separator)
                                     ).most_common())
        elif kind == SINGLE:
            counts[c] = dict(Counter(v if v else "(empty)" for v in catalog.columns[c]).most_common())
    hierarchies = [{"child": a, "parent": b, "share": round(share, 4)}
                   for a, b, share in find_hierarchies(catalog, [c for c, k in kinds.items() if k == SINGLE])]
    sizes = photo_sizes(catalog)
    repeated = [p for p in catalog.problems if "listed twice" in p]
    summary = {"data": str(catalog.source), "rows": len(catalog), "columns": kinds, "tasks": list(tasks),
               "class_counts": counts, "hierarchies": hierarchies,
               "photo_sizes": _size_summary(sizes), "input_size": {"hw": list(hw), "why": hw_note},
               "malformed_rows": catalog.problems, "repeated_ids": len(repeated),
               "unusable_photos": cache.errors,
               "photo_trouble": photo_trouble(catalog, cache.errors, spec.image_column, spec.separator),
               "duplicate_groups": len(dup_groups),
               "photos_in_duplicate_groups": sum(map(len, dup_groups)), "duplicate_group_ids": dup_groups}
    if map_to is not None:
        summary["taxonomy_map"] = {"model": str(map_to), "columns": columns_map(
            catalog, [t for t in tasks if kinds.get(t) == SINGLE], map_to, cache_dir, progress)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "explore.json").write_text(json.dumps(summary, indent=1))
    plots.class_distributions(out / "class_distributions.png", {t: counts[t] for t in tasks if t in counts},
                              "catalog rows per class")
    (out / "explore.md").write_text(render(summary, cache.report()))
    return summary


def columns_map(catalog, columns: list[str], model: str | Path, cache_dir: str | None, progress: bool) -> dict:
    """The taxonomy map of the catalog's single-label columns onto `model`'s tasks, on up to MAP_PHOTOS usable
    photos drawn at random (with their titles where the catalog has them)."""
    tagger = Tagger.load(model)
    cache = build_cache(catalog, cache_dir, hw=tuple(tagger.input_hw), progress=progress,
                        framing=tagger.photo_input.framing)
    usable = np.flatnonzero(cache.ok)
    if len(usable) == 0:
        return {}
    rows = np.sort(np.random.default_rng(0).permutation(usable)[:MAP_PHOTOS])
    labels = {}
    for c in columns:
        values = [catalog.columns[c][i] for i in rows]
        classes = sorted(set(values) - {""})
        index = {v: i for i, v in enumerate(classes)}
        labels[c] = (np.array([index.get(v, -1) for v in values]), classes)
    titles = [catalog.titles[i] for i in rows] if catalog.title_column else None
    return taxonomy_map(tagger, np.ascontiguousarray(cache.pixels[rows]), titles, labels)


def _size_summary(sizes: list[tuple[int, int]]) -> dict:
    if not sizes:
        return {"sampled": 0}
    h, w = np.array(sizes).T
    return {"sampled": len(sizes), "median_hw": [int(np.median(h)), int(np.median(w))],
            "min_hw": [int(h.min()), int(w.min())], "max_hw": [int(h.max()), int(w.max())]}


def render(summary: dict, cache_report: str) -> str:
    sizes = summary["photo_sizes"]
    size_line = (f"- photo sizes (height x width, {sizes['sampled']} sampled): median {sizes['median_hw'][0]}x"
                 f"{sizes['median_hw'][1]}, from {sizes['min_hw'][0]}x{sizes['min_hw'][1]} to "
                 f"{sizes['max_hw'][0]}x{sizes['max_hw'][1]}" if sizes["sampled"] else "- no readable photo to size")
    hw = summary["input_size"]["hw"]
    lines = [f"# Catalog `{summary['data']}`", ""]
    if summary["photo_trouble"]:
        lines += [f"**Most photos cannot be used**: {summary['photo_trouble']}.", ""]
    lines += [f"- {summary['rows']:,} rows; {len(summary['malformed_rows'])} problems in the file (listed below), "
              f"{summary['repeated_ids']} of them repeated ids",
              f"- {cache_report}", size_line,
              f"- model input by default: {hw[0]}x{hw[1]} ({summary['input_size']['why']})",
              f"- {summary['duplicate_groups']:,} groups of re-listed photos (equal perceptual hash) holding "
              f"{summary['photos_in_duplicate_groups']:,} photos; largest: "
              f"{[len(g) for g in summary['duplicate_group_ids'][:5]]}",
              f"- tasks by default: {', '.join(summary['tasks'])}",
              "", "| column | kind | distinct values |", "|---|---|---|"]
    for c, kind in summary["columns"].items():
        lines.append(f"| {c} | {kind} | {len(summary['class_counts'][c]) if c in summary['class_counts'] else ''} |")
    lines += ["", "Hierarchies found (each value of the child determines the parent in this share of rows):", ""]
    lines += [f"- {h['child']} > {h['parent']}: {h['share']:.2%}" for h in summary["hierarchies"]] or ["- none"]
    if summary.get("taxonomy_map"):
        lines += [""] + map_markdown(summary["taxonomy_map"]["columns"], summary["taxonomy_map"]["model"])
    lines += ["", "![class distributions](class_distributions.png)", ""]
    lines += [f"- {p}" for p in summary["malformed_rows"][:20]]
    for t, c in summary["class_counts"].items():
        lines += ["", f"## {t} ({summary['columns'][t]}, {len(c)} classes)", "", "| class | rows | share |",
                  "|---|---|---|"]
        lines += [f"| {k} | {v} | {v / summary['rows']:.2%} |" for k, v in c.items()]
    return "\n".join(lines) + "\n"
