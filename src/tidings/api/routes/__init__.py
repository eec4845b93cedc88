"""Every router of the API, in the order they appear in the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter

from tidings.api.routes import (
    campaigns,
    contacts,
    health,
    keys,
    lists,
    messages,
    templates,
    throttle,
)

ROUTERS: list[APIRouter] = [
    keys.router,
    contacts.router,
    lists.router,
    templates.router,
    campaigns.router,
    messages.router,
    throttle.router,
    health.router,
]
