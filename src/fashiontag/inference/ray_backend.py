"""Tagging a whole catalog on a Ray cluster: `fashiontag predict SOURCE... --out DIR --on ray[://ADDRESS]`.

A Ray Data pipeline in three stages, streamed so that no stage holds the catalog:
  read   tasks open each photo (local file or object in any pyarrow/fsspec filesystem) and letterbox it;
  tag    an actor pool, one model load per actor, tags batches of letterboxed photos;
  write  tasks write each few thousand rows as one Parquet shard in --out, published whole or not at all.

Resumable: a shard holds predict's columns plus each photo's source size and modification time, so a re-run with
the same --out tags only the photos that no shard holds in their current version. A job killed halfway loses only
the shards in flight. Ray is imported by this module only, and the CLI imports it only for --on: `import
fashiontag` never needs Ray.
"""

from __future__ import annotations

import io
import os
import sys
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data import Datasink
from ray.data.block import BlockAccessor

from fashiontag.data.photos import IMAGE_SUFFIXES, ImageError, PhotoInput, iter_image_paths
from fashiontag.inference.predict import printable, printable_row, tag_row, write_rows
from fashiontag.inference.tagger import PhotoResult, Tagger, has_review_columns

# What a re-run compares to decide that a photo is already tagged: the same file in the same version.
VERSION_KEY = ["path", "size", "mtime_ns"]
SHARD_PREFIX = "tags-"
CONNECT_TRIES, CONNECT_WAIT_S = 3, 5.0
CSV_NAME = "tags.csv"
BATCH_SIZE = 256  # photos per read task and per forward pass of an actor
SHARD_ROWS = 4096  # rows per shard at least (the last may have fewer): what a killed job loses per write in flight


def connect(address: str | None, tries: int = CONNECT_TRIES) -> None:
    """ray.init(address). Through Ray Client the head starts a server process for each connection, and on a busy
    head that start can fail ("Starting Ray client server failed"); the next try gets a fresh one."""
    for attempt in range(1, tries + 1):
        try:
            ray.init(address)
            return
        except ConnectionAbortedError as e:
            ray.shutdown()
            if attempt == tries:
                raise
            print(f"warning: connecting to {address} failed ({str(e).strip().splitlines()[-1]}); trying again",
                  file=sys.stderr)
            time.sleep(CONNECT_WAIT_S)


def tag_on_ray(sources: Iterable[str], out: str, *, address: str | None = None, engine: str = "onnx",
               model: str | None = None, top_k: int = 1, min_confidence: float | None = None, flip: bool = False,
               csv: bool = False, actors: int | None = None, batch_size: int = BATCH_SIZE,
               shard_rows: int = SHARD_ROWS, progress: bool = False) -> dict:
    """Tag every photo under `sources` (local files and folders, or URIs such as s3://bucket/prefix/) into Parquet
    shards in `out` (a local folder or URI), skipping photos that earlier runs into the same `out` tagged.

    address: a Ray cluster (`ray://host:10001` through Ray Client, or `host:6379`); None uses RAY_ADDRESS, a
    cluster started on this machine, or a new local instance. Ray already initialised in this process is used as
    it is. engine, model, top_k, min_confidence and flip are predict's. actors: tagging actors (default: half the
    cluster's CPUs; the read tasks take the other half, since decoding a photo costs about as much as tagging
    it). csv: also write one merged `tags.csv` in `out`.
    Returns a summary: tagged, errors, skipped, photos_per_s, shards, seconds, out, csv.
    """
    started = time.perf_counter()
    out_fs, out_dir = open_output(out)
    # Loaded once here: a bad model or engine fails before the cluster is touched, and the ONNX export that the
    # actors need is made once rather than by every actor at the same moment.
    tagger = Tagger.load(model, engine=engine, threads=1, flip=flip)
    schema = shard_schema(tagger.columns(top_k, review=has_review_columns(tagger.model, min_confidence)))
    remove_partial_shards(out_fs, out_dir)
    sources = list(sources)
    listing = list_photos(sources)
    todo = listing.join(tagged_versions(out_fs, out_dir), keys=VERSION_KEY, join_type="left anti")
    job = {"sources": sources, "photo_input": tagger.photo_input, "schema": schema, "out_fs": out_fs,
           "out_dir": out_dir, "actors": actors, "batch_size": batch_size, "shard_rows": shard_rows,
           "progress": progress, "tagging": {"model": str(tagger.model_dir.resolve()), "engine": engine,
                                             "flip": flip, "top_k": top_k, "min_confidence": min_confidence}}

    owns_ray = not ray.is_initialized()
    if owns_ray:
        connect(address)
    try:
        if ray.util.client.ray.is_connected():
            # Ray Data's executor needs a full driver, which a Ray Client is not: it runs in a task on the cluster.
            counts = ray.get(ray.remote(num_cpus=0)(_run_pipeline).remote(todo, **job))
        else:
            counts = _run_pipeline(todo, **job)
    finally:
        if owns_ray:
            ray.shutdown()
    seconds = time.perf_counter() - started
    summary = {"tagged": counts["rows"] - counts["errors"], "errors": counts["errors"],
               "skipped": len(listing) - len(todo), "photos_per_s": counts["rows"] / seconds,
               "shards": counts["shards"], "seconds": seconds, "out": out, "csv": None}
    if csv:
        merge_csv(out_fs, out_dir, listing, schema)
        summary["csv"] = uri(out, f"{out_dir}/{CSV_NAME}") if "://" in out else str(Path(out) / CSV_NAME)
    return summary


