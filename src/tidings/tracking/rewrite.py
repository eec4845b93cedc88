"""Making a rendered mail tracked: the open pixel, the click links, the honeypot link.

It runs in the worker on every tracked message after the render pool rendered it, so it is one
linear scan, not a parse: a regular expression finds each ``<a …>`` start tag, and only the
``href`` inside it is replaced. Every pattern is possessive and stops at the next ``<``, so no
input can make it read a character more than a bounded number of times (an unclosed ``<a`` costs
a scan to the next ``<``, not to the end). A tag it cannot read (a ``<`` inside an attribute
value, which autoescaped template output never has) keeps its link as it was: untracked, never
broken. ``bench/bench_tracking.py --rewrite`` prints its cost per message.

What is never rewritten: links that are not ``http(s)`` (``mailto:``, ``tel:``, anchors), this
server's own recipient links (``/u/``, ``/p/``, and tracking links already made), links marked
``data-tidings-notrack``, and URLs longer than ``links.MAX_URL_BYTES``. The text part gets the
same link for the same URL (its first occurrence in the HTML), URLs found only there get indexes
after the HTML's, and URLs marked not to track in the HTML stay untracked there too. The pixel
and the honeypot go only into the HTML.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from tidings.tracking import links

_A_TAG = re.compile(r"""<a\s(?:[^<>"']++|"[^<"]*+"|'[^<']*+')*+>""", re.IGNORECASE)
_HREF = re.compile(r"""(\shref\s*+=\s*+)(?:"([^"]*+)"|'([^']*+)'|([^\s"'>]++))""", re.IGNORECASE)
_NOTRACK = re.compile(r"""\sdata-tidings-notrack(?=[\s=>/])""", re.IGNORECASE)
_TEXT_URL = re.compile(r"""https?://[^\s<>"'()\[\]{}]++""", re.IGNORECASE)
_TRAILING = ".,;:!?"  # punctuation that ends a sentence rather than a URL in plain text


@dataclass(frozen=True, slots=True)
class Tracking:
    """What to track in one message, and who it is."""

    opens: bool
    clicks: bool
    tenant_id: int
    message_id: int

    @property
    def any(self) -> bool:
        return self.opens or self.clicks


@dataclass(slots=True)
class _MailState:
    """What the rewriting of one mail shares between its parts."""

    tenant_id: int
    message_id: int
    part: str | None = None  # the sealed message part of its click tokens, made at first use
    made: dict[tuple[int, str], str] = field(default_factory=dict)  # (index, URL) -> link


class LinkRewriter:
    """Rewrites rendered mail for one server (its secret and public URL); one per worker."""

    def __init__(self, *, secret: str, public_url: str) -> None:
        self._secret = secret
        base = public_url.rstrip("/")
        self._base = base
        self._own = tuple(f"{base}/{path}/" for path in ("u", "p", "o", "c"))
        self._base_attr = html_lib.escape(base, quote=True)

    def _trackable(self, url: str) -> bool:
        lowered = url[:8].lower()
        return (
            (lowered.startswith(("http://", "https://")))
            and not url.startswith(self._own)
            and len(url) <= links.MAX_URL_BYTES  # characters <= bytes: a cheap first check
            and url.isprintable()  # no line break can reach the redirect's Location
            and " " not in url
        )

    def apply(self, tracking: Tracking, html: str | None, text: str) -> tuple[str | None, str]:
        """The mail's HTML and text parts, tracked as ``tracking`` says."""
        if not tracking.any:
            return html, text
        by_url: dict[str, int] = {}  # URL -> index of its first tracked link
        untracked: set[str] = set()  # URLs marked data-tidings-notrack in the HTML
        count = 0  # links tracked in the HTML
        state = _MailState(tracking.tenant_id, tracking.message_id)
        if html is not None:
            html, count = self._html(tracking, state, html, by_url, untracked)
        if tracking.clicks:
            text = self._text(state, text, by_url, untracked, count)
        return html, text

    def _click_url(self, state: _MailState, index: int, url: str) -> str | None:
        """The tracked form of link ``index``; the text part reuses the HTML's (same index and
        URL, same token), and every link of a mail shares one sealed message part."""
        found = state.made.get((index, url))
        if found is not None:
            return found
        if state.part is None:
            state.part = links.message_part(
                self._secret, kind="click", tenant_id=state.tenant_id, message_id=state.message_id
            )
        try:
            token = links.link_token(self._secret, state.part, link_index=index, url=url)
        except ValueError:
            return None  # too long once encoded: left untracked
        made = state.made[(index, url)] = f"{self._base}/c/{token}"
        return made

    def _html(
        self,
        tracking: Tracking,
        state: _MailState,
        html: str,
        by_url: dict[str, int],
        untracked: set[str],
    ) -> tuple[str, int]:
        count = 0
        if tracking.clicks:

            def tag(match: re.Match[str]) -> str:
                nonlocal count
                source = match.group(0)
                found = _HREF.search(source)
                if found is None:
                    return source
                raw = found.group(2) or found.group(3) or found.group(4) or ""
                url = html_lib.unescape(raw).strip()
                if _NOTRACK.search(source) is not None:
                    untracked.add(url)
                    return source
                if not self._trackable(url):
                    return source
                tracked = self._click_url(state, count + 1, url)
                if tracked is None:
                    return source
                count += 1
                by_url.setdefault(url, count)
                return (
                    f'{source[: found.start()]}{found.group(1)}"{tracked}"{source[found.end() :]}'
                )

            html = _A_TAG.sub(tag, html)
        extra = []
        if tracking.clicks:
            honeypot = links.honeypot_token(
                self._secret, tenant_id=tracking.tenant_id, message_id=tracking.message_id
            )
            # Invisible and out of the reading order: only a machine that follows every link
            # reaches it (classify.py: a click on it is a machine's).
            extra.append(
                f'<a href="{self._base_attr}/c/{honeypot}" aria-hidden="true" tabindex="-1" '
                'style="display:none;font-size:0;line-height:0;max-height:0;overflow:hidden">'
                "&#8203;</a>"
            )
        if tracking.opens:
            pixel = links.open_token(
                self._secret, tenant_id=tracking.tenant_id, message_id=tracking.message_id
            )
            extra.append(
                f'<img src="{self._base_attr}/o/{pixel}" width="1" height="1" alt="" '
                'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">'
            )
        addition = "".join(extra)
        end = html.lower().rfind("</body")
        if end < 0:
            return html + addition, count
        return html[:end] + addition + html[end:], count

    def _text(
        self,
        state: _MailState,
        text: str,
        by_url: dict[str, int],
        untracked: set[str],
        next_index: int,
    ) -> str:

        def url(match: re.Match[str]) -> str:
            nonlocal next_index
            found = match.group(0)
            stripped = found.rstrip(_TRAILING)
            tail = found[len(stripped) :]
            if stripped in untracked or not self._trackable(stripped):
                return found
            index = by_url.get(stripped)
            if index is None:
                index = next_index + 1
            tracked = self._click_url(state, index, stripped)
            if tracked is None:
                return found
            if stripped not in by_url:
                next_index = by_url[stripped] = index
            return tracked + tail

        replace: Callable[[re.Match[str]], str] = url
        return _TEXT_URL.sub(replace, text)
