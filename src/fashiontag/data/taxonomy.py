"""What a catalog's columns are (kinds), which of them are tasks, the hierarchies between them, and the photo size.

Tasks come from the data: any label-like column can be one. A column whose cells hold several values joined by the
separator (`casual|party`) is multi-label. A hierarchy is a chain of tasks, finest first, where each value of one
determines the value of the next in at least HIERARCHY_SHARE of the rows (articleType > subCategory >
masterCategory); it is found in the data or declared, and decoded jointly by the tagger.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fashiontag.data.catalog import KAGGLE_HIERARCHY, KAGGLE_HW, KAGGLE_TASKS, Catalog
from fashiontag.data.photos import IMAGE_SUFFIXES
from fashiontag.model_folder import MULTI, SINGLE

KINDS = (SINGLE, MULTI, "text", "number", "id", "photo", "empty")
MAX_CLASSES = 500              # a column with more distinct values is text or ids, not a task
TEXT_WORDS = 4                 # cells this long on average are titles or descriptions, however few distinct
MULTI_SHARE = 0.02             # a column is multi-label when this share of its filled cells hold the separator
FREE_TEXT_SHARE = 0.9          # a column this share of whose filled cells are distinct is free text, not a task
HIERARCHY_SHARE = 0.99         # a value of the finer task names its parent in at least this share of the rows
MAX_SIDE = 160                 # default photo size cap: CPU training time grows with the pixel count
SIZE_SAMPLE = 200              # photos whose sizes set the default input size


@dataclass
class Taxonomy:
    """The tasks a model learns from a catalog: their kinds and the hierarchy (finest first; empty for none)."""
    kinds: dict[str, str]          # task -> SINGLE or MULTI, in task order
    hierarchy: tuple[str, ...] = ()

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.kinds)


def column_kind(values: list[str], separator: str = "|") -> str:
    """One of KINDS for a column's cells."""
    filled = [v for v in values if v]
    if not filled:
        return "empty"
    distinct = set(filled)
    if sum(v.lower().endswith(tuple(IMAGE_SUFFIXES)) for v in distinct) >= 0.9 * len(distinct):
        return "photo"
    if all(_is_number(v) for v in distinct):
        return "number"
    words = sum(len(v.split()) for v in filled) / len(filled)
    if words >= TEXT_WORDS:
        return "text"
    if separator and sum(separator in v for v in filled) >= MULTI_SHARE * len(filled):
        parts = {p.strip() for v in distinct for p in v.split(separator)}
        if len(parts) <= MAX_CLASSES:
            return MULTI
    if len(distinct) <= MAX_CLASSES and len(distinct) <= 0.5 * len(filled):
        return SINGLE
    return "text" if words >= 2 else "id"


def column_kinds(catalog: Catalog, separator: str = "|") -> dict[str, str]:
    return {c: column_kind(v, separator) for c, v in catalog.columns.items()}


def resolve_taxonomy(catalog: Catalog, tasks: tuple[str, ...] = (), separator: str = "|",
                     hierarchy: tuple[str, ...] = (), kinds: dict[str, str] | None = None) -> Taxonomy:
    """The tasks to learn and their hierarchy.

    tasks: the columns to learn (default: the Kaggle preset's seven in the Kaggle layout, else every single- or
    multi-label column but the title). hierarchy: declared chains "child>parent[>grandparent]" (checked against the
    data: a chain that more than 1% of rows break is an error); default: the Kaggle preset's, else the longest chain
    found in the data. kinds: known task kinds (a trained model's), else read from the data."""
    found = column_kinds(catalog, separator) if kinds is None else {}
    named = bool(tasks)
    for t in tasks:
        if t not in catalog.columns:
            raise ValueError(f"task column {t!r} does not exist in {catalog.source.name}; its columns are "
                             f"{', '.join(catalog.columns)}")
    if not named:
        tasks = KAGGLE_TASKS if catalog.kaggle else tuple(
            c for c, k in found.items() if k in (SINGLE, MULTI) and c != catalog.title_column)
    if not tasks:
        raise ValueError(f"{catalog.source.name}: no column looks like a task (few distinct values); name them "
                         "with --tasks")
    task_kinds = {t: (kinds or {}).get(t) or (MULTI if found.get(t) == MULTI else SINGLE) for t in tasks}
    for t in tasks if named else ():  # a preset or found task that is empty is left out later, with a warning
        filled = [v for v in catalog.columns[t] if v]
        n = len(set(filled))
        if task_kinds[t] == SINGLE and n < 2:
            raise ValueError(f"task column {t!r} has {n} class{'es' if n != 1 else ''}: nothing to learn")
        # Else the split, which keeps the classes in proportion, fails on classes of one product each.
        if task_kinds[t] == SINGLE and n > FREE_TEXT_SHARE * len(filled):
            raise ValueError(f"task column {t!r} looks like free text, not a task: nearly every value is unique "
                             f"({n:,} distinct in {len(filled):,} rows), where a task's classes are shared by many "
                             f"products; leave it out of --tasks (a product title goes to --title-column)")
    chain = _declared(hierarchy, task_kinds, catalog)
    if not chain and catalog.kaggle:
        chain = [t for t in KAGGLE_HIERARCHY if t in tasks]
    if not chain and not hierarchy and not catalog.kaggle:
        chain = longest_chain(find_hierarchies(catalog, [t for t, k in task_kinds.items() if k == SINGLE]))
    return Taxonomy(task_kinds, tuple(chain) if len(chain) > 1 else ())


