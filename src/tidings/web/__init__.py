"""The dashboard at ``/``: server-rendered pages (Jinja2 + htmx, no build step) over the services.

People sign in with an API key, which becomes a signed, HTTP-only session cookie; every form is
CSRF-protected and every action needs the same role as in the API. ``web_router()`` is mounted by
the application next to the API's routers and stays out of the OpenAPI document.
"""

from __future__ import annotations

from fastapi import APIRouter


def web_router() -> APIRouter:
    """Every dashboard route (none of them in the OpenAPI schema)."""
    from tidings.web.routes import (
        campaigns,
        compose,
        events,
        inbox,
        people,
        queue,
        signin,
        static,
        throttle,
    )

    router = APIRouter(include_in_schema=False)
    # compose before campaigns: /campaigns/new must win over /campaigns/{campaign_id}.
    for part in (signin, compose, campaigns, events, throttle, queue, people, inbox, static):
        router.include_router(part.router)
    return router
