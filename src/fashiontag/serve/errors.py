"""One JSON shape for every refusal, whether the app or the HTTP layer below it refuses: `{"error": a short code,
"message": a sentence, "files": the files concerned}`."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class FileProblem(BaseModel):
    file: str = Field(description="the uploaded file's name (last path component)")
    index: int = Field(description="its position in the upload, from 0")
    reason: str


class ErrorBody(BaseModel):
    error: str = Field(description="a short code, e.g. bad_file, upload_too_large, invalid_option, busy")
    message: str
    files: list[FileProblem] = []


class ServeError(Exception):
    """A request the service refuses: HTTP status, a short code, a sentence, and the files concerned."""

    def __init__(self, status: int, code: str, message: str, files: list[dict] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.files = status, code, message, files or []


def error_body(code: str, message: str, files: list[dict] | None = None) -> dict:
    return {"error": code, "message": message, "files": files or []}


def error_response(status: int, code: str, message: str, files: list[dict] | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, files), status, headers=headers)
