"""Tracked mail: which links are rewritten, where the pixel and honeypot go, and the sealed
tokens behind ``/o/`` and ``/c/``."""

from __future__ import annotations

import base64
import re
import time

import pytest

from tidings.errors import InvalidToken
from tidings.tracking import links
from tidings.tracking.rewrite import LinkRewriter, Tracking

SECRET = "unit-secret-" + "y" * 40
BASE = "https://mail.example.org"
BOTH = Tracking(opens=True, clicks=True, tenant_id=3, message_id=77)
TOKEN = re.compile(r"/([oc])/([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)?)")


def rewriter() -> LinkRewriter:
    return LinkRewriter(secret=SECRET, public_url=BASE + "/")


def hits(part: str) -> list[links.TrackedHit]:
    return [links.read(SECRET, token) for _, token in TOKEN.findall(part)]


HTML = (
    "<html><body>"
    '<p><a href="https://shop.example.com/sale?a=1&amp;b=2">Sale</a>'
    "<A class='x' HREF='http://blog.example.com/post'>Post</A>"
    '<a href="mailto:help@example.com">Mail us</a>'
    '<a href="tel:+4912345">Call</a>'
    '<a href="#top">Top</a>'
    '<a data-tidings-notrack href="https://private.example.com/x">Private</a>'
    f'<a href="{BASE}/u/unsubtoken">Unsubscribe</a>'
    f'<a href="{BASE}/p/preftoken">Preferences</a>'
    '<a href="https://shop.example.com/sale?a=1&amp;b=2">Sale again</a>'
    "</p></body></html>"
)


def test_http_links_are_sealed_in_order_with_the_exact_original_url() -> None:
    html, _ = rewriter().apply(BOTH, HTML, "")
    assert html is not None
    clicks = [h for h in hits(html) if h.kind == "click"]
    assert [(h.link_index, h.url) for h in clicks] == [
        (1, "https://shop.example.com/sale?a=1&b=2"),
        (2, "http://blog.example.com/post"),
        (3, "https://shop.example.com/sale?a=1&b=2"),
    ]
    assert all((h.tenant_id, h.message_id) == (3, 77) for h in hits(html))


@pytest.mark.parametrize(
    "kept",
    [
        'href="mailto:help@example.com"',
        'href="tel:+4912345"',
        'href="#top"',
        'href="https://private.example.com/x"',
        f'href="{BASE}/u/unsubtoken"',
        f'href="{BASE}/p/preftoken"',
    ],
)
def test_excluded_links_are_left_exactly_as_written(kept: str) -> None:
    html, _ = rewriter().apply(BOTH, HTML, "")
    assert html is not None and kept in html


def test_pixel_and_honeypot_go_before_the_closing_body_and_once() -> None:
    html, _ = rewriter().apply(BOTH, HTML, "")
    assert html is not None
    kinds = [h.kind for h in hits(html)]
    assert kinds.count("open") == 1 and kinds.count("honeypot") == 1
    assert html.endswith("</body></html>")
    assert html.index(f'<img src="{BASE}/o/') < html.index("</body>")
    assert 'aria-hidden="true"' in html and "display:none" in html


def test_without_a_body_tag_the_pixel_is_appended() -> None:
    html, _ = rewriter().apply(BOTH, "<p>Hi</p>", "Hi")
    assert html is not None and html.startswith("<p>Hi</p>")
    assert html.endswith('padding:0">')


def test_text_part_gets_the_html_links_and_never_the_pixel() -> None:
    text = (
        "Sale: https://shop.example.com/sale?a=1&b=2. More at (http://blog.example.com/post) "
        "or https://new.example.com/only-text, private: https://private.example.com/x "
        f"stop: {BASE}/u/unsubtoken mail: mailto:help@example.com"
    )
    _, out = rewriter().apply(BOTH, HTML, text)
    found = hits(out)
    assert [h.kind for h in found] == ["click", "click", "click"]
    assert [(h.link_index, h.url) for h in found] == [
        (1, "https://shop.example.com/sale?a=1&b=2"),
        (2, "http://blog.example.com/post"),
        (4, "https://new.example.com/only-text"),  # after the HTML's three
    ]
    assert out.count(f"{BASE}/c/") == 3 and "/o/" not in out
    assert "https://private.example.com/x " in out and f"{BASE}/u/unsubtoken" in out
    assert re.search(r"/c/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\. More", out)  # the stop stays out


