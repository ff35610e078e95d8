"""The review queue's HTTP routes under /review/api, added to the service's app in review mode (serve.create_app).

Plain `def` routes: FastAPI runs them in its thread pool, so database round trips never hold up the event loop
that the tagging API shares."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from fashiontag.review.store import Conflict, InvalidChange, NotFound, ReviewStore, UnseenCombination
from fashiontag.serve.errors import error_body


class Decision(BaseModel):
    label: str
    version: int = Field(description="the tag's version the reviewer saw; a newer one in the queue is a conflict")


class ReviewBody(BaseModel):
    reviewer: str
    decisions: dict[str, Decision]
    confirm: bool = Field(False, description="keep a category combination never seen in training")


class BulkBody(BaseModel):
    reviewer: str
    photo_ids: list[int] | None = None


class UndoBody(BaseModel):
    reviewer: str
    action_id: int | None = None


def _refusal(e: Exception) -> JSONResponse:
    if isinstance(e, Conflict):
        return JSONResponse(error_body("conflict", str(e)) | {"photo": e.photo}, 409)
    if isinstance(e, NotFound):
        return JSONResponse(error_body("not_found", str(e)), 404)
    code = "unseen_combination" if isinstance(e, UnseenCombination) else "invalid_change"
    return JSONResponse(error_body(code, str(e)), 422)


def _answer(store: ReviewStore, write, *args):
    """A writing route's answer: what the store did plus the progress now, or why it refused."""
    try:
        return write(*args) | {"progress": store.progress()}
    except (Conflict, NotFound, InvalidChange) as e:
        return _refusal(e)


def review_router(store: ReviewStore) -> APIRouter:
    router = APIRouter(prefix="/review/api", tags=["review"])

    @router.get("/queue", summary="The model, every photo with its tags, the progress and the reviewers")
    def queue():
        return {"model": store.model(), "photos": store.photos(), "progress": store.progress(),
                "reviewers": store.reviewers()}

    @router.get("/photos/{photo_id}", summary="One photo's tags as they are now")
    def photo(photo_id: int):
        try:
            return store.photo(photo_id)
        except NotFound as e:
            return _refusal(e)

    @router.get("/photos/{photo_id}/image", summary="The photo's file")
    def image(photo_id: int):
        try:
            path = Path(store.photo(photo_id)["path"])  # a path from the queue, never from the request
        except NotFound as e:
            return _refusal(e)
        if not path.is_file():
            return JSONResponse(error_body("not_found", f"{path.name} is no longer where it was tagged"), 404)
        return FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    @router.post("/photos/{photo_id}/review", summary="Accept or correct tags of one photo (one undoable action)",
                 responses={409: {"description": "a tag was written by someone else since the version given"},
                            422: {"description": "unknown task or class, no reviewer, or an unseen combination "
                                                 "without confirm"}})
    def review(photo_id: int, body: ReviewBody):
        return _answer(store, store.review, photo_id, {t: d.model_dump() for t, d in body.decisions.items()},
                       body.reviewer, body.confirm)

    @router.post("/bulk-accept", summary="Accept every photo whose tags are all at or above their thresholds")
    def bulk_accept(body: BulkBody):
        done = _answer(store, store.bulk_accept, body.reviewer, body.photo_ids)
        return done if isinstance(done, JSONResponse) else done | {
            "photos": [store.photo(pid) for pid in done["accepted"]]}

    @router.post("/undo", summary="Undo an action (default: the reviewer's latest)")
    def undo(body: UndoBody):
        return _answer(store, store.undo, body.reviewer, body.action_id)

    return router
