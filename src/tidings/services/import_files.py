"""Reading an uploaded contacts file (CSV or JSON Lines) as a stream of checked rows.

The body arrives as byte chunks and is never held whole: it is split into lines (each capped, so a
50 MB line is refused after the first megabyte, not read), each line is checked to be UTF-8 text,
then parsed. A problem with one row skips that row with a reason; a problem with the file itself
(not UTF-8, NUL bytes, a quote never closed, no email column) raises, and the caller's transaction
rolls the whole import back.
"""

from __future__ import annotations

import csv
import enum
import json
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

from tidings.errors import InvalidInput, PayloadTooLarge
from tidings.services.contacts import (
    TEXT_FIELDS,
    attributes_json,
    check_attribute_name,
    clean_email,
    clean_locale,
    clean_status,
    clean_text,
    clean_timezone,
    string_attributes_json,
)

MAX_ROW_BYTES = 1_048_576  # bytes: one row of a file (a CSV record may span several lines)
MAX_SKIPPED_REPORTED = 1000  # rows listed in the answer; ``skipped_count`` has them all
DELIMITERS = (",", ";", "\t")  # what spreadsheets write; the header line decides which
#: Columns that are contact fields; every other column is an attribute.
FIELD_COLUMNS = frozenset({"email", *TEXT_FIELDS, "timezone", "locale", "status"})
_QUOTED = re.compile(r'"[^"]*"')
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

# The csv module refuses fields over 128 KiB by default; our own per-row cap is the rule instead.
csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_BYTES))


class ImportFormat(enum.StrEnum):
    csv = "csv"
    json_lines = "json_lines"


#: One row ready for the staging table:
#: (line, email, name, first_name, last_name, timezone, locale, attributes JSON, status or None).
StagedRow = tuple[
    int, str, str | None, str | None, str | None, str | None, str | None, str, str | None
]
STAGED_COLUMNS = (
    "line", "email", "name", "first_name", "last_name", "timezone", "locale", "attributes", "status",
)  # fmt: skip


@dataclass(frozen=True, order=True)
class SkippedRow:
    line: int  # where the row starts in the file, counting from 1 (the CSV header is line 1)
    reason: str


