"""The HTTP service: POST photos, get tags back; a web page at / for people, JSON under /v1 for programs.

Concurrent requests are micro-batched: each request's decoded photos go on a queue, and one worker gathers what is
pending (up to `max_batch` photos; `max_wait_ms` > 0 also waits that long for more) into a single forward pass, run
in a thread so the event loop keeps accepting uploads meanwhile. While one pass runs the next batch fills up, so
under load the batches grow by themselves and throughput rises instead of latency; waiting on top of that only
added latency in benchmarks/serve.py, hence no wait by default.

Uploads live in memory only (never spooled to disk, however large, within the limits) and nothing a request names
is ever opened as a path: the web page's files are read once at start-up and served from memory by exact name.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
try:
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header
except ImportError:  # python-multipart before 0.0.13 named its module multipart
    from multipart.exceptions import FormParserError
    from multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException

from fashiontag import __version__
from fashiontag.images import MAX_PIXELS, ImageError, decode
from fashiontag.tagger import PhotoResult, Tagger

WEB_DIR = Path(__file__).parent / "web"
WEB_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
             ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
MAX_TOP_K = 20
FILE_FIELD = "files"
OPTION_FIELDS = ("top_k", "min_confidence", "partial")
MiB = 1024 * 1024
# A service's passes are small (a few photos each); at 1-16 photos onnxruntime's passes take a quarter to half the
# time of torch's, whose bf16 kernels pay a fixed cost per call (benchmarks/speed.py prints both).
SERVE_ENGINE = "onnx"


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (containers)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


class ServeError(Exception):
    """A request the service refuses: HTTP status, a short code, a sentence, and the files concerned."""

    def __init__(self, status: int, code: str, message: str, files: list[dict] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.files = status, code, message, files or []


def error_response(status: int, code: str, message: str, files: list[dict] | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, "files": files or []}, status, headers=headers)


# ---------------------------------------------------------------------------------------------------------- uploads

@dataclass
class Upload:
    index: int
    name: str
    content_type: str
    data: bytearray = field(default_factory=bytearray)
    status: int = 0      # set when the file is refused: HTTP status ...
    reason: str = ""     # ... and why

    def refuse(self, status: int, reason: str) -> None:
        if not self.status:
            self.status, self.reason = status, reason
            self.data = bytearray()

    def describe(self) -> dict:
        return {"file": self.name, "index": self.index, "reason": self.reason}


def safe_name(raw: bytes | str | None, index: int) -> str:
    """The uploaded file's name for messages only: last path component, printable, at most 200 characters."""
    name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")
    name = PurePosixPath(name.replace("\\", "/")).name
    name = re.sub(r"[\x00-\x1f\x7f]", "", name)[:200]
    return name or f"{FILE_FIELD}[{index}]"


def accepted_type(content_type: str) -> bool:
    """Browsers and curl send image/* or application/octet-stream; decoding decides whether it is really an image."""
    ct = content_type.split(";")[0].strip().lower()
    return ct in ("", "application/octet-stream") or ct.startswith("image/")


