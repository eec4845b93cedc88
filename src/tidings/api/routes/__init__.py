"""Every router of the API, in the order they appear in the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter

from tidings.api.routes import health, keys

ROUTERS: list[APIRouter] = [keys.router, health.router]
