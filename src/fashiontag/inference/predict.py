"""`fashiontag predict`: photo files and folders (or a catalog's rows: photo and title) in, one row of tags per
photo out (CSV, TSV or JSON Lines).

Streams in constant memory: folders are walked lazily, decoding threads read the next batches while the model
tags this one, and rows are written as they come. Nothing is lost quietly: an unreadable photo gets a row with its
error, a missing path or unreadable folder is reported, and the output file appears whole or not at all.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterable, Iterator

from tqdm import tqdm

from fashiontag.atomic import replacing
from fashiontag.data.photos import PhotoInput, Problems, count_images, iter_image_paths, load_batch
from fashiontag.data.spreadsheet import inert_row
from fashiontag.errors import FashiontagError
from fashiontag.inference.tagger import PhotoResult, Tagger, check_options, has_review_columns, row_columns
from fashiontag.model_folder import ModelFolder

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
# torch measured faster than onnx on large batches with bf16 (benchmarks/speed.py); serve picks onnx.
DEFAULT_ENGINE = "torch"


@dataclass(frozen=True)
class Photo:
    """What predict tags: a photo file and, for a catalog's row, the product's id and title."""
    path: Path
    id: str = ""
    title: str | None = None


def tag_paths(tagger: Tagger | Callable[[], Tagger], paths: Iterable[str | Path], batch_size: int = 512,
              top_k: int = 1, min_confidence: float | None = None, workers: int | None = None,
              problems: Problems | None = None, photo_input: PhotoInput | None = None) -> Iterator[dict]:
    """Stream tag rows for image files and folders, in constant memory. Unreadable files give a row with `error`.
    See tag_photos."""
    return tag_photos(tagger, (Photo(p) for p in iter_image_paths(paths, problems)), batch_size, top_k,
                      min_confidence, workers, photo_input)


def tag_photos(tagger: Tagger | Callable[[], Tagger], photos: Iterable[Photo], batch_size: int = 512,
               top_k: int = 1, min_confidence: float | None = None, workers: int | None = None,
               photo_input: PhotoInput | None = None, colours: bool = False, review: bool | None = None
               ) -> Iterator[dict]:
    """Stream tag rows (tag_row) for photos, with their titles where given; with colours, a `colours` column.
    review: whether rows carry <task>_needs_review columns (default: whether the tagger's thresholds can flag a
    tag; give it when `tagger` is a function that loads one). See tag_results."""
    if review is None:
        review = has_review_columns(tagger.model, min_confidence)
    for photo, result in tag_results(tagger, photos, batch_size, top_k, min_confidence, workers, photo_input,
                                     colours):
        row = tag_row(str(photo.path), result, top_k, review, photo.id)
        yield row if photo.title is None else {"title": photo.title, **row}


def tag_results(tagger: Tagger | Callable[[], Tagger], photos: Iterable[Photo], batch_size: int = 512,
                top_k: int = 1, min_confidence: float | None = None, workers: int | None = None,
                photo_input: PhotoInput | None = None, colours: bool = False) -> Iterator[tuple[Photo, PhotoResult]]:
    """Stream (photo, PhotoResult) pairs in the photos' order, in constant memory; a photo that cannot be read gets
    a result with `error` set. Decoding threads work on the next batches while the model tags this one and the
    caller uses the results. `tagger` may be a function that loads one: decoding then starts while the model loads
    (photo_input needed). workers: decoding threads; None: half the cores (thread_split), and every core once
    waiting for decoded photos takes longer than tagging them (full-size photos: the decoders release the GIL)."""
    files = iter(photos)
    cores = os.cpu_count() or 1
    limit = workers or thread_split()[1]
    photo_input = photo_input or tagger.photo_input
    with ThreadPoolExecutor(workers or max(limit, cores), thread_name_prefix="fashiontag-decode") as pool:
        ahead: deque[tuple[list[Photo], Future]] = deque()

        def read_ahead() -> None:  # one batch per decoding thread, plus one ready and waiting
            while len(ahead) <= limit and (batch := list(islice(files, batch_size))):
                ahead.append((batch, pool.submit(load_batch, [p.path for p in batch], photo_input)))

        read_ahead()
        if callable(tagger) and not isinstance(tagger, Tagger):
            tagger = tagger()
        while ahead:
            batch, job = ahead.popleft()
            read_ahead()
            started = time.perf_counter()
            pixels, errors = job.result()
            decoded = time.perf_counter()
            titles = [p.title or "" for p, e in zip(batch, errors) if not e] if batch[0].title is not None else None
            results = iter(tagger.tag_pixels(pixels, top_k, min_confidence, titles, colours))
            if workers is None and decoded - started > time.perf_counter() - decoded:
                limit = max(limit, cores)
            for photo, error in zip(batch, errors):
                yield photo, replace(PhotoResult(error=error) if error else next(results), source=str(photo.path))


def tag_row(path: str, result: PhotoResult, top_k: int, review: bool, pid: str = "") -> dict:
    """One output row: path, id (the catalog's, else the file name without its extension), the task columns (none
    for a photo that could not be read or tagged), error (PhotoResult.error). Every writer of rows (predict, Ray)
    makes them here."""
    return {"path": path, "id": pid or PurePosixPath(path).stem, **result.to_row(top_k, review), "error": result.error}


def catalog_photos(data: str, model: ModelFolder, columns: dict[str, str] | None = None, problems: Problems | None = None
                   ) -> list[Photo]:
    """Every row of a catalog read with the model's columns (those named in `columns`, e.g. {"title_column":
    "name"}, replace its own): its photo, id and title. The catalog's malformed rows are reported as problems."""
    from fashiontag.data.catalog import CatalogSpec
    record = {**model.catalog, **{k: v for k, v in (columns or {}).items() if v}}
    catalog = CatalogSpec.from_record(data, record).read()
    for p in catalog.problems:
        (problems or Problems()).warn(p)
    return [Photo(path, pid, title) for path, pid, title in zip(catalog.photos, catalog.ids, catalog.titles)]


