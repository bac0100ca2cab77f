"""Wiring only: settings → broker → hub → responses → routes. ``app`` is the ASGI entry point."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app.api.routes import events, health, responses
from app.broker import create_broker
from app.core.config import Settings, SettingsError, load_settings
from app.core.logging import configure_logging
from app.responses.producers.base import Producer
from app.responses.service import ResponseService, build_producers
from app.sse.hub import Hub

__all__ = ["app", "create_app"]

logger = logging.getLogger("herald")


def create_app(settings: Settings | None = None, *, producers: Sequence[Producer] = ()) -> FastAPI:
    """Build the ASGI app. ``producers`` registers custom response producers."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    try:
        producer_registry = build_producers(settings, list(producers))
    except ValueError as exc:
        raise SettingsError(f"herald: invalid setting {exc}") from None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub = Hub(settings, create_broker(settings))
        service = ResponseService(settings, producer_registry)
        app.state.hub = hub
        app.state.responses = service
        if settings.publish_token is None:
            logger.warning("PUBLISH_TOKEN is not set: only loopback clients may publish")
        await hub.start()
        try:
            yield
        finally:
            await service.stop()
            await hub.stop()

    app = FastAPI(title="Herald", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.include_router(health.router)
    app.include_router(events.router)
    app.include_router(responses.router)
    return app


app = create_app()