class Skips:
    """The skipped rows: all counted, the first ``cap`` (by line) kept for the answer."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.count = 0
        self._rows: list[SkippedRow] = []

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self._rows) < self.cap:
            self._rows.append(SkippedRow(line, reason))

    def extend(self, rows: Iterable[SkippedRow], count: int) -> None:
        """Adds skips found later (in the database), of which ``rows`` are the first by line."""
        self.count += count
        self._rows.extend(rows)

    def rows(self) -> list[SkippedRow]:
        return sorted(self._rows)[: self.cap]


class _Lines:
    """Decoded lines of a byte stream, each with its line ending, refusing what is not text.

    Each chunk's complete lines are checked and decoded as one block (C speed); only the partial
    line at its end waits for the next chunk, and that one is never allowed past the row cap.
    ``mark()`` starts a new record, so that a CSV record spanning lines is capped as a whole.
    """

    def __init__(self, chunks: Iterable[bytes], *, max_row_bytes: int) -> None:
        self._chunks = iter(chunks)
        self._max = max_row_bytes
        self._buffer = bytearray()
        self._ready: deque[tuple[str, int]] = deque()  # (line, its size in bytes)
        self._eof = False
        self._decoded_lines = 0  # lines decoded so far, handed out or ready
        self.line_no = 0  # the last line handed out
        self.record_start = 1
        self._record_bytes = 0

    def mark(self) -> None:
        self.record_start = self.line_no + 1
        self._record_bytes = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while not self._ready:
            if self._eof:
                raise StopIteration
            self._read_chunk()
        line, size = self._ready.popleft()
        self.line_no += 1
        self._record_bytes += size
        if self._record_bytes > self._max:
            raise PayloadTooLarge(
                f"the row starting at line {self.record_start} is over {self._max} bytes"
                " (is a quote left open?)",
                field="body",
            )
        return line

    def _read_chunk(self) -> None:
        chunk = next(self._chunks, None)
        if chunk is None:
            self._eof = True
            if self._buffer:  # a last line without a line ending
                self._add_block(bytes(self._buffer))
                self._buffer.clear()
            return
        start = len(self._buffer)
        self._buffer += chunk
        end = self._buffer.rfind(b"\n", start)
        if end >= 0:
            block = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            self._add_block(block)
        if len(self._buffer) > self._max:  # never read the rest of an overlong line
            self._too_long(self._decoded_lines + 1)

    def _add_block(self, block: bytes) -> None:
        first = self._decoded_lines + 1
        if first == 1:
            if block.startswith(UTF16_BOMS):
                raise InvalidInput("the file is UTF-16; save it as UTF-8", field="body")
            block = block.removeprefix(UTF8_BOM)  # what spreadsheets put at the start of UTF-8
        nul = block.find(b"\x00")
        if nul >= 0:
            line = first + block.count(b"\n", 0, nul)
            raise InvalidInput(
                f"line {line} contains a NUL byte: this is not a UTF-8 text file", field="body"
            )
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = first + block.count(b"\n", 0, exc.start)
            column = exc.start - block.rfind(b"\n", 0, exc.start)
            raise InvalidInput(
                f"line {line} is not UTF-8 (byte {column} of the line is"
                f" 0x{block[exc.start]:02x}); save the file as UTF-8",
                field="body",
            ) from None
        # Splitting on b"\n" and on "\n" cuts at the same places: in UTF-8 that byte is always a
        # line feed, never part of another character.
        lines = [line + "\n" for line in text.split("\n")]
        sizes = [len(raw) + 1 for raw in block.split(b"\n")]
        lines[-1] = lines[-1][:-1]
        sizes[-1] -= 1
        if not lines[-1]:  # the block ended with a line ending (or was empty)
            lines.pop()
            sizes.pop()
        if len(block) > self._max:
            for offset, size in enumerate(sizes):
                if size > self._max:
                    self._too_long(first + offset)
        self._ready.extend(zip(lines, sizes, strict=True))
        self._decoded_lines += len(lines)

    def _too_long(self, line: int) -> None:
        raise PayloadTooLarge(f"line {line} is longer than {self._max} bytes", field="body")


class ContactRows:
    """The rows of one file, checked and ready to stage; counts and skips are known once iterated."""

    def __init__(
        self,
        chunks: Iterable[bytes],
        file_format: ImportFormat,
        *,
        max_row_bytes: int,
        max_attributes_bytes: int,
        skips: Skips,
    ) -> None:
        self._lines = _Lines(chunks, max_row_bytes=max_row_bytes)
        self._format = file_format
        self._max_attributes_bytes = max_attributes_bytes
        self.skips = skips
        self.total_rows = 0

    def __iter__(self) -> Iterator[StagedRow]:
        records = self._csv() if self._format is ImportFormat.csv else self._json_lines()
        for line, fields, attributes in records:
            self.total_rows += 1
            try:
                yield self._row(line, fields, attributes)
            except InvalidInput as exc:
                self.skips.add(line, exc.message)

    def _row(
        self, line: int, fields: Mapping[str, Any], attributes: Mapping[str, Any]
    ) -> StagedRow:
        email = fields.get("email")
        if email is None or email == "":
            raise InvalidInput("email is missing", field="email")
        status = fields.get("status")
        if self._format is ImportFormat.csv:  # names checked with the header, values are strings
            attributes_text = string_attributes_json(
                attributes, max_bytes=self._max_attributes_bytes
            )
        else:
            attributes_text = attributes_json(attributes, max_bytes=self._max_attributes_bytes)
        return (
            line,
            clean_email(email),
            clean_text(fields.get("name"), field="name"),
            clean_text(fields.get("first_name"), field="first_name"),
            clean_text(fields.get("last_name"), field="last_name"),
            clean_timezone(fields.get("timezone")),
            clean_locale(fields.get("locale")),
            attributes_text,
            None if status is None or status == "" else clean_status(status).value,
        )

    def _csv(self) -> Iterator[tuple[int, dict[str, str], dict[str, str]]]:
        lines = self._lines
        first = next(lines, None)
        if first is None:
            raise InvalidInput("the file is empty; it needs a header line", field="body")
        unquoted = _QUOTED.sub("", first)  # a quoted column name may contain any delimiter
        delimiter = max(DELIMITERS, key=unquoted.count)  # ties go to the comma
        reader = csv.reader(chain([first], lines), delimiter=delimiter, strict=True)
        header = self._next_record(reader) or []
        field_columns, attribute_columns = _columns(header)
        lines.mark()
        width = len(header)
        while (record := self._next_record(reader)) is not None:
            line = lines.record_start
            lines.mark()
            if len(record) != width:
                if not "".join(record).strip():
                    continue  # a blank line
                self.total_rows += 1
                self.skips.add(line, f"the row has {len(record)} fields, the header has {width}")
                continue
            fields = {name: v for name, i in field_columns if (v := record[i].strip())}
            attributes = {name: v for name, i in attribute_columns if (v := record[i].strip())}
            if fields or attributes:
                yield line, fields, attributes

    def _next_record(self, reader: Any) -> list[str] | None:
        start = self._lines.record_start
        try:
            record: list[str] = next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                message = f"the quoted field starting on line {start} is never closed"
            else:
                message = f"line {self._lines.line_no} is not valid CSV ({exc})"
            raise InvalidInput(message, field="body") from None
        return record

    def _json_lines(self) -> Iterator[tuple[int, dict[str, Any], dict[str, Any]]]:
        lines = self._lines
        for text in lines:
            line = lines.line_no
            lines.mark()
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as exc:
                self.total_rows += 1
                detail = (
                    f" ({exc.msg}, column {exc.colno})"
                    if isinstance(exc, json.JSONDecodeError)
                    else ""
                )
                self.skips.add(line, f"the line is not valid JSON{detail}")
                continue
            extra = value.get("attributes") if isinstance(value, dict) else None
            if not isinstance(value, dict) or not isinstance(extra, dict | None):
                self.total_rows += 1
                self.skips.add(line, "the line must be a JSON object (and attributes an object)")
                continue
            fields = {k: v for k, v in value.items() if k in FIELD_COLUMNS}
            attributes = {
                k: v for k, v in value.items() if k not in FIELD_COLUMNS and k != "attributes"
            }
            attributes.update(extra or {})  # the explicit object wins over loose keys
            yield line, fields, attributes


def _columns(header: list[str]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(name, index) of the contact-field columns and of the attribute columns; a column without a
    name in the header is ignored (spreadsheets add them)."""
    fields: list[tuple[str, int]] = []
    attributes: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    for index, title in enumerate(header):
        name = title.strip()
        if not name:
            continue
        if name.lower() in FIELD_COLUMNS:
            name = name.lower()
            fields.append((name, index))
        else:
            try:
                check_attribute_name(name)
            except InvalidInput as exc:
                raise InvalidInput(f"column {index + 1}: {exc.message}", field="body") from None
            attributes.append((name, index))
        if name in seen:
            raise InvalidInput(
                f"the header names {name!r} twice (columns {seen[name]} and {index + 1})",
                field="body",
            )
        seen[name] = index + 1
    if "email" not in seen:
        raise InvalidInput("the file has no email column in its header line", field="email")
    return fields, attributes
