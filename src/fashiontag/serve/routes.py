"""The service's routes, as routers over one `Service` (what the routes share): tagging (POST /v1/tag), the model
and its health (/v1/model, /v1/stats, /healthz, /readyz) and the web page (/, /web/NAME). serve.app.create_app
builds the Service and assembles the routers; the review queue's routes are review.routes'."""

from __future__ import annotations

import asyncio
import hmac
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fashiontag.inference.tagger import Tagger
from fashiontag.serve.batching import MicroBatcher
from fashiontag.serve.errors import ErrorBody, ServeError, error_response
from fashiontag.serve.schema import TagAnswer, TagForm, TagOptions
from fashiontag.serve.uploads import Upload, decode_uploads, read_form

OPTION_FIELDS = tuple(TagOptions.model_fields)
TITLES_FIELD = "titles"
TAG_BODY = {"required": True, "content": {"multipart/form-data": {"schema": TagForm.model_json_schema()}}}
TAG_REFUSALS = {
    400: "malformed form, no files, unknown field",
    408: "the upload stalled mid-body",
    413: "a photo or the whole upload too large, or too many files",
    415: "not multipart/form-data, or a file whose content type is not an image",
    422: "a file that is not a readable image (empty, truncated, zero-pixel, too many pixels), or a bad option",
    503: "model still loading, or too many photos or uploads waiting",
}
log = logging.getLogger("uvicorn.error")  # uvicorn's own log: its handlers print it next to uvicorn's lines


@dataclass
class Service:
    """What the routes share: the model and its batcher, the limits each upload is held to (see create_app), the
    uploads being read or tagged now, and the thread pool that decodes them (started and stopped by the app's
    lifespan)."""
    tagger: Tagger
    batcher: MicroBatcher
    info: dict
    threads: int
    max_files: int
    max_file_bytes: int
    max_upload_bytes: int
    max_queue: int
    max_uploads: int
    body_timeout: float
    upload_deadline: float
    min_upload_rate: float
    rate_grace: float
    bearer: bytes | None = None  # b"Bearer TOKEN" when POST /v1/tag needs it
    review: object = None        # a review.ReviewStore in review mode
    uploading: int = 0
    pool: ThreadPoolExecutor | None = None

    def unauthorized(self, request: Request) -> JSONResponse | None:
        if self.bearer is None or hmac.compare_digest(
                request.headers.get("authorization", "").encode("utf-8", "replace"), self.bearer):
            return None
        return error_response(401, "unauthorized", "this service needs `Authorization: Bearer TOKEN` (the token its "
                              "operator set with --token-file or FASHIONTAG_TOKEN)",
                              headers={"WWW-Authenticate": 'Bearer realm="fashiontag"'})


def problems(errors: list[dict], where: str) -> str:
    return "; ".join(f"{err['loc'][-1]} ({where}): {err['msg']}, got {err.get('input')!r}" for err in errors)


def tag_router(service: Service) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/tag", summary="Tag one or many product photos", response_model=TagAnswer,
                 responses={status: {"model": ErrorBody, "description": d} for status, d in TAG_REFUSALS.items()},
                 openapi_extra={"requestBody": TAG_BODY})
    async def tag(request: Request, query: Annotated[TagOptions, Query()]):
        """Send photos in the repeatable multipart field `files`. Each photo gets, per task, a `label` and its
        calibrated `confidence` (with `top` runners-up when top_k > 1; a multi-label task also lists its `labels`).
        The model's hierarchy (GET /v1/model) is always consistent. Any bad file refuses the whole request with a 4xx that
        names every bad file, unless `partial=true`. The options may also come as form fields."""
        if (refusal := service.unauthorized(request)) is not None:
            return refusal
        if service.batcher.pending > service.max_queue:
            raise ServeError(503, "busy", f"{service.batcher.pending} photos are waiting; retry shortly")
        if service.uploading >= service.max_uploads:
            raise ServeError(503, "busy", f"{service.uploading} uploads are in progress; retry shortly")
        service.uploading += 1
        try:
            uploads, form = await read_form(request, service.max_files, service.max_file_bytes,
                                            service.max_upload_bytes, OPTION_FIELDS, service.body_timeout,
                                            list_fields=(TITLES_FIELD,), upload_deadline=service.upload_deadline,
                                            min_rate=service.min_upload_rate, rate_grace=service.rate_grace)
            titles = form.pop(TITLES_FIELD)
            if titles and len(titles) != len(uploads):
                raise ServeError(422, "invalid_option", f"{len(titles)} titles for {len(uploads)} files: send one "
                                 f"{TITLES_FIELD!r} field per file, in the same order (empty for none)")
            try:
                options = TagOptions.model_validate(query.model_dump() | {k: v for k, v in form.items() if v})
            except ValidationError as e:
                raise ServeError(422, "invalid_option", problems(e.errors(), "form")) from None
            return await tag_uploads(service, uploads, options, titles or None)
        finally:
            service.uploading -= 1

    return router


