"""render.yaml agrees with the code: start command, settings, service references."""

from __future__ import annotations

import re
import shlex
from typing import Any

import yaml

from app.core.config import Settings
from app.main import create_app
from tests.support.server import REPO_ROOT

BLUEPRINT = REPO_ROOT / "render.yaml"
GUNICORN_CONF = REPO_ROOT / "gunicorn.conf.py"


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(BLUEPRINT.read_text())
    return data


def services(kind: str) -> list[dict[str, Any]]:
    return [s for s in load()["services"] if s["type"] == kind]


def test_web_service_runs_gunicorn_with_the_repo_config() -> None:
    (web,) = services("web")
    assert web["runtime"] == "python"
    assert web["buildCommand"] == "pip install -r requirements.txt"
    argv = shlex.split(web["startCommand"])
    assert argv[0] == "gunicorn"
    module, _, attribute = argv[-1].partition(":")
    assert (module, attribute) == ("app.main", "app")
    # gunicorn picks up ./gunicorn.conf.py by default; it must exist and name our worker.
    config = (REPO_ROOT / "gunicorn.conf.py").read_text()
    assert 'worker_class = "app.serving.worker.HeraldWorker"' in config
    assert "timeout = 120" in config
    assert "gunicorn" in (REPO_ROOT / "requirements.txt").read_text()


def test_health_check_path_is_a_real_route() -> None:
    (web,) = services("web")
    assert web["healthCheckPath"] in create_app().openapi()["paths"]


def test_every_env_var_is_a_setting_or_a_platform_variable() -> None:
    (web,) = services("web")
    settings = {name.upper() for name in Settings.model_fields}
    # Read by gunicorn.conf.py rather than by Settings.
    gunicorn = set(re.findall(r'os\.environ\.get\("([A-Z_]+)"', GUNICORN_CONF.read_text()))
    platform = {"PYTHON_VERSION", "WEB_CONCURRENCY"} | gunicorn
    keys = {var["key"] for var in web["envVars"]}
    assert keys - settings - platform == set()
    by_key = {var["key"]: var for var in web["envVars"]}
    assert by_key["ADMIN_TOKEN"]["generateValue"] is True
    assert by_key["PUBLISH_TOKEN"]["generateValue"] is True
    assert "value" in by_key["PYTHON_VERSION"]


def test_broker_url_comes_from_the_key_value_service() -> None:
    (web,) = services("web")
    (keyvalue,) = services("keyvalue")
    broker = next(var for var in web["envVars"] if var["key"] == "BROKER_URL")
    assert broker["fromService"] == {
        "type": "keyvalue",
        "name": keyvalue["name"],
        "property": "connectionString",
    }
    assert keyvalue["ipAllowList"] == []
    assert keyvalue["maxmemoryPolicy"] == "noeviction"


def test_every_literal_value_is_a_valid_setting() -> None:
    (web,) = services("web")
    fields = set(Settings.model_fields)
    values = {
        var["key"].lower(): var["value"]
        for var in web["envVars"]
        if "value" in var and var["key"].lower() in fields
    }
    settings = Settings(**values)
    # The per-address limits only make sense behind a trusted proxy.
    assert settings.sse_max_connections_per_ip > 0 and settings.trusted_proxies
    assert settings.publish_rate_per_second > 0
