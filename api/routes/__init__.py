"""The API's routers, one module per resource."""

from fastapi import APIRouter

from api.routes import (
    admin,
    auth,
    dashboard_ws,
    health,
    pages,
    reports,
    restaurants,
    status,
    timeline,
    unavailabilities,
)

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(auth.router)
api_router.include_router(status.router)
api_router.include_router(admin.router)
api_router.include_router(pages.router)
# After status: its /restaurants/status must win over /restaurants/{restaurant_id}.
api_router.include_router(restaurants.router)
api_router.include_router(unavailabilities.router)
api_router.include_router(dashboard_ws.router)
api_router.include_router(timeline.router)
api_router.include_router(reports.router)
