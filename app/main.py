"""Wiring only: settings → broker → hub → publish service → responses → memory guard →
fleet view → routes.

``app`` is the ASGI entry point, a :class:`app.asgi.HeraldApp`."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from app.admin.actions import WorkerActions
from app.admin.audit import AuditTrail
from app.admin.dispatch import ActionCoordinator
from app.admin.drain import DrainState
from app.api.publish_handler import PublishContext
from app.api.routes import (
    admin,
    admin_actions,
    admin_stream,
    dashboard,
    events,
    health,
    metrics,
    responses,
)
from app.asgi import HeraldApp
from app.auth.client_address import TrustedProxies
from app.auth.tokens import TokenVerifier
from app.broker import create_broker
from app.core.config import Settings, SettingsError, load_settings
from app.core.logging import configure_logging
from app.fleet import FleetView, create_exchange, take_snapshot, worker_id
from app.fleet.actions import create_bus
from app.fleet.actions.routing import HandlerRouter
from app.limits import create_client_limits
from app.memory.guard import MemoryGuard, level_tracker
from app.mercure import routes as mercure
from app.mercure.gather import SUBSCRIPTIONS_KIND, SubscriptionGather
from app.mercure.subscriptions import SubscriptionRegistry
from app.middleware.memory_headers import MemoryHeadersMiddleware
from app.publishing import PublishService
from app.responses.producers.base import Producer
from app.responses.service import ResponseService, build_producers
from app.serving.collector import tune_collector
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
    try:
        level_tracker(settings)
    except ValueError as exc:
        raise SettingsError(f"herald: invalid setting MEMORY_HYSTERESIS_PERCENT: {exc}") from None
    try:
        tokens = TokenVerifier(
            secret=settings.jwt_secret,
            public_key=settings.jwt_public_key,
            leeway_seconds=settings.jwt_leeway_seconds,
        )
    except ValueError as exc:
        raise SettingsError(f"herald: invalid setting JWT_PUBLIC_KEY: {exc}") from None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Here, not at import: under gunicorn --preload the app is built in the
        # master, and the id must be the worker's.
        host, pid = socket.gethostname(), os.getpid()
        worker = worker_id(host, pid)
        broker = create_broker(settings)
        hub = Hub(settings, broker, limits=create_client_limits(settings, broker, worker))
        service = ResponseService(settings, producer_registry)
        guard = MemoryGuard(settings, hub, service)
        audit = AuditTrail()
        fleet = FleetView(
            create_exchange(settings, broker, worker),
            partial(
                take_snapshot, hub, service, guard, host=host, pid=pid, admin_actions=audit.counts
            ),
            interval_seconds=settings.metrics_share_seconds,
        )
        drain = DrainState()
        bus = create_bus(settings, broker, worker)
        actions = ActionCoordinator(
            WorkerActions(hub, service, drain),
            bus,
            fleet,
            timeout_seconds=settings.admin_action_timeout_seconds,
        )
        # The subscription API asks the other workers over the same bus.
        gather = SubscriptionGather(
            app.state.mercure_subscriptions,
            fleet,
            bus,
            timeout_seconds=settings.mercure_subscriptions_timeout_seconds,
            max_bytes=settings.mercure_subscriptions_list_max_kb * 1024,
        )
        bus_handler = HandlerRouter(actions.answer)
        bus_handler.add(SUBSCRIPTIONS_KIND, gather.answer)
        app.state.hub = hub
        publish_service = PublishService(settings, hub)
        app.state.publish_service = publish_service
        assert isinstance(app, HeraldApp)  # built below; Starlette types the argument wider
        app.publishing = PublishContext(settings, publish_service, app.state.proxies, tokens)
        app.state.responses = service
        app.state.memory = guard
        app.state.fleet = fleet
        app.state.drain = drain
        app.state.audit = audit
        app.state.actions = actions
        app.state.mercure_gather = gather
        if settings.publish_token is None and not tokens.enabled:
            logger.warning("PUBLISH_TOKEN is not set: only loopback clients may publish")
        if settings.admin_token is None:
            logger.info("ADMIN_TOKEN is not set: the admin API is off")
        await hub.start()
        # After the hub (the guard samples its connections), before the first request.
        await guard.start()
        # After the guard (its first sample is in the first snapshot) and the
        # broker's connection (the Redis exchange uses it).
        await fleet.start()
        for checks in (hub.admission_checks, service.admission_checks):
            checks.append(drain.refusal)
        # After the fleet view: the bus is for workers that others can see.
        await actions.start(bus_handler)
        # Last: everything start-up built is now in place to be frozen.
        tune_collector(settings.gc_young_threshold)
        try:
            yield
        finally:
            # First: the bus and the snapshot go while the broker is still connected.
            await actions.stop()
            await fleet.stop()
            await guard.stop()
            await service.stop()
            await hub.stop()

    # Outermost first. HeraldApp wraps both of its doors in these: FastAPI's stack and the
    # fast path for /events (app.asgi).
    user_middleware: list[Middleware] = []
    if settings.memory_headers:
        user_middleware.append(Middleware(MemoryHeadersMiddleware))
    if settings.cors_origins:
        user_middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_credentials=True,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Cache-Control"],
                # The Mercure subscription API's cursor and the stream's resume point.
                expose_headers=["Link", "Mercure-Last-Event-ID"],
            )
        )
    app = HeraldApp(title="Herald", version="0.1.0", lifespan=lifespan, middleware=user_middleware)
    app.state.settings = settings
    app.state.tokens = tokens
    app.state.proxies = TrustedProxies(settings.trusted_proxies)
    app.state.admin_streams = admin_stream.StreamSlots(settings.admin_stream_max_connections)
    app.state.mercure_subscriptions = SubscriptionRegistry(settings.mercure_subscriptions_max)
    app.include_router(health.router)
    app.include_router(events.router)
    app.include_router(responses.router)
    app.include_router(admin.router)
    app.include_router(admin_actions.router)
    app.include_router(admin_stream.router)
    app.include_router(metrics.router)
    app.include_router(dashboard.router)
    app.include_router(mercure.router)
    return app


app = create_app()
