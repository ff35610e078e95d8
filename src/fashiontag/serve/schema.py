"""What a tagging request and its answer look like, declared once: FastAPI validates the query options and writes
the OpenAPI description from these models, and the same options model validates options sent as form fields."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from fashiontag.inference.thresholds import MAX_CONFIDENCE, MAX_TOP_K, MIN_CONFIDENCE, MIN_TOP_K


class TagOptions(BaseModel):
    """The options of POST /v1/tag: query parameters or form fields (a form field wins over the query)."""

    top_k: int = Field(MIN_TOP_K, ge=MIN_TOP_K, le=MAX_TOP_K, description="also return the K-1 runners-up per task")
    min_confidence: float | None = Field(None, ge=MIN_CONFIDENCE, le=MAX_CONFIDENCE,
                                         description="a task's tag less sure than this is flagged needs_review (its "
                                                     "label is kept); default: the model's threshold per task")
    partial: bool = Field(False, description="tag the good photos and report the bad ones per file with 200, "
                                             "instead of refusing the whole request")
    colours: bool = Field(False, description="also each photo's dominant product colours: hex, share of the "
                                             "product's area and the nearest colour class")


class TagForm(TagOptions):
    """The multipart/form-data body of POST /v1/tag (read by the service's own streaming reader, not by FastAPI)."""

    files: list[bytes] = Field(description="one or more product photos (JPEG, PNG, WebP, GIF, BMP, TIFF)")
    titles: list[str] = Field(default=[], description="optional: one product title per file, in the same order "
                              "(\"\" for none); read by a photo + title model, ignored by a photo-only one")


class Candidate(BaseModel):
    label: str
    confidence: float


class TaskTag(BaseModel):
    label: str = Field(description="the model's answer")
    confidence: float = Field(description="its calibrated probability")
    needs_review: bool = Field(description="confidence below the threshold: a person should check it")
    status: Literal["auto", "needs_review"] = Field(description="auto: auto-accepted, at or above the threshold "
                                                    "(\"accepted\" is a person's decision, in review)")
    threshold: float = Field(description="min_confidence, else the model's auto-accept threshold for the task")
    top: list[Candidate] | None = Field(None, description="the answer and its runners-up, when top_k > 1")


class Colour(BaseModel):
    hex: str = Field(description="#rrggbb")
    share: float = Field(description="its share of the product's area")
    class_: str = Field(alias="class", description="the nearest class of the model's colour task")


class PhotoAnswer(BaseModel):
    file: str
    index: int = Field(description="position in the upload, from 0")
    tags: dict[str, TaskTag] | None = Field(None, description="per task; absent for a photo that failed")
    colours: list[Colour] | None = Field(None, description="the product's dominant colours (colours=true)")
    error: str | None = Field(None, description="why the photo could not be tagged: a bad file (partial=true only) "
                              "or the model failing on it (status 500)")
    status: int | None = Field(None, description="the HTTP status the photo alone would have got")


class TagAnswer(BaseModel):
    model: str = Field(description="the model's version")
    top_k: int
    min_confidence: float | None
    tagged: int
    failed: int
    results: list[PhotoAnswer] = Field(description="one per uploaded file, in upload order")