def _run_pipeline(todo: pa.Table, sources: list[str], photo_input: PhotoInput, schema: pa.Schema,
                  out_fs: pafs.FileSystem, out_dir: str, actors: int | None, batch_size: int, shard_rows: int,
                  progress: bool, tagging: dict) -> dict:
    """Runs the pipeline over the photos in todo; returns the rows, errors and shards written."""
    sink = _ShardSink(out_fs, out_dir, shard_rows)
    if not len(todo):
        return sink.counts
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 2)) // 2)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    ds = ray.data.from_arrow(todo.select(["path", "key", "source", "size", "mtime_ns"]),
                             override_num_blocks=-(-len(todo) // batch_size))
    # Half a CPU per read task: two reads share a core, hiding object-storage latency. Being unlike the actors'
    # one CPU also keeps Ray Data from fusing the reads into the actors, which would leave decoding to them alone.
    ds = ds.map_batches(_read_photos, batch_size=batch_size, batch_format="numpy", num_cpus=0.5,
                        fn_kwargs={"filesystems": [filesystem(s)[0] for s in sources], "photo_input": photo_input})
    ds = ds.map_batches(_TagActor, batch_size=batch_size, batch_format="numpy", num_cpus=1,
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        fn_constructor_kwargs={"schema": schema, **tagging})
    # Writing a shard is mostly waiting on storage: it reserves no CPU, so it never queues behind the others.
    ds.write_datasink(sink, ray_remote_args={"num_cpus": 0})
    return sink.counts


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for a local path or a URI. pyarrow's own filesystems (local,
    S3, GCS, HDFS, Azure) come first; any other scheme that an installed fsspec package knows is wrapped."""
    if "://" not in location:
        return pafs.LocalFileSystem(), str(Path(location).absolute())
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec
        fs, path = fsspec.core.url_to_fs(location)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def open_output(out: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and folder of --out, made if missing and proven writable by writing a file into it, before
    any photo is read: a file in the way, a read-only place or an unreachable bucket is one clear ValueError
    rather than a traceback from the cluster after the photos were tagged."""
    try:
        fs, folder = filesystem(out)
        if fs.get_file_info(folder).type == pafs.FileType.File:
            raise ValueError(f"--out {out} is a file: --on ray writes Parquet shards into a folder; name one")
        fs.create_dir(folder, recursive=True)
        # Named as a shard being written is: should this run be killed right here, the next one removes it.
        probe = f"{folder}/.{SHARD_PREFIX}{uuid.uuid4().hex}.tmp"
        with fs.open_output_stream(probe):
            pass
        fs.delete_file(probe)
    except (OSError, ImportError, pa.ArrowException) as e:  # pyarrow's and fsspec's ways of saying "not here"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        shown = out.split("?", 1)[0] if "://" in out else out  # a URI's options may hold credentials
        raise ValueError(f"--out {shown} cannot be written: {reason}") from None
    return fs, folder


