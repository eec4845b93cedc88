"""Every router of the API, in the order they appear in the OpenAPI document (the dashboard's are
added beside them by ``tidings.app``)."""

from __future__ import annotations

from fastapi import APIRouter

from tidings.api.routes import (
    campaigns,
    categories,
    contacts,
    domains,
    frequency_caps,
    health,
    keys,
    lists,
    messages,
    metrics,
    public,
    reminders,
    segments,
    settings,
    signup,
    suppressions,
    templates,
    throttle,
    tracking,
    transports,
    webhooks,
)

API_ROUTERS: list[APIRouter] = [
    # First: the tracking pixel and links are the hottest routes by far, and a request is matched
    # against the routes in order (matching the ~90 before them was a third of their CPU time).
    # They are out of the OpenAPI document, whose order this does not change.
    tracking.router,
    keys.router,
    contacts.router,
    lists.router,
    segments.router,
    templates.router,
    campaigns.router,
    messages.router,
    reminders.router,
    throttle.router,
    settings.router,
    suppressions.router,
    categories.router,
    frequency_caps.router,
    transports.router,
    webhooks.router,
    domains.router,
    public.router,
    signup.router,
    health.router,
    metrics.router,
]
