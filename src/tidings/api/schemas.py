"""Request and response schemas shared across routes (each route module keeps its own as well)."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from tidings.scheduling.windows import CONTACT, SendWindow, parse_send_window

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


class SendWindowIn(StrictModel):
    """Local hours a message may start in; outside them it waits for the next opening.

    Daylight saving: a boundary is the first instant the local clock shows it (a start in a
    skipped hour opens at the jump; a repeated hour opens once, at its first reading).
    """

    start: str = Field(description='Opens at, local time "HH:MM".', examples=["09:00"])
    end: str = Field(
        description='Closes at, "HH:MM"; earlier than start: the next day; "24:00": midnight.',
        examples=["17:00"],
    )
    days: list[str] | None = Field(
        None,
        max_length=7,
        description="The days it opens on (mon … sun); every day when left out.",
        examples=[["mon", "tue", "wed", "thu", "fri"]],
    )
    timezone: str = Field(
        CONTACT,
        max_length=64,
        description="An IANA name, or 'contact': the contact's own zone, else the tenant's "
        "(PUT /v1/settings), else UTC.",
    )

    def window(self) -> SendWindow:
        """The checked window; a wrong value is a 422 naming ``send_window.<field>``."""
        parsed = parse_send_window(self.model_dump())
        assert parsed is not None
        return parsed


def send_window_of(body: SendWindowIn | None) -> SendWindow | None:
    return None if body is None else body.window()


class SendWindowOut(BaseModel):
    start: str
    end: str
    days: list[str]
    timezone: str = Field(description="For a message: the zone it is read in, resolved.")

    @classmethod
    def of(cls, stored: dict[str, Any] | None, timezone: str | None = None) -> SendWindowOut | None:
        """``stored`` as written by ``SendWindow.to_json``; ``timezone``: a message's resolved zone."""
        if stored is None:
            return None
        return cls(**{**stored, "timezone": timezone or stored["timezone"]})
