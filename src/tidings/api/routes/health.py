"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from tidings.api.deps import RuntimeDep
from tidings.db.engine import pending_migrations

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz", responses={503: {"description": "database unreachable or migrations pending"}}
)
def readyz(runtime: RuntimeDep) -> JSONResponse:
    """The database answers and its schema is current."""
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        behind = pending_migrations(runtime.engine)
    except Exception as exc:  # any driver error means "not ready", never a 500
        return JSONResponse({"status": "unavailable", "reason": str(exc)[:200]}, status_code=503)
    if behind:
        return JSONResponse(
            {"status": "unavailable", "reason": "migrations pending"}, status_code=503
        )
    return JSONResponse({"status": "ok"})
