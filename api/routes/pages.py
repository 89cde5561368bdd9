"""The pages under /ui: static files from web/ui and the few npm files they load, served locally (no CDN)."""

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, RedirectResponse

from api.deps import SettingsDep
from core.ids import is_valid_id

WEB = Path(__file__).resolve().parent.parent.parent / "web"
UI = WEB / "ui"
MODULES = WEB / "node_modules"
# Only the built files of the packages the pages use; the rest of node_modules stays private.
VENDOR = {
    "mqtt": MODULES / "mqtt" / "dist",
    "chart.js": MODULES / "chart.js" / "dist",
}
PAGES = {"login", "dashboard", "ranking", "client"}
# Revalidate every time (the ETag makes that a 304): a changed page must not meet a cached script.
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


def _file_under(base: Path, relative: str) -> FileResponse:
    """`base/relative` if it is a file inside `base` (no `..` escapes), else 404."""
    path = (base / relative).resolve()
    if not path.is_relative_to(base.resolve()) or not path.is_file():
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail="no such file")
    return FileResponse(path, headers=NO_CACHE)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/dashboard")


@router.get("/ui/config.json")
async def browser_config(settings: SettingsDep) -> dict[str, object]:
    """What the browser client needs to reach its broker shard; nothing secret."""
    return {
        "mqtt_ws_urls": settings.public_mqtt_ws_urls,
        "heartbeat_interval_s": settings.heartbeat_interval_s,
    }


@router.get("/ui/assets/{path:path}")
async def asset(path: str) -> FileResponse:
    return _file_under(UI, path)


@router.get("/ui/vendor/{package}/{path:path}")
async def vendor(package: str, path: str) -> FileResponse:
    base = VENDOR.get(package)
    if base is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"no vendored package {package!r}")
    if not base.is_dir():
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND,
            detail=f"{package} is not installed (run scripts/install.sh web)",
        )
    return _file_under(base, path)


@router.get("/ui/restaurants/{rid}")
async def restaurant_page(rid: str) -> FileResponse:
    if not is_valid_id(rid):
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail="not a restaurant id")
    return _file_under(UI, "restaurant.html")


@router.get("/ui")
@router.get("/ui/")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/dashboard")


@router.get("/ui/{page}")
async def page(page: str) -> FileResponse:
    if page not in PAGES:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"no page {page!r}")
    return _file_under(UI, f"{page}.html")
