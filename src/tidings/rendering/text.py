"""``html_to_text``: the plain-text part of a mail whose template has only HTML.

Paragraphs and headings become blank-line separated blocks, ``<br>`` a line break, list items
bullets (or numbers in ``<ol>``), links ``text (url)``; scripts, styles and the head are dropped,
entities decoded and whitespace collapsed outside ``<pre>``.

It reads markup a tenant wrote, once per recipient when there is no derived text template, so
it must be linear on any input and cheap on a newsletter. ``_tokenize`` is the tokenization stage
of the WHATWG HTML standard (13.2.5), kept to what text needs: tags and their attributes, text,
raw text inside ``<script>`` and the like; comments and declarations dropped. No character is read
twice: each scan either consumes what it read or reaches the end of the input, where the standard
ends the construct (an unclosed tag is dropped, an unclosed comment runs to the end), and the
patterns that scan are possessive or atomic, so none can retry what it read. The regular expression used before
rescanned to the end from every ``<`` left open: 37 s for 80 KB of ``<a``.

Why not a library (measured on this Python, 3.11.7; ``bench/bench_html_to_text.py`` prints the
figures of this one):

- CPython's ``html.parser`` is quadratic on constructs left open (CVE-2025-6069, fixed in later
  patch releases only): 18 s for 40 KB of ``<a b``. A subclass with the fixes would still be pure
  Python and slow: its bare tokenizing of a 3 KB newsletter costs 280 µs, twice this whole
  conversion.
- lxml: libxml2 2.14 tokenizes linearly, but its tree construction walks the open elements for
  each end tag that matches none: 2.3 s for 320 KB of ``<div>`` then ``</x>``, 16 times the
  80 KB figure.
- selectolax (lexbor) builds an HTML5 tree: quadratic on nested lists (26 s for 320 KB), and its
  foster parenting moves text out of a ``<table>``, which would carry a ``{% for %}`` away from the
  ``<tr>`` it repeats in the text template that ``Renderer._derive_text`` makes.

Tokens come out in source order, and Jinja markup between tags or in attribute values is text
like any other, so the derived text template keeps it in place.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from html import unescape
from html.entities import html5
from typing import ClassVar

_BLANK_LINES = re.compile(r"\n{3,}")

#: Elements whose content is not text for a reader; skipped up to their end tag (as raw text).
SKIPPED = ("script", "style", "head", "title", "template", "svg", "noscript")
#: Blocks separated from their neighbours by a blank line.
PARAGRAPHS = ("p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "dl", "figure", "address")  # fmt: skip
#: Blocks that start on a line of their own.
LINES = (
    "div", "tr", "dt", "dd", "section", "article", "header", "footer", "nav", "aside", "main",
    "form", "fieldset", "center", "figcaption", "caption", "tbody", "thead", "tfoot",
)  # fmt: skip
# Any other element is inline and only passes its text on (the handler tables below the
# converter say what each listed one does).
#: Nested lists indent at most this many levels, so that deep nesting cannot make the text grow
#: with the square of the input.
MAX_LIST_INDENT = 8


# --- the tokenizer ------------------------------------------------------------------------

# The next "<", and the tag it opens when that is in plain syntax (the common case, in one
# match): name, attributes each after blanks with values quoted or plain, then ">" or "/>".
# Possessive and atomic, so a failed tag gives nothing back to retry; what it accepts the full
# rules below read the same way, and they read what it refuses.
_NEXT = re.compile(
    r"<(?:(/?)([a-zA-Z][^\t\n\f\r />]*+)"
    r"(?>[\t\n\f\r ]++[^\t\n\f\r />=\"'<][^\t\n\f\r />=\"'<]*+"
    r"(?>[\t\n\f\r ]*+=[\t\n\f\r ]*+(?>\"[^\"]*+\"|'[^']*+'|[^\t\n\f\r >=\"'<`]++))?+)*+"
    r"[\t\n\f\r ]*+(/?)>)?+"
)
# One attribute of a tag that _NEXT took (so in plain syntax, where this reads it exactly).
_PLAIN_ATTRIBUTE = re.compile(
    r"[\t\n\f\r ]++([^\t\n\f\r />=\"'<]++)"
    r"(?>[\t\n\f\r ]*+=[\t\n\f\r ]*+(?>\"([^\"]*+)\"|'([^']*+)'|([^\t\n\f\r >=\"'<`]++)))?+"
)
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# The rest of a tag name, after its first letter (tag name state).
_TAG_NAME = re.compile(r"[^\t\n\f\r />]*+")
# Blanks and slashes, then one attribute: its name, and "=" with a value if there is one (the
# attribute states). A quote that never closes fails its branch at the end of the input and
# leaves the "=" without a value: the tag is then unclosed, and the tokenizer stops.
_ATTRIBUTE = re.compile(
    r"[\t\n\f\r /]*+"
    r"(?:([^\t\n\f\r />][^\t\n\f\r />=]*+)[\t\n\f\r ]*+"
    r"""(?:(=)[\t\n\f\r ]*+(?:"([^"]*+)"|'([^']*+)'|([^\t\n\f\r >"'][^\t\n\f\r >]*+))?)?)?"""
)
_COMMENT_END = re.compile(r"--!?>")
# A character reference in an attribute value; a legacy name without ";" right before "=" is left
# as written (named character reference state: "?a=1&not=2" keeps its "&not").
_ATTRIBUTE_REFERENCE = re.compile(
    r"&(?:#[0-9]++;?|#[xX][0-9a-fA-F]++;?|[a-zA-Z][a-zA-Z0-9]*+(?:;|=?))"
)

