"""`POST /auth/token`: OAuth2 password form → bearer token; failed attempts are rate-limited."""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm

from api.accounts import authenticate
from api.deps import SettingsDep
from api.login_limiter import LoginLimiter, client_ip, get_login_limiter
from api.models import Token
from api.security import create_access_token

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/token",
    responses={
        status.HTTP_401_UNAUTHORIZED: {"description": "wrong id/username or secret/password"},
        status.HTTP_429_TOO_MANY_REQUESTS: {
            "description": "too many failed logins for this username or from this client; see Retry-After",
        },
    },
)
async def login(
    request: Request,
    settings: SettingsDep,
    limiter: Annotated[LoginLimiter, Depends(get_login_limiter)],
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
) -> Token:
    """Restaurant id + secret (role `restaurant`), or user + password (role `sales` or `admin`)."""
    ip = client_ip(request)
    blocked = await limiter.check(form.username, ip)
    if blocked is not None:
        raise HTTPException(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many failed logins for this {blocked.by}; try again in {blocked.retry_after_s} s",
            headers={"Retry-After": str(blocked.retry_after_s)},
        )
    principal = await authenticate(form.username, form.password)
    if principal is None:
        await limiter.failed(form.username, ip)
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="incorrect username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    await limiter.succeeded(form.username, ip)
    return Token(access_token=create_access_token(settings, principal), expires_in=settings.token_ttl_s)
