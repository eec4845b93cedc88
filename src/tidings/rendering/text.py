"""``html_to_text``: the plain-text part of a mail whose template has only HTML.

It runs once per recipient, so it is a single regular-expression scan rather than a DOM build:
paragraphs and headings become blank-line separated blocks, ``<br>`` a line break, list items
bullets (or numbers in ``<ol>``), links ``text (url)``; scripts, styles and the head are dropped,
entities decoded and whitespace collapsed outside ``<pre>``.
"""

from __future__ import annotations

import re
from html import unescape

_TAG = re.compile(
    r"<(?:!--.*?(?:-->|\Z)"  # comment (an unterminated one runs to the end)
    # start or end tag; quoted attribute values may contain ">"
    r"|(/?)([a-zA-Z][a-zA-Z0-9:-]*)([^>\"']*(?:(?:\"[^\"]*\"|'[^']*')[^>\"']*)*)>"
    r"|[!?][^>]*>)",  # doctype, CDATA, processing instruction
    re.DOTALL,
)
_HREF = re.compile(r"""(?:^|\s)href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
_ALT = re.compile(r"""(?:^|\s)alt\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
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
_SKIPPED_END = {name: re.compile(rf"</{name}\s*>", re.IGNORECASE) for name in SKIPPED}


def _attribute(pattern: re.Pattern[str], attributes: str) -> str | None:
    match = pattern.search(attributes)
    if match is None:
        return None
    return unescape(next(g for g in match.groups() if g is not None)).strip()


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
    """One pass over the tags; each kind of element has its handler."""

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

    def tag(self, kind: int, name: str, closing: bool, attributes: str) -> None:
        out = self.out
        if kind == _CELL:
            out.space = out.space or closing
        elif kind == _LINK:
            self.close_link()
            if not closing:
                self.link = (_attribute(_HREF, attributes) or "", len(out.parts))
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

    def rare(self, kind: int, closing: bool, attributes: str) -> None:
        out = self.out
        if kind == _IMAGE:
            alt = _attribute(_ALT, attributes)
            if alt and not closing:
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
        indent = "  " * max(len(self.lists) - 1, 0)
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
    converter = _Converter()
    out = converter.out
    pos = 0
    # The loop body is the hot path (one pass per tag of every mail): common cases come first.
    for match in _TAG.finditer(html):
        start, end = match.span()
        if start < pos:
            continue  # inside a skipped element
        if start > pos:
            converter.chunk(html[pos:start])
        pos = end
        slash, name, attributes = match.groups()
        if name is None:
            continue  # comment, doctype
        kind = _KIND.get(name) or _KIND.get(name.lower())
        if kind is None:
            continue  # inline: <b>, <span>, <strong> …
        if kind == _PARAGRAPH:
            out.block(2)
        elif kind == _LINE:
            out.block(1)
        elif kind == _SKIP:
            if not slash and not attributes.rstrip().endswith("/"):
                skipped = _SKIPPED_END[name.lower()].search(html, pos)
                pos = skipped.end() if skipped else len(html)
        else:
            converter.tag(kind, name.lower(), slash == "/", attributes)
    if pos < len(html):
        converter.chunk(html[pos:])
    converter.close_link()
    text = "\n".join(line.rstrip() for line in "".join(out.parts).split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()
