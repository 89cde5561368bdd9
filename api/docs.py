"""OpenAPI pages served from local npm files: FastAPI's defaults load swagger-ui from a CDN."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

WEB_MODULES = Path(__file__).resolve().parent.parent / "web" / "node_modules"
SWAGGER_DIST = WEB_MODULES / "swagger-ui-dist"
SWAGGER_URL = "/static/swagger-ui"


def install_docs(app: FastAPI) -> None:
    """`/docs` with swagger-ui from web/node_modules (installed by scripts/install.sh)."""
    if SWAGGER_DIST.is_dir():
        app.mount(SWAGGER_URL, StaticFiles(directory=SWAGGER_DIST), name="swagger-ui")

    @app.get("/docs", include_in_schema=False, response_model=None)
    async def swagger_ui() -> HTMLResponse | PlainTextResponse:
        if not SWAGGER_DIST.is_dir():
            return PlainTextResponse(
                "swagger-ui is not installed (run `make run` or scripts/install.sh); the schema is at /openapi.json",
                status_code=503,
            )
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} — API",
            swagger_js_url=f"{SWAGGER_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_URL}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_URL}/favicon-32x32.png",
        )
