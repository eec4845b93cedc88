"""Render limits hold by construction: CPU and memory bombs end within their limits in a render
process, fail naming the template part, and leave the serving process as it was."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator

import pytest

from tests.conftest import TEST_SECRET
from tidings.config import Settings
from tidings.errors import RenderError
from tidings.rendering import Recipient
from tidings.rendering.pool import WALL_FACTOR, WALL_MARGIN, RenderJob, RenderPool, TemplateSource

TIMEOUT = 1.0  # CPU seconds per render in these tests
#: The wall-clock kill, plus slack for a loaded machine: no entry may take longer.
TIME_BOUND = TIMEOUT * WALL_FACTOR + WALL_MARGIN + 2.0
RSS_GROWTH_BOUND = 5 * 1024 * 1024  # bytes the serving process may grow by per entry
ANN = Recipient(email="ann@example.com", first_name="Ann", contact_id=7)
BIG = "{% set big = (range(100000)|list) * 10 %}"  # one million numbers, within every check

#: (part it is in, source): each escapes the sandbox's own checks, or is stopped by them.
BOMBS: list[tuple[str, str]] = [
    # CPU
    ("html", BIG + "{{ ([big] * 10)|pprint|length }}"),  # 12 s in-process (the issue)
    # One C call (a list compared with a thousand equal-but-last ones): only a kill stops it.
    (
        "text",
        BIG + "{% set other = (range(100000)|list) * 9 + (range(99999)|list) + [7] %}"
        "{{ big in [other] * 10000 }}",
    ),
    ("text", BIG + "{% for i in range(20) %}{{ big|sort(attribute='real')|length }}{% endfor %}"),
    ("html", BIG + "{{ big|map('string')|map('center', 9)|map('upper')|list|length }}"),
    ("html", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
    (
        "text",
        "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    ),
    ("subject", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"),
    ("text", "{% set n = 7 ** 1400 %}{% for i in range(10**5) %}{% set m = n * n %}{% endfor %}"),
    ("html", "{% for i in range(8) %}{{ ('a.b ' * 250000)|urlize|length }}{% endfor %}"),
    ("subject", BIG + "{{ ([big] * 10)|pprint|length }}"),
    (
        "text",
        "{% for i in range(100000) %}{% for j in range(1000) %}"
        "{% set x = '2027-03-01T15:00:00Z'|localtime('EEEE d MMMM y, HH:mm zzzz') %}"
        "{% endfor %}{% endfor %}",
    ),
    # memory
    ("text", BIG + "{{ ([big] * 30)|string|length }}"),  # 209 MB while len() sees 30
    ("html", BIG + "{{ ([big] * 30)|tojson|length }}"),
    ("text", BIG + "{{ ('%s' % ([big] * 30))|length }}"),
    ("text", BIG + "{{ dict(a=[big] * 30)|dictsort|string|length }}"),
    ("subject", BIG + "{{ ([big] * 30)|join(',')|length }}"),
    (
        "text",
        "{% set ns = namespace(x=[]) %}{% for i in range(3000) %}"
        "{% set ns.x = ns.x + [('a' * 999990) ~ i] %}{% endfor %}{{ ns.x|length }}",
    ),
    (
        "html",
        "{% set ns = namespace(x='') %}{% for i in range(100000) %}"
        "{% set ns.x = ns.x ~ ('a' * 1000000)[:10] %}{% endfor %}{{ ns.x|length }}",
    ),
    # sizes and numbers
    ("text", "{{ 'a' * 999999 ~ 'b' * 999999 }}"),
    ("subject", "{{ 10 ** (10 ** 10) }}"),
]
#: Pathological only for a slow HTML-to-text converter: they may render, but within the limits.
#: "derived": in the HTML, and the text part is derived from it.
MAY_RENDER: list[tuple[str, str]] = [
    ("derived", '<p title="{{ 1 }}"></p>{{ ("<a"*20000)|safe }}'),  # the 48 characters
    ("derived", '<p title="{{ 1 }}"></p>{{ ("<a"*400000)|safe }}'),  # 800 KB, within the cap
    ("html", "{{ ('<a' * 400000)|safe }}"),
]


def _source(part: str, payload: str) -> TemplateSource:
    if part == "subject":
        return TemplateSource(subject=payload, html=None, text="body")
    if part == "html":
        return TemplateSource(subject="s", html=payload, text="plain")
    if part == "derived":
        return TemplateSource(subject="s", html=payload, text=None)
    return TemplateSource(subject="s", html=None, text=payload)


def _rss() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _settings(**overrides: float) -> Settings:
    return Settings(secret_key=TEST_SECRET, render_timeout_seconds=TIMEOUT, **overrides)


@pytest.fixture(scope="module")
def pool() -> Iterator[RenderPool]:
    pool = RenderPool(settings=_settings(), secret_key=TEST_SECRET)
    pool.render(_source("text", "{{ email }}"), tenant_id=1, recipient=ANN, data={}, category=None)
    yield pool
    pool.close()


def _render(pool: RenderPool, part: str, payload: str) -> None:
    pool.render(_source(part, payload), tenant_id=1, recipient=ANN, data={}, category=None)


BOMB_NAMES = [
    "pprint", "one-c-call", "sort-between-deadline-checks", "map-a-million", "nested-loops",
    "exponential-macros", "deep-recursion", "big-int-products", "urlize", "pprint-in-subject",
    "localtime-loop",
    "string-209-mb", "tojson", "percent-format", "dictsort-string", "join", "namespace-list",
    "namespace-string", "concatenation", "power",
]  # fmt: skip


@pytest.mark.parametrize(("part", "payload"), BOMBS, ids=BOMB_NAMES)
def test_every_bomb_ends_within_its_limits_naming_its_part(
    pool: RenderPool, part: str, payload: str
) -> None:
    rss = _rss()
    started = time.monotonic()
    with pytest.raises(RenderError) as caught:
        _render(pool, part, payload)
    assert time.monotonic() - started < TIME_BOUND
    assert caught.value.field == part, caught.value.message
    assert _rss() - rss < RSS_GROWTH_BOUND
    # The pool serves the next render as before (a fresh process if that one was replaced).
    assert pool.render(
        _source("text", "Hi {{ first_name }}"), tenant_id=1, recipient=ANN, data={}, category=None
    ).text == ("Hi Ann")


@pytest.mark.parametrize(("part", "payload"), MAY_RENDER)
def test_unclosed_tags_render_or_fail_within_the_limits(
    pool: RenderPool, part: str, payload: str
) -> None:
    started = time.monotonic()
    try:
        _render(pool, part, payload)
    except RenderError as exc:
        assert exc.field == ("text" if part == "derived" else part), exc.message
    assert time.monotonic() - started < TIME_BOUND


@pytest.mark.parametrize(
    "payload",
    [
        # A gigabyte of strings in about a second, each within every size check.
        "{% set ns = namespace(x=[]) %}{% for i in range(1000) %}"
        "{% set ns.x = ns.x + [('a' * 999990) ~ i] %}{% endfor %}{{ ns.x|length }}",
        # Eight gigabytes of list copies.
        BIG + "{% set ns = namespace(x=[]) %}{% for i in range(1000) %}"
        "{% set ns.x = ns.x + [big + []] %}{% endfor %}{{ ns.x|length }}",
    ],
)
def test_the_memory_limit_stops_a_render_that_allocates_fast(
    pool: RenderPool, payload: str
) -> None:
    rss = _rss()
    with pytest.raises(RenderError, match="memory") as caught:
        _render(pool, "text", payload)
    assert caught.value.field == "text"
    assert _rss() - rss < RSS_GROWTH_BOUND


def test_a_bomb_fails_alone_and_the_rest_of_its_batch_renders(pool: RenderPool) -> None:
    good = _source("text", "Hi {{ first_name }}")
    jobs = [
        RenderJob(_source(part, payload), 1, ANN, {}, None)
        for part, payload in (
            ("text", "Hi {{ first_name }}"),
            BOMBS[1],  # killed by the wall clock
            ("text", "Hi {{ first_name }}"),
            BOMBS[10],  # out of memory
            ("text", "Hi {{ first_name }}"),
        )
    ]
    jobs.append(RenderJob(good, 1, ANN, {}, None))
    results = pool.render_many(jobs)
    assert [getattr(r, "text", None) for r in results] == [
        "Hi Ann",
        None,
        "Hi Ann",
        None,
        "Hi Ann",
        "Hi Ann",
    ]
    assert [getattr(r, "field", None) for r in results] == [None, "text", None, "text", None, None]


def test_the_cpu_limit_stops_a_runaway_render_without_the_wall_clock() -> None:
    """With the wall-clock kill pushed far away, the kernel's CPU limit alone ends the render."""
    pool = RenderPool(settings=_settings(), secret_key=TEST_SECRET, wall_seconds=60)
    try:
        started = time.monotonic()
        with pytest.raises(RenderError, match="of CPU") as caught:
            _render(pool, *BOMBS[2])
        assert caught.value.field == "text"
        assert time.monotonic() - started < 15  # 20 sorts of a million numbers take far longer
    finally:
        pool.close()