def uri(location: str, path: str) -> str:
    """A path inside the filesystem of the URI location, as a URI of the same scheme: without the location's
    credentials and options, which must not end up in rows and messages."""
    return f"{location.split('://', 1)[0]}://{path}"


def list_photos(sources: list[str]) -> pa.Table:
    """One row per photo: path (as predict writes it: printable), key (where its filesystem finds it: the name's
    bytes, which need not be UTF-8), source (index into sources), size and mtime_ns. Local sources are walked as
    predict walks them; a path that does not exist gets a row too, with size -1, so that it is reported like any
    unreadable photo."""
    rows: dict[str, list] = {"path": [], "key": [], "source": [], "size": [], "mtime_ns": []}

    def add(path: str, key: str, source: int, size: int, mtime_ns: int) -> None:
        for name, value in zip(rows, (printable(path), os.fsencode(key), source, size, mtime_ns)):
            rows[name].append(value)

    for i, source in enumerate(sources):
        fs, base = filesystem(source)
        if "://" not in source:
            for path in iter_image_paths([source]):
                try:
                    stat = os.stat(path)
                    add(str(path), str(path.absolute()), i, stat.st_size, stat.st_mtime_ns)
                except OSError:
                    add(str(path), str(path.absolute()), i, -1, -1)
            continue
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.Directory:
            infos = [f for f in fs.get_file_info(pafs.FileSelector(base, recursive=True))
                     if f.type == pafs.FileType.File and PurePosixPath(f.path).suffix.lower() in IMAGE_SUFFIXES]
        else:
            infos = [info]
        for f in infos:
            if f.type == pafs.FileType.File:
                add(uri(source, f.path), f.path, i, f.size, f.mtime_ns)
            else:
                add(uri(source, f.path), f.path, i, -1, -1)
    return pa.table(rows, schema=pa.schema([("path", pa.string()), ("key", pa.binary()), ("source", pa.int32()),
                                            ("size", pa.int64()), ("mtime_ns", pa.int64())]))


def shard_schema(columns: list[str]) -> pa.Schema:
    """predict's columns, then the source version that a re-run compares."""
    kinds = {"_confidence": pa.float64(), "_needs_review": pa.bool_()}
    fields = [(c, next((k for end, k in kinds.items() if c.endswith(end)), pa.string())) for c in columns]
    return pa.schema(fields + [("size", pa.int64()), ("mtime_ns", pa.int64())])


def shard_paths(fs: pafs.FileSystem, folder: str) -> list[str]:
    return sorted(f.path for f in fs.get_file_info(pafs.FileSelector(folder))
                  if PurePosixPath(f.path).name.startswith(SHARD_PREFIX) and f.path.endswith(".parquet"))


def remove_partial_shards(fs: pafs.FileSystem, folder: str) -> None:
    """Deletes the temporary files of shards whose writers were killed (see _ShardSink)."""
    for f in fs.get_file_info(pafs.FileSelector(folder)):
        name = PurePosixPath(f.path).name
        if name.startswith(f".{SHARD_PREFIX}") and name.endswith(".tmp"):
            fs.delete_file(f.path)


def tagged_versions(fs: pafs.FileSystem, folder: str) -> pa.Table:
    """The (path, size, mtime_ns) of every photo that a shard in folder holds."""
    shards = shard_paths(fs, folder)
    if not shards:
        return pa.table({"path": pa.array([], pa.string()), "size": pa.array([], pa.int64()),
                         "mtime_ns": pa.array([], pa.int64())})
    return pads.dataset(shards, filesystem=fs, format="parquet").to_table(columns=VERSION_KEY)


def _read(fs: pafs.FileSystem, key: bytes, photo_input: PhotoInput) -> tuple[np.ndarray | None, str]:
    """A letterboxed photo, or None and why it cannot be read, in predict's words."""
    try:
        if fs.type_name == "local":
            return photo_input.load(os.fsdecode(key)), ""  # by path, exactly as predict reads it
        with fs.open_input_file(os.fsdecode(key)) as f:
            return photo_input.load(f.read()), ""
    except ImageError as e:
        return None, str(e)
    except FileNotFoundError:
        return None, "file not found"
    except OSError as e:
        return None, f"cannot read file ({e.strerror or e})"


