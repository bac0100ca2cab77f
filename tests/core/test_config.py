"""Settings: documented defaults, environment variables, and bad values that stop start-up
with one line naming the variable (and never echoing a secret)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import Settings, SettingsError, load_settings

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No stray .env and no inherited Herald variables."""
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    return tmp_path


def test_defaults_match_the_documented_table() -> None:
    settings = load_settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.sse_queue_size == 100
    assert settings.sse_overflow == "disconnect"
    assert settings.sse_idle_timeout_seconds == 600
    assert settings.sse_cleanup_interval_seconds == 60
    assert settings.sse_ping_seconds == 15
    assert settings.sse_retry_ms == 3000
    assert settings.sse_history_size == 1000
    assert settings.sse_history_max_mb == 32
    assert settings.sse_history_max_bytes == 32 * MB
    assert settings.sse_max_connections == 10_000
    assert settings.max_event_bytes == 65_536
    assert settings.publish_token is None
    assert settings.cors_origins == []
    assert settings.broker_url == "memory://"
    assert settings.metrics_share_seconds == 5


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("SSE_QUEUE_SIZE", "7")
    monkeypatch.setenv("SSE_OVERFLOW", "drop_oldest")
    monkeypatch.setenv("SSE_PING_SECONDS", "0.5")
    monkeypatch.setenv("SSE_HISTORY_MAX_MB", "1.5")
    monkeypatch.setenv("SSE_QUEUE_MAX_MB", "0.5")
    monkeypatch.setenv("PUBLISH_TOKEN", "s3cret")
    settings = load_settings()
    assert settings.host == "0.0.0.0"
    assert settings.port == 9001
    assert settings.sse_queue_size == 7
    assert settings.sse_overflow == "drop_oldest"
    assert settings.sse_ping_seconds == 0.5
    assert settings.sse_history_max_bytes == int(1.5 * MB)
    assert settings.sse_queue_max_bytes == MB // 2
    assert settings.publish_token is not None
    assert settings.publish_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_keyword_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_QUEUE_SIZE", "7")
    assert load_settings(sse_queue_size=3).sse_queue_size == 3


def test_dotenv_in_the_working_directory_is_read(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text("SSE_QUEUE_SIZE=42\nPUBLISH_TOKEN=\n")
    settings = load_settings()
    assert settings.sse_queue_size == 42
    assert settings.publish_token is None


@pytest.mark.parametrize(
    ("raw", "origins"),
    [
        ("https://a.example", ["https://a.example"]),
        ("https://a.example,https://b.example", ["https://a.example", "https://b.example"]),
        (" https://a.example , https://b.example ,, ", ["https://a.example", "https://b.example"]),
        ("", []),
    ],
)
def test_cors_origins_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch, raw: str, origins: list[str]
) -> None:
    monkeypatch.setenv("CORS_ORIGINS", raw)
    assert load_settings().cors_origins == origins


@pytest.mark.parametrize("raw", ["*", "https://a.example,*"])
def test_a_wildcard_cors_origin_is_refused_because_credentials_are_allowed(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    # Starlette reflects any Origin for `*` when the request carries a cookie.
    monkeypatch.setenv("CORS_ORIGINS", raw)
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        load_settings()


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_publish_token_means_unset(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PUBLISH_TOKEN", value)
    assert load_settings().publish_token is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "notaport"),
        ("PORT", "70000"),
        ("SSE_QUEUE_SIZE", "0"),
        ("SSE_OVERFLOW", "block"),
        ("SSE_IDLE_TIMEOUT_SECONDS", "0"),
        ("SSE_PING_SECONDS", "-1"),
        ("SSE_RETRY_MS", "soon"),
        ("SSE_HISTORY_SIZE", "-5"),
        ("SSE_MAX_CONNECTIONS", "0"),
        ("MAX_EVENT_BYTES", "1"),
        ("LOG_LEVEL", "loud"),
        ("BROKER_URL", "kafka://somewhere"),
        ("METRICS_SHARE_SECONDS", "0"),  # a zero interval would publish in a busy loop
    ],
)
def test_bad_value_raises_settings_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith("herald: invalid setting ")
    assert f"{variable}: " in message
    assert "\n" not in message


def test_bad_value_is_shown_to_help_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(SettingsError, match="'eighty'"):
        load_settings()


def test_every_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "x")
    monkeypatch.setenv("SSE_QUEUE_SIZE", "y")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "PORT: " in str(error.value)
    assert "SSE_QUEUE_SIZE: " in str(error.value)


@pytest.mark.parametrize("secret", [123456789, ["hunter2-secret"], {"token": "hunter2-secret"}])
def test_bad_secret_is_never_echoed(secret: object) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(publish_token=secret)
    message = str(error.value)
    assert "PUBLISH_TOKEN: " in message
    assert "hunter2" not in message
    assert "123456789" not in message
    assert "got" not in message


def test_settings_error_stops_the_process() -> None:
    # A SystemExit subclass: an uncaught one ends start-up with its message.
    assert issubclass(SettingsError, SystemExit)