async def tag_uploads(service: Service, uploads: list[Upload], options: TagOptions,
                      titles: list[str] | None) -> JSONResponse:
    """The answer of POST /v1/tag for its checked uploads: decoded in the service's pool, tagged by its batcher."""
    loop = asyncio.get_running_loop()
    tagger = service.tagger
    pixels = await loop.run_in_executor(service.pool, decode_uploads, uploads, tagger.prepare)
    bad = [u for u in uploads if u.status]
    if bad and (not options.partial or len(bad) == len(uploads)):
        status = next(s for s in (413, 415, 422) if any(u.status == s for u in bad))
        noun = "file" if len(uploads) == 1 else "files"
        raise ServeError(status, "bad_file", f"{len(bad)} of {len(uploads)} {noun} could not be tagged: "
                         + "; ".join(f"{u.name}: {u.reason}" for u in bad[:5]) + ("; ..." if len(bad) > 5 else ""),
                         [u.describe() for u in bad])
    good = [u for u in uploads if not u.status]
    tagged = dict(zip((u.index for u in good),
                      await service.batcher.tag(np.stack([pixels[u.index] for u in good]), options.top_k,
                                                [titles[u.index] for u in good] if titles else None)))
    if options.colours:
        found = await loop.run_in_executor(service.pool, lambda: [tagger.colours_of(pixels[u.index]) for u in good])
        for u, colours in zip(good, found):
            tagged[u.index].colours = colours
    results = []
    for u in uploads:
        if u.status:
            results.append({"file": u.name, "index": u.index, "error": u.reason, "status": u.status})
        elif tagged[u.index].error:  # the model failed on it (NaN outputs): the server's fault, not the file's
            results.append({"file": u.name, "index": u.index, "error": tagged[u.index].error, "status": 500})
        else:
            rendered = tagged[u.index].to_dict(options.top_k, options.min_confidence)
            results.append({"file": u.name, "index": u.index, "tags": rendered["tags"],
                            **({"colours": rendered["colours"]} if options.colours else {})})
    failed = sum("error" in r for r in results)
    if failed > len(bad):
        log.error("the model failed on %d photos: %s", failed - len(bad),
                  next(r["error"] for r in results if r.get("status") == 500))
    # Plain JSON types already: JSONResponse skips FastAPI's per-field encoder, which costs more than the model.
    return JSONResponse({"model": service.info["version"], "top_k": options.top_k,
                         "min_confidence": options.min_confidence, "tagged": len(uploads) - failed,
                         "failed": failed, "results": results})


def model_router(service: Service) -> APIRouter:
    """The model's description and counters, and the health checks a load balancer or orchestrator asks."""
    router = APIRouter()
    batcher = service.batcher

    @router.get("/v1/model", summary="The loaded model: tasks, classes, hierarchy, version, validation metrics")
    async def model():
        return service.info

    @router.get("/v1/stats", summary="Micro-batching counters since start-up")
    async def stats():
        s = dict(batcher.stats)
        s["mean_batch"] = round(s["photos"] / s["batches"], 2) if s["batches"] else 0.0
        s["busy_seconds"] = round(s["busy_seconds"], 3)
        return s | {"pending": batcher.pending, "uploading": service.uploading, "inference_threads": service.threads}

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @router.get("/readyz", summary="Readiness: the model is loaded, warmed up and taking requests (in review mode: "
                                   "and the review database answers)")
    async def readyz():
        if not batcher.ready:
            return error_response(503, "not_ready", "the model is still loading", headers={"Retry-After": "1"})
        if service.review is not None:
            from fashiontag.review.store import StoreUnavailable
            try:
                await run_in_threadpool(service.review.check)
            except StoreUnavailable as e:
                return error_response(503, "not_ready", str(e), headers={"Retry-After": "5"})
        return {"status": "ready", "model": service.info["version"], "pending": batcher.pending}

    return router


def web_router(files: dict[str, tuple[bytes, str]], page: str) -> APIRouter:
    """The web page at / (`page`, one of `files`) and its files at /web/NAME, from `files` (name: body, media type)
    by exact name: nothing a request names is opened as a path."""
    router = APIRouter(include_in_schema=False)

    def asset(name: str) -> Response:
        if name not in files:
            raise StarletteHTTPException(404, f"no such file: {name[:100]}")
        body, media = files[name]
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    @router.get("/")
    async def index():
        return asset(page)

    @router.get("/web/{name}")
    async def web_file(name: str):
        return asset(name)

    return router
