"""Request and response schemas shared across routes (each route module keeps its own as well)."""

from __future__ import annotations

from copy import copy
from types import UnionType
from typing import Annotated, Any, Generic, TypeVar, Union, get_args, get_origin

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, create_model

from tidings.errors import InvalidInput
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


def partial_model(model: type[StrictModel]) -> type[StrictModel]:
    """``model`` with every field optional, for a PATCH: the fields and their checks are those of
    the create body, so the two cannot drift apart. Read the body with
    ``model_dump(exclude_unset=True)`` and ``refuse_nulls`` (null is only for nullable fields)."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        optional = copy(info)
        optional.default, optional.default_factory = None, None
        annotation = Any if info.annotation is None else info.annotation | None
        fields[name] = (annotation, optional)
    return create_model(f"{model.__name__}Patch", __base__=StrictModel, **fields)


def refuse_nulls(changes: dict[str, Any], model: type[BaseModel]) -> None:
    """A PATCH's null for a field that ``model`` does not allow to be null is a 422 naming it."""
    for name, value in changes.items():
        annotation = model.model_fields[name].annotation
        if value is None and not (
            get_origin(annotation) in (Union, UnionType) and type(None) in get_args(annotation)
        ):
            raise InvalidInput(f"{name} cannot be null", field=name)


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
