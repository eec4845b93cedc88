"""A segment's filter (``domain/segment_filter.py``) as a SQLAlchemy condition over ``contacts``.

Every value is a bound parameter; the only text built from input is a SQLite JSON path
(``$."name"``), itself bound, from a name that cannot hold a quote. Each leaf is ``guard AND
comparison``, where the guard (present, of the right JSON type) is never NULL and the comparison
is never NULL when the guard holds: so no leaf is ever unknown, and ``NOT`` is a plain complement
(SQL's three-valued logic would otherwise drop every contact lacking the attribute from both
``x = 1`` and ``NOT (x = 1)``).

PostgreSQL: ``eq`` and ``in`` on an attribute are ``attributes @> {"name": value}``, which the GIN
index ``ix_contacts_attributes`` (``jsonb_path_ops``, migration 0020) answers; the other operators
read the value (``->``, ``jsonb_typeof``), cheap next to the row itself. SQLite: JSON1's
``json_type``/``json_extract`` on the stored text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Select,
    String,
    and_,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import InstrumentedAttribute, Session

from tidings.db.models import Contact, ListMember, Message, Segment
from tidings.domain.segment_filter import (
    ORDERING,
    Engaged,
    Group,
    InList,
    Leaf,
    Node,
    Op,
    parse_filter,
)

_COLUMNS: dict[str, InstrumentedAttribute[Any]] = {
    "email": Contact.email,
    "name": Contact.name,
    "timezone": Contact.timezone,
    "locale": Contact.locale,
    "status": Contact.status,
    "created_at": Contact.created_at,
}
_NUMBER_TYPES = {"postgresql": ("number",), "sqlite": ("integer", "real")}
_STRING_TYPE = {"postgresql": "string", "sqlite": "text"}


def segment_condition(
    node: Node, *, tenant_id: int, dialect: str, after: int = 0, upto: int | None = None
) -> ColumnElement[bool]:
    """The tenant's contacts the filter matches. ``after``/``upto`` bound the ``in_list``
    sub-queries to one fan-out chunk's ids (see ``queue.fanout.audience_condition``)."""
    return and_(
        Contact.tenant_id == tenant_id,
        _Compiler(tenant_id=tenant_id, dialect=dialect, after=after, upto=upto).node(node),
    )


def snapshot_segments(
    session: Session, *, tenant_id: int, segment_ids: Sequence[int]
) -> dict[str, Any]:
    """The filters of the tenant's segments among ``segment_ids`` as they are now, for a
    campaign to keep (``{"any": [filter, ...]}``; a segment that is gone adds nobody)."""
    filters = session.scalars(
        select(Segment.filter)
        .where(Segment.tenant_id == tenant_id, Segment.id.in_(list(segment_ids)))
        .order_by(Segment.id)
    )
    return {"any": list(filters)}


def snapshot_nodes(snapshot: dict[str, Any]) -> list[Node]:
    """Each filter of a ``snapshot_segments`` copy, parsed on its own (together they may exceed
    the size limits of one filter, which each of them was checked against)."""
    return [parse_filter(each) for each in snapshot.get("any", [])]


class _Compiler:
    def __init__(self, *, tenant_id: int, dialect: str, after: int, upto: int | None) -> None:
        self.tenant_id = tenant_id
        self.dialect = "postgresql" if dialect == "postgresql" else "sqlite"
        self.after = after
        self.upto = upto

    def node(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, Group):
            parts = [self.node(child) for child in node.children]
            if node.kind == "not":
                return not_(parts[0])
            if node.kind == "all":
                return and_(true(), *parts)
            return or_(false(), *parts)
        if isinstance(node, InList):
            members = select(ListMember.contact_id).where(
                ListMember.tenant_id == self.tenant_id,
                ListMember.list_id == node.list_id,
                ListMember.contact_id > self.after,
                *([] if self.upto is None else [ListMember.contact_id <= self.upto]),
            )
            return Contact.id.in_(members)
        if isinstance(node, Engaged):
            return Contact.id.in_(self.engaged(node))
        if node.op is Op.ne:
            return not_(self.leaf(Leaf(node.column, node.key, Op.eq, node.value)))
        return self.leaf(node)

    def engaged(self, node: Engaged) -> Select[int | None]:
        """The contacts of the campaign's messages a person opened (clicked in), through the
        partial index of migration 0025. ``contact_id > after`` (0 outside a fan-out) also keeps
        out the messages whose contact was deleted: a NULL in the ``IN`` list would make ``NOT``
        unknown, so false, for every other contact."""
        first = (
            Message.first_opened_at
            if node.kind == "opened_campaign"
            else (Message.first_clicked_at)
        )
        return select(Message.contact_id).where(
            Message.campaign_id == node.campaign_id,
            Message.tenant_id == self.tenant_id,
            first.is_not(None),
            Message.contact_id > self.after,
            *([] if self.upto is None else [Message.contact_id <= self.upto]),
        )

    def leaf(self, leaf: Leaf) -> ColumnElement[bool]:
        if leaf.column == "attributes":
            assert leaf.key is not None
            if self.dialect == "postgresql":
                return _PgAttribute(leaf.key).condition(leaf.op, leaf.value)
            return _SqliteAttribute(leaf.key).condition(leaf.op, leaf.value)
        return self.column_leaf(_COLUMNS[leaf.column], leaf)

    def column_leaf(self, column: InstrumentedAttribute[Any], leaf: Leaf) -> ColumnElement[bool]:
        present = column.is_not(None)
        if leaf.op is Op.exists:
            return present if leaf.value else column.is_(None)
        if leaf.op is Op.eq:
            return and_(present, column == leaf.value)
        if leaf.op is Op.in_:
            return and_(present, column.in_(list(leaf.value)))
        if leaf.op is Op.contains:
            return and_(present, column.icontains(leaf.value, autoescape=True))
        if leaf.op is Op.starts_with:
            return and_(present, column.istartswith(leaf.value, autoescape=True))
        ordered: ColumnElement[Any] = column.expression
        if self.dialect == "postgresql" and leaf.column != "created_at":
            ordered = ordered.collate("C")
        return and_(present, _compare(ordered, leaf.op, leaf.value))


