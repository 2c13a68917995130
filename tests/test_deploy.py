"""deploy/ is consistent with the code it deploys. There is no container engine here, so what can
be checked without one is: the compose file, Prometheus config, alert rules and Grafana dashboard
agree with each other and with the metrics the gateway exports (``gateway.core.metrics.Metrics``);
the Redis command line gives a Redis the gateway's own start-up check accepts; stop timeouts
outlast the worker's graceful stop; the example config loads; and constraints.txt pins every
package an install pulls in."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import shutil
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from prometheus_client.metrics import MetricWrapperBase
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config_loading import load_config
from gateway.core.config import METRICS_PORT_ENV
from gateway.core.metrics import HOUSEKEEPING_TASKS, INBOUND_OUTCOMES, OCS_ENDPOINTS, SEND_OUTCOMES, Metrics
from gateway.edge.app import _stop_listeners
from gateway.store.embedded_redis import find_redis_server
from gateway.store.redis_check import assess, read_settings
from tests.support.tools import require_tool
from workers.process import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


# -- helpers -------------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _compose() -> dict[str, Any]:
    data = _yaml(DEPLOY / "docker-compose.yml")
    assert isinstance(data, dict)
    return data


def _prometheus_jobs() -> dict[str, dict[str, Any]]:
    config = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    return {job["job_name"]: job for job in config["scrape_configs"]}


def _seconds(duration: str | int) -> float:
    """A compose (``30s``, ``1m30s``) or systemd (``30``, ``30s``) duration in seconds."""
    if isinstance(duration, int):
        return float(duration)
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s?)?", duration.strip())
    assert parts and duration.strip(), f"unreadable duration {duration!r}"
    return float(int(parts.group(1) or 0) * 60 + int(parts.group(2) or 0))


class _Known:
    """The metric names and labels one ``Metrics`` registers, as Prometheus will see them."""

    def __init__(self) -> None:
        self.labels: dict[str, tuple[str, ...]] = {}  # family name → label names
        self.series: dict[str, str] = {}  # exposed series name → family name
        for metric in vars(Metrics()).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            # prometheus_client keeps these on the wrapper only (no public accessor).
            family, kind, labels = metric._name, metric._type, tuple(metric._labelnames)
            self.labels[family] = labels
            suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
            for suffix in suffixes.get(kind, ("",)):
                self.series[family + suffix] = family
        #: Label values the code fixes, so a misspelt outcome in a query would never match.
        self.values: dict[tuple[str, str], tuple[str, ...]] = {
            ("ocsgw_inbound_requests", "outcome"): INBOUND_OUTCOMES,
            ("ocsgw_platform_sends", "outcome"): SEND_OUTCOMES,
            ("ocsgw_ocs_requests", "endpoint"): OCS_ENDPOINTS,
            ("ocsgw_housekeeping_ticks", "task"): HOUSEKEEPING_TASKS,
            ("ocsgw_housekeeping_errors", "task"): HOUSEKEEPING_TASKS,
        }

    def problems(self, expr: str) -> list[str]:
        """What in ``expr`` names a metric, label or label value the gateway does not export."""
        found: list[str] = []
        families: list[str] = []
        for name, matchers in re.findall(r"\b((?:ocsgw_|up\b)[A-Za-z0-9_]*)\s*(\{[^}]*\})?", expr):
            if name == "up":
                continue  # Prometheus's own per-target series
            family = self.series.get(name)
            if family is None:
                found.append(f"unknown metric {name}")
                continue
            families.append(family)
            for label, _op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers or ""):
                # Prometheus adds job and instance to every scraped series.
                if label not in self.labels[family] + ("job", "instance") + (("le",) if name.endswith("_bucket") else ()):
                    found.append(f"{name} has no label {label}")
                allowed = self.values.get((family, label))
                literals = [v for v in value.split("|") if re.fullmatch(r"[A-Za-z0-9_]+", v)]
                if allowed is not None:
                    found += [f"{name}{{{label}}} is never {v!r}" for v in literals if v not in allowed]
        grouping = {"le", "instance", "job"}.union(*(self.labels[f] for f in families))
        for listed in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            found += [f"grouping by unknown label {g}" for g in re.split(r"\s*,\s*", listed.strip()) if g and g not in grouping]
        return found


@pytest.fixture(scope="module")
def known() -> _Known:
    return _Known()


def _alert_rules() -> list[dict[str, Any]]:
    data = _yaml(DEPLOY / "prometheus" / "alerts.yml")
    return [rule for group in data["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    data = json.loads((DEPLOY / "grafana" / "ocs-gateway.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


# -- compose, Prometheus, health checks ----------------------------------------------------


def test_compose_runs_web_and_worker_from_one_image_with_the_mounted_config() -> None:
    services = _compose()["services"]
    for name, command in (("web", ["web"]), ("worker", ["worker"])):
        service = services[name]
        assert service["command"] == command
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).exists()
        env = service["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:"), "REDIS_URL must name the compose Redis"
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert env["OCS_GATEWAY_CONFIG"] in mounts, "the config path must be the mounted file"
        assert mounts[env["OCS_GATEWAY_CONFIG"]] == "../gateway.yaml"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    # The mounted file is made from the example, as the header says.
    assert "cp deploy/gateway.example.yaml gateway.yaml" in (DEPLOY / "docker-compose.yml").read_text()
    assert (DEPLOY / "gateway.example.yaml").exists()
    assert services["web"]["image"] == services["worker"]["image"]


def test_prometheus_scrapes_every_web_and_worker_replica_on_their_ports() -> None:
    services = _compose()["services"]
    jobs = _prometheus_jobs()
    web_port = int(services["web"]["environment"]["PORT"])
    worker_port = int(services["worker"]["environment"][METRICS_PORT_ENV])
    for job, service, port in (("ocs-gateway-web", "web", web_port), ("ocs-gateway-worker", "worker", worker_port)):
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["type"] == "A", "type A returns one address per replica"
        assert sd["names"] == [service] and service in services
        assert sd["port"] == port
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"
    assert services["web"]["ports"] == [f"{web_port}:{web_port}"]
    # The rules Prometheus loads are the file compose mounts.
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"] if v.startswith("./"))
    assert mounts["./prometheus/alerts.yml"] in _yaml(DEPLOY / "prometheus" / "prometheus.yml")["rule_files"]


def test_healthchecks_probe_web_readiness_and_worker_liveness_on_the_right_ports() -> None:
    services = _compose()["services"]
    web_probe = " ".join(services["web"]["healthcheck"]["test"])
    worker_probe = " ".join(services["worker"]["healthcheck"]["test"])
    assert f"127.0.0.1:{services['web']['environment']['PORT']}/readyz" in web_probe
    assert f"127.0.0.1:{services['worker']['environment'][METRICS_PORT_ENV]}/livez" in worker_probe
    # python is in the image (python:3.11-slim has no curl); urlopen fails on a 503.
    for probe in (web_probe, worker_probe):
        assert probe.startswith("CMD python -c import urllib.request")


async def test_compose_redis_command_gives_a_redis_the_gateways_check_calls_durable(tmp_path: Path) -> None:
    command = _compose()["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Popen returns once the process is forked; the test waits on Redis with await, not on it.
    server = subprocess.Popen(  # noqa: ASYNC220
        [find_redis_server(), *command[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = aioredis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                await client.ping()
                break
            except (OSError, RedisConnectionError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                await asyncio.sleep(0.05)
        verdict = assess(await read_settings(client), require_durable=True)
    finally:
        await client.aclose()
        server.terminate()
        server.wait(10)
    assert verdict.refusals == () and verdict.warnings == ()
    assert verdict.durable_ack
    assert verdict.settings is not None and verdict.settings.maxmemory_policy == "noeviction"


def test_stop_timeouts_outlast_the_workers_graceful_stop() -> None:
    # WorkerProcess.stop waits up to timeout_ms for Dramatiq's consumers, then as long again for
    # the turn runner to hand its conversations back.
    timeout_ms = inspect.signature(WorkerProcess.stop).parameters["timeout_ms"].default
    worst_s = 2 * timeout_ms / 1000
    services = _compose()["services"]
    assert _seconds(services["worker"]["stop_grace_period"]) > worst_s
    # The web process lets its listeners finish the event in hand (gateway/edge/app.py).
    listeners_s = inspect.signature(_stop_listeners).parameters["grace_s"].default
    assert _seconds(services["web"]["stop_grace_period"]) > listeners_s
    for unit in ("ocs-gateway-worker@.service", "ocs-gateway-web.service"):
        text = (DEPLOY / "systemd" / unit).read_text()
        (value,) = re.findall(r"^TimeoutStopSec=(\S+)$", text, re.MULTILINE)
        assert _seconds(value) > (worst_s if "worker" in unit else listeners_s), unit
        assert re.search(r"^KillSignal=SIGTERM$", text, re.MULTILINE), unit


def test_systemd_worker_instances_each_serve_metrics_on_their_own_port() -> None:
    text = (DEPLOY / "systemd" / "ocs-gateway-worker@.service").read_text()
    assert re.search(rf"^Environment={METRICS_PORT_ENV}=%i$", text, re.MULTILINE)


# -- alert rules and dashboard -------------------------------------------------------------


def test_alert_rules_use_only_exported_metrics_and_explain_themselves(known: _Known) -> None:
    rules = _alert_rules()
    for rule in rules:
        assert known.problems(rule["expr"]) == [], rule["alert"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
    exprs = " ".join(rule["expr"] for rule in rules)
    # The alerts issue 9 asks for: stuck turns, dead letters, reply delay, budget, webhook 5xx,
    # workers down, housekeeping errors.
    for metric in ("ocsgw_oldest_waiting_turn_age_seconds", "ocsgw_dead_letters", "ocsgw_reply_delay_seconds_bucket",
                   "ocsgw_ocs_budget_used", "ocsgw_ocs_budget_limit", 'outcome=~"unavailable', "ocsgw_workers_alive",
                   "up{", "ocsgw_housekeeping_errors_total"):
        assert metric in exprs, metric


def test_metric_check_rejects_unknown_names_labels_and_outcomes(known: _Known) -> None:
    # The check the two tests above rely on can fail.
    assert known.problems('sum by (channel) (rate(ocsgw_inbound_requests_total{outcome="unavailable"}[5m]))') == []
    assert known.problems("ocsgw_no_such_thing") == ["unknown metric ocsgw_no_such_thing"]
    assert known.problems('ocsgw_inbound_requests_total{outcome="503"}') == [
        "ocsgw_inbound_requests_total{outcome} is never '503'"]
    assert known.problems('ocsgw_dead_letters{bot="x"}') == ["ocsgw_dead_letters has no label bot"]
    assert known.problems("sum by (user) (ocsgw_dead_letters)") == ["grouping by unknown label user"]


_NO_PROMTOOL = "promtool not installed (Debian: apt-get install prometheus; scripts/ensure_test_tools)"


def test_promtool_accepts_the_rules_and_the_prometheus_config(tmp_path: Path) -> None:
    promtool = require_tool("promtool", _NO_PROMTOOL)
    rules = subprocess.run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                           capture_output=True, text=True, check=False)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    # prometheus.yml names the rules by their path in the container: check it against a copy.
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/alerts.yml", "alerts.yml"))
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    checked = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alerts_fire_on_the_series_their_unit_tests_feed_them() -> None:
    promtool = require_tool("promtool", _NO_PROMTOOL)
    # alerts.test.yml feeds each rule series (stuck turn, growing dead letters, budget, 503s…)
    # and states when it must and must not fire; promtool evaluates the real rules on them.
    result = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=DEPLOY / "prometheus",
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_sees_it_fire(known: _Known) -> None:
    tests = _yaml(DEPLOY / "prometheus" / "alerts.test.yml")["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert {rule["alert"] for rule in _alert_rules()} - fired == set()
    for test in tests:
        for series in test["input_series"]:
            assert not [p for p in known.problems(series["series"]) if "unknown metric" in p], series


def test_dashboard_queries_use_only_exported_metrics_through_the_datasource_variable(known: _Known) -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    exprs: list[str] = []
    ids: list[int] = []
    for panel in _panels(dashboard):
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert known.problems(target["expr"]) == [], (panel["title"], target["expr"])
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            exprs.append(target["expr"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for variable in ("channel", "bot"):
        assert known.problems(variables[variable]["query"]["query"]) == []
    shown = " ".join(exprs)
    for family in ("ocsgw_inbound_requests", "ocsgw_inbound_ack_seconds", "ocsgw_reply_delay_seconds",
                   "ocsgw_turn_seconds", "ocsgw_turns_in_flight", "ocsgw_oldest_waiting_turn_age_seconds",
                   "ocsgw_inbox_depth", "ocsgw_dead_letters", "ocsgw_ocs_requests", "ocsgw_ocs_budget_used",
                   "ocsgw_ocs_budget_limit", "ocsgw_platform_sends", "ocsgw_pacing_waits", "ocsgw_workers_alive",
                   "ocsgw_housekeeping_errors"):
        assert family in shown, f"no panel shows {family}"


def test_grafana_provisioning_points_at_the_mounted_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    assert grafana["profiles"] == ["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "ocs-gateway.yml")["providers"][0]
    assert mounts["./grafana/ocs-gateway.json"].startswith(provider["options"]["path"] + "/")
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (source,) = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"


# -- the example configuration -------------------------------------------------------------


def _example_env() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (DEPLOY / "example.env").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {name: value for name, value in pairs}


def test_example_config_loads_with_the_variables_example_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = "\n".join(line.split("#", 1)[0] for line in (DEPLOY / "gateway.example.yaml").read_text().splitlines())
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", settings))
    env = _example_env()
    # Compose sets REDIS_URL itself; everything else the example reads, example.env lists.
    assert referenced - {"REDIS_URL"} == set(env)
    fillers = {"SUPPORT_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "TELEGRAM_BOT_TOKEN": "123456:ABC-DEF"}
    for name in referenced:
        monkeypatch.setenv(name, env.get(name) or fillers.get(name, f"test-{name.lower()}"))
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    monkeypatch.delenv(METRICS_PORT_ENV, raising=False)
    config = load_config(DEPLOY / "gateway.example.yaml")
    assert config is not None
    assert {channel.type for channel in config.channels.values()} == {"webhook", "telegram", "slack"}
    assert config.bots["clinic"].auth == "oauth"
    assert config.admin_token is not None and config.require_durable_redis
    # The same port in the file, in compose's environment and in Prometheus's worker job.
    port = int(_compose()["services"]["worker"]["environment"][METRICS_PORT_ENV])
    assert config.worker.metrics_port == port
    assert _prometheus_jobs()["ocs-gateway-worker"]["dns_sd_configs"][0]["port"] == port


# -- reproducible installs -----------------------------------------------------------------


def _pins() -> tuple[dict[str, str], dict[str, str]]:
    """constraints.txt as (runtime pins, test-extra pins), by canonical name."""
    runtime: dict[str, str] = {}
    test: dict[str, str] = {}
    section = runtime
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith("# test extra"):
            section = test
        if not line.strip() or line.startswith("#"):
            continue
        name, version = line.split("==")
        section[canonicalize_name(name)] = version
    return runtime, test


def _closure(requirements: list[Requirement], extra: str) -> set[str]:
    """Every distribution ``requirements`` pull in here, by canonical name (markers evaluated for
    this interpreter and ``extra``; the packages' own metadata gives the transitive ones)."""
    found: dict[str, set[str]] = {}  # name → the extras asked of it
    todo = [req for req in requirements if req.marker is None or req.marker.evaluate({"extra": extra})]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in found and req.extras <= found[name]:
            continue
        found.setdefault(name, set()).update(req.extras)
        for raw in metadata.requires(req.name) or []:
            sub = Requirement(raw)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *found[name])):
                todo.append(sub)
    return set(found)


