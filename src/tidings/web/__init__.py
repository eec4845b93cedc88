"""The dashboard at ``/``: server-rendered pages (Jinja2 + htmx, no build step) over the services.

People sign in with an API key, which becomes a signed, HTTP-only session cookie; every form is
CSRF-protected and every action needs the same role as in the API. ``web_routers()`` are mounted by
the application next to the API's routers and stay out of the OpenAPI document.
"""

from __future__ import annotations

from fastapi import APIRouter


def web_routers() -> list[APIRouter]:
    """Every dashboard router (none of them in the OpenAPI schema), in the order they match.

    Each is included in the application as it is, not through one router of routers, so that the
    application's routes can be read from them (``BodySizeLimit`` finds its upload routes so).
    """
    from tidings.web.routes import (
        campaigns,
        compose,
        contact,
        events,
        inbox,
        people,
        queue,
        segments,
        sending,
        signin,
        static,
        templates,
        throttle,
    )

    # compose and segments before campaigns: /campaigns/new… must win over /campaigns/{id}.
    parts = (
        signin,
        compose,
        segments,
        campaigns,
        templates,
        events,
        throttle,
        sending,
        queue,
        contact,
        people,
        inbox,
        static,
    )
    return [part.router for part in parts]
