"""A segment's filter: the JSON a caller sends, checked into a small tree before any SQL exists.

Hostile input is the normal case: the walk refuses a tree deeper than ``MAX_DEPTH`` or larger than
``MAX_NODES`` as soon as it meets the node that crosses the limit, so a filter of 10,000 leaves or
1,000 levels costs a few microseconds, never a compiled statement. Every error names the path of
the offending part (``filter.all[2].op``).

Meaning, the same on both databases (``queue/segments.py`` compiles it):

* Every leaf is true or false, never unknown: a missing attribute, a JSON ``null`` or a value of
  another type makes ``eq``, ``in``, ``contains``, ``starts_with``, ``gt`` … and ``exists`` false.
  ``ne`` is exactly ``not eq`` (so a contact without the attribute *is* "not equal"), and ``not``
  is the exact complement of its child within the tenant's contacts.
* ``eq``/``ne``/``in`` compare typed JSON values: the number 30 is not the string "30".
* ``gt``/``gte``/``lt``/``lte`` with a number compare JSON numbers numerically; with a string they
  compare string values byte-wise (code point order, ``COLLATE "C"`` on PostgreSQL, as SQLite);
  on ``created_at`` the value is an ISO 8601 date or time (UTC when it names no offset).
* ``contains``/``starts_with`` match string values, ignoring case (ASCII letters on SQLite, every
  letter on PostgreSQL); ``%`` and ``_`` in the value are plain characters.
* ``exists`` (value ``true`` by default, or ``false``): the field holds a non-null value.
* ``{"all": []}`` is every contact, ``{"any": []}`` none.
* ``{"opened_campaign": id}`` / ``{"clicked_campaign": id}``: a person opened (clicked in) the
  contact's message of that campaign; privacy proxies' and scanners' hits never count (the
  message's ``first_opened_at``/``first_clicked_at``, kept after the hits are purged).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from tidings.domain import ContactStatus
from tidings.errors import InvalidInput

MAX_DEPTH = 8  # levels of all/any/not above a leaf
MAX_NODES = 200  # groups and leaves in one filter
MAX_IN_VALUES = 500  # values of one ``in``
MAX_VALUE_LENGTH = 500  # characters of a string value
MAX_KEY_LENGTH = 200  # characters of an attribute name (as contacts allow)
MAX_ID = 2**63 - 1
MAX_INTEGER = 2**63 - 1  # what both databases bind as an integer

ATTRIBUTES = "attributes."
GROUPS = ("all", "any", "not")
#: Engagement leaves: contacts a person's open (click) of a campaign's mail was recorded for.
ENGAGEMENT = ("opened_campaign", "clicked_campaign")

Scalar = str | int | float | bool


class Op(enum.StrEnum):
    eq = "eq"
    ne = "ne"
    in_ = "in"
    contains = "contains"
    starts_with = "starts_with"
    gt = "gt"
    gte = "gte"
    lt = "lt"
    lte = "lte"
    exists = "exists"


ORDERING = frozenset({Op.gt, Op.gte, Op.lt, Op.lte})
TEXT_MATCH = frozenset({Op.contains, Op.starts_with})

#: The contact columns a filter may name, and the operators each takes.
TEXT_COLUMNS = ("email", "name", "timezone", "locale")
COLUMN_OPS: dict[str, frozenset[Op]] = {
    **{name: frozenset(Op) for name in TEXT_COLUMNS},
    "status": frozenset({Op.eq, Op.ne, Op.in_, Op.exists}),
    "created_at": frozenset({Op.eq, Op.ne, *ORDERING, Op.exists}),
}


@dataclass(frozen=True, slots=True)
class Group:
    kind: str  # "all" | "any" | "not" (then exactly one child)
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class InList:
    list_id: int
    path: str  # where it sits in the filter, for an error about the list


@dataclass(frozen=True, slots=True)
class Engaged:
    kind: str  # "opened_campaign" | "clicked_campaign"
    campaign_id: int
    path: str  # where it sits in the filter, for an error about the campaign


@dataclass(frozen=True, slots=True)
class Leaf:
    column: str  # one of COLUMN_OPS, or "attributes"
    key: str | None  # the attribute's name when column is "attributes"
    op: Op
    #: Checked for the op: a scalar; a tuple of scalars for ``in``; a bool for ``exists``; an
    #: aware datetime for ordering on ``created_at``.
    value: Any


Node = Group | InList | Engaged | Leaf


def parse_filter(raw: object, *, path: str = "filter") -> Node:
    """The checked tree of ``raw``, or InvalidInput naming the path of the first thing wrong."""
    budget = [MAX_NODES]
    return _node(raw, path, 0, budget)


def list_ids(node: Node) -> Iterator[InList]:
    """Every ``in_list`` of the tree, for the caller to check that each list is the tenant's."""
    if isinstance(node, InList):
        yield node
    elif isinstance(node, Group):
        for child in node.children:
            yield from list_ids(child)


