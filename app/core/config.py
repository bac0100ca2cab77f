"""Herald's one settings object.

Every knob is an environment variable (or a line in ``.env``), read once at
start-up. A bad value stops the process with one line naming the variable
(see ``load_settings``), so a typo in a deployment fails loudly at boot instead
of surfacing as odd behaviour under load.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.cluster_url import parse_cluster_url

__all__ = ["Settings", "SettingsError", "load_settings"]

MB = 1024 * 1024
BROKER_SCHEMES = ("memory", "redis", "rediss", "redis+cluster", "rediss+cluster")
MIN_JWT_SECRET_BYTES = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # --- server ---
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    broker_url: str = "memory://"
    redis_key_prefix: str = Field(default="herald", pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    # Events kept in the Redis event log every worker reads (app/broker/redis.py): it
    # only has to cover how far a reader can lag; per-channel history is SSE_HISTORY_SIZE.
    redis_log_size: int = Field(default=10_000, ge=100, le=10_000_000)
    # Command connections per worker (per node on a cluster): a burst of stream opens waits
    # for a free one instead of opening one per concurrent command.
    redis_max_connections: int = Field(default=32, ge=2, le=10_000)
    # redis+cluster:// (app/broker/redis_cluster/): log shards the events are spread
    # over (each a hash tag, so a slot, so a master); every worker reads every shard.
    redis_cluster_shards: int = Field(default=16, ge=1, le=1024)
    # A publish is acknowledged once this many replicas of each shard's master have it
    # (WAIT), within the timeout; 0 acknowledges on the master's write alone.
    redis_cluster_wait_replicas: int = Field(default=1, ge=0, le=16)
    redis_cluster_wait_timeout_ms: int = Field(default=1000, ge=1, le=60_000)
    # Events a worker's reader holds back until every shard has passed them (the merge
    # into one order); past it the reader gives them up and streams resume from history.
    redis_cluster_held_events: int = Field(default=10_000, ge=100, le=10_000_000)
    # Off by default: access logs carry query strings, and EventSource clients
    # can only pass credentials there.
    access_log: bool = False

    # --- streams ---
    sse_queue_size: int = Field(default=100, ge=1, le=100_000)
    sse_queue_max_mb: float = Field(default=16, gt=0)
    sse_overflow: Literal["disconnect", "drop_oldest"] = "disconnect"
    sse_idle_timeout_seconds: float = Field(default=600, gt=0)
    sse_cleanup_interval_seconds: float = Field(default=60, gt=0)
    sse_ping_seconds: float = Field(default=15, gt=0)
    sse_retry_ms: int = Field(default=3000, ge=0, le=3_600_000)
    sse_max_connections: int = Field(default=10_000, ge=1)
    # Off by default: many users behind one office or mobile-carrier NAT share an
    # address. render.yaml turns it on for the public deployment.
    sse_max_connections_per_ip: int = Field(default=0, ge=0)
    sse_max_channels_per_stream: int = Field(default=16, ge=1, le=256)
    # Under load, gather events for this long after a write pass so each stream gets
    # them in one socket write; an idle hub writes at once. 0 writes every pass at once.
    sse_write_coalesce_ms: float = Field(default=20, ge=0, le=1000)
    # A stream opened while the broker is unreachable waits this long (with heartbeats)
    # for its replay, then ends without `reset` so the client retries with the same id.
    sse_replay_wait_seconds: float = Field(default=30, ge=0, le=3600)
    # A resume replays history in pages (app/sse/replays.py) of at most this many events
    # and KB of frames (at least one event), each written before the next is read.
    sse_replay_page_events: int = Field(default=100, ge=1, le=100_000)
    sse_replay_page_kb: int = Field(default=256, ge=1, le=64 * 1024)
    # Replays running at once in a worker; a resuming stream past it waits its turn,
    # with heartbeats. A new stream (no Last-Event-ID) has nothing to replay: no turn.
    sse_replay_concurrency: int = Field(default=32, ge=1, le=100_000)
    # Kernel send buffer (SO_SNDBUF) of each stream's socket; the kernel doubles it for
    # bookkeeping. 0 leaves the kernel's autotuning (up to tcp_wmem's max, 4 MiB here).
    sse_socket_send_buffer_kb: int = Field(default=64, ge=0, le=64 * 1024)
    # High-water mark of each stream's asyncio transport write buffer (one write may
    # land on top of it before writing pauses).
    sse_transport_buffer_kb: int = Field(default=64, ge=1, le=64 * 1024)

    # Pattern subscriptions (Mercure URL patterns, `*`): channels whose matching patterns
    # are cached (app/sse/patterns.py); each entry is the channel and the numbers of the
    # patterns that match it.
    sse_pattern_cache_size: int = Field(default=10_000, ge=1, le=10_000_000)

    # --- history (replay) ---
    sse_history_size: int = Field(default=1000, ge=0, le=1_000_000)
    sse_history_max_mb: float = Field(default=32, ge=0)
    sse_history_max_channels: int = Field(default=10_000, ge=1)
    sse_channel_ttl_seconds: float = Field(default=900, gt=0)

    # --- publishing ---
    max_event_bytes: int = Field(default=65_536, ge=16, le=16 * MB)
    # POST /events batches: events per request and bytes per request body.
    publish_batch_max: int = Field(default=1000, ge=1, le=100_000)
    max_batch_bytes: int = Field(default=1 * MB, ge=16, le=64 * MB)
    # The cyclic collector's young-generation threshold (app/serving/collector.py).
    gc_young_threshold: int = Field(default=10_000, ge=100, le=1_000_000)
    # Channels one event may be published on ("channels": [...]).
    publish_max_channels: int = Field(default=16, ge=1, le=256)
    publish_token: SecretStr | None = None
    # Token bucket per publish token (or per address without one); 0 turns it off.
    publish_rate_per_second: float = Field(default=0, ge=0)
    publish_burst: int = Field(default=50, ge=1)
    publish_rate_max_clients: int = Field(default=10_000, ge=1)
    # A publish sent again with its Idempotency-Key (or a Mercure id) within this window
    # is answered with the first one's ids and not published again; 0 turns it off.
    publish_idempotency_seconds: float = Field(default=300, ge=0, le=86_400)
    # memory:// remembers at most this many keys per worker (the oldest forgotten first).
    publish_idempotency_max_keys: int = Field(default=20_000, ge=1, le=10_000_000)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- who may subscribe and publish ---
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_leeway_seconds: float = Field(default=30, ge=0, le=600)
    cookie_name: str = Field(default="herald_auth", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    allow_anonymous: bool = True
    # Mercure (app/mercure): the hub's resource identifier, which tokens must name in
    # `aud` (RFC 9068), and the trusted issuers (`iss`, comma-separated). Without
    # JWT_AUDIENCE the Mercure hub accepts no token (anonymous subscribers only).
    jwt_audience: str | None = None
    jwt_issuer: Annotated[list[str], NoDecode] = Field(default_factory=list)
    mercure_cookie_name: str = Field(
        default="__Secure-mercure_access_token", pattern=r"^[A-Za-z0-9_.-]{1,64}$"
    )
    # Bounds on one Mercure request: matchers per subscription, characters per matcher
    # or topic, topics per publish, publish body bytes (then 413).
    mercure_max_matchers: int = Field(default=64, ge=1, le=10_000)
    mercure_max_matcher_length: int = Field(default=2048, ge=16, le=65_536)
    mercure_max_topics: int = Field(default=32, ge=1, le=1000)
    mercure_max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * MB)
    # Active subscriptions kept for the subscription API (oldest ended ones go first).
    mercure_subscriptions_max: int = Field(default=10_000, ge=1, le=10_000_000)
    # The subscription API lists every worker's subscriptions (app.mercure.gather):
    # how long it waits for the other workers' answers (at most 4 s, as for operator
    # actions: a BLPOP on the Redis command pool), and the JSON bytes of documents
    # one answer carries (each worker's, and the merged list; past it: cut).
    mercure_subscriptions_timeout_seconds: float = Field(default=1, gt=0, le=4)
    mercure_subscriptions_list_max_kb: int = Field(default=4096, ge=1, le=32_768)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- streamed responses ---
    cache_max_items: int = Field(default=50, ge=1)
    cache_max_mb: float = Field(default=10, gt=0)
    cache_ttl_seconds: float = Field(default=3600, gt=0)
    max_input_chars: int = Field(default=8000, ge=1)
    default_producer: str = "echo"
    echo_delay_ms: float = Field(default=20, ge=0)
    response_timeout_seconds: float = Field(default=120, gt=0)
    response_retention_seconds: float = Field(default=300, gt=0)
    response_max_runs: int = Field(default=50, ge=1)
    response_max_kb: int = Field(default=1024, ge=1)
    upstream_base_url: str | None = None
    upstream_api_key: SecretStr | None = None
    upstream_model: str = "gpt-4o-mini"
    upstream_timeout_seconds: float = Field(default=60, gt=0)
    max_conversations: int = Field(default=1000, ge=1)
    max_messages: int = Field(default=10, ge=1)
    max_content_messages: int = Field(default=5, ge=1)
    max_content_length: int = Field(default=200, ge=1)

    # --- memory guard and operator surface ---
    memory_check_seconds: float = Field(default=1, gt=0)
    memory_limit_mb: float | None = Field(default=None, gt=0)
    memory_warning_percent: float = Field(default=75, gt=0, lt=100)
    memory_critical_percent: float = Field(default=90, gt=0, le=100)
    memory_hysteresis_percent: float = Field(default=5, ge=0)
    memory_trend_window_seconds: float = Field(default=600, gt=0)
    memory_leak_slope_bytes_per_s: float = Field(default=1024, ge=0)
    # A gunicorn worker still this far above its RSS at start once its crowd has left (what
    # a heap trim could not give back) is replaced by a fresh process; 0 never replaces.
    memory_recycle_mb: float = Field(default=32, ge=0)
    admin_token: SecretStr | None = None
    metrics_public: bool = False
    memory_headers: bool = False
    # How often each worker shares its figures with the others (app.fleet);
    # a shared snapshot lives three times this long.
    metrics_share_seconds: float = Field(default=5, ge=0.1, le=3600)
    # The dashboard's live feed (/api/admin/stream): how often it sends the admin
    # metrics, how long a stream ticket lives, how many feeds one worker serves.
    admin_stream_seconds: float = Field(default=2, ge=0.1, le=3600)
    admin_ticket_seconds: float = Field(default=60, ge=1, le=3600)
    admin_stream_max_connections: int = Field(default=10, ge=1, le=1000)
    # Operator actions (app.admin): how long the worker that received one waits
    # for the others' answers. At most 4 s: the wait is a BLPOP on the Redis
    # command pool, whose socket timeout is 5 s.
    admin_action_timeout_seconds: float = Field(default=3, gt=0, le=4)

    @field_validator("cors_origins", "trusted_proxies", "jwt_issuer", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        # A comma-separated list is what people type into a dashboard's env form;
        # pydantic-settings would otherwise insist on a JSON array.
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard_with_credentials(cls, value: list[str]) -> list[str]:
        # Credentials (cookies) are allowed on CORS requests: a `*` would be reflected
        # to any site, which could then read a subscriber's private updates.
        if "*" in value:
            raise ValueError("list the trusted origins; '*' is refused (credentials are on)")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad entry
        return value

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        scheme = value.partition("://")[0]
        if scheme not in BROKER_SCHEMES:
            raise ValueError(f"unsupported broker scheme {scheme!r}; use one of {BROKER_SCHEMES}")
        if scheme.endswith("+cluster"):
            parse_cluster_url(value)  # ValueError names the bad seed
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _long_enough_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # HS256 with a short secret is brute-forceable; RFC 7518 asks for >= 256 bits.
        if value is not None and len(value.get_secret_value().encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_JWT_SECRET_BYTES} bytes")
        return value

    @field_validator("jwt_public_key", mode="before")
    @classmethod
    def _pem_newlines(cls, value: object) -> object:
        # PEM pasted into a one-line env var usually arrives with literal "\n".
        if isinstance(value, str):
            value = value.replace("\\n", "\n").strip()
            return value or None
        return value

    @field_validator(
        "publish_token",
        "admin_token",
        "upstream_api_key",
        "jwt_secret",
        "jwt_audience",
        mode="before",
    )
    @classmethod
    def _empty_token_is_unset(cls, value: object) -> object:
        # `PUBLISH_TOKEN=` in a .env file means "not set", not "the empty token".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.memory_warning_percent >= self.memory_critical_percent:
            raise ValueError("MEMORY_WARNING_PERCENT must be below MEMORY_CRITICAL_PERCENT")
        if self.max_content_messages > self.max_messages:
            raise ValueError("MAX_CONTENT_MESSAGES must not exceed MAX_MESSAGES")
        return self

    @cached_property
    def cache_max_bytes(self) -> int:
        return int(self.cache_max_mb * MB)

    @cached_property
    def sse_queue_max_bytes(self) -> int:
        return int(self.sse_queue_max_mb * MB)

    @cached_property
    def sse_history_max_bytes(self) -> int:
        return int(self.sse_history_max_mb * MB)


class SettingsError(SystemExit):
    """Raised at start-up for a bad setting; its message is the one line to print."""


def _is_secret(variable: str) -> bool:
    # Secrets never reach a log line, not even a rejected one.
    return any(word in variable for word in ("TOKEN", "SECRET", "KEY", "PASSWORD"))


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation error into one clear line per variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type, unused-ignore]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if not error["loc"]:
                # A cross-field rule: its message names the variables, and its
                # input is every setting at once (secrets included), so not shown.
                problems.append(str(error["msg"]).removeprefix("Value error, "))
                continue
            variable = str(error["loc"][0]).upper()
            shown = "" if _is_secret(variable) else f" (got {error.get('input')!r})"
            problems.append(f"{variable}: {error['msg']}{shown}")
        raise SettingsError("herald: invalid setting " + "; ".join(problems)) from None
