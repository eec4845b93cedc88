"""``html_to_text``: the plain-text part of a mail whose template has only HTML.

Paragraphs and headings become blank-line separated blocks, ``<br>`` a line break, list items
bullets (or numbers in ``<ol>``), links ``text (url)``; scripts, styles and the head are dropped,
entities decoded and whitespace collapsed outside ``<pre>``.

It reads markup a tenant wrote, once per recipient when there is no derived text template, so
it must be linear on any input and cheap on a newsletter. ``_tokenize`` is the tokenization stage
of the WHATWG HTML standard (13.2.5), kept to what text needs: tags and their attributes, text,
raw text inside ``<script>`` and the like; comments and declarations dropped. No character is read
twice: each scan either consumes what it read or reaches the end of the input, where the standard
ends the construct (an unclosed tag is dropped, an unclosed comment runs to the end), and every
pattern is possessive or atomic, so none can backtrack. The regular expression used before
rescanned to the end from every ``<`` left open: 37 s for 80 KB of ``<a``.

Why not a library (measured on this Python, 3.11.7; ``bench/bench_html_to_text.py`` prints the
figures of this one):

- CPython's ``html.parser`` is quadratic on constructs left open (CVE-2025-6069, fixed in later
  patch releases only): 18 s for 40 KB of ``<a b``. A subclass with the fixes would still be pure
  Python and slow: its bare tokenizing of a 3 KB newsletter costs 280 µs, this whole conversion
  160 µs.
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

import re
from html import unescape
from html.entities import html5

_BLANK_LINES = re.compile(r"\n{3,}")

# What each element does to the text; anything not listed is inline and only passes its text on.
_SKIP, _PARAGRAPH, _LINE, _ITEM, _CELL, _BREAK, _LINK, _IMAGE, _PRE, _RULE, _LIST = range(1, 12)
#: Elements whose content is not text for a reader; skipped up to their end tag.
SKIPPED = ("script", "style", "head", "title", "template", "svg", "noscript")
#: Blocks separated from their neighbours by a blank line.
PARAGRAPHS = ("p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "dl", "figure", "address")  # fmt: skip
#: Blocks that start on a line of their own.
LINES = (
    "div", "tr", "dt", "dd", "section", "article", "header", "footer", "nav", "aside", "main",
    "form", "fieldset", "center", "figcaption", "caption", "tbody", "thead", "tfoot",
)  # fmt: skip
_KIND: dict[str, int] = {
    **dict.fromkeys(SKIPPED, _SKIP),
    **dict.fromkeys(PARAGRAPHS, _PARAGRAPH),
    **dict.fromkeys(LINES, _LINE),
    "li": _ITEM,
    "td": _CELL,
    "th": _CELL,
    "br": _BREAK,
    "a": _LINK,
    "img": _IMAGE,
    "pre": _PRE,
    "hr": _RULE,
    "ul": _LIST,
    "ol": _LIST,
}
#: Skipped elements whose content is raw text, not markup (the tokenizer reads it as such).
RAW_TEXT = ("script", "style", "title", "noscript")
_RAW_TEXT_END = {
    name: re.compile(rf"</{name}(?=[\t\n\f\r />])", re.IGNORECASE) for name in RAW_TEXT
}
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
    r"&(?:#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[a-zA-Z][a-zA-Z0-9]*(?:;|=?))"
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


def attribute_value(value: str) -> str:
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


def _tokenize(html: str, target: _Converter) -> None:
    """Calls ``target.start``, ``target.end`` and ``target.chunk`` for the tags and text of
    ``html``, in order; comments, doctypes and processing instructions are dropped."""
    search = _NEXT.search
    start, end_tag, chunk = target.start, target.end, target.chunk
    want = target.WANT_ATTRIBUTES
    pos = text_start = 0
    while (match := search(html, pos)) is not None:
        lt, end = match.span()
        slash, name, self_closing = match.groups()
        if name is not None:  # the common case
            name = name.lower()
            attributes = None
            if name in want and not slash:
                attributes = _read_tag(html, lt + 1, want)[2]
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
            end_tag(name)
            continue
        start(name, attributes, self_closing)
        raw_end = _RAW_TEXT_END.get(name)
        if raw_end is not None and not self_closing:
            # Raw text: no markup up to the element's own end tag, which is read next.
            found = raw_end.search(html, pos)
            if found is None:
                break
            pos = found.start()
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
    """The tokenizer's target; each kind of element has its handler."""

    #: The tags whose attributes the handlers read (the tokenizer skips the others' values).
    WANT_ATTRIBUTES = frozenset(("a", "img"))

    def __init__(self) -> None:
        self.out = _Writer()
        self.lists: list[int] = []  # per open list: -1 for <ul>, items so far for <ol>
        self.link: tuple[str, int] | None = None  # href, and where its text starts
        self.pre = 0  # depth of open <pre>
        self.skipping: str | None = None  # the skipped element we are in, up to its end tag

    def chunk(self, text: str) -> None:
        """Text between two tags; most of it is the whitespace between block elements."""
        if self.skipping is not None:
            return
        if self.pre:
            self.out.raw(unescape(text))
        elif text.isspace():
            self.out.space = True
        else:
            self.out.text(unescape(text) if "&" in text else text)

    # The two below are the hot path (one call per tag of every mail): common cases come first.

    def start(self, name: str, attributes: dict[str, str] | None, self_closing: str) -> None:
        """A start tag; ``self_closing`` is "/" for ``<name/>`` and empty otherwise."""
        if self.skipping is not None:
            return
        kind = _KIND.get(name)
        if kind is None:
            return  # inline: <b>, <span>, <strong> …
        if kind == _PARAGRAPH:
            self.out.block(2)
        elif kind == _LINE:
            self.out.block(1)
        elif kind == _SKIP:
            if not self_closing:
                self.skipping = name
        else:
            self.tag(kind, name, False, attributes)

    def end(self, name: str) -> None:
        if self.skipping is not None:
            if name == self.skipping:
                self.skipping = None
            return
        kind = _KIND.get(name)
        if kind is None or kind == _SKIP:
            return
        if kind == _PARAGRAPH:
            self.out.block(2)
        elif kind == _LINE:
            self.out.block(1)
        else:
            self.tag(kind, name, True, None)

    def tag(self, kind: int, name: str, closing: bool, attributes: dict[str, str] | None) -> None:
        out = self.out
        if kind == _CELL:
            out.space = out.space or closing
        elif kind == _LINK:
            self.close_link()
            if attributes is not None:
                href = attribute_value(attributes.get("href", "")).strip()
                self.link = (href, len(out.parts))
        elif kind == _ITEM:
            out.block(1)
            if not closing:
                out.raw(self.list_marker())
        elif kind == _BREAK:
            out.line_break()
        elif kind == _LIST:
            self.list_edge(name, closing)
        else:
            self.rare(kind, closing, attributes)

    def rare(self, kind: int, closing: bool, attributes: dict[str, str] | None) -> None:
        out = self.out
        if kind == _IMAGE:
            alt = attribute_value(attributes.get("alt", "")).strip() if attributes else ""
            if alt:
                out.text(alt)
        elif kind == _PRE:
            out.block(2)
            self.pre = max(self.pre - 1, 0) if closing else self.pre + 1
        elif kind == _RULE:
            out.block(2)
            out.raw("---")
            out.block(2)

    def list_edge(self, name: str, closing: bool) -> None:
        if closing:
            if self.lists:
                self.lists.pop()
            self.out.block(1 if self.lists else 2)
            return
        # A nested list hangs right under its item; a top-level one is a paragraph.
        self.out.block(1 if self.lists else 2)
        self.lists.append(-1 if name == "ul" else 0)

    def list_marker(self) -> str:
        indent = "  " * min(max(len(self.lists) - 1, 0), MAX_LIST_INDENT)
        if not self.lists or self.lists[-1] < 0:
            return indent + "- "
        self.lists[-1] += 1
        return f"{indent}{self.lists[-1]}. "

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


def html_to_text(html: str) -> str:
    """Readable plain text for ``html`` (see the module docstring for the rules)."""
    if "\r" in html:  # input stream preprocessing: every CR or CR LF is one LF
        html = html.replace("\r\n", "\n").replace("\r", "\n")
    converter = _Converter()
    _tokenize(html, converter)
    converter.close_link()
    text = "\n".join(line.rstrip() for line in "".join(converter.out.parts).split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()
