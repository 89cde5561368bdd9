"""The API's routers, one module per resource."""

from fastapi import APIRouter

from api.routes import admin, auth, health, status

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(auth.router)
api_router.include_router(status.router)
api_router.include_router(admin.router)
