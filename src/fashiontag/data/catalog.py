"""Reads a product catalog: the Kaggle "Fashion Product Images" layout (a folder holding styles.csv and
images/<id>.jpg) or any shop's export (a CSV, TSV or JSON Lines file with an id column and, optionally, a photo
column). Every column is kept as text; which of them are tasks is decided by taxonomy.py.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fashiontag.data.photos import IMAGE_SUFFIXES
from fashiontag.data.spreadsheet import restored
from fashiontag.errors import FashiontagError

# ---- The Kaggle preset: the only place that names the Kaggle catalog's columns.
KAGGLE_FILE = "styles.csv"
KAGGLE_TASKS = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
KAGGLE_HIERARCHY = ("articleType", "subCategory", "masterCategory")  # finest first
KAGGLE_TITLE = "productDisplayName"
KAGGLE_COLUMNS = ("id", *KAGGLE_TASKS, "year", KAGGLE_TITLE)
KAGGLE_HW = (80, 60)  # its photos are 60 wide and 80 high
# The original notebook's filtering (protocol "notebook"): these master categories, sub-categories with at least
# a 1% share of what remains, and its three tasks.
NOTEBOOK_MASTER = ("Accessories", "Apparel", "Footwear", "Personal Care")
NOTEBOOK_MIN_SHARE = 0.01
NOTEBOOK_TASKS = ("gender", "masterCategory", "subCategory")

JSON_LINES = (".jsonl", ".ndjson")
DELIMITERS = (",", "\t", ";", "|")
# No product name comes near this; a longer field is most likely rows run together or a broken export.
LONG_FIELD = 1000


@dataclass
class Catalog:
    source: Path                     # the file read
    ids: list[str]
    columns: dict[str, list[str]]    # every column but the id: one stripped text per row ("" when empty)
    photos: list[Path]               # each row's photo file (it may not exist; the photo cache reports that)
    title_column: str = ""           # the column holding product titles, "" when there is none
    kaggle: bool = False             # the Kaggle layout: its preset tasks and hierarchy apply
    problems: list[str] = field(default_factory=list)  # malformed rows, each naming its line

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def root(self) -> Path:
        return self.source.parent

    @property
    def titles(self) -> list[str]:
        return self.columns[self.title_column] if self.title_column else [""] * len(self)

    def content_key(self) -> str:
        """A digest of the catalog file and of every photo's path, size and mtime: changes when the catalog does."""
        h = hashlib.sha1(self.source.read_bytes())
        for path in self.photos:
            try:
                st = os.stat(path)
                h.update(f"{path}:{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                h.update(f"{path}:missing;".encode())
        return h.hexdigest()[:16]


class CatalogError(FashiontagError):
    pass


@dataclass(frozen=True)
class CatalogSpec:
    """Where a catalog is and how to read it: train's --data and column flags, and a model's record of them (the
    columns, not the place), so that evaluation reads another copy of the catalog the same way."""
    data: str
    id_column: str = ""
    image_column: str = ""
    title_column: str = ""
    separator: str = "|"             # between the values of a multi-label cell

    def read(self) -> Catalog:
        return read_catalog(self.data, self.id_column, self.image_column, self.title_column, self.separator)

    def columns(self) -> dict:
        """What model.json records (see from_record)."""
        return {"id_column": self.id_column, "image_column": self.image_column, "title_column": self.title_column,
                "separator": self.separator}

    @classmethod
    def from_record(cls, data: str | Path, record: dict | None) -> CatalogSpec:
        return cls(str(data), **{k: v for k, v in (record or {}).items() if k in cls.__dataclass_fields__})


def with_reviewed(catalog: Catalog, reviewed: str | Path, id_column: str = "") -> tuple[Catalog, set[str]]:
    """The catalog with the rows of a reviewed-tags file (`fashiontag review export`) added, and their ids.

    A reviewed row whose id the catalog has replaces that row's values for the columns the file holds (a person
    checked them last), except its empty cells: an empty cell is an unknown label, and export leaves one where the
    photo had no tag for the task (an audit queues only the tasks it flags), so the catalog's label stays. A new id
    is appended, with its photo from the file's `path` column, else found as images/<id>.<ext> beside the file.
    Cells are read back as export wrote them before making them safe for spreadsheets (spreadsheet.py)."""
    extra = read_catalog(reviewed, id_column=id_column or "id")
    extra.ids = [restored(pid) for pid in extra.ids]
    extra.columns = {c: [restored(v) for v in values] for c, values in extra.columns.items()}
    paths = extra.columns.get("path", [""] * len(extra))
    row_of = {pid: i for i, pid in enumerate(catalog.ids)}
    columns = {c: list(v) for c, v in catalog.columns.items()}
    ids, photos = list(catalog.ids), list(catalog.photos)
    shared = [c for c in extra.columns if c in columns]
    for r, pid in enumerate(extra.ids):
        photo = Path(paths[r]) if paths[r] else None
        if photo is not None and not photo.is_absolute():
            photo = extra.root / photo
        i = row_of.get(pid)
        if i is None:
            i = row_of[pid] = len(ids)
            ids.append(pid)
            photos.append(photo or extra.photos[r])
            for c in columns:
                columns[c].append("")
        elif photo is not None:
            photos[i] = photo
        for c in shared:
            if extra.columns[c][r] != "":
                columns[c][i] = extra.columns[c][r]
    problems = catalog.problems + [f"{extra.source.name}: {p}" for p in extra.problems]
    merged = Catalog(catalog.source, ids, columns, photos, catalog.title_column, catalog.kaggle, problems)
    return merged, set(extra.ids)


CATALOG_SUFFIXES = (".csv", ".tsv", *JSON_LINES)


def did_you_mean(folder: Path) -> str:
    """For a folder without styles.csv given as a catalog: "did you mean shop/catalog.csv?", naming the catalog files
    (CSV, TSV, JSON Lines) in it; "" when it holds none."""
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in CATALOG_SUFFIXES and p.is_file())
    return f"did you mean {' or '.join(map(str, found[:3]))}?" if found else ""