class FormReader:
    """Streams a multipart/form-data body into memory, enforcing the limits as it goes.

    Refusals of single files (too big, wrong type) are recorded on the file; limits of the whole request raise
    ServeError once the body has been read. Past `max_upload_bytes` nothing more is kept, but the body is still read
    (up to a drain cap) so that the client gets to see the 413 instead of a reset connection.
    """

    def __init__(self, boundary: bytes, max_files: int, max_file_bytes: int, max_upload_bytes: int):
        self.max_files, self.max_file_bytes, self.max_upload_bytes = max_files, max_file_bytes, max_upload_bytes
        self.files: list[Upload] = []
        self.fields: dict[str, str] = {}
        self.file_parts = 0
        self.received = 0      # bytes of body read
        self.kept = 0          # bytes of photos held in memory
        self.over = False      # past max_upload_bytes: nothing more is kept or parsed
        self.over_part: Upload | None = None  # the file that crossed the limit, when known
        self._part: Upload | None = None
        self._field: tuple[str, bytearray] | None = None
        self._headers: dict[bytes, bytes] = {}
        self._hname = self._hvalue = b""
        self._error: ServeError | None = None
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done})

    def _begin(self) -> None:
        self._part, self._field, self._headers = None, None, {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _header_end(self) -> None:
        if len(self._headers) < 16 and len(self._hvalue) < 4096:
            self._headers[self._hname.strip().lower()] = self._hvalue.strip()
        self._hname = self._hvalue = b""

    def _headers_done(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in opts:
            index = self.file_parts
            self.file_parts += 1
            upload = Upload(index, safe_name(opts[b"filename"], index),
                            self._headers.get(b"content-type", b"").decode("latin-1"))
            if name != FILE_FIELD:
                self._fail(ServeError(400, "unexpected_field", f"file sent in field {name!r}: send photos in the "
                                      f"repeatable field {FILE_FIELD!r}", [upload.describe()]))
            elif self.file_parts <= self.max_files:
                if not accepted_type(upload.content_type):
                    upload.refuse(415, f"content type {upload.content_type!r} is not an image")
                self.files.append(upload)
                self._part = upload
        elif name in OPTION_FIELDS:
            self._field = (name, bytearray())
        elif name == FILE_FIELD:
            self._fail(ServeError(400, "not_a_file", f"field {FILE_FIELD!r} must carry files (with a filename), "
                                  "not text"))
        else:
            self._fail(ServeError(400, "unexpected_field", f"unknown form field {name!r}: expected "
                                  f"{FILE_FIELD!r}, {', '.join(map(repr, OPTION_FIELDS))}"))

    def _data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self.over:
            return
        if self._part is not None and not self._part.status:
            if len(self._part.data) + n > self.max_file_bytes:
                self.kept -= len(self._part.data)
                self._part.refuse(413, f"larger than the {self.max_file_bytes / MiB:g} MiB limit per photo")
            elif self.kept + n > self.max_upload_bytes:
                self._over(self._part)
            else:
                self._part.data += data[start:end]
                self.kept += n
        elif self._field is not None and len(self._field[1]) + n <= 100:
            self._field[1].extend(data[start:end])

    def _over(self, part: Upload | None) -> None:
        self.over, self.over_part = True, part
        for u in self.files:
            u.data = bytearray()

    def _end(self) -> None:
        if self._field is not None:
            self.fields[self._field[0]] = self._field[1].decode("utf-8", "replace").strip()
        self._part = self._field = None

    def _fail(self, error: ServeError) -> None:
        self._error = self._error or error

    def feed(self, chunk: bytes) -> bool:
        """Parse a chunk; False once the body is so far over the limit that reading on is not worth it."""
        self.received += len(chunk)
        if not self.over:
            try:
                self.parser.write(chunk)
            except FormParserError as e:
                raise ServeError(400, "bad_multipart", f"malformed multipart/form-data body ({e})") from None
        if self.received > self.max_upload_bytes + MiB and not self.over:  # photos plus generous form overhead
            self._over(self._part)
        return self.received <= 2 * self.max_upload_bytes + 8 * MiB

    def finish(self) -> list[Upload]:
        if self.over:
            files = [{"file": self.over_part.name, "index": self.over_part.index,
                      "reason": "the upload crossed the request size limit in this file"}] if self.over_part else []
            raise ServeError(413, "upload_too_large", f"the request body is over the {self.max_upload_bytes / MiB:g}"
                             " MiB limit: send fewer or smaller photos per request", files)
        try:
            self.parser.finalize()
        except FormParserError as e:
            raise ServeError(400, "bad_multipart", f"malformed multipart/form-data body ({e})") from None
        if self._error:
            raise self._error
        if self.file_parts > self.max_files:
            raise ServeError(413, "too_many_files", f"{self.file_parts} files sent; at most {self.max_files} per "
                             "request")
        if not self.files:
            raise ServeError(400, "no_files", f"no photos: send one or more in the multipart field {FILE_FIELD!r}")
        return self.files


async def read_form(request: Request, max_files: int, max_file_bytes: int, max_upload_bytes: int
                    ) -> tuple[list[Upload], dict[str, str]]:
    ctype = request.headers.get("content-type", "")
    kind, opts = parse_options_header(ctype)
    if kind != b"multipart/form-data":
        raise ServeError(415, "unsupported_media_type", f"expected multipart/form-data with photos in the field "
                         f"{FILE_FIELD!r}, got {ctype or 'no content type'!r}")
    if not opts.get(b"boundary"):
        raise ServeError(400, "bad_multipart", "multipart/form-data without a boundary")
    reader = FormReader(opts[b"boundary"], max_files, max_file_bytes, max_upload_bytes)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > 2 * max_upload_bytes + 8 * MiB:
        raise ServeError(413, "upload_too_large", f"the request body ({int(declared) / MiB:.1f} MiB) is over the "
                         f"{max_upload_bytes / MiB:g} MiB limit")
    async for chunk in request.stream():
        if chunk and not reader.feed(chunk):
            break
    return reader.finish(), reader.fields


def parse_options(query, form: dict[str, str]) -> tuple[int, float, bool]:
    """top_k, min_confidence and partial, from the form or else the query string."""
    def get(name):
        value = form.get(name) or query.get(name)
        return value if value not in (None, "") else None

    problems = []
    top_k, min_conf, partial = 1, 0.0, False
    if (v := get("top_k")) is not None:
        try:
            top_k = int(v)
            if not 1 <= top_k <= MAX_TOP_K:
                raise ValueError
        except ValueError:
            problems.append(f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {v!r}")
    if (v := get("min_confidence")) is not None:
        try:
            min_conf = float(v)
            if not 0.0 <= min_conf <= 1.0:
                raise ValueError
        except ValueError:
            problems.append(f"min_confidence must be a number from 0 to 1, got {v!r}")
    if (v := get("partial")) is not None:
        if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
            problems.append(f"partial must be true or false, got {v!r}")
        partial = v.lower() in ("true", "1", "yes")
    if problems:
        raise ServeError(422, "invalid_option", "; ".join(problems))
    return top_k, min_conf, partial


def declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG, GIF or BMP header, without decoding."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return w, abs(h)
    return None


def clean_reason(reason: str, data: bytes) -> str:
    """PIL's messages name the in-memory buffer (<_io.BytesIO object at 0x...>) and call a zero-pixel image
    unidentifiable; say what is meant instead."""
    if "cannot identify image file" in reason:
        size = declared_size(data)
        if size and 0 in size:
            return f"zero-pixel image ({size[0]}x{size[1]})"
        return "not a readable image (format not recognised)"
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", reason)


def decode_uploads(uploads: list[Upload], hw) -> list[np.ndarray | None]:
    out = []
    for u in uploads:
        arr = None
        if not u.status:
            try:
                arr = decode(bytes(u.data), hw)
            except ImageError as e:
                u.refuse(422, clean_reason(str(e), bytes(u.data[:32])))
        u.data = bytearray()  # done with the bytes
        out.append(arr)
    return out


# ----------------------------------------------------------------------------------------------------- micro-batching

@dataclass
class _Job:
    pixels: np.ndarray
    top_k: int
    future: asyncio.Future


class MicroBatcher:
    """Gathers photos from concurrent requests into one `tagger.tags` call, run in its own inference thread."""

    def __init__(self, tagger: Tagger, max_batch: int = 64, max_wait_ms: float = 0.0, threads: int | None = None):
        self.tagger, self.max_batch, self.max_wait = tagger, max_batch, max_wait_ms / 1000
        self.threads = threads
        self.pending = 0  # photos queued or being tagged
        self.stats = {"requests": 0, "photos": 0, "batches": 0, "largest_batch": 0, "busy_seconds": 0.0}
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._carry: _Job | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.ready = False

    async def start(self, warm_up: bool = True) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fashiontag-infer")
        if warm_up:  # the first forward pass allocates and picks kernels: do it before the first customer
            blank = np.full((1, *self.tagger.input_hw, 3), 255, np.uint8)
            await asyncio.get_running_loop().run_in_executor(self._executor, self.tagger.tag_pixels, blank)
        self._task = asyncio.create_task(self._run(), name="fashiontag-batcher")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        leftover = [self._carry] if self._carry else []
        while self._queue and not self._queue.empty():
            leftover.append(self._queue.get_nowait())
        for job in leftover:
            if not job.future.done():
                job.future.set_exception(ServeError(503, "shutting_down", "the server is shutting down"))
        if self._executor:
            self._executor.shutdown(wait=True)

    async def tag(self, pixels: np.ndarray, top_k: int = 1) -> list[PhotoResult]:
        """Results (see Tagger.tag_pixels) for (N, H, W, 3) uint8 photos, with up to top_k - 1 runners-up."""
        if not self.ready or self._queue is None:
            raise ServeError(503, "not_ready", "the model is still loading")
        future = asyncio.get_running_loop().create_future()
        self.pending += len(pixels)
        self.stats["requests"] += 1
        try:
            self._queue.put_nowait(_Job(pixels, top_k, future))
            return await future
        finally:
            self.pending -= len(pixels)

    async def _gather(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        first, self._carry = self._carry or await self._queue.get(), None
        jobs, size = [first], len(first.pixels)
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if size + len(job.pixels) > self.max_batch:
                self._carry = job  # starts the next batch; a request is never split across passes
                break
            jobs.append(job)
            size += len(job.pixels)
        return [j for j in jobs if not j.future.done()]  # a client that went away is not tagged

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            if not jobs:
                continue
            pixels = jobs[0].pixels if len(jobs) == 1 else np.concatenate([j.pixels for j in jobs])
            started = time.perf_counter()
            try:
                rows = await loop.run_in_executor(self._executor, self.tagger.tag_pixels, pixels,
                                                  max(j.top_k for j in jobs))
            except Exception as e:  # noqa: BLE001 - reported to every waiting request, the worker lives on
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.stats["busy_seconds"] += time.perf_counter() - started
            self.stats["batches"] += 1
            self.stats["photos"] += len(pixels)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(pixels))
            i = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(rows[i:i + len(j.pixels)])
                i += len(j.pixels)


# ------------------------------------------------------------------------------------------------------------- the app

def model_info(tagger: Tagger, limits: dict) -> dict:
    return tagger.info() | {"server_version": __version__, "limits": limits}


def _web_files() -> dict[str, tuple[bytes, str]]:
    """Everything in web/, read once: requests pick from this dict by exact name, never by opening a path."""
    files = {}
    if WEB_DIR.is_dir():
        for p in sorted(WEB_DIR.iterdir()):
            if p.is_file() and p.suffix in WEB_TYPES:
                files[p.name] = (p.read_bytes(), WEB_TYPES[p.suffix])
    return files


TAG_REQUEST_DOC = {
    "parameters": [
        {"name": "top_k", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 1},
         "description": "also return the K-1 runners-up per task (form field or query)"},
        {"name": "min_confidence", "in": "query", "required": False,
         "schema": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
         "description": "below this confidence a task's label is 'unknown' (form field or query)"},
        {"name": "partial", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
         "description": "tag the good photos and report the bad ones per file with 200, instead of refusing "
                        "the whole request"},
    ],
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FILE_FIELD],
        "properties": {FILE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                                    "description": "one or more product photos (JPEG, PNG, WebP, GIF, BMP, TIFF)"},
                       "top_k": {"type": "integer"}, "min_confidence": {"type": "number"}},
    }}}},
    "responses": {
        "200": {"description": "tags per photo, in upload order"},
        "400": {"description": "malformed form, no files, unknown field"},
        "413": {"description": "a photo or the whole upload too large, or too many files"},
        "415": {"description": "not multipart/form-data, or a file whose content type is not an image"},
        "422": {"description": "a file that is not a readable image (empty, truncated, zero-pixel, too many "
                               "pixels), or a bad option"},
        "503": {"description": "model still loading, or too many photos waiting"},
    },
}


