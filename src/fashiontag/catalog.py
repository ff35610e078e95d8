"""Reads a catalog in the Kaggle "Fashion Product Images" layout: styles.csv + images/<id>.jpg."""

from __future__ import annotations

import csv
import hashlib
import io
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


class CatalogError(Exception):
    pass


# No product name comes near this; a longer field is most likely rows run together or a broken export.
LONG_FIELD = 1000


def read_catalog(root: str | Path) -> Catalog:
    """Parse styles.csv. Malformed rows are reported in `problems` (with their line number) and skipped.

    The file is UTF-8 (a byte-order mark is fine) or else cp1252, which covers Latin-1's printable characters; a
    file that is neither is refused, naming the line. Each row is one line: a quote left open, which would make
    csv run the following lines into one row, is reported and its lines are read one by one."""
    root = Path(root)
    styles = root / "styles.csv"
    if not styles.is_file():
        raise CatalogError(f"{styles} not found: a catalog folder holds styles.csv and images/<id>.jpg")
    text, encoding_note = _decode(styles)
    lines = io.StringIO(text, newline="").readlines()
    problems = [encoding_note] if encoding_note else []
    header = [h.strip() for h in next(csv.reader(lines[:1]), [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise CatalogError(f"{styles}: header lacks column(s) {', '.join(missing)}")
    col = {c: header.index(c) for c in COLUMNS}
    name_col = col["productDisplayName"]
    ids, names = [], []
    labels: dict[str, list[str]] = {t: [] for t in TASKS}
    seen: set[int] = set()
    for line, row in _rows(lines, problems):
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
        longest = max(range(len(row)), key=lambda i: len(row[i]))
        if len(row[longest]) > LONG_FIELD:
            problems.append(f"styles.csv line {line}: {header[longest]} is {len(row[longest]):,} characters long; "
                            "kept, but check the row")
        seen.add(pid)
        ids.append(pid)
        names.append(row[name_col].strip())
        for t in TASKS:
            labels[t].append(row[col[t]].strip())
    return Catalog(root, ids, labels, names, problems)


def _decode(path: Path) -> tuple[str, str | None]:
    """The file's text, and a note saying which encoding it was read with when that is not UTF-8."""
    data = path.read_bytes()

    def where(e: UnicodeDecodeError) -> str:
        line = data.count(b"\n", 0, e.start) + 1
        return f"line {line} (byte 0x{data[e.start]:02x})"

    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        not_utf8 = where(e)
    try:
        return data.decode("cp1252"), f"styles.csv is not UTF-8 from {not_utf8} on; read as cp1252 (Latin-1)"
    except UnicodeDecodeError as e:
        raise CatalogError(f"{path}: neither UTF-8 (at {not_utf8}) nor cp1252/Latin-1 (at {where(e)}); "
                           "save it as UTF-8") from None


def _rows(lines: list[str], problems: list[str]):
    """(line number, fields) for each data line after the header; what cannot be parsed goes to problems."""
    start = 1  # index of the line the current reader started at
    while start < len(lines):
        reader = csv.reader(lines[start:])
        first = start  # index of the first line of the row being read
        try:
            for row in reader:
                end = start + reader.line_num
                if end - first == 1:
                    yield end, row
                else:
                    yield from _one_row_per_line(lines, first, end, problems)
                first = end
            return
        except csv.Error:  # e.g. a field over csv's size limit: _one_row_per_line names the line
            start += reader.line_num
            yield from _one_row_per_line(lines, first, start, problems)


def _one_row_per_line(lines: list[str], first: int, end: int, problems: list[str]):
    """Lines first..end-1, each parsed on its own: a quote still open at the end of a line closes there."""
    if end - first > 1:
        problems.append(f"styles.csv line {first + 1}: a quote opened here runs on to line {end} (a stray quote or a "
                        "field with a line break); each line read as its own row")
    for i in range(first, end):
        try:
            yield i + 1, next(csv.reader([lines[i]]), [])
        except csv.Error as e:
            problems.append(f"styles.csv line {i + 1}: {e}; skipped")