def catalog_file(data: str | Path) -> Path:
    """The file to read: `data` itself, or the styles.csv of a Kaggle-layout folder."""
    path = Path(data)
    if path.is_dir():
        path = path / KAGGLE_FILE
        if not path.is_file():
            raise CatalogError(f"{data} is a folder without {KAGGLE_FILE}; " + (
                did_you_mean(Path(data)) or "pass a catalog file (CSV, TSV or JSON Lines) or a folder holding "
                f"{KAGGLE_FILE} and images/<id>.jpg"))
    elif not path.is_file():
        raise CatalogError(f"{data}: no such catalog file or folder")
    return path


def read_catalog(data: str | Path, id_column: str = "", image_column: str = "", title_column: str = "",
                 separator: str = "|") -> Catalog:
    """Read a catalog file or Kaggle-layout folder. Malformed rows are reported in `problems` (naming their line)
    and skipped; a column named but missing is a CatalogError.

    id_column defaults to "id". image_column names the photo of each row: a path relative to the file, an absolute
    path, or a name found as images/<name>.<any image extension>; without it the photo is images/<id>.<ext>.
    title_column defaults to productDisplayName where the file has it. In JSON Lines, a list is one multi-valued
    cell, joined with `separator`.

    Text files are UTF-8 (a byte-order mark is fine), UTF-16 or UTF-32 (by their byte-order mark, or UTF-16 by its
    NUL bytes), or else cp1252, which covers Latin-1's printable characters; a file that is none is refused, naming
    the line. The delimiter (comma, tab, semicolon or bar) is the one the header line uses most. Each row is one
    line: a quote left open, which would make csv run the following lines into one row, is reported and its lines
    are read one by one."""
    source = catalog_file(data)
    text, encoding_note = _decode(source)
    problems = [encoding_note] if encoding_note else []
    if source.suffix.lower() in JSON_LINES:
        header, json_rows = _json_rows(text, source.name, separator, problems)
    else:
        header, text_rows = _text_rows(text, source, problems)
    kaggle = source.name == KAGGLE_FILE and all(c in header for c in KAGGLE_COLUMNS)
    if source.name == KAGGLE_FILE and not kaggle and not id_column:
        missing = [c for c in KAGGLE_COLUMNS if c not in header]
        raise CatalogError(f"{source}: header lacks column(s) {', '.join(missing)}")
    id_given, id_column = id_column, id_column or "id"
    title_column = title_column or (KAGGLE_TITLE if KAGGLE_TITLE in header else "")

    def rows_of(merge_last: bool):
        return json_rows if source.suffix.lower() in JSON_LINES else text_rows(merge_last)

    for what, name in (("id", id_column), ("image", image_column), ("title", title_column)):
        if name and name not in header:
            hint = "" if what != "id" or id_given else _id_column_hint(header, rows_of(False))
            raise CatalogError(f"{source}: {what} column {name!r} does not exist{hint}; its columns are "
                               f"{', '.join(header)}")

    # Unquoted commas inside a title in the last column (22 rows of the Kaggle file) belong to the title.
    rows = rows_of(title_column == header[-1])
    ids: list[str] = []
    columns: dict[str, list[str]] = {c: [] for c in header if c != id_column}
    seen: set[str] = set()
    for line, row in rows:
        pid = row.get(id_column, "")
        if not pid:
            problems.append(f"{source.name} line {line}: no {id_column}; skipped")
            continue
        if kaggle and not pid.isdigit():  # the Kaggle layout's ids are numbers: anything else is a broken row
            problems.append(f"{source.name} line {line}: id {pid!r} is not a number; skipped")
            continue
        if pid in seen:
            problems.append(f"{source.name} line {line}: {id_column} {pid} listed twice; later row skipped")
            continue
        longest = max(row, key=lambda c: len(row[c]))
        if len(row[longest]) > LONG_FIELD:
            problems.append(f"{source.name} line {line}: {longest} is {len(row[longest]):,} characters long; "
                            "kept, but check the row")
        seen.add(pid)
        ids.append(pid)
        for c, values in columns.items():
            values.append(row.get(c, ""))
    find = _photo_finder(source.parent)
    refs = columns[image_column] if image_column else ids
    photos = [find(ref, by_name=not image_column) for ref in refs]
    return Catalog(source, ids, columns, photos, title_column, kaggle, problems)


