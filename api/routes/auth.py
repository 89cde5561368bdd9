"""`POST /auth/token`: OAuth2 password form → bearer token."""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm

from api.accounts import authenticate
from api.deps import SettingsDep
from api.models import Token
from api.security import create_access_token

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/token",
    responses={status.HTTP_401_UNAUTHORIZED: {"description": "wrong id/username or secret/password"}},
)
async def login(settings: SettingsDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> Token:
    """Restaurant id + secret (role `restaurant`), or user + password (role `sales` or `admin`)."""
    principal = await authenticate(form.username, form.password)
    if principal is None:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="incorrect username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Token(access_token=create_access_token(settings, principal), expires_in=settings.token_ttl_s)
