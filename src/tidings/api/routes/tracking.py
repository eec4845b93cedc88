"""``GET /o/{token}`` (the open pixel) and ``GET /c/{token}`` (a tracked link's redirect): public,
hot, and free of database writes.

The token is read first, by computation alone (``tracking/links.py``): a forged or altered one
gets the same 404 page as every other invalid link, and never a redirect, before anything
touches the database. An authentic hit is appended to the process's buffer (``tracking/hits.py``)
and answered at once; the flush records it within about a second. Nothing here reads the
database either: a link keeps redirecting after its message was purged (its hit is then dropped
at the flush), and a database outage does not break the links of mail already delivered.

Both answers forbid caching (a cached pixel counts no open) and leak no referrer. The honeypot
link (``/c/`` with a honeypot token) answers an empty page: whatever follows it is counted as a
machine.
"""

from __future__ import annotations

import base64
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from tidings.api.routes.public import _not_found
from tidings.errors import InvalidToken
from tidings.runtime import Runtime
from tidings.tracking import links
from tidings.tracking.classify import client_network
from tidings.tracking.record import Hit

router = APIRouter(include_in_schema=False)

#: A 1x1 transparent GIF (43 bytes).
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NOT_CACHED = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
}
#: Characters a Location keeps as they are: every reserved one, and ``%`` (already escaped);
#: spaces, controls and non-ASCII are percent-encoded (UTF-8), so no header can be injected.
URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


def _keep(request: Request, runtime: Runtime, hit: links.TrackedHit) -> None:
    runtime.hits.add(
        Hit(
            kind=hit.kind,
            tenant_id=hit.tenant_id,
            message_id=hit.message_id,
            link_index=hit.link_index,
            url=hit.url,
            at=runtime.clock.now(),
            user_agent=request.headers.get("user-agent"),
            network=client_network(request.client.host if request.client is not None else None),
        )
    )


def _read(runtime: Runtime, token: str) -> links.TrackedHit | None:
    try:
        return links.read(runtime.secret_key, token)
    except InvalidToken:
        return None


@router.get("/o/{token}")
async def open_pixel(token: str, request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    hit = _read(runtime, token)
    if hit is None or hit.kind != "open":
        return _not_found()
    _keep(request, runtime, hit)
    return Response(PIXEL, media_type="image/gif", headers=NOT_CACHED)


@router.get("/c/{token}")
async def click(token: str, request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    hit = _read(runtime, token)
    if hit is None or hit.kind == "open":
        return _not_found()
    _keep(request, runtime, hit)
    if hit.kind == "honeypot" or hit.url is None:
        return HTMLResponse("", headers=NOT_CACHED)
    return Response(
        status_code=302, headers={**NOT_CACHED, "Location": quote(hit.url, safe=URL_SAFE)}
    )
