"""``html_to_text`` and its tokenizer: linear time on hostile markup, no markup in the text, the
standard's reading of broken markup, and Jinja markup kept in place for the derived template."""

from __future__ import annotations

import time
from collections.abc import Callable
from html.parser import HTMLParser

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tidings.rendering.text import (
    _NEXT,
    MAX_LIST_INDENT,
    _plain_attributes,
    _read_tag,
    _tokenize,
    html_to_text,
)

SIZE = 1_000_000  # characters of each hostile input
#: CPU seconds one hostile input may take: the slowest here (nested lists) takes 0.3 s on a
#: loaded 2-core machine; the old quadratic reading took 37 s for 80 KB of "<a", hours for 1 MB.
HOSTILE_BOUND_SECONDS = 1.0

#: Markup built to make a scanner read the same characters again and again.
HOSTILE: dict[str, Callable[[int], str]] = {
    "unclosed tags": lambda n: "<a" * (n // 2),
    "unclosed comments": lambda n: "<!--" * (n // 4),
    "unclosed declarations": lambda n: "<!" * (n // 2),
    "unclosed end tags": lambda n: "</" * (n // 2),
    "unclosed quoted values": lambda n: '<a b="' * (n // 6),
    "unclosed attribute lists": lambda n: "<a b" * (n // 4),
    "unclosed values": lambda n: "<a b=" * (n // 5),
    "unclosed character references": lambda n: "&#" * (n // 2),
    "unclosed processing instructions": lambda n: "<?" * (n // 2),
    "one comment open to the end": lambda n: "<!--" + "x -" * (n // 3),
    "script open to the end": lambda n: "<script>" + "</scrip" * (n // 7),
    "style open to the end": lambda n: "<style>" + "<!--</styl" * (n // 10),
    "head open to the end": lambda n: "<head>" + "<p>x" * (n // 4),
    "nested lists": lambda n: "<ul><li>x" * (n // 9),
    "nested divs then stray end tags": lambda n: "<div>" * (n // 10) + "</x>" * (n // 8),
    "many attributes": lambda n: "<p " + "".join(f"a{i}=1 " for i in range(n // 8)) + ">x",
    "one long attribute": lambda n: '<a href="' + "x" * n + '">y</a>',
    "many links": lambda n: '<a href="u">x' * (n // 13),
}


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_html_to_text_is_linear_on_hostile_markup(make: Callable[[int], str]) -> None:
    html = make(SIZE)
    started = time.process_time()  # CPU time: other processes on the machine do not count
    text = html_to_text(html)
    spent = time.process_time() - started
    assert spent < HOSTILE_BOUND_SECONDS, f"{spent:.2f} s for {len(html):,} characters"
    assert len(text) <= 3 * len(html)


def test_deeply_nested_lists_stop_indenting() -> None:
    depth = 3000
    text = html_to_text("<ul><li>x" * depth)
    lines = text.split("\n")
    assert len(lines) == depth
    assert lines[-1] == "  " * MAX_LIST_INDENT + "- x"


def test_a_derived_text_template_keeps_its_jinja_markup_in_place() -> None:
    """A tree builder would move the loop out of the table (HTML's foster parenting)."""
    html = (
        "<table>{% for row in rows %}<tr><td>{{ row.name }}</td>"
        '<td><a href="{{ row.url }}">{{ row.title }}</a></td></tr>{% endfor %}</table>'
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
    )
    assert html_to_text(html) == (
        "{% for row in rows %}\n{{ row.name }} {{ row.title }} ({{ row.url }})\n{% endfor %}"
        "\n\nUnsubscribe ({{ unsubscribe_url }})"
    )


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("x<!-->y", "xy"),  # an empty comment, not one that runs on
        ("a</>b", "ab"),
        ("a</ b>c", "ac"),  # "</" then not a letter: a comment up to ">"
        ("<p>if a<b then c</p>", "if a"),  # a tag open to the end is dropped
        ('x<a href="u>rest', "x"),  # so is one whose quote never closes
        ("<p>a < b</p>", "a < b"),
        ("x</", "x</"),
        ('<a href="u" title="a > b">link</a>', "link (u)"),
        ("<a href=u/>link</a>", "link (u/)"),  # "/" belongs to an unquoted value
        ("<a\thref='u'\n>x</a>", "x (u)"),
        ('<a href="u"title="t">x</a>', "x (u)"),  # no blank between attributes
        ('<a href="first" href="second">x</a>', "x (first)"),
        ('<a href="?a=1&not=2&amp;b=3&lt;">x</a>', "x (?a=1&not=2&b=3<)"),
        ('<a href="&#x41;&#66;&notanentity">x</a>', "x (AB&notanentity)"),
        ('<img alt="A &amp; B">', "A & B"),
        ("<script>if (a<b) { x = '</p>' }</script>after", "after"),
        ("<script>x = '<!--';</script>after", "after"),
        ("<SCRIPT>x</Script >after", "after"),
        ("<title/>shown", "shown"),
        ("<style>p {}", ""),
        ("<P CLASS=x>Up</P>", "Up"),
        ("a\r\nb<pre>x\r\ny\rz</pre>", "a b\n\nx\ny\nz"),
        ("lone \ud800 surrogate", "lone \ud800 surrogate"),
    ],
)
def test_html_to_text_reads_broken_markup_as_the_html_standard_does(html: str, text: str) -> None:
    assert html_to_text(html) == text


# --- properties -------------------------------------------------------------------------------

TAG_NAMES = ("p", "b", "a", "div", "li", "ul", "td", "span", "h1", "br", "img", "x-y")
NAMES = st.sampled_from(TAG_NAMES)
ATTRIBUTE_NAMES = st.sampled_from(["href", "alt", "class", "title", "data-x", "style"])
# Attribute values and text hold no "<" and no "&": a "<" can then only come from a tag, and the
# text cannot decode into one.
VALUES = st.text(st.characters(exclude_characters="<&\"'", exclude_categories=["Cs"]), max_size=8)
TEXT = st.text(st.characters(exclude_characters="<&", exclude_categories=["Cs"]), max_size=12)


@st.composite
def tags(draw: st.DrawFn) -> str:
    name = draw(NAMES)
    if draw(st.booleans()):
        return f"</{name}>"
    attributes = ""
    quote = '"'
    for key in draw(st.lists(ATTRIBUTE_NAMES, max_size=3, unique=True)):
        value = draw(VALUES)
        # Blanks, or the unusual separators a tag may have: a slash, or nothing after a quote. An
        # unquoted value runs to the next blank (a slash is part of it), so only a blank ends it.
        separator = draw(st.sampled_from([" ", "\n", "\t", "/", " / ", ""]))
        if attributes and not quote and separator in ("/", ""):
            separator = " "
        if not separator and not attributes.endswith(('"', "'")):
            separator = " "
        quote = draw(st.sampled_from(['"', "'", ""])) if value.isalnum() else '"'
        attributes += f"{separator}{key}={quote}{value}{quote}"
    ending = draw(st.sampled_from(["", " ", "/"]))
    if attributes and not quote and ending == "/":
        ending = " /"
    return f"<{name}{attributes}{ending}>"


@settings(max_examples=400, deadline=None)
@given(st.lists(tags() | TEXT, max_size=20))
def test_the_text_never_holds_a_tag_of_the_markup(pieces: list[str]) -> None:
    text = html_to_text("".join(pieces))
    for piece in pieces:
        if piece.startswith("<"):
            assert piece not in text
    assert "<" not in text


MARKUP = st.text(
    st.sampled_from(list("<>/!?-=\"' \n\tabp&#;x")) | st.characters(), min_size=0, max_size=60
)


@settings(max_examples=500, deadline=None)
@given(MARKUP)
@example("<a b='")
@example("<!--->")
@example("</")
@example('<a href="&#x110000;&#0;&">x')
def test_html_to_text_never_raises(html: str) -> None:
    assert isinstance(html_to_text(html), str)


TAG_PIECES = [" ", "\t", "a", "b", "=", '"', "'", "/", ">", "<", "`", "&", " a=b", ' b="x"', " a='"]


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(TAG_PIECES), max_size=12).map("".join))
def test_the_plain_tag_pattern_reads_as_the_full_attribute_rules_do(rest: str) -> None:
    """``_NEXT`` reads common tags in one match; whatever it takes must be what the full
    rules (``_read_tag``) make of it, or it would be a second, different tokenizer."""
    html = "<p" + rest
    match = _NEXT.match(html)
    assert match is not None
    if match.group(2) is None:
        return  # refused: the full rules read it
    name, end, attributes, self_closing = _read_tag(html, 1, frozenset([match.group(2).lower()]))
    assert (name, end, self_closing) == (match.group(2).lower(), match.end(), match.group(3) == "/")
    assert _plain_attributes(html, match.end(2), match.end()) == attributes


class _EveryName(dict[str, object]):
    """A handler table with a handler for every tag name."""

    def __init__(self, handler_for: Callable[[str], object]) -> None:
        super().__init__()
        self.handler_for = handler_for

    def get(self, name: str, default: object = None) -> object:  # type: ignore[override]
        return self.handler_for(name)


class _Recorder:
    """A tokenizer target that writes the tokens down, with every attribute."""

    WANT_ATTRIBUTES = frozenset(TAG_NAMES)
    ON_START = _EveryName(
        lambda name: lambda target, attributes: target.start(name, attributes) or name == "script"
    )
    ON_END = _EveryName(lambda name: lambda target: target.end(name))

    def __init__(self) -> None:
        self.tokens: list[tuple[object, ...]] = []

    def start(self, name: str, attributes: dict[str, str] | None) -> None:
        self.tokens.append(("start", name, sorted((attributes or {}).items())))

    def end(self, name: str) -> None:
        self.tokens.append(("end", name))

    def chunk(self, text: str) -> None:
        if self.tokens and self.tokens[-1][0] == "text":
            text = str(self.tokens.pop()[1]) + text
        self.tokens.append(("text", text))


class _Reference(HTMLParser):
    """The standard library's reading, in the recorder's terms."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.recorder = _Recorder()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.recorder.start(tag, {key: value or "" for key, value in attrs})

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        self.recorder.end(tag)

    def handle_data(self, data: str) -> None:
        if self.cdata_elem is None:  # type: ignore[attr-defined]  # a script's text: skipped
            self.recorder.chunk(data)


WELL_FORMED = st.lists(
    tags()
    | TEXT.filter(lambda text: ">" not in text)
    | TEXT.map(lambda text: f"<!--{text.replace('-', '').replace('>', '')}-->")
    | TEXT.map(lambda text: f"<script>{text}</script>"),
    max_size=15,
)


@settings(max_examples=400, deadline=None)
@given(WELL_FORMED)
def test_the_tokenizer_agrees_with_the_standard_library_on_well_formed_markup(
    pieces: list[str],
) -> None:
    """A cross-check of the tokens against CPython's ``html.parser``, which reads well-formed
    markup right (its trouble is with markup left open)."""
    html = "".join(pieces)
    ours = _Recorder()
    _tokenize(html, ours)  # type: ignore[arg-type]  # a target of the same shape
    reference = _Reference()
    reference.feed(html)
    reference.close()
    assert ours.tokens == reference.recorder.tokens
