"""compose.yaml, the Dockerfile and the production Mosquitto and nginx files agree with the code (no Docker here).

The compose file is read with yaml (its `<<` merges resolved), its `${VAR}` references interpolated the
way Docker Compose does, and every platform process's environment is loaded into a real `Settings`.
"""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
PLATFORM_IMAGE = "restaurant-presence:local"
EXPECTED_IMAGES = {
    "mosquitto": "eclipse-mosquitto:2",
    "redis": "redis:7",
    "rabbitmq": "rabbitmq:3.13",
}
BACKENDS = ("redis", "rabbitmq", "mongo", "mosquitto")
# The backing services each process talks to: it must wait for each of them to be healthy.
NEEDS = {
    "bridge": {"redis", "rabbitmq", "mongo", "mosquitto"},
    "api": {"redis", "rabbitmq", "mongo"},
    "scheduler": {"redis", "rabbitmq", "mongo", "mosquitto"},
    "aggregator": {"rabbitmq", "mongo"},
    "feed": {"redis", "rabbitmq", "mongo"},
}
# Where each process answers its healthcheck, from its Settings.
HEALTH_PORT = {
    "bridge": lambda s: s.bridge_metrics_port,
    "scheduler": lambda s: s.scheduler_metrics_port,
    "aggregator": lambda s: s.aggregator_metrics_port,
    "feed": lambda s: s.feed_metrics_port,
    "api": lambda _s: 8000,
}
# What an operator would put in .env: the values the `${VAR:?…}` references require.
OPERATOR_ENV = {
    "RABBITMQ_PASSWORD": "rabbit-test-password",
    "PRESENCE_MQTT_PASSWORD": "mqtt-test-password",
    "PRESENCE_JWT_SECRET": "jwt-test-secret-that-is-long-enough",
}
VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Docker Compose's `$$`, `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$VAR`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3)
        value = env.get(name)
        empty = value is None or (value == "" and operator is not None and operator.startswith(":"))
        if operator and operator.endswith("-") and empty:
            return argument
        if operator and operator.endswith("?") and empty:
            raise ValueError(f"{name}: {argument}")
        return value or ""

    return VARIABLE.sub(replace, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def process_of(service: dict[str, Any]) -> str | None:
    """Which platform process a service runs: `python -m X` → X, uvicorn's app factory → api."""
    command = service.get("command") or []
    if command[:2] == ["python", "-m"]:
        return str(command[2])
    if command and command[0] == "uvicorn" and "api.main:create_app" in command:
        return "api"
    return None


def instances(services: dict[str, dict[str, Any]], process: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if process_of(s) == process}


def instance_name(service: dict[str, Any]) -> str | None:
    command = service["command"]
    return command[command.index("--instance") + 1] if "--instance" in command else None


def service_settings(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the process builds at its entry point, from exactly this service's environment."""
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("PRESENCE_"):
                patch.delenv(name)
        for name, value in service["environment"].items():
            patch.setenv(name, interpolate(str(value), OPERATOR_ENV))
        return Settings()


def healthcheck_port(service: dict[str, Any]) -> int:
    test = " ".join(service["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", test)
    assert match, f"no local HTTP probe in {test!r}"
    return int(match.group(1))


def published(service: dict[str, Any]) -> dict[int, int]:
    """host port → container port."""
    out = {}
    for mapping in service.get("ports", []):
        host, _, container = str(mapping).rpartition(":")
        out[int(host)] = int(container)
    return out


def conf_directives(text: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            directives.setdefault(key, []).append(value.strip())
    return directives


# --- services, images, health


def test_every_service_is_there_with_its_image(services: dict[str, dict[str, Any]]) -> None:
    for name, image in EXPECTED_IMAGES.items():
        assert services[name]["image"] == image
    repository, _, tag = services["mongo"]["image"].partition(":")
    assert repository == "mongo" and tag.split(".")[0] == "7", "real MongoDB, major version 7"
    for process in NEEDS:
        assert instances(services, process), f"no service runs the {process}"
    for name, service in services.items():
        if service.get("image") == PLATFORM_IMAGE:
            assert service["build"] == ".", name
            assert service["command"], name


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if service.get("restart") == "no":
            continue  # one-shot jobs finish instead of becoming healthy
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


def test_platform_healthchecks_probe_the_port_the_process_opens(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in services.items():
        process = process_of(service)
        if process is None:
            continue
        port = HEALTH_PORT[process](service_settings(service, monkeypatch))
        assert port > 0, f"{name}: the {process} opens no metrics port, so nothing answers its healthcheck"
        assert healthcheck_port(service) == port, name


def test_dependencies_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        process = process_of(service)
        if process is not None:
            depends = service["depends_on"]
            for backend in NEEDS[process]:
                assert depends[backend]["condition"] == "service_healthy", f"{name} → {backend}"
        elif name not in ("mongo", "redis", "rabbitmq"):
            assert service.get("depends_on"), f"{name} starts without waiting for anything"
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"
            else:
                assert condition == "service_completed_successfully"
                assert services[dependency].get("restart") == "no"


def test_no_host_port_is_published_twice(services: dict[str, dict[str, Any]]) -> None:
    seen: dict[int, str] = {}
    for name, service in services.items():
        for host in published(service):
            assert host not in seen, f"host port {host}: {seen.get(host)} and {name}"
            seen[host] = name


# --- more than one of what may run more than once, one of what may not


def test_two_bridges_share_one_subscription_group(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    bridges = instances(services, "bridge")
    assert len(bridges) >= 2
    settings = [service_settings(s, monkeypatch) for s in bridges.values()]
    assert len({s.mqtt_shared_group for s in settings}) == 1, "one share group, or each bridge gets every message"
    assert all(s.mqtt_protocol in ("5", "auto") for s in settings), "shared subscriptions need MQTT 5"
    assert len({tuple(s.mqtt_brokers) for s in settings}) == 1
    # The instance names the MQTT session: two bridges with one name would keep taking it from each other.
    names = [instance_name(s) for s in bridges.values()]
    assert None not in names and len(set(names)) == len(names), names
    for name, service in bridges.items():
        assert service.get("deploy", {}).get("replicas", 1) == 1, f"{name}: replicas would share one instance name"


def test_two_api_replicas_behind_nginx(services: dict[str, dict[str, Any]]) -> None:
    apis = instances(services, "api")
    assert len(apis) >= 2
    host_ports = [port for s in apis.values() for port in published(s)]
    assert len(host_ports) == len(set(host_ports))
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    upstream = re.search(r"upstream api \{(.*?)\}", text, re.S)
    assert upstream, "nginx.conf has no `upstream api`"
    assert set(re.findall(r"server ([\w.-]+):8000\b", upstream.group(1))) == set(apis)
    assert "proxy_set_header Upgrade $http_upgrade;" in text, "the dashboard websocket must pass through"
    web = services["web"]
    listen = int(re.search(r"listen (\d+);", text).group(1))  # type: ignore[union-attr]
    assert published(web) == {8000: listen}
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in web["volumes"]
    for name, service in apis.items():
        assert web["depends_on"][name]["condition"] == "service_healthy"
        # Per-IP login limits see the browser's address, which nginx sets (never appends to).
        assert service["command"][-2:] == ["--forwarded-allow-ips", "*"] and "--proxy-headers" in service["command"]
        assert not published(service), f"{name} is reached through nginx only"
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in text


def test_schedulers_elect_one_leader(services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Several scheduler processes are fine: only the holder of one Redis lock key acts (scheduler/leader.py)."""
    schedulers = instances(services, "scheduler")
    assert 1 <= len(schedulers) <= 2
    settings = [service_settings(s, monkeypatch) for s in schedulers.values()]
    # One lock key: the same Redis and the same prefix, or two leaders would act at once.
    assert len({(s.redis_url, s.redis_prefix) for s in settings}) == 1
    assert all(s.scheduler_leader_ttl_s > 0 for s in settings)
    names = [instance_name(s) for s in schedulers.values()]
    assert None not in names and len(set(names)) == len(names), "distinct MQTT client ids for the retained link"


def test_one_aggregator_and_a_feed(services: dict[str, dict[str, Any]]) -> None:
    aggregators = instances(services, "aggregator")
    assert len(aggregators) == 1, "the aggregator is the only writer of the ranking's slot directories"
    (aggregator,) = aggregators.values()
    assert aggregator.get("deploy", {}).get("replicas", 1) == 1
    assert len(instances(services, "feed")) >= 1


# --- environment


def test_presence_variables_are_settings_fields(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    fields = set(Settings.model_fields)
    named = set(re.findall(r"\bPRESENCE_([A-Z0-9_]+)\b", (ROOT / "compose.yaml").read_text()))
    assert named, "compose.yaml names no PRESENCE_ variable"
    for variable in named:
        assert variable.lower() in fields, f"PRESENCE_{variable} is not a Settings field"
    for name, service in services.items():
        if service.get("image") != PLATFORM_IMAGE:
            continue
        for variable in service["environment"]:
            assert variable.startswith("PRESENCE_"), f"{name}: {variable} is read by nothing"
            assert variable.removeprefix("PRESENCE_").lower() in fields, f"{name}: {variable} is not a Settings field"


def test_every_process_reaches_every_backend_by_its_service_name(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in services.items():
        if service.get("image") != PLATFORM_IMAGE:
            continue
        env = service["environment"]
        for variable in ("PRESENCE_REDIS_URL", "PRESENCE_AMQP_URL", "PRESENCE_MONGO_URL", "PRESENCE_MQTT_BROKERS"):
            assert variable in env, f"{name} leaves {variable} at its loopback default"
        s = service_settings(service, monkeypatch)  # validates every value (placeholders, URL schemes, lists)
        assert urlsplit(s.redis_url).hostname == "redis"
        assert urlsplit(s.amqp_url).hostname == "rabbitmq"
        assert urlsplit(s.amqp_url).password == OPERATOR_ENV["RABBITMQ_PASSWORD"]
        assert urlsplit(s.mongo_url).hostname == "mongo"
        assert [urlsplit(url).hostname for url in s.mqtt_brokers] == ["mosquitto"]
        assert s.mqtt_password == OPERATOR_ENV["PRESENCE_MQTT_PASSWORD"]
        assert s.jwt_secret == OPERATOR_ENV["PRESENCE_JWT_SECRET"]
        assert str(s.mosquitto_passwd_file) == PRODUCTION_PASSWORD_FILE


def test_the_browser_dials_the_published_websocket_listener(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    listeners = conf_directives((ROOT / "mosquitto.conf").read_text())
    ws_port = int(listeners["listener"][listeners["protocol"].index("websockets")])
    ports = published(services["mosquitto"])
    for service in instances(services, "api").values():
        urls = service_settings(service, monkeypatch).public_mqtt_ws_urls
        assert len(urls) == 1
        url = urlsplit(urls[0])
        assert url.hostname not in BACKENDS, "the browser cannot resolve compose service names"
        assert ports[url.port or 80] == ws_port


def test_interpolation_requires_the_secrets() -> None:
    text = (ROOT / "compose.yaml").read_text()
    for variable in OPERATOR_ENV:
        with pytest.raises(ValueError, match=variable):
            interpolate(text, {k: v for k, v in OPERATOR_ENV.items() if k != variable})
    assert interpolate("$${a} ${B:-x} ${C}", {"C": "c"}) == "${a} x c"


# --- Mosquitto


def test_brokers_and_platform_share_the_password_file(services: dict[str, dict[str, Any]]) -> None:
    mount = f"mosquitto-auth:{Path(PRODUCTION_PASSWORD_FILE).parent}"
    for name in ("mosquitto", "mqtt-auth", *instances(services, "api")):
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


# --- Dockerfile


def dockerfile_copies() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    return [source for source, _ in re.findall(r"^COPY (?!--)(\S+) (\S+)$", text, re.M)]


def test_dockerfile_installs_every_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [pattern.rstrip("*") for pattern in include]
    assert {"scheduler", "aggregator", "feed"} <= set(packages)
    for package in packages:
        assert f"COPY {package} ./{package}" in text
    assert "COPY web/ui ./web/ui" in text, "the API serves the pages from web/ui"


def test_what_the_dockerfile_copies_runs_every_process(tmp_path: Path) -> None:
    """The image's /app, rebuilt from the Dockerfile's COPY lines: every entry point imports from it alone."""
    for source in dockerfile_copies():
        target = tmp_path / source
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / source, target)
    modules = ["bridge.__main__", "scheduler.__main__", "aggregator.__main__", "feed.__main__", "api.main", "core.cli"]
    probe = (
        "import importlib, pathlib, sys\n"
        f"root = pathlib.Path({str(tmp_path)!r})\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert root in pathlib.Path(module.__file__).parents, (name, module.__file__)\n"
        "from api.routes import pages\n"
        "assert (pages.WEB / 'ui' / 'dashboard.html').is_file(), pages.WEB\n"
        "from importlib import resources\n"
        "assert resources.files('core.lua').joinpath('heartbeat_batch.lua').is_file()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")} | {"PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
