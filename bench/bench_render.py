"""How fast the sandboxed renderer turns one compiled template into one recipient's mail.

A typical newsletter (≈2 KB of HTML with a loop, personal data, unsubscribe and preferences links)
is rendered for many recipients: with a text template, with the text part derived from the HTML,
and the pieces on their own (html_to_text, one signed token, one compile). Then the same through
the render pool, as the service renders (separate processes with hard limits): in batches as the
worker sends them, one at a time as the API's accept and preview do, and content without template
syntax (no round trip). Prints the best of a few runs in microseconds; asserts nothing about time.

    python bench/bench_render.py [--renders 5000] [--runs 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime

from tidings import tokens
from tidings.config import Settings
from tidings.rendering import Recipient, Renderer, html_to_text
from tidings.rendering.pool import RenderJob, RenderPool, TemplateSource

SECRET = "bench-secret-" + "x" * 40
BATCH = 100  # messages per render request, as the worker's batches
SUBJECT = "{{ first_name or 'Hello' }}, your {{ term }} update"
HTML = (
    """<!doctype html><html><head><style>p { color: #333 }</style><title>News</title></head>
<body><table width="100%"><tr><td>
<h1>Hello {{ first_name or "there" }},</h1>
<p>{{ personal_message }}</p>
<p>Your plan: <b>{{ attributes.plan }}</b>. The deadline for {{ term }} is {{ deadline }}.</p>
<ul>{% for item in items %}<li><a href="https://example.com/i/{{ item.id }}">{{ item.title }}</a></li>{% endfor %}</ul>
"""
    + "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.</p>\n"
    * 12
    + """<p style="font-size:11px">You get this because you subscribed.
<a href="{{ unsubscribe_url }}">Unsubscribe</a> · <a href="{{ preferences_url }}">Preferences</a></p>
</td></tr></table></body></html>"""
)
TEXT = (
    "Hello {{ first_name }},\n\n{{ personal_message }}\n\nDeadline: {{ deadline }}\n"
    + "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n" * 12
    + "Unsubscribe: {{ unsubscribe_url }}\n"
)
DATA = {
    "personal_message": "Thanks for being with us & see you soon!",
    "term": "Q3",
    "deadline": "1 July",
    "items": [{"id": i, "title": f"Item {i}"} for i in range(5)],
}


def best_microseconds(action: Callable[[], object], count: int, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(count):
            action()
        best = min(best, (time.perf_counter() - started) / count)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--renders", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    renderer = Renderer(settings=Settings(secret_key=SECRET), secret_key=SECRET)
    recipients = [
        Recipient(
            email=f"user{i}@example.com",
            first_name=f"User{i}",
            attributes={"plan": "pro"},
            contact_id=i + 1,
            message_id=i + 1,  # as the worker renders: the links are real tokens
            contact_created=1_700_000_000,
        )
        for i in range(args.renders)
    ]
    with_text = renderer.compile(subject=SUBJECT, html=HTML, text=TEXT)
    html_only = renderer.compile(subject=SUBJECT, html=HTML, text=None)

    for label, compiled in (("html + text template", with_text), ("html, text derived", html_only)):
        people = iter(recipients * (args.runs + 1))
        micros = best_microseconds(
            lambda c=compiled, p=people: renderer.render(  # type: ignore[misc]
                c, tenant_id=1, recipient=next(p), data=DATA, category="news"
            ),
            args.renders,
            args.runs,
        )
        print(f"render, {label}: {micros:8.1f} µs  ({1e6 / micros:,.0f} per second per core)")

    sample = renderer.render(
        html_only, tenant_id=1, recipient=recipients[0], data=DATA, category=None
    )
    assert sample.html is not None
    html = sample.html
    print(
        f"html_to_text ({len(html)} chars): "
        f"{best_microseconds(lambda: html_to_text(html), args.renders, args.runs):8.1f} µs"
    )
    now = datetime.now(UTC)
    micros = best_microseconds(
        lambda: tokens.make_token(
            SECRET,
            kind="unsubscribe",
            tenant_id=1,
            message_id=123456,
            contact_created=1_700_000_000,
            category="news",
            now=now,
        ),
        args.renders,
        args.runs,
    )
    print(f"make_token: {micros:8.1f} µs")
    started = time.perf_counter()
    renderer._compile(SUBJECT, HTML, TEXT)  # the uncached path
    print(f"compile (uncached): {(time.perf_counter() - started) * 1e3:8.2f} ms")
    bench_pool(recipients, args.renders, args.runs)


def bench_pool(recipients: list[Recipient], count: int, runs: int) -> None:
    """The same renders through the render pool: what the service pays for its hard limits."""
    pool = RenderPool(settings=Settings(secret_key=SECRET), secret_key=SECRET)
    started = time.perf_counter()
    pool.start()
    pool.render_many([RenderJob(TemplateSource(SUBJECT, HTML, TEXT), 1, recipients[0], DATA, None)])
    print(f"pool: start and first render: {(time.perf_counter() - started) * 1e3:8.1f} ms")
    try:
        for label, source in (
            ("html + text template", TemplateSource(SUBJECT, HTML, TEXT)),
            ("html, text derived", TemplateSource(SUBJECT, HTML, None)),
        ):
            jobs = [RenderJob(source, 1, r, DATA, "news") for r in recipients[:BATCH]]
            cpu = time.process_time()
            micros = best_microseconds(lambda j=jobs: pool.render_many(j), count // BATCH, runs)
            cpu_micros = (time.process_time() - cpu) / (count // BATCH * runs * BATCH) * 1e6
            print(
                f"pool, batches of {BATCH}, {label}: {micros / BATCH:8.1f} µs a message "
                f"({BATCH * 1e6 / micros:,.0f} per second, one caller), of which "
                f"{cpu_micros:.1f} µs of the caller's CPU"
            )
        one = [RenderJob(TemplateSource(SUBJECT, HTML, TEXT), 1, recipients[0], DATA, "news")]
        micros = best_microseconds(lambda: pool.render_many(one), count // 10, runs)
        print(f"pool, one message (accept, preview): {micros:8.1f} µs")
        plain = [
            RenderJob(TemplateSource("Your code", None, "481 516"), 1, recipients[0], {}, None)
        ]
        micros = best_microseconds(lambda: pool.render_many(plain), count, runs)
        print(f"pool, content without template syntax (no round trip): {micros:8.1f} µs")
    finally:
        pool.close()


if __name__ == "__main__":
    main()
