"""The review queue's HTTP routes under /review/api, added to the service's app in review mode (serve.create_app).

Plain `def` routes: FastAPI runs them in its thread pool, so database round trips never hold up the event loop
that the tagging API shares."""

from __future__ import annotations

import hmac
import io
import logging
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from PIL import Image
from pydantic import BaseModel, Field

from fashiontag.review import auth
from fashiontag.review.queue import within
from fashiontag.review.store import (
    MAX_PAGE,
    UNAVAILABLE,
    Conflict,
    InvalidChange,
    InvalidQuery,
    NotFound,
    ReviewStore,
    UnseenCombination,
    unavailable_message,
)
from fashiontag.serve.errors import ServeError, error_body

# No product photo comes near this; a larger file is not read into memory to be served.
MAX_PHOTO_BYTES = 64 * 1024 * 1024
# Served as exactly the type Pillow found, never sniffed by the browser, and inert if opened on its own.
PHOTO_HEADERS = {"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff",
                 "Content-Security-Policy": "default-src 'none'; sandbox"}
log = logging.getLogger("uvicorn.error")


class Decision(BaseModel):
    label: str
    version: int = Field(description="the tag's version the reviewer saw; a newer one in the queue is a conflict")


# `reviewer`: who takes the action, when the service has no accounts; signed in, it is the session's user and the
# name sent is ignored.
class ReviewBody(BaseModel):
    reviewer: str = ""
    decisions: dict[str, Decision]
    confirm: bool = Field(False, description="keep a category combination never seen in training")


class BulkBody(BaseModel):
    reviewer: str = ""
    photo_ids: list[int] | None = None


class TaskBody(BaseModel):
    reviewer: str = ""
    task: str
    versions: dict[int, int] = Field(max_length=MAX_PAGE, description="photo id -> the version of its tag of the "
                                     "task the reviewer saw")


class UndoBody(BaseModel):
    reviewer: str = ""
    action_id: int | None = None


class LeaseBody(BaseModel):
    reviewer: str = ""
    photo_ids: list[int] = Field(max_length=MAX_PAGE, description="the photos now in front of the reviewer; [] "
                                 "gives every lease of theirs back")


class SignIn(BaseModel):
    name: str = Field(max_length=256)
    password: str = Field(max_length=1024)


def _refusal(e: Exception) -> JSONResponse:
    if isinstance(e, Conflict):
        return JSONResponse(error_body("conflict", str(e)) | {"photo": e.photo}, 409)
    if isinstance(e, NotFound):
        return JSONResponse(error_body("not_found", str(e)), 404)
    code = "unseen_combination" if isinstance(e, UnseenCombination) else "invalid_change"
    return JSONResponse(error_body(code, str(e)), 422)


class PhotoRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def photo_file(path: str, roots: list[str] | None) -> tuple[bytes, str]:
    """The bytes and media type of a queued photo, read only if it is a regular file inside the queue's folders
    (symlinks followed, then checked) that decodes as an image; else PhotoRefused. The queue's paths come from
    folders and files on disk, which anyone who can write there controls, so none is trusted as it stands."""
    if roots is None:
        raise PhotoRefused(404, "this queue was filled by an older fashiontag, which did not record the folders its "
                                "photos come from: run `fashiontag review PATH --db URL` again on it to serve them")
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise PhotoRefused(404, "the photo is no longer where it was tagged") from None
    if not within(real, roots):
        raise PhotoRefused(403, "the photo lies outside the folders this review serves")
    try:
        # O_NOFOLLOW: a symlink put in the resolved file's place since is not followed; O_NONBLOCK: a FIFO
        # does not hold the thread (it is refused below as not a regular file).
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        raise PhotoRefused(404, "the photo cannot be opened") from None
    with open(fd, "rb") as f:
        data = f.read(MAX_PHOTO_BYTES + 1) if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None
    if data is None or len(data) > MAX_PHOTO_BYTES:
        raise PhotoRefused(404, "the photo is not a regular file of a photo's size")
    try:
        with Image.open(io.BytesIO(data)) as img:
            media = Image.MIME.get(img.format or "")
            img.verify()
    except Exception:  # Pillow raises many types for what is not an image; all mean the same here
        media = None
    if media is None or not media.startswith("image/"):
        raise PhotoRefused(404, "the file is not a readable image")
    return data, media


