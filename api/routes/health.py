"""Liveness, readiness and Prometheus metrics: the operator's view of one API process."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import MetricsDep
from api.models import Health, Readiness

router = APIRouter(tags=["health"])

PROBE_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> Health:
    """The process is alive and serving; touches no backing service."""
    return Health()


async def _probe(check: Callable[[], Awaitable[Any]]) -> str:
    try:
        await asyncio.wait_for(check(), PROBE_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT_S:g}s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return "ok"


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": Readiness, "description": "a backing service failed"}},
)
async def readyz(request: Request) -> Readiness | JSONResponse:
    """Redis, MongoDB and RabbitMQ all answer; 503 says which did not."""
    state = request.app.state

    async def rabbitmq() -> None:
        # The robust connection clears `connected` when the link drops and sets it again on reconnect.
        if state.amqp.is_closed or not state.amqp.connected.is_set():
            raise ConnectionError("not connected")

    names = ("redis", "mongodb", "rabbitmq")
    results = await asyncio.gather(
        _probe(state.redis.ping), _probe(lambda: state.mongo.admin.command("ping")), _probe(rabbitmq)
    )
    checks = dict(zip(names, results, strict=True))
    if all(result == "ok" for result in results):
        return Readiness(status="ok", checks=checks)
    body = Readiness(status="unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get("/metrics", include_in_schema=False)
async def metrics(api_metrics: MetricsDep) -> Response:
    return Response(api_metrics.render(), media_type=CONTENT_TYPE_LATEST)
