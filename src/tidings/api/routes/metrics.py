"""``/metrics``: Prometheus text exposition of the queue (read from the database) and this process."""

from __future__ import annotations

from fastapi import APIRouter, Response

from tidings.api.deps import RuntimeDep
from tidings.metrics import CONTENT_TYPE, render_metrics

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format 0.0.4.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics(runtime: RuntimeDep) -> Response:
    """Messages by tenant and status, queue depth, oldest waiting message, workers, send latency,
    throttle waits and attempts by outcome. Unauthenticated, like ``/healthz``: expose it to your
    monitoring network only."""
    return Response(render_metrics(runtime), media_type=CONTENT_TYPE)