class StoreRoute(APIRoute):
    """A review route whose database cannot be reached (server stopped, disk full) answers 503 saying so, rather
    than the service's generic 500."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def guarded(request: Request):
            try:
                return await handler(request)
            except UNAVAILABLE as e:
                message = unavailable_message(e)
                log.warning("%s %s: %s", request.method, request.url.path, message)
                return JSONResponse(error_body("database_unavailable", message), 503, headers={"Retry-After": "5"})

        return guarded


def _answer(store: ReviewStore, write, *args):
    """A writing route's answer: what the store did plus the progress now, or why it refused."""
    try:
        return write(*args) | {"progress": store.progress()}
    except (Conflict, NotFound, InvalidChange) as e:
        return _refusal(e)


def review_router(store: ReviewStore, cookie_secure: bool | None = None) -> APIRouter:
    """The review API. With accounts in the database (review/auth.py) every route but /session, /sign-in and
    /sign-out needs a signed-in session, and every POST its CSRF token; cookie_secure: the cookies' Secure flag
    (None: when the request came over https)."""
    auth.ensure_users(store)
    sessions = auth.Sessions(store)

    def guard(request: Request):
        """Who is asking (request.state.user: the account, or None with no accounts), or a 401/403 refusal."""
        request.state.user = None
        writing = request.method not in ("GET", "HEAD", "OPTIONS")
        if not auth.has_users(store):
            # Open, as before accounts, on loopback only (check_exposure); still no cross-site writes.
            origin = request.headers.get("origin")
            if writing and origin and urlsplit(origin).netloc != request.headers.get("host"):
                raise ServeError(403, "cross_origin", "a write from another site's page is refused")
            return
        session = sessions.read(request.cookies.get(auth.SESSION_COOKIE))
        if session is None:
            raise ServeError(401, "sign_in_needed", "sign in first: this review service has accounts")
        user, csrf = session
        if writing:
            sent, cookie = request.headers.get(auth.CSRF_HEADER, ""), request.cookies.get(auth.CSRF_COOKIE, "")
            if not (sent and hmac.compare_digest(sent, cookie) and hmac.compare_digest(sent, csrf)):
                raise ServeError(403, "csrf", f"missing or wrong {auth.CSRF_HEADER} header: reload the page")
        request.state.user = user

    def who(request: Request, sent: str) -> str:
        user = getattr(request.state, "user", None)
        return user["name"] if user else sent

    def secure(request: Request) -> bool:
        return cookie_secure if cookie_secure is not None else request.url.scheme == "https"

    top = APIRouter()
    signin = APIRouter(prefix="/review/api", tags=["review"], route_class=StoreRoute)

    @signin.get("/session", summary="Whether the service has accounts, and who is signed in")
    def session(request: Request):
        accounts = auth.has_users(store)
        found = sessions.read(request.cookies.get(auth.SESSION_COOKIE)) if accounts else None
        return {"accounts": accounts, "user": found[0]["name"] if found else None,
                "role": found[0]["role"] if found else None}

    @signin.post("/sign-in", summary="Sign in with an account's name and password (sets the session cookies)",
                 responses={401: {"description": "wrong name or password"}, 429: {"description": "too many "
                                                                                   "failed sign-ins for this name"}})
    def sign_in(request: Request, body: SignIn):
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.headers.get("host"):
            raise ServeError(403, "cross_origin", "a sign-in from another site's page is refused")
        if not auth.has_users(store):
            raise ServeError(409, "no_accounts", "this review service has no accounts: no sign-in needed")
        name = body.name.strip()
        if sessions.throttled(name):
            raise ServeError(429, "too_many_failures", f"too many failed sign-ins for {name[:40]!r}: wait a few "
                             "minutes")
        user = auth.verify(store, name, body.password)
        if user is None:
            sessions.failed(name)
            log.warning("failed sign-in for %r from %s", name[:40], request.client.host if request.client else "?")
            raise ServeError(401, "bad_credentials", "wrong name or password")
        token, csrf = sessions.issue(user)
        answer = JSONResponse({"user": user["name"], "role": user["role"]})
        for key, value, http_only in ((auth.SESSION_COOKIE, token, True), (auth.CSRF_COOKIE, csrf, False)):
            answer.set_cookie(key, value, max_age=auth.SESSION_SECONDS, path="/", httponly=http_only,
                              samesite="strict", secure=secure(request))
        return answer

    @signin.post("/sign-out", summary="End the session (clears its cookies)")
    def sign_out(request: Request):
        guard(request)
        answer = JSONResponse({"user": None})
        for key in (auth.SESSION_COOKIE, auth.CSRF_COOKIE):
            answer.delete_cookie(key, path="/", samesite="strict", secure=secure(request))
        return answer

    router = APIRouter(prefix="/review/api", tags=["review"], route_class=StoreRoute, dependencies=[Depends(guard)])

    @router.get("/queue", summary="The model, every photo with its tags, the progress and the reviewers (the whole "
                                  "queue at once: for scripts on small queues; the page reads /summary and /page)")
    def queue():
        return {"model": store.model(), "photos": store.photos(), "progress": store.progress(),
                "reviewers": store.reviewers()}

    @router.get("/summary", summary="The model, the progress and the reviewers: what the page needs besides its "
                                    "pages of photos")
    def summary():
        return {"model": store.model(), "progress": store.progress(), "reviewers": store.reviewers()}

    @router.get("/page", summary="One page of the queue, filtered and sorted in the database (keyset pagination: "
                                 "pass `next` as `after` for the following page)",
                responses={422: {"description": "an unknown status, task, class or sort, or an `after` this list "
                                                "did not give"}})
    def page(request: Request, status: str = "needs", task: str | None = None, cls: str | None = None,
             decided_by: str | None = None, sort: str = "uncertain", after: str | None = None,
             limit: int = Query(50, ge=1, le=MAX_PAGE), viewer: str = Query("", alias="as", max_length=128)):
        try:
            return store.page(status=status, task=task or None, cls=cls or None, decided_by=decided_by or None,
                              sort=sort, after=after or None, limit=limit, viewer=who(request, viewer.strip()) or None)
        except InvalidQuery as e:
            return JSONResponse(error_body("invalid_query", str(e)), 422)

    @router.post("/lease", summary="Hold the photos in front of the reviewer for two minutes: the pages served to "
                                   "other reviewers skip them (renew before it ends; an action gives its photo back)")
    def lease(body: LeaseBody, request: Request):
        try:
            return store.lease(who(request, body.reviewer), body.photo_ids)
        except InvalidChange as e:
            return _refusal(e)

    @router.get("/stats", summary="Per task the live precision of auto-accept from reviewed audits, whether it is "
                                  "below its promise, the share auto-accepted, and reviewers' throughput")
    def stats():
        from fashiontag.review.stats import review_stats
        return review_stats(store)

    @router.get("/photos/{photo_id}", summary="One photo's tags as they are now")
    def photo(photo_id: int):
        try:
            return store.photo(photo_id)
        except NotFound as e:
            return _refusal(e)

    @router.get("/photos/{photo_id}/image", summary="The photo's file",
                responses={403: {"description": "the file lies outside the folders the queue was filled from"},
                           404: {"description": "no such photo, or its file is gone or not an image"}})
    def image(photo_id: int):
        try:
            # a path from the queue, never from the request
            data, media = photo_file(store.photo(photo_id)["path"], store.roots())
        except NotFound as e:
            return _refusal(e)
        except PhotoRefused as e:
            return JSONResponse(error_body("forbidden" if e.status == 403 else "not_found",
                                           f"photo {photo_id}: {e}"), e.status)
        return Response(data, media_type=media, headers=PHOTO_HEADERS)

    @router.post("/photos/{photo_id}/review", summary="Accept or correct tags of one photo (one undoable action)",
                 responses={409: {"description": "a tag was written by someone else since the version given"},
                            422: {"description": "unknown task or class, no reviewer, or an unseen combination "
                                                 "without confirm"}})
    def review(photo_id: int, body: ReviewBody, request: Request):
        return _answer(store, store.review, photo_id, {t: d.model_dump() for t, d in body.decisions.items()},
                       who(request, body.reviewer), body.confirm)

    @router.post("/bulk-accept", summary="Accept every photo whose tags are all at or above their thresholds")
    def bulk_accept(body: BulkBody, request: Request):
        done = _answer(store, store.bulk_accept, who(request, body.reviewer), body.photo_ids)
        return done if isinstance(done, JSONResponse) else done | {
            "photos": store.photos_by_id(done["accepted"])}

    @router.post("/accept-task", summary="Review by task: accept one task's tag of the photos shown (one undoable "
                                         "action; their other tasks untouched)",
                 responses={409: {"description": "a tag was written by someone else since the version given"}})
    def accept_task(body: TaskBody, request: Request):
        done = _answer(store, store.accept_task, who(request, body.reviewer), body.task, body.versions)
        return done if isinstance(done, JSONResponse) else done | {
            "photos": store.photos_by_id(done["accepted"])}

    @router.post("/undo", summary="Undo an action (default: the reviewer's latest)")
    def undo(body: UndoBody, request: Request):
        user = request.state.user
        if user and user["role"] != "admin" and body.action_id is not None:
            owner = auth.action_owner(store, body.action_id)
            if owner is not None and owner != user["name"]:
                return JSONResponse(error_body("forbidden", f"action {body.action_id} is {owner}'s: only an admin "
                                               "may undo another reviewer's action"), 403)
        return _answer(store, store.undo, who(request, body.reviewer), body.action_id)

    top.include_router(signin)
    top.include_router(router)
    return top
