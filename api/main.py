"""The app factory: `uvicorn --factory api.main:create_app` (tests call it with their own Settings)."""

from fastapi import FastAPI

from api.docs import install_docs
from api.lifespan import lifespan
from api.metrics import install_metrics
from api.outages import install_outage_handlers
from api.routes import api_router
from core.settings import Settings

# JSON of one id is at most 64 characters, quotes, a comma and some whitespace.
BYTES_PER_ID = 80
BODY_SLACK = 64 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="Restaurant presence",
        summary="Which restaurants can take orders right now, and how long each was unreachable",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by api.docs from local files; ReDoc would need a CDN
        redoc_url=None,
        # A status query of max_status_ids ids is the largest body the API takes; refuse bigger ones
        # with 413 before reading them into memory.
        max_body_size=settings.max_status_ids * BYTES_PER_ID + BODY_SLACK,
    )
    app.state.settings = settings
    install_metrics(app)
    install_docs(app)
    install_outage_handlers(app)
    app.include_router(api_router)
    return app
