"""compose.yaml, the Dockerfile and the production Mosquitto files agree with the code (no Docker here)."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings
from stack.mosquitto_config import (
    PRODUCTION_ACL_FILE,
    PRODUCTION_PASSWORD_FILE,
    mosquitto_acl,
    production_conf,
)

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_IMAGES = {
    "mosquitto": "eclipse-mosquitto:2",
    "redis": "redis:7",
    "rabbitmq": "rabbitmq:3.13",
    "mongo": "mongo:7",
}
PLATFORM_SERVICES = ("bridge", "api")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def conf_directives(text: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            directives.setdefault(key, []).append(value.strip())
    return directives


def test_every_service_is_there_with_its_image(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, image in EXPECTED_IMAGES.items():
        assert services[name]["image"] == image
    for name in PLATFORM_SERVICES:
        assert services[name]["build"] == "."
        assert services[name]["command"]


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if service.get("restart") == "no":
            continue  # one-shot jobs finish instead of becoming healthy
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in PLATFORM_SERVICES:
        depends = services[name]["depends_on"]
        for backend in ("redis", "rabbitmq", "mongo", "mosquitto"):
            assert depends[backend]["condition"] == "service_healthy", f"{name} → {backend}"
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"
            else:
                assert condition == "service_completed_successfully"
                assert services[dependency].get("restart") == "no"


def test_presence_variables_are_settings_fields(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    named = set(re.findall(r"\bPRESENCE_([A-Z0-9_]+)\b", (ROOT / "compose.yaml").read_text()))
    assert named, "compose.yaml names no PRESENCE_ variable"
    # Dockerfile and compose may only set what Settings reads.
    for variable in named:
        assert variable.lower() in fields, f"PRESENCE_{variable} is not a Settings field"
    env = compose["services"]["api"]["environment"]
    assert env["PRESENCE_MONGO_URL"] == "mongodb://mongo:27017"
    assert env["PRESENCE_MOSQUITTO_PASSWD_FILE"] == PRODUCTION_PASSWORD_FILE
    for name in PLATFORM_SERVICES:
        assert compose["services"][name]["environment"] == env


def test_brokers_and_platform_share_the_password_file(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mount = f"mosquitto-auth:{Path(PRODUCTION_PASSWORD_FILE).parent}"
    for name in ("mosquitto", "api", "mqtt-auth"):
        assert mount in services[name]["volumes"], name
    mosquitto_volumes = services["mosquitto"]["volumes"]
    assert "./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in mosquitto_volumes
    assert f"./deploy/mosquitto.acl:{PRODUCTION_ACL_FILE}:ro" in mosquitto_volumes
    assert {"1883:1883", "9001:9001"} <= set(services["mosquitto"]["ports"])


def test_production_mosquitto_conf_has_the_required_directives() -> None:
    text = (ROOT / "mosquitto.conf").read_text()
    assert text == production_conf(), "regenerate with `python -m stack write-deploy-files`"
    directives = conf_directives(text)
    assert directives["allow_anonymous"] == ["false"]
    assert directives["password_file"] == [PRODUCTION_PASSWORD_FILE]
    assert directives["acl_file"] == [PRODUCTION_ACL_FILE]
    assert directives["listener"] == ["1883", "9001"]
    assert directives["protocol"] == ["mqtt", "websockets"]
    assert int(directives["max_queued_messages"][0]) >= 10_000_000  # nothing dropped for the bridge (§10)
    assert directives["max_queued_bytes"] == ["0"]
    assert int(directives["max_inflight_messages"][0]) >= 20


def test_production_acl_is_the_generated_one() -> None:
    assert (ROOT / "deploy" / "mosquitto.acl").read_text() == mosquitto_acl("platform")
    assert Settings.model_fields["mqtt_username"].default == "platform"


def test_dockerfile_installs_every_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    for package in ("core", "broker", "bridge", "api", "client_sim", "stack", "bench"):
        assert f"COPY {package} ./{package}" in text