#: A tag as read: lower-case name, index after its ">" (-1 when the input ended inside the tag,
#: which then does not count), raw attribute values (the first of each name; None unless asked
#: for), and whether it ended with "/>".
_Tag = tuple[str, int, dict[str, str] | None, bool]


def _attribute_reference(match: re.Match[str]) -> str:
    reference = match.group()
    if reference[1] == "#" or reference[1:] in html5:
        return unescape(reference)
    return reference


def _attribute_value(value: str) -> str:
    """A raw attribute value with its character references decoded."""
    return _ATTRIBUTE_REFERENCE.sub(_attribute_reference, value) if "&" in value else value


def _read_tag(html: str, start: int, want_attributes: frozenset[str]) -> _Tag:
    """The tag whose name starts at ``start`` (after ``<`` or ``</``), by the full rules."""
    at = _TAG_NAME.match(html, start + 1).end()  # type: ignore[union-attr]  # may match ""
    name = html[start:at].lower()
    attributes: dict[str, str] | None = {} if name in want_attributes else None
    while True:
        match = _ATTRIBUTE.match(html, at)
        assert match is not None  # every part is optional
        at = match.end()
        key, equals, double, single, bare = match.groups()
        if key is None:  # at ">", or at the end of the input
            if at == len(html):
                return name, -1, attributes, False
            return name, at + 1, attributes, match.group().endswith("/")
        if equals and double is None and single is None and bare is None:
            if html.startswith(('"', "'"), at):
                return name, -1, attributes, False  # a quote open to the end
        if attributes is not None:
            attributes.setdefault(key.lower(), double or single or bare or "")


def _plain_attributes(html: str, start: int, end: int) -> dict[str, str]:
    """The attributes between ``start`` and ``end`` of a tag that ``_NEXT`` took."""
    attributes: dict[str, str] = {}
    for key, *values in _PLAIN_ATTRIBUTE.findall(html, start, end):
        attributes.setdefault(key.lower(), "".join(values))
    return attributes


def _skip_markup(html: str, start: int) -> int:
    """Where the comment, doctype or other ``<!``, ``<?`` or ``</`` construct at ``start`` ends:
    after its close, or at the end of the input when it has none."""
    if html.startswith("<!--", start):
        if html.startswith(">", start + 4) or html.startswith("->", start + 4):
            return html.find(">", start + 4) + 1  # <!--> and <!---> are empty comments
        found = _COMMENT_END.search(html, start + 4)
        return len(html) if found is None else found.end()
    # A doctype, <![CDATA[ (a comment outside SVG and MathML), <?…>, or </ followed by neither a
    # letter nor the end: all run to the next ">". </> is nothing at all.
    close = html.find(">", start + 2)
    return len(html) if close < 0 else close + 1


def _read_other(
    html: str, lt: int, want_attributes: frozenset[str]
) -> tuple[str, str | None, int, dict[str, str] | None, str] | None:
    """What the "<" at ``lt`` starts when it is not a tag in plain syntax: a tag all the same
    (as ``_NEXT`` gives it: slash, name, end, attributes, self-closing slash), a comment or
    other markup to drop (no name), or nothing (None: the "<" is text)."""
    after = html[lt + 1 : lt + 2]
    slash = "/" if after == "/" else ""
    if after in _LETTERS or (slash and html[lt + 2 : lt + 3] in _LETTERS):
        name, end, attributes, closed = _read_tag(html, lt + 1 + len(slash), want_attributes)
        return slash, name, end, attributes, "/" if closed else ""
    if after == "!" or after == "?" or (slash and lt + 2 < len(html)):
        return slash, None, _skip_markup(html, lt), None, ""
    return None


