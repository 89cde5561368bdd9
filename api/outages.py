"""A backing service away is a 503 that names it, with Retry-After, not a 500 with a traceback.

Redis restarting, MongoDB (FerretDB) stopped or RabbitMQ restarting are outages the platform rides
out; a caller should retry shortly, and the log gets one warning line instead of a traceback.
"""

import logging
from collections.abc import Awaitable, Callable

import pymongo.errors
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1

SERVICES: dict[str, tuple[type[Exception], ...]] = {
    "Redis": (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError),
    "MongoDB": (pymongo.errors.ConnectionFailure, pymongo.errors.ServerSelectionTimeoutError),
}


def install_outage_handlers(app: FastAPI) -> None:
    for service, errors in SERVICES.items():
        for error in errors:
            app.add_exception_handler(error, _handler(service))


def _handler(service: str) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("%s %s: %s is away (%s: %s)", request.method, request.url.path, service,
                       type(exc).__name__, exc)  # fmt: skip
        return JSONResponse(
            {"detail": f"{service} is unavailable for the moment; retry in a few seconds"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    return unavailable