def create_app(model_dir: str | Path | None = None, max_batch: int = 64, max_files: int = 64,
               max_upload_bytes: int = 32 * MiB, max_file_bytes: int = 10 * MiB, max_wait_ms: float = 0.0,
               max_queue: int = 4096, torch_threads: int | None = None, decode_threads: int | None = None,
               tagger: Tagger | None = None, engine: str = SERVE_ENGINE) -> FastAPI:
    """The service, with the model loaded now (a bad model folder fails here, not on the first request).

    max_batch: photos per forward pass; max_files / max_file_bytes / max_upload_bytes: per request;
    max_queue: photos waiting before new requests get 503; torch_threads: intra-op threads of the forward pass
    (default: the CPUs this process may use); decode_threads: threads decoding uploads; engine: the Tagger's.
    """
    cpus = available_cpus()
    threads = torch_threads or cpus
    tagger = tagger or Tagger.load(model_dir, engine=engine, threads=threads)
    batcher = MicroBatcher(tagger, max_batch=max_batch, max_wait_ms=max_wait_ms, threads=threads)
    limits = {"max_files": max_files, "max_file_bytes": max_file_bytes, "max_upload_bytes": max_upload_bytes,
              "max_batch": max_batch, "max_top_k": MAX_TOP_K, "max_pixels": MAX_PIXELS}
    info = model_info(tagger, limits)
    web = _web_files()
    decoder: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        decoder["pool"] = ThreadPoolExecutor(decode_threads or min(4, cpus), thread_name_prefix="fashiontag-decode")
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decoder.pop("pool").shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="fashiontag", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Tag fashion product photos: gender, masterCategory, subCategory, articleType, "
                              "baseColour, season and usage. POST photos to /v1/tag; the web page is at /.")
    app.state.tagger, app.state.batcher = tagger, batcher

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError):
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return error_response(e.status, e.code, e.message, e.files, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        message = "; ".join(f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg')}" for err in e.errors())
        return error_response(422, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, code, str(e.detail), headers=getattr(e, "headers", None))

    @app.post("/v1/tag", summary="Tag one or many product photos", openapi_extra=TAG_REQUEST_DOC)
    async def tag(request: Request):
        """Send photos in the repeatable multipart field `files`. Each photo gets, per task, a `label` and its
        calibrated `confidence` (with `top` runners-up when top_k > 1). The category hierarchy (articleType,
        subCategory, masterCategory) is always consistent. Any bad file refuses the whole request with a 4xx that
        names every bad file, unless `partial=true`."""
        if batcher.pending > max_queue:
            raise ServeError(503, "busy", f"{batcher.pending} photos are waiting; retry shortly")
        uploads, form = await read_form(request, max_files, max_file_bytes, max_upload_bytes)
        top_k, min_conf, partial = parse_options(request.query_params, form)
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(decoder["pool"], decode_uploads, uploads, tagger.input_hw)
        bad = [u for u in uploads if u.status]
        if bad and (not partial or len(bad) == len(uploads)):
            status = next(s for s in (413, 415, 422) if any(u.status == s for u in bad))
            noun = "file" if len(uploads) == 1 else "files"
            raise ServeError(status, "bad_file", f"{len(bad)} of {len(uploads)} {noun} could not be tagged: "
                             + "; ".join(f"{u.name}: {u.reason}" for u in bad[:5]) + ("; ..." if len(bad) > 5 else ""),
                             [u.describe() for u in bad])
        good = [u for u in uploads if not u.status]
        rows = await batcher.tag(np.stack([pixels[u.index] for u in good]), top_k)
        tagged = {u.index: row for u, row in zip(good, rows)}
        results = []
        for u in uploads:
            if u.status:
                results.append({"file": u.name, "index": u.index, "error": u.reason, "status": u.status})
            else:
                results.append({"file": u.name, "index": u.index,
                                "tags": tagged[u.index].to_dict(top_k, min_conf)["tags"]})
        # Plain JSON types already: JSONResponse skips FastAPI's per-field encoder, which costs more than the model.
        return JSONResponse({"model": info["version"], "top_k": top_k, "min_confidence": min_conf,
                             "tagged": len(good), "failed": len(bad), "results": results})

    @app.get("/v1/model", summary="The loaded model: tasks, classes, hierarchy, version, validation metrics")
    async def model():
        return info

    @app.get("/v1/stats", summary="Micro-batching counters since start-up")
    async def stats():
        s = dict(batcher.stats)
        s["mean_batch"] = round(s["photos"] / s["batches"], 2) if s["batches"] else 0.0
        s["busy_seconds"] = round(s["busy_seconds"], 3)
        return s | {"pending": batcher.pending, "torch_threads": threads}

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded, warmed up and taking requests")
    async def readyz():
        if not batcher.ready:
            return error_response(503, "not_ready", "the model is still loading", headers={"Retry-After": "1"})
        return {"status": "ready", "model": info["version"], "pending": batcher.pending}

    def _asset(name: str) -> Response:
        if name not in web:
            raise StarletteHTTPException(404, f"no such file: {name[:100]}")
        body, media = web[name]
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def index():
        return _asset("index.html")

    @app.get("/web/{name}", include_in_schema=False)
    async def asset(name: str):
        return _asset(name)

    _add_docs(app)
    return app


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs, from files shipped in the fastapi-offline package when it is installed (so the docs
    work offline too), else from FastAPI's default CDN."""
    try:
        import fastapi_offline
        static = Path(fastapi_offline.__file__).parent / "static"
        assets = {n: (static / n).read_bytes() for n in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")}
    except (ImportError, OSError):
        assets = {}
    media = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}

    @app.get("/docs", include_in_schema=False)
    async def docs():
        if not assets:
            return get_swagger_ui_html(openapi_url=app.openapi_url, title="fashiontag API")
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="fashiontag API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(name: str):
        if name not in assets:
            raise StarletteHTTPException(404, f"no such file: {name[:100]}")
        return Response(assets[name], media_type=media[Path(name).suffix],
                        headers={"Cache-Control": "public, max-age=86400"})


def serve(host: str = "127.0.0.1", port: int = 8000, model: str | Path | None = None, log_level: str = "info",
          access_log: bool = True, **options) -> None:
    """Run the service with uvicorn until Ctrl-C. `options` go to create_app (max_batch, max_files, ...)."""
    import uvicorn
    app = create_app(model, **options)
    # uvicorn takes uvloop and httptools when installed (they are dependencies): C parsers, a faster event loop.
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, timeout_keep_alive=5,
                limit_concurrency=1024, h11_max_incomplete_event_size=64 * 1024)