def test_constraints_pin_everything_an_install_pulls_in_within_pyprojects_ranges() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime_reqs = [Requirement(r) for r in project["dependencies"]]
    test_reqs = [Requirement(r) for r in project["optional-dependencies"]["test"]]
    runtime, test = _pins()
    for name in _closure(runtime_reqs, ""):
        assert name in runtime, f"{name} (installed by `pip install .`) is not pinned in the runtime section"
    for name in _closure(test_reqs, "test"):
        assert name in runtime or name in test, f"{name} (test extra) is not pinned"
    for req in runtime_reqs + test_reqs:
        pinned = runtime.get(canonicalize_name(req.name)) or test[canonicalize_name(req.name)]
        assert req.specifier.contains(pinned, prereleases=True), f"{req.name}=={pinned} is outside {req.specifier}"
    assert not set(runtime) & set(test)


def test_constraints_were_resolved_for_the_python_the_images_and_hosts_use() -> None:
    header = (ROOT / "constraints.txt").read_text().splitlines()[0]
    resolved = re.search(r"Python (3\.\d+)\.", header)
    assert resolved, header
    assert re.search(rf"^FROM python:{re.escape(resolved.group(1))}-slim$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert (ROOT / ".python-version").read_text().strip() == resolved.group(1)
    requires_python = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert requires_python.contains(f"{resolved.group(1)}.0")


def test_every_install_recipe_installs_under_the_constraints() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^COPY .*\bconstraints\.txt\b", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN pip install -c constraints\.txt \.", dockerfile, re.MULTILINE)
    # Procfile hosts' Python buildpacks run `pip install -r requirements.txt`.
    recipe = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert recipe == ["-c constraints.txt", "."]


def test_files_that_are_not_python_are_declared_as_package_data() -> None:
    # The image and Procfile hosts install the project as a wheel (not editable): setuptools puts
    # only .py files in it unless package-data names the rest (templates, Lua, static files).
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    package_data: dict[str, list[str]] = tool.get("package-data", {})
    missing: list[str] = []
    for top in ("gateway", "adapters", "workers"):
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(ROOT)
            declared = False
            for package, patterns in package_data.items():
                base = Path(*package.split(".")) if package != "*" else relative.parent
                if relative.is_relative_to(base):
                    inner = relative.relative_to(base).as_posix()
                    declared |= any(fnmatch(inner, pattern) for pattern in patterns)
            if not declared:
                missing.append(str(relative))
    assert missing == [], "add these to [tool.setuptools.package-data] in pyproject.toml"