def _id_column_hint(header: list[str], rows) -> str:
    """For a catalog read without --id-column that has no "id": the fix, naming the columns that could be the id
    (a value on every row, no value twice, and not photo files)."""
    values: dict[str, list[str]] = {c: [] for c in header}
    for _, row in rows:
        for c in header:
            values[c].append(row.get(c, ""))
    unique = [c for c, v in values.items() if v and all(v) and len(set(v)) == len(v)
              and not all(x.lower().endswith(tuple(IMAGE_SUFFIXES)) for x in v)]
    return ": name the id column with --id-column" + (
        f" (a distinct value on every row: {', '.join(unique[:3])})" if unique else "")


def _photo_finder(root: Path):
    """ref -> photo path: a path with an image extension is taken relative to root (or as is, if absolute);
    anything else is a name looked up as images/<name>.<ext>, listing images/ once for all rows."""
    index: dict[str, Path] = {}

    def by_stem(name: str) -> Path:
        if not index and (root / "images").is_dir():
            with os.scandir(root / "images") as entries:
                for e in entries:
                    stem, ext = os.path.splitext(e.name)
                    # .jpg first: the Kaggle layout's own extension wins where a photo exists in two formats.
                    if ext.lower() in IMAGE_SUFFIXES and (stem not in index or ext.lower() == ".jpg"):
                        index[stem] = Path(e.path)
        return index.get(name, root / "images" / f"{name}.jpg")

    def find(ref: str, by_name: bool) -> Path:
        path = Path(ref)
        if not by_name and path.suffix.lower() in IMAGE_SUFFIXES:
            return path if path.is_absolute() else root / path
        return by_stem(ref)

    return find


def _decode(path: Path) -> tuple[str, str | None]:
    """The file's text, and a note saying which encoding it was read with when that is not UTF-8."""
    data = path.read_bytes()

    def where(e: UnicodeDecodeError) -> str:
        line = data.count(b"\n", 0, e.start) + 1
        return f"line {line} (byte 0x{data[e.start]:02x})"

    # Excel's "Unicode text" and PowerShell write UTF-16, which cp1252 would read as every other character NUL.
    wide = _wide_encoding(data)
    if wide:
        try:
            return data.decode(wide), None
        except UnicodeDecodeError as e:
            raise CatalogError(f"{path}: looks like {wide.upper()} but is not valid {wide.upper()} at {where(e)}; "
                               "save it as UTF-8") from None
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        not_utf8 = where(e)
    try:
        return data.decode("cp1252"), f"{path.name} is not UTF-8 from {not_utf8} on; read as cp1252 (Latin-1)"
    except UnicodeDecodeError as e:
        raise CatalogError(f"{path}: neither UTF-8 (at {not_utf8}) nor cp1252/Latin-1 (at {where(e)}); "
                           "save it as UTF-8") from None