def _compare(left: ColumnElement[Any], op: Op, value: Any) -> ColumnElement[bool]:
    assert op in ORDERING
    compared: ColumnElement[bool]
    if op is Op.gt:
        compared = left > value
    elif op is Op.gte:
        compared = left >= value
    elif op is Op.lt:
        compared = left < value
    else:
        compared = left <= value
    return compared


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "number"
    return "string"


class _PgAttribute:
    """One attribute of ``contacts.attributes`` (jsonb) on PostgreSQL."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.value = Contact.attributes.op("->", return_type=JSONB())(literal(key, String()))
        self.kind = func.coalesce(func.jsonb_typeof(self.value), "")

    def contains(self, value: Any) -> ColumnElement[bool]:
        # ``attributes`` is NOT NULL, so ``@>`` is never unknown; the GIN index answers it.
        document = literal({self.key: value}, JSONB())
        return Contact.attributes.op("@>", return_type=Boolean())(document)

    def text(self) -> ColumnElement[str]:
        return Contact.attributes.op("->>", return_type=String())(literal(self.key, String()))

    def condition(self, op: Op, value: Any) -> ColumnElement[bool]:
        if op is Op.exists:
            present = self.kind.not_in(["", "null"])
            return present if value else not_(present)
        if op is Op.eq:
            return self.contains(value)
        if op is Op.in_:
            return or_(false(), *(self.contains(v) for v in value))
        string = self.kind == "string"
        if op is Op.contains:
            return and_(string, self.text().icontains(value, autoescape=True))
        if op is Op.starts_with:
            return and_(string, self.text().istartswith(value, autoescape=True))
        if _json_kind(value) == "number":
            # jsonb orders numbers numerically (and every other type before or after all
            # numbers, which the guard drops): no cast, so no string can ever make it fail.
            return and_(self.kind == "number", _compare(self.value, op, literal(value, JSONB())))
        return and_(string, _compare(self.text().collate("C"), op, value))


class _SqliteAttribute:
    """One attribute of ``contacts.attributes`` (JSON text) on SQLite, by JSON1."""

    def __init__(self, key: str) -> None:
        path = literal(f'$."{key}"', String())
        self.value = func.json_extract(Contact.attributes, path)
        self.kind = func.coalesce(func.json_type(Contact.attributes, path), "")

    def condition(self, op: Op, value: Any) -> ColumnElement[bool]:
        if op is Op.exists:
            present = self.kind.not_in(["", "null"])
            return present if value else not_(present)
        if op is Op.in_:
            return or_(false(), *(self.equal(v) for v in value))
        if op is Op.eq:
            return self.equal(value)
        # The comparison first: SQLite stops at the first false term, and most rows fail it, so
        # most rows parse their JSON once. The guard is false whenever the value is NULL, so the
        # whole term is still never NULL.
        string = self.kind == "text"
        if op is Op.contains:
            return and_(self.value.icontains(value, autoescape=True), string)
        if op is Op.starts_with:
            return and_(self.value.istartswith(value, autoescape=True), string)
        if _json_kind(value) == "number":
            return and_(_compare(self.value, op, value), self.kind.in_(_NUMBER_TYPES["sqlite"]))
        return and_(_compare(self.value, op, value), string)

    def equal(self, value: Any) -> ColumnElement[bool]:
        kind = _json_kind(value)
        if kind in ("true", "false"):
            return self.kind == kind
        if kind == "number":
            return and_(self.value == value, self.kind.in_(_NUMBER_TYPES["sqlite"]))
        return and_(self.value == value, self.kind == _STRING_TYPE["sqlite"])