def _declared(hierarchy: tuple[str, ...], kinds: dict[str, str], catalog: Catalog) -> list[str]:
    """The declared chains joined into one, finest first, checked against the data."""
    chain: list[str] = []
    for declared in hierarchy:
        parts = [p.strip() for p in declared.split(">")]
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"hierarchy {declared!r}: write it as child>parent, e.g. category>department")
        for p in parts:
            if kinds.get(p) != SINGLE:
                raise ValueError(f"hierarchy {declared!r}: {p!r} is not a single-label task of this run")
        if chain and parts[0] == chain[-1]:
            parts = parts[1:]
        elif chain:
            raise ValueError(f"hierarchy {declared!r} does not continue {'>'.join(chain)}: declare one chain")
        chain += parts
    for child, parent in zip(chain, chain[1:]):
        share = determination(catalog.columns[child], catalog.columns[parent])
        if share < HIERARCHY_SHARE:
            raise ValueError(f"hierarchy {child}>{parent}: {1 - share:.1%} of the rows break it (a {child} value "
                             f"under another {parent} than its usual one); at most {1 - HIERARCHY_SHARE:.0%} may")
    return chain


def determination(child: list[str], parent: list[str]) -> float:
    """The share of rows (both cells filled) whose parent is the one most often seen with their child value."""
    by_child: dict[str, Counter] = defaultdict(Counter)
    for c, p in zip(child, parent):
        if c and p:
            by_child[c][p] += 1
    total = sum(sum(n.values()) for n in by_child.values())
    return sum(n.most_common(1)[0][1] for n in by_child.values()) / total if total else 0.0


def find_hierarchies(catalog: Catalog, tasks: list[str]) -> list[tuple[str, str, float]]:
    """(child, parent, share) for each pair where the child has more classes and determines the parent."""
    classes = {t: len({v for v in catalog.columns[t] if v}) for t in tasks}
    pairs = []
    for child in tasks:
        for parent in tasks:
            if classes[child] > classes[parent] >= 2:
                share = determination(catalog.columns[child], catalog.columns[parent])
                if share >= HIERARCHY_SHARE:
                    pairs.append((child, parent, share))
    return pairs


def longest_chain(pairs: list[tuple[str, str, float]]) -> list[str]:
    """The longest chain child > parent > ... through the pairs; [] when there are none."""
    parents: dict[str, list[str]] = defaultdict(list)
    for child, parent, _ in pairs:
        parents[child].append(parent)
    best: dict[str, list[str]] = {}

    def longest_from(t: str) -> list[str]:  # parents have fewer classes, so this always ends
        if t not in best:
            best[t] = [t] + max((longest_from(p) for p in parents[t]), key=len, default=[])
        return best[t]

    chains = [longest_from(c) for c in sorted(parents)]
    return max(chains, key=len, default=[])


def photo_trouble(catalog: Catalog, errors: dict[str, str], image_column: str, separator: str = "|") -> str:
    """"" when most of the catalog's photos can be used; else how many cannot, an example, and the likely fix: a
    photo column not passed as --image-column above all, which otherwise reads as a catalog of missing photos."""
    if len(errors) <= len(catalog) / 2:
        return ""
    pid, why = next(iter(errors.items()))
    text = f"{len(errors):,} of {len(catalog):,} photos cannot be used (e.g. {pid}: {why})"
    photo_columns = [c for c, v in catalog.columns.items()
                     if c != image_column and column_kind(v, separator) == "photo"]
    if photo_columns:
        return text + f"; column {photo_columns[0]} holds photo files: pass --image-column {photo_columns[0]}"
    if not image_column:
        return text + (f"; without --image-column a row's photo is images/<id>.<ext> beside {catalog.source.name}: "
                       "name the column holding the photos' paths with --image-column")
    return text + (f"; column {image_column}'s paths are read relative to {catalog.root} (or as absolute paths): "
                   "check that the photos are there")


def parse_image_size(text: str) -> tuple[int, int]:
    """"160x120" -> (160, 120): height x width in pixels."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not m:
        raise ValueError(f"image size {text!r}: write it as HEIGHTxWIDTH in pixels, e.g. 160x120")
    h, w = int(m.group(1)), int(m.group(2))
    if not (16 <= h <= 1024 and 16 <= w <= 1024):
        raise ValueError(f"image size {text!r}: height and width must be 16 to 1024 pixels")
    return h, w


def default_image_size(catalog: Catalog) -> tuple[tuple[int, int], str]:
    """The catalog's typical photo size, scaled so that its longer side is at most MAX_SIDE, and how it was found.

    The Kaggle layout keeps 80x60, its photos' size."""
    if catalog.kaggle:
        return KAGGLE_HW, "the Kaggle layout's photo size"
    sizes = photo_sizes(catalog)
    if not sizes:
        return KAGGLE_HW, "no readable photo to measure; the default"
    h, w = (int(np.median([s[i] for s in sizes])) for i in (0, 1))
    scale = min(1.0, MAX_SIDE / max(h, w))
    hw = (max(16, round(h * scale)), max(16, round(w * scale)))
    note = f"the median of {len(sizes)} photos, {h}x{w}"
    return hw, note + (f", scaled to a longer side of {MAX_SIDE}" if scale < 1 else "")


def photo_sizes(catalog: Catalog, sample: int = SIZE_SAMPLE) -> list[tuple[int, int]]:
    """(height, width) of up to `sample` photos spread over the catalog; reads headers only."""
    step = max(1, len(catalog) // sample)
    sizes = []
    for path in catalog.photos[::step][:sample]:
        try:
            with Image.open(path) as img:
                sizes.append((img.height, img.width))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return sizes


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False