@functools.cache
def _end_tag(name: str) -> re.Pattern[str]:
    return re.compile(rf"</{re.escape(name)}(?=[\t\n\f\r />])", re.IGNORECASE)


def _raw_text_end(html: str, name: str, start: int) -> int:
    """Where the raw text of a ``name`` element from ``start`` ends: at its end tag (script data
    end tag state), or at the end of the input."""
    found = _end_tag(name).search(html, start)
    return len(html) if found is None else found.start()


def _tokenize(html: str, target: _Converter) -> None:
    """Hands the tags and text of ``html`` to ``target``, in order: each tag to its handler in
    ``target.ON_START`` or ``target.ON_END`` (tags without one pass unseen), text to
    ``target.chunk``. Comments, doctypes and processing instructions are dropped.

    A start handler that returns True has the element's content skipped as raw text up to its
    end tag, which is read next: what ``<script>`` and ``<style>`` hold is not markup, and for
    the other skipped elements it is dropped all the same.
    """
    search = _NEXT.search
    on_start, on_end, chunk = target.ON_START, target.ON_END, target.chunk
    want = target.WANT_ATTRIBUTES
    pos = text_start = 0
    while (match := search(html, pos)) is not None:
        lt, end = match.span()
        slash, name, self_closing = match.groups()
        if name is not None:  # the common case
            name = name.lower()
            attributes = None
            if name in want and not slash:
                attributes = _plain_attributes(html, match.end(2), end)
        else:
            other = _read_other(html, lt, want)
            if other is None:
                pos = lt + 1  # a "<" that starts nothing is text
                continue
            slash, name, end, attributes, self_closing = other
        if lt > text_start:
            chunk(html[text_start:lt])
        if end < 0:
            return  # the input ended inside a tag
        pos = text_start = end
        if name is None:
            continue
        if slash:
            if (ended := on_end.get(name)) is not None:
                ended(target)
        elif (
            (started := on_start.get(name)) is not None
            and started(target, attributes)
            and not self_closing
        ):
            pos = text_start = _raw_text_end(html, name, pos)
    if text_start < len(html):
        chunk(html[text_start:])


# --- the text --------------------------------------------------------------------------------


class _Writer:
    """Collects text with pending line breaks, so runs of blocks never pile up blank lines."""

    __slots__ = ("breaks", "parts", "space")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.breaks = 0  # newlines owed before the next text (0, 1 or 2)
        self.space = False  # a collapsed space owed before the next text on this line

    def block(self, newlines: int) -> None:
        if newlines > self.breaks:
            self.breaks = newlines
        self.space = False

    def line_break(self) -> None:
        self.breaks = min(self.breaks + 1, 2)
        self.space = False

    def raw(self, text: str) -> None:
        if self.breaks:
            if self.parts:
                self.parts.append("\n" * self.breaks)
            self.breaks = 0
        elif self.space and self.parts and not self.parts[-1].endswith((" ", "\n")):
            self.parts.append(" ")
        self.space = False
        self.parts.append(text)

    def text(self, text: str) -> None:
        """Text outside ``<pre>``: runs of whitespace become one space, none at a line's ends."""
        words = text.split()
        if not words:
            self.space = self.space or bool(text)
            return
        if text[0].isspace():
            self.space = True
        self.raw(" ".join(words))
        self.space = text[-1].isspace()

    def since(self, mark: int) -> str:
        return "".join(self.parts[mark:]).strip()


