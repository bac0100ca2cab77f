"""Herald's one settings object.

Every knob is an environment variable (or a line in ``.env``), read once at
start-up. A bad value stops the process with one line naming the variable
(see ``load_settings``), so a typo in a deployment fails loudly at boot instead
of surfacing as odd behaviour under load.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "load_settings"]

MB = 1024 * 1024
BROKER_SCHEMES = ("memory",)


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
    # Off by default: access logs carry query strings, and EventSource clients
    # can only pass credentials there.
    access_log: bool = False

    # --- streams ---
    sse_queue_size: int = Field(default=100, ge=1, le=100_000)
    sse_queue_max_mb: float = Field(default=64, gt=0)
    sse_overflow: Literal["disconnect", "drop_oldest"] = "disconnect"
    sse_idle_timeout_seconds: float = Field(default=600, gt=0)
    sse_cleanup_interval_seconds: float = Field(default=60, gt=0)
    sse_ping_seconds: float = Field(default=15, gt=0)
    sse_retry_ms: int = Field(default=3000, ge=0, le=3_600_000)
    sse_max_connections: int = Field(default=10_000, ge=1)
    sse_max_channels_per_stream: int = Field(default=16, ge=1, le=256)

    # --- history (replay) ---
    sse_history_size: int = Field(default=1000, ge=0, le=1_000_000)
    sse_history_max_mb: float = Field(default=32, ge=0)
    sse_history_max_channels: int = Field(default=10_000, ge=1)
    sse_channel_ttl_seconds: float = Field(default=900, gt=0)

    # --- publishing ---
    max_event_bytes: int = Field(default=65_536, ge=16, le=16 * MB)
    publish_token: SecretStr | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        # A comma-separated list is what people type into a dashboard's env form;
        # pydantic-settings would otherwise insist on a JSON array.
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        scheme = value.partition("://")[0]
        if scheme not in BROKER_SCHEMES:
            raise ValueError(f"unsupported broker scheme {scheme!r}; use one of {BROKER_SCHEMES}")
        return value

    @field_validator("publish_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: object) -> object:
        # `PUBLISH_TOKEN=` in a .env file means "not set", not "the empty token".
        if isinstance(value, str) and not value.strip():
            return None
        return value

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
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            variable = str(error["loc"][0]).upper() if error["loc"] else "settings"
            shown = "" if _is_secret(variable) else f" (got {error.get('input')!r})"
            problems.append(f"{variable}: {error['msg']}{shown}")
        raise SettingsError("herald: invalid setting " + "; ".join(problems)) from None
