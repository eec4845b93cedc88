"""The dashboard's few static files (stylesheet, script, vendored htmx), served by name."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from tidings.errors import NotFound
from tidings.web.pages import STATIC_DIR, DashboardRoute

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

#: Only these names are served: nothing else in the package can be read through this route.
STATIC_FILES = {
    "style.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "htmx.min.js": "text/javascript; charset=utf-8",
    "htmx.LICENSE.txt": "text/plain; charset=utf-8",
}
CACHE_SECONDS = 3600  # pages link ?v=<version>, so a new release is fetched at once


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise NotFound("no such file")
    return FileResponse(
        STATIC_DIR / name,
        media_type=media_type,
        headers={"Cache-Control": f"public, max-age={CACHE_SECONDS}"},
    )
