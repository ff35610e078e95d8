"""The app: its middleware, error handlers and routers (serve.routes) assembled, and how uvicorn runs it."""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from fashiontag import __version__
from fashiontag.data.photos import MAX_PIXELS
from fashiontag.inference.tagger import Tagger
from fashiontag.inference.thresholds import MAX_TOP_K
from fashiontag.serve.batching import MicroBatcher
from fashiontag.serve.errors import ServeError, error_response
from fashiontag.serve.hosts import serve_hosts
from fashiontag.serve.protocol import timely_http
from fashiontag.serve.routes import Service, model_router, problems, tag_router, web_router
from fashiontag.serve.uploads import MiB

WEB_DIR = Path(__file__).parent.parent / "web"
WEB_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
             ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
# A service's passes are small (a few photos each); at 1-16 photos onnxruntime's passes take a quarter to half the
# time of torch's, whose bf16 kernels pay a fixed cost per call (benchmarks/speed.py prints both).
SERVE_ENGINE = "onnx"
log = logging.getLogger("uvicorn.error")  # uvicorn's own log: its handlers print it next to uvicorn's lines


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


class HeadAsGet:
    """HEAD is GET without the body (RFC 9110), but FastAPI's GET routes answer HEAD with 405. The route sees GET;
    uvicorn, which still sees HEAD in its own copy of the request, leaves the body out."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal in the service's one JSON shape (serve.errors), whoever refuses."""

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError):
        # After a stalled upload the connection goes: the rest of that body is not worth waiting for.
        headers = {503: {"Retry-After": "1"}, 408: {"Connection": "close"}}.get(e.status)
        return error_response(e.status, e.code, e.message, e.files, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return error_response(422, "invalid_option", problems(e.errors(), "query"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, e: ClientDisconnect):
        # Clients go away mid-upload all the time (a closed tab, a timeout): worth a line, not a traceback.
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.info("%s disconnected during %s %s", client, request.method, request.url.path)
        return Response(status_code=400)  # nobody is left to read it

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):
        return error_response(500, "internal_error", f"the server failed on this request ({type(e).__name__})")


def create_app(model_dir: str | Path | None = None, *, max_batch: int = 64, max_files: int = 64,
               max_upload_bytes: int = 32 * MiB, max_file_bytes: int = 10 * MiB, max_wait_ms: float = 0.0,
               max_queue: int = 4096, max_uploads: int = 128, body_timeout: float = 30.0,
               threads: int | None = None, decode_threads: int | None = None, tagger: Tagger | None = None,
               engine: str = SERVE_ENGINE, review=None, upload_deadline: float = 60.0,
               min_upload_rate: float = 10 * 1024, rate_grace: float = 5.0, token: str | None = None,
               allowed_hosts: list[str] | None = None, cookie_secure: bool | None = None) -> FastAPI:
    """The service, with the model loaded now (a bad model folder fails here, not on the first request).

    max_batch: photos per forward pass; max_files / max_file_bytes / max_upload_bytes: per request;
    max_queue: photos waiting before new requests get 503; max_uploads: requests to /v1/tag being read or tagged
    at once before new ones get 503 (memory stays under max_uploads x max_upload_bytes); body_timeout: seconds
    an upload may stall mid-body; threads: inference threads (default: the CPUs this process may use);
    decode_threads: threads decoding uploads; engine: the Tagger's; review: a review.ReviewStore, whose queue
    the page at / then shows (review mode; the tagging page stays at /web/index.html).
    upload_deadline / min_upload_rate / rate_grace: an upload gets 408 past upload_deadline seconds in all, or
    when rate_grace seconds in it has averaged under min_upload_rate bytes a second (slow clients must not hold
    every upload slot); token: when set, POST /v1/tag needs `Authorization: Bearer TOKEN`; allowed_hosts: the
    Host header values served (None: any; see serve_hosts); cookie_secure: review sign-in cookies marked Secure
    (None: when the request came over https, X-Forwarded-Proto from a local reverse proxy included).
    """
    cpus = available_cpus()
    threads = threads or cpus
    tagger = tagger or Tagger.load(model_dir, engine=engine, threads=threads)
    batcher = MicroBatcher(tagger, max_batch=max_batch, max_wait_ms=max_wait_ms)
    limits = {"max_files": max_files, "max_file_bytes": max_file_bytes, "max_upload_bytes": max_upload_bytes,
              "max_batch": max_batch, "max_top_k": MAX_TOP_K, "max_pixels": MAX_PIXELS}
    service = Service(tagger, batcher, model_info(tagger, limits), threads, max_files, max_file_bytes,
                      max_upload_bytes, max_queue, max_uploads, body_timeout, upload_deadline, min_upload_rate,
                      rate_grace, bearer=f"Bearer {token}".encode() if token else None, review=review)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.pool = ThreadPoolExecutor(decode_threads or min(4, cpus), thread_name_prefix="fashiontag-decode")
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            service.pool.shutdown(wait=False, cancel_futures=True)

    # Swagger UI at /docs from files shipped in fastapi-offline: the docs work without the internet.
    app = FastAPIOffline(title="fashiontag", version=__version__, lifespan=lifespan, redoc_url=None,
                         favicon_url="/web/favicon.svg",
                         description=f"Tag fashion product photos: {', '.join(tagger.tasks)}. POST photos to /v1/tag; "
                                     "the web page is at /.")
    app.add_middleware(HeadAsGet)
    if allowed_hosts is not None:  # DNS rebinding: a foreign name resolving to this address gets 400
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.state.tagger, app.state.batcher = tagger, batcher
    add_error_handlers(app)
    app.include_router(tag_router(service))
    app.include_router(model_router(service))
    if review is not None:
        from fashiontag.review.routes import review_router
        app.include_router(review_router(review, cookie_secure))
    app.include_router(web_router(_web_files(), "index.html" if review is None else "review.html"))
    return app


def server_config(app, *, host: str = "127.0.0.1", port: int = 8000, header_timeout: float = 10.0,
                  **uvicorn_options) -> uvicorn.Config:
    """uvicorn's settings for the service. No `limit_concurrency`: uvicorn counts open connections against it,
    idle ones included, so slow clients would lock everyone out, health checks too. Instead a request's headers
    have `header_timeout` seconds to arrive, and the app limits the uploads it holds (max_uploads)."""
    # httptools (a dependency) under the header deadline; uvloop, when installed, is taken by uvicorn itself.
    return uvicorn.Config(app, host=host, port=port, http=timely_http(header_timeout), timeout_keep_alive=5,
                          **uvicorn_options)


def _raise_open_files_limit() -> None:
    """Every connection holds a file descriptor, and a soft limit of 1,024 (common) would let a thousand slow
    clients keep new ones out, health checks included, until the header deadline frees them."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # no such limits (Windows), or an unlimited hard limit refused
        pass


def read_token(token_file: str | Path | None) -> str | None:
    """The API token from --token-file (first line, stripped), else the FASHIONTAG_TOKEN variable, else None."""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--token-file {token_file}: cannot read it ({e})") from None
        if not token or len(token[0].strip()) < 16:
            raise ValueError(f"--token-file {token_file}: needs a token of 16 characters or more on its first line")
        return token[0].strip()
    token = os.environ.get("FASHIONTAG_TOKEN", "").strip()
    if token and len(token) < 16:
        raise ValueError("FASHIONTAG_TOKEN: needs a token of 16 characters or more")
    return token or None


def serve(*, host: str = "127.0.0.1", port: int = 8000, model: str | Path | None = None, log_level: str = "info",
          access_log: bool = True, header_timeout: float = 10.0, allowed_host: tuple[str, ...] = (),
          **options) -> None:
    """Run the service with uvicorn until Ctrl-C. `options` go to create_app (max_batch, max_files, ...); the
    Host headers answered are serve_hosts(host, allowed_host) unless options name allowed_hosts."""
    options.setdefault("allowed_hosts", serve_hosts(host, allowed_host))
    app = create_app(model, **options)
    _raise_open_files_limit()
    uvicorn.Server(server_config(app, host=host, port=port, header_timeout=header_timeout, log_level=log_level,
                                 access_log=access_log)).run()
