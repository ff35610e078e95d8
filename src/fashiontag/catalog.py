"""Reads a catalog in the Kaggle "Fashion Product Images" layout: styles.csv + images/<id>.jpg."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from fashiontag import TASKS

COLUMNS = ("id", "gender", "masterCategory", "subCategory", "articleType", "baseColour",
           "season", "year", "usage", "productDisplayName")


@dataclass
class Catalog:
    root: Path
    ids: list[int]
    labels: dict[str, list[str]]  # task -> one label per row; "" means unknown for that task
    names: list[str]
    problems: list[str] = field(default_factory=list)  # malformed rows, each naming its line

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, product_id: int) -> Path:
        return self.root / "images" / f"{product_id}.jpg"

    def content_key(self) -> str:
        """A digest of styles.csv and of every image file's name, size and mtime: changes when the catalog does."""
        h = hashlib.sha1((self.root / "styles.csv").read_bytes())
        for pid in self.ids:
            try:
                st = os.stat(self.image_path(pid))
                h.update(f"{pid}:{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                h.update(f"{pid}:missing;".encode())
        return h.hexdigest()[:16]

    def subset(self, keep: list[int]) -> "Catalog":
        """The rows at the given positions, in that order."""
        return Catalog(self.root, [self.ids[i] for i in keep],
                       {t: [v[i] for i in keep] for t, v in self.labels.items()},
                       [self.names[i] for i in keep], list(self.problems))


class CatalogError(Exception):
    pass


def read_catalog(root: str | Path) -> Catalog:
    """Parse styles.csv. Malformed rows are reported in `problems` (with their line number) and skipped."""
    root = Path(root)
    styles = root / "styles.csv"
    if not styles.is_file():
        raise CatalogError(f"{styles} not found: a catalog folder holds styles.csv and images/<id>.jpg")
    ids, names, problems = [], [], []
    labels: dict[str, list[str]] = {t: [] for t in TASKS}
    seen: set[int] = set()
    with open(styles, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise CatalogError(f"{styles}: header lacks column(s) {', '.join(missing)}")
        col = {c: header.index(c) for c in COLUMNS}
        name_col = col["productDisplayName"]
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < len(header):
                problems.append(f"styles.csv line {line}: {len(row)} fields, expected {len(header)}; skipped")
                continue
            if len(row) > len(header):
                if name_col != len(header) - 1:
                    problems.append(f"styles.csv line {line}: {len(row)} fields, expected {len(header)}; skipped")
                    continue
                # Unquoted commas inside productDisplayName, the last column: the extra fields belong to it.
                row = row[:name_col] + [",".join(row[name_col:])]
            try:
                pid = int(row[col["id"]])
            except ValueError:
                problems.append(f"styles.csv line {line}: id {row[col['id']]!r} is not a number; skipped")
                continue
            if pid in seen:
                problems.append(f"styles.csv line {line}: id {pid} listed twice; later row skipped")
                continue
            seen.add(pid)
            ids.append(pid)
            names.append(row[name_col].strip())
            for t in TASKS:
                labels[t].append(row[col[t]].strip())
    return Catalog(root, ids, labels, names, problems)
