"""The campaign form's segment builder: rows of field, operator and value, as plain form fields
(so the form works without JavaScript), turned into a segment filter the service checks.

A value is typed as a person means it: "30" given for an attribute is compared both as the number
and as the text (an imported CSV stores text, the API may store numbers); "true"/"false" likewise;
``gt``/``lt`` … compare numbers when the value is a number. ``in`` takes comma-separated values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tidings.errors import InvalidInput

ATTRIBUTE = "attribute"
#: (value sent, label shown) of the field and operator choices.
FIELD_CHOICES = (
    ("", "—"),
    ("email", "Email"),
    ("name", "Name"),
    ("status", "Status"),
    ("timezone", "Time zone"),
    ("locale", "Locale"),
    ("created_at", "Added on"),
    (ATTRIBUTE, "Attribute…"),
    ("opened_campaign", "Opened campaign (id)"),
    ("clicked_campaign", "Clicked in campaign (id)"),
)
#: Fields whose row is an engagement condition: "is" / "is not" a campaign's id (a person's open
#: or click; machines' never count).
ENGAGEMENT = ("opened_campaign", "clicked_campaign")
OP_CHOICES = (
    ("eq", "is"),
    ("ne", "is not"),
    ("in", "is one of"),
    ("contains", "contains"),
    ("starts_with", "starts with"),
    ("gt", ">"),
    ("gte", "≥"),
    ("lt", "<"),
    ("lte", "≤"),
    ("exists", "is set"),
    ("missing", "is not set"),
)
MAX_ROWS = 50
_NUMBER = re.compile(r"-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,15})?")
_ERROR_PATH = re.compile(r"^filter\.(?:all|any)\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class Row:
    field: str = ""
    key: str = ""
    op: str = "eq"
    value: str = ""


@dataclass(frozen=True, slots=True)
class Built:
    filter: dict[str, Any] | None  # None: no row filled in
    rows: tuple[int, ...]  # the form row (1-based) of each condition, for error messages


def read_rows(fields: list[str], keys: list[str], ops: list[str], values: list[str]) -> list[Row]:
    """The rows as the form sent them (lists of equal length; missing cells are empty)."""
    count = min(max(len(fields), len(ops)), MAX_ROWS)

    def cell(items: list[str], i: int, default: str = "") -> str:
        return items[i].strip() if i < len(items) else default

    return [
        Row(cell(fields, i), cell(keys, i), cell(ops, i, "eq"), cell(values, i))
        for i in range(count)
    ]


def build_filter(rows: list[Row], match: str) -> Built:
    """The filter of the filled rows; InvalidInput naming the row when one cannot be read."""
    conditions: list[dict[str, Any]] = []
    numbers: list[int] = []
    for number, row in enumerate(rows, 1):
        if not row.field:
            continue
        conditions.append(_condition(row, number))
        numbers.append(number)
    if not conditions:
        return Built(filter=None, rows=())
    kind = "any" if match == "any" else "all"
    return Built(filter={kind: conditions}, rows=tuple(numbers))


def explain(error: InvalidInput, built: Built) -> str:
    """The service's error about the built filter, in terms of the form's rows."""
    found = _ERROR_PATH.match(error.field or "")
    if found and int(found.group(1)) < len(built.rows):
        return f"Row {built.rows[int(found.group(1))]}: {error.message}"
    return error.message


def _engagement(row: Row, number: int) -> dict[str, Any]:
    if row.op not in ("eq", "ne"):
        raise InvalidInput(f"Row {number}: choose is or is not", field="segment")
    if not row.value.isdigit() or not 0 < int(row.value) < 2**63:
        raise InvalidInput(f"Row {number}: give the campaign's number", field="segment")
    condition = {row.field: int(row.value)}
    return condition if row.op == "eq" else {"not": condition}


def _condition(row: Row, number: int) -> dict[str, Any]:
    if row.field in ENGAGEMENT:
        return _engagement(row, number)
    if row.field == ATTRIBUTE:
        if not row.key:
            raise InvalidInput(f"Row {number}: name the attribute", field="segment")
        field = f"attributes.{row.key}"
    else:
        field = row.field
    if row.op in ("exists", "missing"):
        return {"field": field, "op": "exists", "value": row.op == "exists"}
    attribute = row.field == ATTRIBUTE
    if row.op == "in":
        values = [v.strip() for v in row.value.split(",") if v.strip()]
        typed = [each for v in values for each in (_readings(v) if attribute else [v])]
        return {"field": field, "op": "in", "value": typed}
    if row.op in ("eq", "ne") and attribute:
        readings = _readings(row.value)
        same: dict[str, Any] = (
            {"field": field, "op": "eq", "value": readings[0]}
            if len(readings) == 1
            else {"any": [{"field": field, "op": "eq", "value": v} for v in readings]}
        )
        return same if row.op == "eq" else {"not": same}
    if row.op in ("gt", "gte", "lt", "lte") and attribute and _NUMBER.fullmatch(row.value):
        return {"field": field, "op": row.op, "value": _number(row.value)}
    return {"field": field, "op": row.op, "value": row.value}


def _readings(text: str) -> list[Any]:
    """Every JSON value a typed-in text may stand for: itself, and the number or boolean."""
    if _NUMBER.fullmatch(text):
        return [_number(text), text]
    if text in ("true", "false"):
        return [text == "true", text]
    return [text]


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)
