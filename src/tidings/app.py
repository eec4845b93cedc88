"""``create_app``: the one application, the API's routers and the dashboard's side by side.

It lives above both packages so that neither imports the other's application: the dashboard
(``tidings.web``) uses the API's dependencies and error table (``tidings.api.deps``,
``tidings.api.errors``), and the API never imports the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

from tidings import __version__
from tidings.api.body_limits import BodySizeLimit, takes_attachments
from tidings.api.errors import add_error_handlers
from tidings.api.routes import API_ROUTERS
from tidings.api.uploads import takes_upload
from tidings.runtime import Runtime, freeze_startup_objects
from tidings.tracking.hits import flushing
from tidings.web import web_routers

#: Every router of the application: the API's, then the dashboard at ``/`` (out of the OpenAPI
#: document).
ROUTERS: list[APIRouter] = [*API_ROUTERS, *web_routers()]


def create_app(runtime: Runtime, *, embedded_workers: int = 0) -> FastAPI:
    """The application; `embedded_workers` delivery workers run in its lifespan (0 for API only)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Tracking hits are flushed for as long as the app serves, and once more at its end.
        async with flushing(runtime), serving(app):
            yield

    @contextlib.asynccontextmanager
    async def serving(_app: FastAPI) -> AsyncIterator[None]:
        freeze_startup_objects()
        if embedded_workers == 0:
            try:
                yield
            finally:
                await asyncio.to_thread(runtime.stop_rendering)
            return
        from tidings.delivery.worker import run_workers

        stop = asyncio.Event()
        delivery = asyncio.create_task(run_workers(runtime, stop, count=embedded_workers))
        try:
            yield
        finally:
            stop.set()  # in-flight sends finish and are recorded before the server exits
            await delivery
            await asyncio.to_thread(runtime.stop_rendering)

    app = FastAPI(
        lifespan=lifespan,
        title="Tidings",
        version=__version__,
        description="Self-hosted email delivery: campaigns and transactional sends through a throttled, retrying queue.",
    )
    app.state.runtime = runtime
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(
        BodySizeLimit,
        max_body=runtime.settings.max_body_bytes,
        max_import=runtime.settings.max_import_bytes,
        # The routers are included without a prefix: their own routes are the app's.
        upload_routes=[
            route for router in ROUTERS for route in router.routes if takes_upload(route)
        ],
        max_attachments=runtime.settings.max_attachment_bytes,
        attachment_routes=[
            route for router in ROUTERS for route in router.routes if takes_attachments(route)
        ],
    )
    return app


#: How ``tidings serve --processes N`` tells each API process its ``--workers`` (uvicorn starts
#: them by import string, with no arguments). Internal: not a setting.
EMBEDDED_WORKERS_ENV = "TIDINGS_SERVE_EMBEDDED_WORKERS"


def app_from_environment() -> FastAPI:
    """One of ``tidings serve --processes N``'s processes: settings from the environment, and a
    runtime of its own (pooled connections cannot be shared across processes). The parent has
    already validated the settings and migrated a new SQLite file."""
    from tidings.config import Settings
    from tidings.logging import configure_logging
    from tidings.runtime import build_runtime

    settings = Settings()
    configure_logging(settings)
    runtime = build_runtime(settings, migrate=False)
    return create_app(runtime, embedded_workers=int(os.environ.get(EMBEDDED_WORKERS_ENV, "0")))
