"""FastAPI dependencies as ``Annotated`` aliases, one place for request context."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings
from app.sse.hub import Hub

__all__ = ["HubDep", "SettingsDep", "client_address"]


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


SettingsDep = Annotated[Settings, Depends(get_settings)]
HubDep = Annotated[Hub, Depends(get_hub)]
