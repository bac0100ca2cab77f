"""``redis+cluster://`` URLs: seeds and credentials parsed, a bad one refused at start-up."""

from __future__ import annotations

import pytest

from app.core.cluster_url import parse_cluster_url
from app.core.config import SettingsError, load_settings


def test_a_cluster_url_is_checked_at_start_and_logged_without_its_password() -> None:
    parsed = parse_cluster_url("rediss+cluster://user:hunter2@h1:7000,[::1]:7001/0")
    assert parsed.seeds == (("h1", 7000), ("::1", 7001)) and parsed.tls
    assert parsed.password == "hunter2" and "hunter2" not in parsed.redacted()
    for bad in ("redis+cluster://h1", "redis+cluster://h1:7000,h2", "redis+cluster://h1:99999"):
        with pytest.raises(SettingsError, match="BROKER_URL"):
            load_settings(broker_url=bad)
    assert load_settings(broker_url="redis+cluster://h1:7000").redis_cluster_shards == 16
