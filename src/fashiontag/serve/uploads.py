"""Uploads: a streaming multipart/form-data reader that enforces the limits while the body arrives, and the check of
each uploaded file (content type, size, then decoding).

Our own reader rather than Starlette's form parsing: Starlette spools large files to temporary files and only
counts bytes once a part is complete, while here nothing touches the disk and a request over a limit stops being
kept the moment it crosses it.
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from fashiontag.data.photos import ImageError
from fashiontag.serve.errors import ServeError

FILE_FIELD = "files"
MiB = 1024 * 1024


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


MAX_TEXT = 2000  # bytes kept of one repeatable text field's value (a product title)


class FormReader:
    """Streams a multipart/form-data body into memory, enforcing the limits as it goes.

    Refusals of single files (too big, wrong type) are recorded on the file; limits of the whole request raise
    ServeError once the body has been read. Past `max_upload_bytes` nothing more is kept, but the body is still read
    (up to a drain cap) so that the client gets to see the 413 instead of a reset connection. Text fields other than
    `option_fields` are refused.
    """

    def __init__(self, boundary: bytes, max_files: int, max_file_bytes: int, max_upload_bytes: int,
                 option_fields: Iterable[str] = (), list_fields: Iterable[str] = ()):
        self.max_files, self.max_file_bytes, self.max_upload_bytes = max_files, max_file_bytes, max_upload_bytes
        self.option_fields = tuple(option_fields)
        self.files: list[Upload] = []
        self.fields: dict[str, str] = {}
        self.lists: dict[str, list[str]] = {name: [] for name in list_fields}  # repeatable text fields, in order
        self.file_parts = 0
        self.received = 0      # bytes of body read
        self.kept = 0          # bytes of photos held in memory
        self.over = False      # past max_upload_bytes: nothing more is kept or parsed
        self.over_part: Upload | None = None  # the file that crossed the limit, when known
        self.complete = False  # the closing boundary was seen: a body cut short must not pass for a whole one
        self._part: Upload | None = None
        self._field: tuple[str, bytearray] | None = None
        self._headers: dict[bytes, bytes] = {}
        self._hname = self._hvalue = b""
        self._error: ServeError | None = None
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done, "on_end": self._done})

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
        elif name in self.option_fields or name in self.lists:
            self._field = (name, bytearray())
        elif name == FILE_FIELD:
            self._fail(ServeError(400, "not_a_file", f"field {FILE_FIELD!r} must carry files (with a filename), "
                                  "not text"))
        else:
            self._fail(ServeError(400, "unexpected_field", f"unknown form field {name!r}: expected "
                                  f"{', '.join(map(repr, (FILE_FIELD, *self.lists, *self.option_fields)))}"))

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
        elif self._field is not None and len(self._field[1]) + n <= (MAX_TEXT if self._field[0] in self.lists else 100):
            self._field[1].extend(data[start:end])

    def _over(self, part: Upload | None) -> None:
        self.over, self.over_part = True, part
        for u in self.files:
            u.data = bytearray()

    def _end(self) -> None:
        if self._field is not None:
            text = self._field[1].decode("utf-8", "replace").strip()
            if self._field[0] in self.lists:
                self.lists[self._field[0]].append(text)
            else:
                self.fields[self._field[0]] = text
        self._part = self._field = None

    def _done(self) -> None:
        self.complete = True

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
        if not self.complete:
            raise ServeError(400, "bad_multipart", "the multipart/form-data body ends before its closing boundary: "
                             "the upload was cut short")
        if self.file_parts > self.max_files:
            raise ServeError(413, "too_many_files", f"{self.file_parts} files sent; at most {self.max_files} per "
                             "request")
        if not self.files:
            raise ServeError(400, "no_files", f"no photos: send one or more in the multipart field {FILE_FIELD!r}")
        return self.files


async def read_form(request: Request, max_files: int, max_file_bytes: int, max_upload_bytes: int,
                    option_fields: Iterable[str] = (), body_timeout: float = 30.0, list_fields: Iterable[str] = (),
                    upload_deadline: float = 60.0, min_rate: float = 10 * 1024, rate_grace: float = 5.0
                    ) -> tuple[list[Upload], dict[str, str | list[str]]]:
    """The uploads and option fields of a multipart/form-data request (each of list_fields as the list of its
    values, in order). A connection trickling its body must not hold an upload slot for long, so it gets 408 when
    it sends nothing for `body_timeout` seconds mid-body, when the whole body takes more than `upload_deadline`
    seconds, or when, `rate_grace` seconds in, it has averaged under `min_rate` bytes a second (0: no minimum)."""
    ctype = request.headers.get("content-type", "")
    kind, opts = parse_options_header(ctype)
    if kind != b"multipart/form-data":
        raise ServeError(415, "unsupported_media_type", f"expected multipart/form-data with photos in the field "
                         f"{FILE_FIELD!r}, got {ctype or 'no content type'!r}")
    if not opts.get(b"boundary"):
        raise ServeError(400, "bad_multipart", "multipart/form-data without a boundary")
    reader = FormReader(opts[b"boundary"], max_files, max_file_bytes, max_upload_bytes, option_fields, list_fields)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > 2 * max_upload_bytes + 8 * MiB:
        raise ServeError(413, "upload_too_large", f"the request body ({int(declared) / MiB:.1f} MiB) is over the "
                         f"{max_upload_bytes / MiB:g} MiB limit")
    chunks = request.stream()
    loop = asyncio.get_running_loop()
    start = last = loop.time()
    while True:
        # Wake up at the first moment a limit can be crossed: no data for body_timeout, the total deadline, or
        # the body falling under the minimum average rate (past the grace period).
        elapsed = loop.time() - start
        wait = min(body_timeout - (loop.time() - last), upload_deadline - elapsed)
        if min_rate > 0:
            wait = min(wait, max(rate_grace, reader.received / min_rate) - elapsed)
        try:
            if wait <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(anext(chunks), wait)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            # The stream cannot be read on once a wait on it was cancelled: a timer firing a hair early (the
            # loop's clock resolution) counts as on time.
            _too_slow(loop.time() - start + 0.05, reader.received, upload_deadline, min_rate, rate_grace)
            raise ServeError(408, "timeout", f"no data for {body_timeout:g} s in the middle of the upload") from None
        last = loop.time()
        if chunk and not reader.feed(chunk):
            break
        _too_slow(last - start, reader.received, upload_deadline, min_rate, rate_grace)
    return reader.finish(), {**reader.fields, **reader.lists}


def _too_slow(elapsed: float, received: int, deadline: float, min_rate: float, grace: float) -> None:
    """Raise 408 when an upload has run past read_form's total deadline or under its minimum rate."""
    if elapsed >= deadline:
        raise ServeError(408, "timeout", f"the upload took over {deadline:g} s: send fewer or smaller photos per "
                         "request, or over a faster connection")
    if min_rate > 0 and elapsed >= grace and received < min_rate * elapsed:
        raise ServeError(408, "timeout", f"the upload is too slow: {received / elapsed / 1024:.2f} KiB/s after "
                         f"{elapsed:.0f} s, under the {min_rate / 1024:g} KiB/s minimum")


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


def decode_uploads(uploads: list[Upload], prepare: Callable[[bytes], np.ndarray]) -> list[np.ndarray | None]:
    """Each accepted upload as the model's input (`prepare`: Tagger.prepare); a photo that cannot be read is
    refused with 422."""
    out = []
    for u in uploads:
        arr = None
        if not u.status:
            try:
                arr = prepare(bytes(u.data))
            except ImageError as e:
                u.refuse(422, clean_reason(str(e), bytes(u.data[:32])))
        u.data = bytearray()  # done with the bytes
        out.append(arr)
    return out