class _Converter:
    """The tokenizer's target: what each element does to the text, by the tables below."""

    #: The tags whose attributes the handlers read (the tokenizer skips the others' values).
    WANT_ATTRIBUTES = frozenset(("a", "img"))
    ON_START: ClassVar[Mapping[str, Callable[[_Converter, dict[str, str] | None], bool | None]]]
    ON_END: ClassVar[Mapping[str, Callable[[_Converter], None]]]

    def __init__(self) -> None:
        self.out = _Writer()
        self.lists: list[int] = []  # per open list: -1 for <ul>, items so far for <ol>
        self.link: tuple[str, int] | None = None  # href, and where its text starts
        self.pre = 0  # depth of open <pre>

    def chunk(self, text: str) -> None:
        """Text between two tags; most of it is the whitespace between block elements."""
        if self.pre:
            self.out.raw(unescape(text))
        elif text.isspace():
            self.out.space = True
        else:
            self.out.text(unescape(text) if "&" in text else text)

    # --- the handlers; a start tag's get its attributes (None unless asked for) ----------------

    def skip(self, _attributes: dict[str, str] | None) -> bool:
        return True

    def paragraph(self, _attributes: dict[str, str] | None = None) -> None:
        self.out.block(2)

    def line(self, _attributes: dict[str, str] | None = None) -> None:
        self.out.block(1)

    def line_break(self, _attributes: dict[str, str] | None = None) -> None:
        self.out.line_break()

    def cell_end(self) -> None:
        self.out.space = True

    def item(self, _attributes: dict[str, str] | None) -> None:
        self.out.block(1)
        lists = self.lists
        indent = "  " * min(max(len(lists) - 1, 0), MAX_LIST_INDENT)
        if not lists or lists[-1] < 0:
            self.out.raw(indent + "- ")
        else:
            lists[-1] += 1
            self.out.raw(f"{indent}{lists[-1]}. ")

    def bullets(self, _attributes: dict[str, str] | None) -> None:
        # A nested list hangs right under its item; a top-level one is a paragraph.
        self.out.block(1 if self.lists else 2)
        self.lists.append(-1)

    def numbers(self, _attributes: dict[str, str] | None) -> None:
        self.out.block(1 if self.lists else 2)
        self.lists.append(0)

    def list_end(self) -> None:
        if self.lists:
            self.lists.pop()
        self.out.block(1 if self.lists else 2)

    def link_start(self, attributes: dict[str, str] | None) -> None:
        self.close_link()
        href = _attribute_value((attributes or {}).get("href", "")).strip()
        self.link = (href, len(self.out.parts))

    def close_link(self) -> None:
        if self.link is None:
            return
        href, mark = self.link
        self.link = None
        label = self.out.since(mark)
        if not href or href.startswith(("#", "javascript:")):
            return
        if label not in (href, href.removeprefix("mailto:")):
            if label:
                self.out.space = True
                self.out.raw(f"({href})")
            else:
                self.out.raw(href)

    def image(self, attributes: dict[str, str] | None) -> None:
        alt = _attribute_value((attributes or {}).get("alt", "")).strip()
        if alt:
            self.out.text(alt)

    def pre_start(self, _attributes: dict[str, str] | None) -> None:
        self.out.block(2)
        self.pre += 1

    def pre_end(self) -> None:
        self.out.block(2)
        self.pre = max(self.pre - 1, 0)

    def rule(self, _attributes: dict[str, str] | None) -> None:
        self.out.block(2)
        self.out.raw("---")
        self.out.block(2)


_Converter.ON_START = {
    **dict.fromkeys(SKIPPED, _Converter.skip),
    **dict.fromkeys(PARAGRAPHS, _Converter.paragraph),
    **dict.fromkeys(LINES, _Converter.line),
    "li": _Converter.item,
    "br": _Converter.line_break,
    "a": _Converter.link_start,
    "img": _Converter.image,
    "pre": _Converter.pre_start,
    "hr": _Converter.rule,
    "ul": _Converter.bullets,
    "ol": _Converter.numbers,
}
_Converter.ON_END = {
    **dict.fromkeys(PARAGRAPHS, _Converter.paragraph),
    **dict.fromkeys(LINES, _Converter.line),
    "li": _Converter.line,
    "td": _Converter.cell_end,
    "th": _Converter.cell_end,
    "br": _Converter.line_break,  # </br> is read as <br>
    "a": _Converter.close_link,
    "pre": _Converter.pre_end,
    "ul": _Converter.list_end,
    "ol": _Converter.list_end,
}


def html_to_text(html: str) -> str:
    """Readable plain text for ``html`` (see the module docstring for the rules)."""
    if "\r" in html:  # input stream preprocessing: every CR or CR LF is one LF
        html = html.replace("\r\n", "\n").replace("\r", "\n")
    converter = _Converter()
    _tokenize(html, converter)
    converter.close_link()
    text = "\n".join(line.rstrip() for line in "".join(converter.out.parts).split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()