# Byte-order marks, UTF-32's first: UTF-32 LE's begins with UTF-16 LE's. The codecs named read the mark.
WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
             (codecs.BOM_UTF16_BE, "utf-16"))


def _wide_encoding(data: bytes) -> str | None:
    """UTF-32 or UTF-16 by the file's byte-order mark; else UTF-16 LE or BE when NUL bytes fill one half of the
    byte pairs (the high bytes of mostly-ASCII text) and hardly any of the other; else None. A stray NUL in a UTF-8
    or cp1252 file is no reason to read it otherwise."""
    found = next((name for bom, name in WIDE_BOMS if data.startswith(bom)), None)
    if found:
        return found
    sample = data[:4096]
    odd, even = sample[1::2].count(0), sample[0::2].count(0)
    if max(odd, even) * 4 <= len(sample) or min(odd, even) * 8 > max(odd, even):
        return None
    return "utf-16-le" if odd > even else "utf-16-be"


def _json_rows(text: str, name: str, separator: str, problems: list[str]) -> tuple[list[str], list]:
    """The keys of every object in order of first appearance, and (line, {key: text}) per line."""
    header: dict[str, None] = {}
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{name} line {i}: not JSON ({e.msg}); skipped")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{name} line {i}: not a JSON object; skipped")
            continue
        header.update(dict.fromkeys(obj))
        rows.append((i, {k: _cell(v, separator) for k, v in obj.items()}))
    return list(header), rows


def _cell(value, separator: str) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return separator.join(_cell(v, separator) for v in value)
    return str(value).strip()


def _text_rows(text: str, source: Path, problems: list[str]):
    """The header of a delimited text file, and rows(merge_last) yielding (line, {column: text}) for each
    well-formed data line; with merge_last, extra fields are joined into the last column."""
    lines = io.StringIO(text, newline="").readlines()
    first = lines[0] if lines else ""
    delimiter = "\t" if source.suffix.lower() == ".tsv" else max(DELIMITERS, key=first.count)
    header = [h.strip() for h in next(csv.reader([first], delimiter=delimiter), [])]
    if not header or len(set(header)) != len(header):
        raise CatalogError(f"{source}: the header line must name each column once, got {header!r}")

    def rows(merge_last: bool):
        last = len(header) - 1
        for line, row in _rows(lines, delimiter, source.name, problems):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) > len(header) and merge_last:
                row = row[:last] + [delimiter.join(row[last:])]
            if len(row) != len(header):
                problems.append(f"{source.name} line {line}: {len(row)} fields, expected {len(header)}; skipped")
                continue
            yield line, {c: v.strip() for c, v in zip(header, row)}

    return header, rows


def _rows(lines: list[str], delimiter: str, name: str, problems: list[str]):
    """(line number, fields) for each data line after the header; what cannot be parsed goes to problems."""
    start = 1  # index of the line the current reader started at
    while start < len(lines):
        reader = csv.reader(lines[start:], delimiter=delimiter)
        first = start  # index of the first line of the row being read
        try:
            for row in reader:
                end = start + reader.line_num
                if end - first == 1:
                    yield end, row
                else:
                    yield from _one_row_per_line(lines, first, end, delimiter, name, problems)
                first = end
            return
        except csv.Error:  # e.g. a field over csv's size limit: _one_row_per_line names the line
            start += reader.line_num
            yield from _one_row_per_line(lines, first, start, delimiter, name, problems)


def _one_row_per_line(lines: list[str], first: int, end: int, delimiter: str, name: str, problems: list[str]):
    """Lines first..end-1, each parsed on its own: a quote still open at the end of a line closes there."""
    if end - first > 1:
        problems.append(f"{name} line {first + 1}: a quote opened here runs on to line {end} (a stray quote or a "
                        "field with a line break); each line read as its own row")
    for i in range(first, end):
        try:
            yield i + 1, next(csv.reader([lines[i]], delimiter=delimiter), [])
        except csv.Error as e:
            problems.append(f"{name} line {i + 1}: {e}; skipped")