def test_content_without_template_syntax_needs_no_render_process() -> None:
    before = render_processes()
    pool = RenderPool(settings=_settings(), secret_key=TEST_SECRET)
    try:
        rendered = pool.render(
            TemplateSource(subject="Your code", html=None, text="481 516\n"),
            tenant_id=1,
            recipient=ANN,
            data={},
            category=None,
        )
        assert (rendered.subject, rendered.text) == ("Your code", "481 516")
        assert render_processes() == before
    finally:
        pool.close()


def test_closing_the_pool_leaves_no_process_behind() -> None:
    before = render_processes()
    pool = RenderPool(settings=_settings(), secret_key=TEST_SECRET)
    _render(pool, "text", "{{ email }}")
    with pytest.raises(RenderError):
        _render(pool, *BOMBS[10])  # one process replaced on the way
    deadline = time.monotonic() + 30
    while len(render_processes()) != len(before) + 2:  # the replacement starts at once
        assert time.monotonic() < deadline, render_processes()
        time.sleep(0.05)
    pool.close()
    assert render_processes() == before  # none running, none left as a zombie


def render_processes() -> list[str]:
    """This process's render processes, zombies included, as ``pid state``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and (
            b"tidings.rendering.child" in command or fields[0] == b"Z"
        ):
            found.append(f"{entry} {fields[0].decode()}")
    return found
