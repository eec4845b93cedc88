"""Request and response schemas shared across routes (each route module keeps its own as well)."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class PageOut(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


class StrictModel(BaseModel):
    """Request bodies refuse unknown fields, so a typo is an error rather than silently ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


#: Error answers every authenticated route may give, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
}


MAX_ID = 2**63 - 1
#: A row id in a body: positive and within PostgreSQL's bigint, so a huge number is a 422, not a 500.
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
#: A row id in a path.
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