def test_opens_only_leaves_links_alone_and_clicks_only_adds_no_pixel() -> None:
    opens_only = Tracking(opens=True, clicks=False, tenant_id=3, message_id=77)
    html, text = rewriter().apply(opens_only, HTML, "see https://shop.example.com/")
    assert html is not None and [h.kind for h in hits(html)] == ["open"]
    assert text == "see https://shop.example.com/"
    clicks_only = Tracking(opens=False, clicks=True, tenant_id=3, message_id=77)
    html, _ = rewriter().apply(clicks_only, HTML, "")
    assert html is not None and "open" not in [h.kind for h in hits(html)]


def test_nothing_tracked_changes_nothing() -> None:
    nothing = Tracking(opens=False, clicks=False, tenant_id=3, message_id=77)
    assert rewriter().apply(nothing, HTML, "https://x.example.com") == (
        HTML,
        "https://x.example.com",
    )


def test_a_url_too_long_to_carry_stays_untracked() -> None:
    long_url = "https://example.com/" + "a" * links.MAX_URL_BYTES
    html, _ = rewriter().apply(BOTH, f'<a href="{long_url}">x</a>', "")
    assert html is not None and f'href="{long_url}"' in html


def test_a_tag_with_a_lt_in_an_attribute_keeps_its_link_untracked() -> None:
    source = '<a title="a<b" href="https://example.com/">x</a>'
    html, _ = rewriter().apply(BOTH, source, "")
    assert html is not None and html.startswith(source)


@pytest.mark.parametrize("unit", ["<a ", "<a '", '<a "', "<a href='", '<a href="x'])
def test_unclosed_tags_cost_linear_time(unit: str) -> None:
    """Every pattern stops at the next ``<``: 200 KB of unclosed tags is one quick pass (the
    unbounded form took minutes)."""
    started = time.perf_counter()
    rewriter().apply(BOTH, unit * (200_000 // len(unit)), "")
    assert time.perf_counter() - started < 2.0


def _flip(part: str, position: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    raw[position] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def _size(part: str) -> int:
    return len(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_every_altered_byte_of_a_click_token_is_refused() -> None:
    token = links.click_token(
        SECRET, tenant_id=3, message_id=77, link_index=1, url="https://example.com/a"
    )
    assert links.read(SECRET, token).url == "https://example.com/a"
    part, _, link = token.partition(".")
    for position in range(_size(part)):
        with pytest.raises(InvalidToken):
            links.read(SECRET, _flip(part, position) + "." + link)
    for position in range(_size(link)):
        with pytest.raises(InvalidToken):
            links.read(SECRET, part + "." + _flip(link, position))


def test_a_link_part_moved_onto_another_message_or_a_pixel_is_refused() -> None:
    mine = links.click_token(SECRET, tenant_id=3, message_id=77, link_index=1, url="https://a/")
    other = links.click_token(SECRET, tenant_id=4, message_id=78, link_index=1, url="https://a/")
    pixel = links.open_token(SECRET, tenant_id=3, message_id=77)
    assert (links.read(SECRET, mine).message_id, links.read(SECRET, other).message_id) == (77, 78)
    for forged in (
        other.partition(".")[0] + "." + mine.partition(".")[2],
        pixel + "." + mine.partition(".")[2],
        mine.partition(".")[0],  # a click's message part alone
    ):
        with pytest.raises(InvalidToken):
            links.read(SECRET, forged)


@pytest.mark.parametrize(
    "token",
    ["", "x", "A" * 40, "preview", "!!!!", "A" * (links.MAX_TOKEN_CHARS + 1)],
)
def test_made_up_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        links.read(SECRET, token)


def test_tracking_tokens_and_unsubscribe_tokens_never_open_as_each_other() -> None:
    from datetime import UTC, datetime

    from tidings import tokens

    unsubscribe = tokens.make_token(
        SECRET,
        kind="unsubscribe",
        tenant_id=3,
        message_id=77,
        contact_created=None,
        category=None,
        now=datetime.now(UTC),
    )
    with pytest.raises(InvalidToken):
        links.read(SECRET, unsubscribe)
    click = links.open_token(SECRET, tenant_id=3, message_id=77)
    with pytest.raises(InvalidToken):
        tokens.read_token(SECRET, click, kind="unsubscribe", now=datetime.now(UTC))
    with pytest.raises(InvalidToken):
        links.read("another-secret-" + "z" * 40, click)


@pytest.mark.parametrize(
    "href",
    ["https://example.com/a&#10;Location: x", "https://example.com/a&#13;b", "https://e.com/a b"],
)
def test_a_url_with_a_line_break_or_space_stays_untracked(href: str) -> None:
    """Its redirect would carry the break into the Location header."""
    source = f'<a href="{href}">x</a>'
    html, _ = rewriter().apply(BOTH, source, "")
    assert html is not None and html.startswith(source)