def _read_photos(batch: dict[str, np.ndarray], filesystems: list[pafs.FileSystem],
                 photo_input: PhotoInput) -> dict[str, np.ndarray]:
    pixels = np.zeros((len(batch["key"]), *photo_input.hw, 3), np.uint8)
    errors = []
    for i, (key, source) in enumerate(zip(batch["key"], batch["source"])):
        arr, error = _read(filesystems[source], key, photo_input)
        errors.append(error)
        if arr is not None:
            pixels[i] = arr
    return {"path": batch["path"], "size": batch["size"], "mtime_ns": batch["mtime_ns"], "pixels": pixels,
            "error": np.array(errors, dtype=object)}


class _TagActor:
    """One model per actor, loaded when Ray starts the actor and reused for every batch it is sent."""

    def __init__(self, schema: pa.Schema, model: str, engine: str, flip: bool, top_k: int,
                 min_confidence: float | None):
        self.tagger = Tagger.load(model, engine=engine, threads=1, flip=flip)
        self.schema, self.top_k, self.min_confidence = schema, top_k, min_confidence

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        readable = batch["error"] == ""
        results = iter(self.tagger.tag_pixels(batch["pixels"][readable], self.top_k, self.min_confidence))
        review = has_review_columns(self.tagger.model, self.min_confidence)
        # printable: an error message may quote the file's name, which Parquet's UTF-8 strings cannot hold as is.
        rows = [printable_row(tag_row(path, next(results) if ok else PhotoResult(error=error), self.top_k, review))
                | {"size": size, "mtime_ns": mtime_ns}
                for path, ok, error, size, mtime_ns
                in zip(batch["path"], readable, batch["error"], batch["size"], batch["mtime_ns"])]
        return pa.Table.from_pylist(rows, schema=self.schema)


class _ShardSink(Datasink):
    """Writes each shard_rows rows or so (the rows of one write task) as one new shard, and counts them.

    Locally a shard is written to a hidden temporary file and renamed into place, so a killed writer never leaves
    half a shard (a re-run deletes the temporary file); an object store publishes an upload only when it
    completes."""

    def __init__(self, fs: pafs.FileSystem, folder: str, shard_rows: int):
        self.fs, self.folder, self.shard_rows = fs, folder, shard_rows
        self.counts = {"rows": 0, "errors": 0, "shards": 0}

    @property
    def min_rows_per_write(self) -> int:
        return self.shard_rows

    def write(self, blocks, ctx) -> dict:
        rows = pa.concat_tables([BlockAccessor.for_block(b).to_arrow() for b in blocks])
        name = f"{SHARD_PREFIX}{uuid.uuid4().hex}.parquet"
        final = f"{self.folder}/{name}"
        tmp = f"{self.folder}/.{name}.tmp" if self.fs.type_name == "local" else final
        pq.write_table(rows, tmp, filesystem=self.fs)
        if tmp != final:
            self.fs.move(tmp, final)
        return {"rows": rows.num_rows, "errors": pc.sum(pc.not_equal(rows["error"], "")).as_py() or 0}

    def on_write_complete(self, write_result) -> None:
        for shard in write_result.write_returns:
            self.counts["rows"] += shard["rows"]
            self.counts["errors"] += shard["errors"]
            self.counts["shards"] += 1


def merge_csv(fs: pafs.FileSystem, folder: str, listing: pa.Table, schema: pa.Schema) -> None:
    """One CSV of predict's columns, sorted by path, for the photos of this run's sources in their current
    version: a photo that changed since an earlier run was tagged again, and only its new row is kept."""
    rows = pads.dataset(shard_paths(fs, folder), filesystem=fs, format="parquet", schema=schema).to_table()
    rows = rows.join(listing.select(VERSION_KEY), keys=VERSION_KEY, join_type="left semi").sort_by("path")
    columns = [c for c in schema.names if c not in VERSION_KEY[1:]]
    # predict's own writer, so that the file reads exactly like predict's; an unreadable photo's missing tags
    # (nulls in the shards) become empty cells there too.
    with io.TextIOWrapper(fs.open_output_stream(f"{folder}/{CSV_NAME}"), newline="") as f:
        write_rows((row for batch in rows.select(columns).to_batches() for row in batch.to_pylist()), columns, f)