def campaign_ids(node: Node) -> Iterator[Engaged]:
    """Every engagement leaf of the tree, for the caller to check each campaign is the tenant's."""
    if isinstance(node, Engaged):
        yield node
    elif isinstance(node, Group):
        for child in node.children:
            yield from campaign_ids(child)


def _node(raw: object, path: str, depth: int, budget: list[int]) -> Node:
    budget[0] -= 1
    if budget[0] < 0:
        raise InvalidInput(f"a filter may have at most {MAX_NODES} conditions", field=path)
    if not isinstance(raw, dict):
        raise InvalidInput("a condition must be a JSON object", field=path)
    if "field" in raw or "op" in raw:
        return _leaf(raw, path)
    if len(raw) != 1:
        raise InvalidInput(
            "a condition is {all: [...]}, {any: [...]}, {not: {...}}, {in_list: id}, "
            "{opened_campaign: id}, {clicked_campaign: id} or {field, op, value}",
            field=path,
        )
    ((kind, inner),) = raw.items()
    where = f"{path}.{kind}"
    if kind not in GROUPS:
        return _reference(kind, inner, where)
    if depth >= MAX_DEPTH:
        raise InvalidInput(f"a filter may nest at most {MAX_DEPTH} levels", field=where)
    if kind == "not":
        return Group("not", (_node(inner, where, depth + 1, budget),))
    if not isinstance(inner, list):
        raise InvalidInput(f"{kind} takes a list of conditions", field=where)
    if len(inner) > budget[0]:
        raise InvalidInput(f"a filter may have at most {MAX_NODES} conditions", field=where)
    return Group(
        kind,
        tuple(_node(child, f"{where}[{i}]", depth + 1, budget) for i, child in enumerate(inner)),
    )


def _reference(kind: object, inner: object, where: str) -> InList | Engaged:
    if kind != "in_list" and kind not in ENGAGEMENT:
        raise InvalidInput(f"unknown condition {kind!r}", field=where)
    if isinstance(inner, bool) or not isinstance(inner, int) or not 1 <= inner <= MAX_ID:
        noun = "list" if kind == "in_list" else "campaign"
        raise InvalidInput(f"{kind} takes a {noun} id", field=where)
    if kind == "in_list":
        return InList(list_id=inner, path=where)
    return Engaged(kind=str(kind), campaign_id=inner, path=where)


