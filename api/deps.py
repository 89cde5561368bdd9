"""FastAPI dependencies as `Annotated` aliases: settings, services, the caller and role checks."""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer

from api.metrics import ApiMetrics
from api.security import InvalidToken, Principal, decode_access_token
from core.documents import Role
from core.settings import Settings
from core.status_service import StatusService

# For OpenAPI: what every authenticated route may answer besides its own responses.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    status.HTTP_401_UNAUTHORIZED: {"description": "missing, invalid or expired token"},
    status.HTTP_403_FORBIDDEN: {"description": "the token's role or restaurant may not do this"},
}

# Configuration only (no connection): tells OpenAPI where tokens come from and reads the header.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token")

# The dependencies are `async def` though none awaits: FastAPI runs a plain `def` dependency in its
# thread pool, a round trip through a worker thread for each of them on every request (four for a
# status read, ~1 ms on two busy cores); these only read app state or check a token's signature.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_status_service(request: Request) -> StatusService:
    service: StatusService = request.app.state.status_service
    return service


async def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
StatusServiceDep = Annotated[StatusService, Depends(get_status_service)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
TokenDep = Annotated[str, Depends(oauth2_scheme)]


async def get_current_principal(settings: SettingsDep, token: TokenDep) -> Principal:
    try:
        return decode_access_token(settings, token)
    except InvalidToken as exc:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=str(exc),
            headers={"WWW-Authenticate": "Bearer"},
        ) from exc


CurrentPrincipal = Annotated[Principal, Depends(get_current_principal)]


def require_roles(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through only the given roles (403 for the others)."""
    allowed = frozenset(roles)

    async def check(principal: CurrentPrincipal) -> Principal:
        if principal.role not in allowed:
            names = " or ".join(sorted(role.value for role in allowed))
            raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=f"requires role {names}")
        return principal

    return check


SalesPrincipal = Annotated[Principal, Depends(require_roles(Role.SALES, Role.ADMIN))]
AdminPrincipal = Annotated[Principal, Depends(require_roles(Role.ADMIN))]


def ensure_can_read(principal: Principal, restaurant_ids: list[str]) -> None:
    """A restaurant may see only itself; sales and admin see every restaurant."""
    if not principal.can_read_all(restaurant_ids):
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN, detail="a restaurant token may read only its own restaurant"
        )
