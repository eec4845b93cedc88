"""The template renderer: variables, escaping, the sandbox, time and size limits, the text part."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jinja2 import Environment

from tidings import tokens
from tidings.config import Settings
from tidings.errors import InvalidInput, RenderError, TemplateSyntaxError
from tidings.rendering import CompiledTemplate, Recipient, RenderedContent, Renderer, html_to_text

SECRET = "r" * 48
NOW = datetime(2025, 6, 1, 9, 30, tzinfo=UTC)
ANN = Recipient(
    email="ann@example.com",
    name="Ann Lee",
    first_name="Ann",
    last_name="Lee",
    attributes={"plan": "pro", "seats": 3},
    contact_id=42,
)


class FixedClock:
    def now(self) -> datetime:
        return NOW


def make_renderer(**settings: Any) -> Renderer:
    values: dict[str, Any] = {
        "secret_key": SECRET,
        "public_url": "https://mail.example",
        "render_timeout_seconds": 0.5,
    }
    values.update(settings)
    return Renderer(settings=Settings(**values), secret_key=SECRET, clock=FixedClock())


@pytest.fixture
def renderer() -> Renderer:
    return make_renderer()


def render(
    renderer: Renderer,
    *,
    subject: str = "s",
    html: str | None = None,
    text: str | None = None,
    data: dict[str, Any] | None = None,
    recipient: Recipient = ANN,
    category: str | None = None,
) -> RenderedContent:
    compiled = renderer.compile(subject=subject, html=html, text=text)
    return renderer.render(
        compiled, tenant_id=3, recipient=recipient, data=data or {}, category=category
    )


# --- variables ---------------------------------------------------------------------------------


def test_recipient_variables_and_caller_data_are_available(renderer: Renderer) -> None:
    out = render(
        renderer,
        subject="{{ first_name }}, your {{ term }} report",
        text="{{ name }} <{{ email }}> {{ last_name }} {{ attributes.plan }}/{{ attributes.seats }}"
        " {{ personal_message }} by {{ deadline }}",
        data={"term": "Q3", "personal_message": "Thanks!", "deadline": "1 July"},
    )
    assert out.subject == "Ann, your Q3 report"
    assert out.text == "Ann Lee <ann@example.com> Lee pro/3 Thanks! by 1 July"
    assert out.html is None


def test_recipient_variables_win_over_caller_data_which_stays_reachable_as_data(
    renderer: Renderer,
) -> None:
    out = render(
        renderer,
        text="{{ email }} {{ unsubscribe_url == data.unsubscribe_url }} {{ data.email }}",
        data={"email": "evil@attacker.test", "unsubscribe_url": "https://attacker.test"},
    )
    assert out.text == "ann@example.com False evil@attacker.test"


def test_missing_recipient_fields_print_as_nothing(renderer: Renderer) -> None:
    out = render(
        renderer,
        text="Hi {{ first_name }}!{{ first_name or ' there' }}",
        recipient=Recipient(email="x@example.com"),
    )
    assert out.text == "Hi ! there"


def test_an_undefined_variable_names_itself_its_part_and_its_line(renderer: Renderer) -> None:
    with pytest.raises(RenderError) as caught:
        render(renderer, html="<p>Hi</p>\n<p>Due {{ deadline }}</p>")
    assert caught.value.field == "html"
    assert caught.value.message == "'deadline' is undefined (line 2)"
    with pytest.raises(RenderError, match="no attribute 'tier'") as caught:
        render(renderer, subject="{{ attributes.tier }}", text="x")
    assert caught.value.field == "subject"


# --- escaping ----------------------------------------------------------------------------------


def test_html_is_escaped_but_subject_and_text_are_not(renderer: Renderer) -> None:
    out = render(
        renderer,
        subject="{{ msg }}",
        html="<p>{{ msg }}</p><p>{{ trusted|safe }}</p>",
        text="{{ msg }}",
        data={"msg": "<b>Tom & Jerry</b>", "trusted": "<i>ok</i>"},
    )
    assert out.subject == "<b>Tom & Jerry</b>"
    assert out.text == "<b>Tom & Jerry</b>"
    assert out.html == "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p><p><i>ok</i></p>"


def test_a_line_break_in_the_rendered_subject_is_refused(renderer: Renderer) -> None:
    for injected in ("x\r\nBcc: victim@example.com", "x\nBcc: y", "x\ry"):
        with pytest.raises(RenderError) as caught:
            render(renderer, subject="Hello {{ who }}", text="t", data={"who": injected})
        assert caught.value.field == "subject"
    # Surrounding whitespace, including newlines, is only trimmed.
    assert render(renderer, subject="\n  Hello {{ x }}\r\n", text="t", data={"x": 1}).subject == (
        "Hello 1"
    )


# --- compiling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["subject", "html", "text"])
def test_a_syntax_error_names_the_part_and_the_line(renderer: Renderer, part: str) -> None:
    parts = {"subject": "ok", "html": "<p>ok</p>", "text": "ok"}
    parts[part] = "line one\nline two {% if %}\n"
    with pytest.raises(TemplateSyntaxError) as caught:
        renderer.compile(**parts)
    assert (caught.value.field, caught.value.line) == (part, 2)


def test_an_unknown_filter_is_a_syntax_error(renderer: Renderer) -> None:
    with pytest.raises(TemplateSyntaxError, match="nope") as caught:
        renderer.compile(subject="s", html=None, text="{{ x|nope }}")
    assert caught.value.field == "text"


@pytest.mark.parametrize(
    "source",
    [
        "{% include 'x.html' %}",
        "{% import 'm' as m %}",
        "{% from 'm' import f %}",
        "{% extends 'b' %}",
    ],
)
def test_templates_cannot_load_other_templates(renderer: Renderer, source: str) -> None:
    with pytest.raises(TemplateSyntaxError, match="not available"):
        renderer.compile(subject="s", html=None, text="ok\n" + source)


def test_a_template_needs_a_body(renderer: Renderer) -> None:
    with pytest.raises(InvalidInput):
        renderer.compile(subject="s", html="  ", text=None)


def test_a_compiled_template_is_reused_for_many_recipients(renderer: Renderer) -> None:
    compiled = renderer.compile(subject="Hi {{ first_name }}", html=None, text="{{ email }}")
    assert isinstance(compiled, CompiledTemplate)
    texts = [
        renderer.render(
            compiled,
            tenant_id=1,
            recipient=Recipient(email=f"u{i}@example.com", first_name=f"U{i}"),
            data={},
            category=None,
        ).text
        for i in range(3)
    ]
    assert texts == ["u0@example.com", "u1@example.com", "u2@example.com"]


def test_the_same_content_is_compiled_once(renderer: Renderer) -> None:
    first = renderer.compile(subject="s", html=None, text="{{ email }}")
    assert renderer.compile(subject="s", html=None, text="{{ email }}") is first
    assert renderer.compile(subject="s", html=None, text="{{ name }}") is not first


# --- the sandbox -------------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''['__class__'] }}",
    "{{ ()|attr('__class__') }}",
    "{{ ()|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ range.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ dict.mro() }}",
    "{{ dict|attr('mro') }}",
    "{{ (1).__class__.__base__.__subclasses__() }}",
    "{{ ''.join.__self__ }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ '{0.__class__}'.format_map({}) }}",
    "{% set f = ''.format %}{{ f('{0.__class__}', 1) }}",
    "{{ ('{0.__class__}'|attr('format'))(1) }}",
    "{{ ('{0.__class__}'|safe).format(1) }}",
    "{{ {}.update(a=1) }}",
    "{{ [].append(1) }}",
    "{{ config }}",
    "{{ request }}",
]


@pytest.mark.parametrize("payload", ESCAPES)
def test_known_sandbox_escapes_are_refused(renderer: Renderer, payload: str) -> None:
    with pytest.raises(RenderError) as caught:
        render(renderer, text=payload)
    assert "not allowed" in caught.value.message or "undefined" in caught.value.message


@pytest.mark.parametrize(
    "payload",
    [
        "{{ [1]|map(attribute='__class__')|list }}",
        "{{ [1]|map('attr', '__class__')|list }}",
        "{{ [1]|groupby('__class__') }}",
        "{{ [1]|selectattr('__class__')|list }}",
        "{{ [1, 2]|sort(attribute='__class__') }}",
        "{{ [1]|sum(attribute='__class__') }}",
    ],
)
def test_filters_that_look_up_attributes_reveal_nothing(renderer: Renderer, payload: str) -> None:
    try:
        out = render(renderer, text=payload).text
    except RenderError as exc:
        assert "not allowed" in exc.message
    else:
        assert "class" not in out and "type" not in out


def test_optional_data_can_be_tested_and_defaulted(renderer: Renderer) -> None:
    out = render(
        renderer,
        text="{{ x|default('none') }} {{ 'yes' if x is defined else 'no' }}"
        " {{ attributes.get('tier', 'free') }} {{ '%s-%d'|format('a', 3) }} {{ '%.1f' % 2.25 }}",
    )
    assert out.text == "none no free a-3 2.2"


@pytest.mark.parametrize(
    "payload",
    [
        "{% for i in range(10**9) %}x{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% set s = 'x' * 2000 %}{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}"
        "{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "{% for x in [1] recursive %}{{ loop([1, 2]) }}{% endfor %}",
    ],
)
def test_unbounded_work_stops_with_a_render_error_in_time(renderer: Renderer, payload: str) -> None:
    started = time.monotonic()
    with pytest.raises(RenderError):
        render(renderer, text=payload)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "payload",
    [
        "{{ 'a' * 10**9 }}",
        "{{ [0] * 10**9 }}",
        "{{ 2 ** (10**8) }}",
        "{{ '%0999999999d' % 1 }}",
        "{{ '%*d' % (999999999, 1) }}",
        "{{ '%0999999999d'|format(1) }}",
        "{{ 'x'|center(10**9) }}",
        "{{ 'a'.ljust(10**9) }}",
        "{{ 'a'.zfill(10**9) }}",
        "{{ ('x\\n' * 100000)|indent(1000) }}",
        "{{ ('x' * 100000)|wordwrap(1, wrapstring='y' * 1000) }}",
        "{{ ('x' * 1000)|replace('', 'y' * 10000) }}",
        "{{ ('x' * 1000).replace('', 'y' * 10000) }}",
        "{{ range(100000)|join('y' * 1000) }}",
        "{{ ('y' * 1000).join(range(100000)|map('string')) }}",
        "{{ [1, 2]|batch(10**9, 'x')|list }}",
        "{{ range(3)|slice(10**9)|list }}",
        "{% set ns = namespace(x='ab') %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
        "{% set ns = namespace(x='ab') %}{% for i in range(64) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
        "{% set ns = namespace(x=[1]) %}{% for i in range(64) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
        "{% set ns = namespace(x='ab') %}{% for i in range(64) %}{% set ns.x %}{{ ns.x }}{{ ns.x }}"
        "{% endset %}{% endfor %}",
        "{% macro twice(s) %}{{ s }}{{ s }}{% endmacro %}{% set ns = namespace(x='ab') %}"
        "{% for i in range(64) %}{% set ns.x = twice(ns.x) %}{% endfor %}",
        "{% filter upper %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfilter %}",
    ],
)
def test_memory_bombs_are_refused_before_they_allocate(renderer: Renderer, payload: str) -> None:
    started = time.monotonic()
    with pytest.raises(RenderError, match=r"limit|not allowed"):
        render(renderer, text=payload)
    assert time.monotonic() - started < 3


def test_output_over_the_cap_is_refused_and_under_it_is_kept() -> None:
    renderer = make_renderer(render_max_output_bytes=10_000)
    assert len(render(renderer, text="{{ 'x' * 9000 }}").text) == 9000
    with pytest.raises(RenderError) as caught:
        render(renderer, html="{% for i in range(20) %}{{ 'x' * 900 }}{% endfor %}")
    assert caught.value.field == "html"
    with pytest.raises(RenderError, match="larger than 10000 bytes"):
        render(renderer, text="{{ 'é' * 6000 }}")  # 6000 characters, 12000 bytes


def test_one_slow_render_does_not_eat_another_threads_budget(renderer: Renderer) -> None:
    slow = renderer.compile(
        subject="s",
        html=None,
        text="{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    )
    fast = renderer.compile(subject="s", html=None, text="{% for i in range(1000) %}.{% endfor %}")
    failures: list[Exception] = []

    def run_slow() -> None:
        try:
            renderer.render(slow, tenant_id=1, recipient=ANN, data={}, category=None)
        except RenderError as exc:
            failures.append(exc)

    thread = threading.Thread(target=run_slow)
    thread.start()
    for _ in range(50):
        assert renderer.render(fast, tenant_id=1, recipient=ANN, data={}, category=None).text == (
            "." * 1000
        )
    thread.join()
    assert len(failures) == 1


# --- links -------------------------------------------------------------------------------------


def test_links_carry_signed_tokens_for_the_message_contact_and_category(
    renderer: Renderer,
) -> None:
    sent = replace(ANN, message_id=901, contact_created=1_700_000_000)
    out = render(
        renderer,
        text="{{ unsubscribe_url }} {{ preferences_url }}",
        category="news",
        recipient=sent,
    )
    unsubscribe, preferences = out.text.split()
    assert unsubscribe.startswith("https://mail.example/u/")
    assert preferences.startswith("https://mail.example/p/")
    claims = tokens.read_token(SECRET, unsubscribe.rsplit("/", 1)[1], kind="unsubscribe", now=NOW)
    assert (claims.tenant_id, claims.message_id, claims.contact_created, claims.category) == (
        3,
        901,
        1_700_000_000,
        "news",
    )
    claims = tokens.read_token(SECRET, preferences.rsplit("/", 1)[1], kind="preferences", now=NOW)
    assert claims.message_id == 901


def test_an_address_without_a_contact_gets_links_naming_only_the_message(
    renderer: Renderer,
) -> None:
    recipient = Recipient(email="x@example.com", message_id=77)
    out = render(renderer, text="{{ unsubscribe_url }}", recipient=recipient)
    assert "x@example.com" not in out.text
    claims = tokens.read_token(SECRET, out.text.rsplit("/", 1)[1], kind="unsubscribe", now=NOW)
    assert (claims.message_id, claims.contact_created, claims.contact_id, claims.email) == (
        77,
        None,
        None,
        None,
    )


def test_without_a_message_the_links_are_inert_placeholders(renderer: Renderer) -> None:
    """A preview (or the check at accept) has no message, so it cannot make a working link."""
    out = render(renderer, text="{{ unsubscribe_url }} {{ preferences_url }}", category="news")
    assert out.text == "https://mail.example/u/preview https://mail.example/p/preview"


# --- the text part -----------------------------------------------------------------------------


def test_the_text_part_is_derived_from_the_html_when_absent_or_blank(renderer: Renderer) -> None:
    html = '<p>Hi {{ first_name }},</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
    for text in (None, "", "  \n"):
        out = render(renderer, html=html, text=text)
        assert out.text.startswith("Hi Ann,\n\nUnsubscribe (https://mail.example/u/")
    assert render(renderer, html=html, text="Plain {{ first_name }}").text == "Plain Ann"


def test_html_to_text_keeps_structure_and_drops_markup() -> None:
    html = """<!doctype html><html><head><title>T</title><style>p { color: red }</style></head>
    <body><!-- a comment --><h1>Welcome,   Ann</h1>
    <p>First&nbsp;line<br>second line &amp; more &lt;tags&gt;</p>
    <ul><li> one </li><li>two<ol><li>a</li><li>b</li></ol></li></ul>
    <p>Read <a href="https://example.com/post?a=1&amp;b=2">the post</a>,
       mail <a href="mailto:help@example.com">help@example.com</a>,
       <a href="#top">back up</a> or <a href="https://example.com/x"><img src="x.png" alt="Logo"></a>.</p>
    <script>alert("no")</script><pre>  keep
    this</pre><hr><table><tr><td>A</td><td>B</td></tr><tr><td>C</td></tr></table>
    <p title="a > b">quoted &gt; is fine</p></body></html>"""
    assert html_to_text(html) == (
        "Welcome, Ann\n\n"
        "First line\nsecond line & more <tags>\n\n"
        "- one\n- two\n  1. a\n  2. b\n\n"
        "Read the post (https://example.com/post?a=1&b=2), mail help@example.com, back up or"
        " Logo (https://example.com/x).\n\n"
        "  keep\n    this\n\n---\n\nA B\nC\n\n"
        "quoted > is fine"
    )


def test_html_to_text_survives_broken_markup() -> None:
    assert html_to_text("<p>open <b>bold <a href='u'>link") == "open bold link (u)"
    assert html_to_text("a < b and c > d") == "a < b and c > d"
    assert html_to_text("x<!-- never closed") == "x"
    assert html_to_text("<script>unterminated") == ""
    assert html_to_text("") == ""


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("ab }%#<>&\r\n\t\u00e9\u2028"))
        | st.characters(exclude_categories=["Cs"]),
        max_size=40,
    )
)
@example("line\r\nbreaks\rand a trailing one\n")
@example("two trailing\n\n")
@example("\r")
def test_text_without_template_syntax_renders_exactly_as_jinja_would(source: str) -> None:
    """The literal fast path (no compile when there is no ``{``) must print what Jinja prints."""
    renderer = make_renderer()
    if "{" in source or not source.strip():
        return
    compiled = renderer.compile(subject="s", html=source, text=source)
    assert isinstance(compiled.html, str) and isinstance(compiled.text, str)
    for autoescape, part in ((True, compiled.html), (False, compiled.text)):
        # The sandbox's lexer is Jinja's default one: plain Jinja is the reference.
        assert part == Environment(autoescape=autoescape).from_string(source).render()
    rendered = renderer.render(compiled, tenant_id=1, recipient=ANN, data={}, category=None)
    assert rendered.html == compiled.html and rendered.text == compiled.text