def thread_split(cores: int | None = None) -> tuple[int, int]:
    """Inference threads and decoding threads for tagging files: half the cores each. Decoding a photo costs
    about as much CPU as the CNN, and more threads than cores leave OpenMP threads spinning at barriers while
    a descheduled peer holds everyone up."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // 2), max(1, cores - cores // 2)


def output_format(out: str | None, fmt: str | None) -> str:
    """csv, tsv or jsonl: as asked (whatever out's extension, unless it names another of them), else from out's
    extension."""
    if fmt is not None and fmt not in FORMATS.values():
        raise ValueError(f"unknown format {fmt!r}: use {', '.join(FORMATS.values())}")
    if not out:
        return fmt or "csv"
    suffix = Path(out).suffix.lower()
    if fmt is None:
        if suffix not in FORMATS:
            raise ValueError(f"--out {out}: unknown extension {suffix or '(none)'!r}; name the file "
                             f"{', '.join(FORMATS)}, or give --format")
        return FORMATS[suffix]
    if suffix in FORMATS and fmt != FORMATS[suffix]:
        raise ValueError(f"--format {fmt} does not match --out {out}: name the file .{fmt}")
    return fmt


def check_out(out: str) -> None:
    """Refuse an output target that cannot be written, before any photo is tagged."""
    target = Path(out)
    if target.is_dir():
        raise ValueError(f"--out {out} is a folder: name a file, e.g. {target / 'tags.csv'}")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--out {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {out}: folder {parent} is not writable")


def write_rows(rows: Iterable[dict], columns: list[str], out: IO[str], fmt: str = "csv") -> int:
    rows = map(printable_row, rows)
    n = 0
    if fmt in ("csv", "tsv"):
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore",
                                delimiter="\t" if fmt == "tsv" else ",")
        writer.writeheader()
        for row in rows:
            writer.writerow(inert_row(row))
            n += 1
    else:
        for row in rows:
            out.write(json.dumps(row) + "\n")
            n += 1
    return n


def printable(text: str) -> str:
    """text with the bytes of a file name that is not UTF-8 as \\xNN escapes: a Latin-1 "café.jpg" is written
    caf\\xe9.jpg. Python reads such a name as lone surrogates, which no UTF-8 file (nor Parquet) can hold; the escapes
    keep every output UTF-8 and the name recoverable (decode them to bytes), and leave every other text as it is."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte (Windows names, JSON's \ud800): \uXXXX
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable_row(row: dict) -> dict:
    return {k: printable(v) if isinstance(v, str) else v for k, v in row.items()}


class OutputError(FashiontagError, OSError):
    """The output file could not be written (a full disk, a quota): its name and why, in one line."""


@contextmanager
def _sigterm_as_exit(received: list[int]):
    """Inside: SIGTERM (`kill`, a scheduler stopping the job) is recorded in `received`, and the row loop raises
    SystemExit at the next row, so that `finally` blocks run and remove the .partial file; by default it ends the
    process on the spot. Raised from the handler itself, SystemExit could land anywhere in the main thread, inside
    the decoding pool's locks too, and its shutdown then waited for ever. Only where SIGTERM still has Python's
    default action (an application's own handler stays) and in the main thread, the only one that may set it."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def predict(paths: list[str], *, out: str | None = None, model: str | None = None, fmt: str | None = None,
            top_k: int = 1, min_confidence: float | None = None, batch_size: int = 512, progress: bool = False,
            engine: str = DEFAULT_ENGINE, flip: bool = False, data: str | None = None,
            catalog_columns: dict[str, str] | None = None, colours: bool = False) -> dict:
    """The `fashiontag predict` command: tag files and folders, or with `data` every row of a catalog (its photo
    and title, read with the model's columns but for those catalog_columns names: id_column, image_column,
    title_column; rows keyed by the catalog's id, with a title column), into CSV, TSV or JSON lines (stdout without
    `out`).
    colours: a `colours` column with the product's dominant colours (hex, share, nearest colour class).

    min_confidence: the review threshold of every task; None takes the model's own thresholds.
    Returns counts: rows, errors (photos that could not be read), missing (paths), unreadable_folders."""
    check_options(top_k, min_confidence)
    if bool(paths) == bool(data):
        raise ValueError("give photo files or folders, or --data CATALOG, not both" if paths else
                         "nothing to tag: give photo files or folders, or --data CATALOG")
    if out:
        check_out(out)
    fmt = output_format(out, fmt)
    folder = ModelFolder.open(model)  # a bad model folder fails now, before any photo is read
    infer_threads = thread_split()[0]
    problems = Problems()
    columns = row_columns(folder.tasks, top_k, review=has_review_columns(folder, min_confidence))
    if colours:
        columns.insert(-1, "colours")
    if data:
        photos: Iterable[Photo] = catalog_photos(data, folder, catalog_columns, problems)
        total, columns = len(photos), columns[:2] + ["title"] + columns[2:]
    else:
        photos = (Photo(p) for p in iter_image_paths(paths, problems))
        total = count_images(paths) if progress else None
    # The model loads (torch: seconds) while the decoding threads already read the first photos.
    rows = tag_photos(lambda: Tagger.load(folder, engine=engine, threads=infer_threads, flip=flip), photos,
                      batch_size, top_k, min_confidence,
                      photo_input=PhotoInput(folder.input_hw, folder.framing), colours=colours,
                      review=has_review_columns(folder, min_confidence))
    counts = {"rows": 0, "errors": 0}
    bar = tqdm(total=total, desc="tagging", unit="photo", disable=not progress, file=sys.stderr, dynamic_ncols=True)

    stop: list[int] = []  # SIGTERM received (_sigterm_as_exit)

    def counted(rs):
        for r in rs:
            if stop:
                raise SystemExit(128 + stop[0])  # the exit status of a process that SIGTERM ended
            if r["error"]:
                counts["errors"] += 1
                if Path(r["path"]).exists():  # missing paths were reported already
                    problems.warn(f"{r['path']}: {r['error']}")
            bar.update()
            yield r

    try:
        if out:
            tmp = None
            try:
                with _sigterm_as_exit(stop), replacing(out) as tmp, open(tmp, "w", newline="") as f:
                    counts["rows"] = write_rows(counted(rows), columns, f, fmt)
            except OSError as e:
                # Writing's errors name no file (write, flush) or tmp (open, rename); the model's files' errors,
                # raised while the rows are made, name those files and pass as they are.
                if e.filename not in (None, str(tmp)):
                    raise
                raise OutputError(f"cannot write {out}: {e.strerror or e}; no rows were kept") from None
        else:
            counts["rows"] = write_rows(counted(rows), columns, sys.stdout, fmt)
    finally:
        bar.close()
    return counts | {"missing": len(problems.missing), "unreadable_folders": len(problems.unreadable_folders),
                     "duplicate_ids": problems.duplicate_ids}