def _leaf(raw: dict[Any, Any], path: str) -> Leaf:
    unknown = sorted(str(k) for k in raw if k not in ("field", "op", "value"))
    if unknown:
        raise InvalidInput(
            f"unknown key {unknown[0]!r} in a condition", field=f"{path}.{unknown[0]}"
        )
    column, key = _field(raw.get("field"), f"{path}.field")
    try:
        op = Op(str(raw.get("op")))
    except ValueError:
        allowed = ", ".join(o.value for o in Op)
        raise InvalidInput(f"op must be one of {allowed}", field=f"{path}.op") from None
    if column != "attributes" and op not in COLUMN_OPS[column]:
        raise InvalidInput(f"{column} does not take {op.value}", field=f"{path}.op")
    where = f"{path}.value"
    if op is Op.exists:
        value = raw.get("value", True)
        if not isinstance(value, bool):
            raise InvalidInput("exists takes true or false", field=where)
        return Leaf(column, key, op, value)
    if "value" not in raw:
        raise InvalidInput(f"{op.value} needs a value", field=where)
    value = raw["value"]
    if op is Op.in_:
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_IN_VALUES:
            raise InvalidInput(f"in takes a list of 1 to {MAX_IN_VALUES} values", field=where)
        return Leaf(
            column,
            key,
            op,
            tuple(_equality_value(column, v, f"{where}[{i}]") for i, v in enumerate(value)),
        )
    if op in (Op.eq, Op.ne):
        return Leaf(column, key, op, _equality_value(column, value, where))
    if op in TEXT_MATCH:
        text = _string(value, where, f"{op.value} takes a string")
        if not text:
            raise InvalidInput(f"{op.value} takes a non-empty string", field=where)
        return Leaf(column, key, op, text)
    return Leaf(column, key, op, _ordered_value(column, value, where, op))


def _field(raw: object, path: str) -> tuple[str, str | None]:
    if not isinstance(raw, str):
        raise InvalidInput("field must be a string", field=path)
    if raw.startswith(ATTRIBUTES):
        key = raw[len(ATTRIBUTES) :]
        if not key or len(key) > MAX_KEY_LENGTH:
            raise InvalidInput(
                f"an attribute name has 1 to {MAX_KEY_LENGTH} characters", field=path
            )
        # The SQLite JSON path quotes the name ("$."name""), and has no escape for these.
        if any(c in '"\\' or ord(c) < 32 or ord(c) == 127 for c in key):
            raise InvalidInput(
                "an attribute name in a filter may not hold quotes, backslashes or control "
                "characters",
                field=path,
            )
        return "attributes", key
    if raw not in COLUMN_OPS:
        allowed = ", ".join([*COLUMN_OPS, "attributes.<name>"])
        raise InvalidInput(f"field must be one of {allowed}", field=path)
    return raw, None


def _string(value: object, path: str, message: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(message, field=path)
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidInput(f"a value has at most {MAX_VALUE_LENGTH} characters", field=path)
    if "\x00" in value:
        raise InvalidInput("a value may not hold NUL characters", field=path)
    return value


def _number(value: int | float, path: str) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput("a number must be finite", field=path)
    if isinstance(value, int) and abs(value) > MAX_INTEGER:
        raise InvalidInput("the number is too large", field=path)
    return value


def _equality_value(column: str, value: object, path: str) -> Scalar | datetime:
    if column == "attributes":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return _number(value, path)
        return _string(value, path, "the value must be a string, a number or true/false")
    if column == "created_at":
        return _moment(value, path)
    text = _string(value, path, f"{column} values are strings")
    if column == "status" and text not in ContactStatus.__members__:
        allowed = ", ".join(s.value for s in ContactStatus)
        raise InvalidInput(f"status is one of {allowed}", field=path)
    if column == "email" and "@" in text:
        # Stored addresses have their domain lower-cased (domain/addresses.py); so does the value.
        local, _, domain = text.rpartition("@")
        text = f"{local}@{domain.lower()}"
    return text


def _ordered_value(column: str, value: object, path: str, op: Op) -> Scalar | datetime:
    if column == "created_at":
        return _moment(value, path)
    if column == "attributes" and isinstance(value, int | float) and not isinstance(value, bool):
        return _number(value, path)
    expected = "a number or a string" if column == "attributes" else "a string"
    return _string(value, path, f"{op.value} takes {expected}")


def _moment(value: object, path: str) -> datetime:
    """An ISO 8601 date or date and time; UTC when it names no offset."""
    if isinstance(value, str) and len(value) <= 40:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
        try:
            day = date.fromisoformat(value)
        except ValueError:
            pass
        else:
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
    raise InvalidInput("created_at compares with an ISO 8601 date or time", field=path)
