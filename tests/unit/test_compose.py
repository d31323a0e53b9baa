"""docker-compose.yml and its provisioning files, checked without a Docker engine: the
services and their wiring, pinned images, health checks, volumes, every SENSORSTREAM_*
variable a documented setting with a valid value, the files it mounts, Prometheus
scraping both workers, and a Grafana dashboard that queries only metrics the code exports.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from app import settings as settings_mod

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
README = (ROOT / "README.md").read_text()
WORKER_COMMAND = shlex.split((ROOT / "Procfile").read_text().split("worker:", 1)[1]
                             .splitlines()[0])

#: Long-running services allowed without a health check, and why.
NO_HEALTHCHECK = {"simulator": "a demo load generator: nothing depends on it, and Docker "
                               "restarts it when it exits"}


def command(service: dict[str, Any]) -> list[str]:
    found = service.get("command", [])
    return shlex.split(found) if isinstance(found, str) else [str(part) for part in found]


def environment(service: dict[str, Any]) -> dict[str, str]:
    found = service.get("environment") or {}
    if isinstance(found, list):
        return dict(item.split("=", 1) for item in found)
    return {key: "" if value is None else str(value) for key, value in found.items()}


def by_image(prefix: str) -> list[str]:
    return [name for name, s in SERVICES.items() if str(s.get("image", "")).startswith(prefix)]


def workers() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in SERVICES.items() if command(s) == WORKER_COMMAND}


def long_running(name: str) -> bool:
    return str(SERVICES[name].get("restart", "no")) != "no"


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def literal(value: str) -> str | None:
    """The value Compose passes with no variable set (``${X:-default}`` -> default, ``$$``
    -> ``$``); None when it depends on a variable without a default."""
    if any(m.group("default") is None for m in _INTERPOLATION.finditer(value)):
        return None
    return _INTERPOLATION.sub(lambda m: m.group("default"), value).replace("$$", "$")


def sensorstream_variables(node: Any, found: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every ``SENSORSTREAM_*`` variable set anywhere in the document (environment maps and
    lists, extension fields), with the values it is given."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.startswith(settings_mod.PREFIX):
                found.setdefault(key, []).append("" if value is None else str(value))
            sensorstream_variables(value, found)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str) and item.startswith(settings_mod.PREFIX) and "=" in item:
                key, value = item.split("=", 1)
                found.setdefault(key, []).append(value)
            sensorstream_variables(item, found)
    return found


def test_the_services_exist():
    assert by_image("apache/kafka:") == ["kafka"]
    assert by_image("timescale/timescaledb:") == ["timescaledb"]
    assert by_image("minio/minio:") == ["minio"]
    [bucket] = by_image("minio/mc:")
    assert "mb" in " ".join(command(SERVICES[bucket])) and "sensorstream-lake" in " ".join(
        command(SERVICES[bucket]))
    assert by_image("prom/prometheus:") == ["prometheus"]
    assert by_image("grafana/grafana:") == ["grafana"]
    assert [name for name, s in SERVICES.items()
            if command(s)[:1] == ["sensorstream-simulate"]] == ["simulator"]


def test_two_workers_in_one_consumer_group():
    found = workers()
    assert len(found) == 2, sorted(found)
    envs = [environment(s) for s in found.values()]
    assert len({env["SENSORSTREAM_APP_ID"] for env in envs}) == 1
    assert len({env["SENSORSTREAM_CANONICAL_URL"] for env in envs}) == 2
    for name, service in found.items():
        env = environment(service)
        assert env["SENSORSTREAM_WEB_HOST"] == "0.0.0.0"
        assert env["SENSORSTREAM_CANONICAL_URL"] == (
            f"http://{service['hostname']}:{env['SENSORSTREAM_WEB_PORT']}"), name
        assert service.get("build") == "." and (ROOT / "Dockerfile").exists()
        data = env["SENSORSTREAM_DATA_DIR"]
        assert any(str(v).endswith(f":{data}") and not str(v).startswith((".", "/"))
                   for v in service["volumes"]), f"{name}: {data} is not on a named volume"
        # Both sinks: PostgreSQL (TimescaleDB) and the lake in MinIO's bucket.
        loaded = settings_mod.load({k: literal(v) for k, v in env.items()
                                    if k.startswith(settings_mod.PREFIX)})
        assert loaded.enabled_sinks == ("postgres", "lake")
        assert loaded.pg_dsn.split("@", 1)[1].startswith("timescaledb:5432/")
        assert loaded.s3_endpoint == "http://minio:9000"
        assert loaded.lake_url.startswith(f"s3://{loaded.s3_bucket}/")
        assert env["AWS_ACCESS_KEY_ID"] == environment(SERVICES["minio"])["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == environment(
            SERVICES["minio"])["MINIO_ROOT_PASSWORD"]
        assert loaded.bootstrap == "kafka:9092"


def test_the_workers_wait_for_what_they_need():
    for name, service in workers().items():
        assert service["depends_on"] == {
            "kafka": {"condition": "service_healthy"},
            "timescaledb": {"condition": "service_healthy"},
            "minio": {"condition": "service_healthy"},
            "create-bucket": {"condition": "service_completed_successfully"},
        }, name


def test_every_dependency_has_a_condition_it_can_meet():
    for name, service in SERVICES.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for target, how in depends.items():
            condition = how["condition"]
            assert target in SERVICES, (name, target)
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[target], (name, target)
            elif condition == "service_completed_successfully":
                assert not long_running(target), (name, target)
            else:
                assert condition == "service_started", (name, condition)


def test_every_image_is_pinned():
    for name, service in SERVICES.items():
        image = service["image"]
        if "@sha256:" in image:
            continue
        _repository, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag and tag not in ("", "latest"), f"{name}: {image}"


def test_every_long_running_service_has_a_healthcheck():
    running = [name for name in SERVICES if long_running(name)]
    assert {"kafka", "timescaledb", "minio", "prometheus", "grafana", *workers()} <= set(running)
    for name in running:
        if name in NO_HEALTHCHECK:
            continue
        check = SERVICES[name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), name
    for name, service in workers().items():
        probe = " ".join(service["healthcheck"]["test"])
        port = environment(service)["SENSORSTREAM_WEB_PORT"]
        assert re.search(rf":{port}/(health|ready)\b", probe), (name, probe)


def test_volumes_are_declared_and_data_is_kept():
    declared = set(COMPOSE["volumes"])
    used = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared, declared - used
    for name in ("kafka", "timescaledb", "minio", "prometheus", "grafana", *workers()):
        assert any(not str(v).startswith((".", "/")) for v in SERVICES[name]["volumes"]), name


def test_mounted_files_exist():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source}"
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file(), name


def test_every_sensorstream_variable_is_a_documented_setting_with_a_valid_value():
    found = sensorstream_variables(COMPOSE, {})
    # A regular expression over the text as well: nothing hides in a command or a string.
    assert set(re.findall(r"\bSENSORSTREAM_[A-Z0-9_]+\b", COMPOSE_TEXT)) == set(found)
    assert {"SENSORSTREAM_BROKER", "SENSORSTREAM_PG_DSN", "SENSORSTREAM_S3_ENDPOINT",
            "SENSORSTREAM_LAKE_URL", "SENSORSTREAM_S3_BUCKET"} <= set(found)
    for name, values in found.items():
        spec = settings_mod.SPEC_BY_ENV.get(name)
        assert spec is not None, f"{name} is not a setting (app/settings.py)"
        assert f"`{name}`" in README, f"{name} is not in the README"
        for value in values:
            text = literal(value)
            if text is not None:
                spec.parse(text)  # raises ValueError naming the problem


def test_every_service_environment_loads_as_settings():
    """Cross-checks too (e.g. a sink needs its connection): each service starts."""
    for name, service in SERVICES.items():
        env = {k: literal(v) for k, v in environment(service).items()
               if k.startswith(settings_mod.PREFIX)}
        if env:
            try:
                settings_mod.load(env)
            except settings_mod.SettingError as exc:
                raise AssertionError(f"{name}: {exc}") from None


def test_the_simulator_options_exist():
    source = (ROOT / "app" / "simulator.py").read_text()
    options = [part for part in command(SERVICES["simulator"]) if part.startswith("--")]
    assert options
    for option in options:
        assert f'"{option}"' in source, option


def test_prometheus_scrapes_both_workers():
    mounts = [str(v) for v in SERVICES["prometheus"]["volumes"] if str(v).startswith(".")]
    [config_mount] = [m for m in mounts if m.endswith("prometheus.yml:ro")]
    config = yaml.safe_load((ROOT / config_mount.split(":", 1)[0]).read_text())
    assert f"--config.file={config_mount.split(':')[1]}" in command(SERVICES["prometheus"])
    targets = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                targets[target] = job.get("metrics_path", "/metrics")
    for service in workers().values():
        target = f"{service['hostname']}:{environment(service)['SENSORSTREAM_WEB_PORT']}"
        assert targets.get(target) == "/metrics", (target, targets)


# -- Grafana ---------------------------------------------------------------------------

_DEFINITION = re.compile(
    r"\b(?P<kind>Counter|Gauge|Histogram|Summary|BulkHistogram|CounterMetricFamily|"
    r"GaugeMetricFamily|HistogramMetricFamily|SummaryMetricFamily)\(\s*"
    r"\"(?P<name>sensorstream_[a-z0-9_]+)\"")
_SAMPLES = {
    "counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}
_KIND = {"Counter": "counter", "CounterMetricFamily": "counter", "Gauge": "gauge",
         "GaugeMetricFamily": "gauge", "Histogram": "histogram", "BulkHistogram": "histogram",
         "HistogramMetricFamily": "histogram", "Summary": "summary",
         "SummaryMetricFamily": "summary"}
_PACKAGES = ("app", "agents", "tables", "sinks", "web")


def defined_metrics() -> dict[str, str]:
    """``{family name: type}`` of every metric the project's code defines."""
    found: dict[str, str] = {}
    for package in _PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for m in _DEFINITION.finditer(path.read_text()):
                found[m.group("name")] = _KIND[m.group("kind")]
    return found


def exported_names() -> set[str]:
    return {name + suffix for name, kind in defined_metrics().items()
            for suffix in _SAMPLES[kind]}


def test_the_metric_finder_agrees_with_prometheus_client():
    """The modules that import without a Faust app, read from the registry itself."""
    for module in ("app.metrics", "sinks.base", "sinks.lake", "sinks.postgres"):
        importlib.import_module(module)
    registered = {family.name: family.type for family in REGISTRY.collect()
                  if family.name.startswith("sensorstream_")}
    assert len(registered) >= 20, registered
    found = defined_metrics()
    for name, kind in registered.items():
        assert found.get(name) == kind, (name, kind, found.get(name))


def _dashboards() -> list[tuple[Path, dict[str, Any]]]:
    mounts = {str(v).split(":")[1]: ROOT / str(v).split(":")[0]
              for v in SERVICES["grafana"]["volumes"] if str(v).startswith(".")}
    provisioning = mounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "sensorstream.yml").read_text())
    found = []
    for provider in providers["providers"]:
        host_dir = mounts[provider["options"]["path"]]
        for path in sorted(host_dir.glob("*.json")):
            found.append((path, json.loads(path.read_text())))
    assert found, "no dashboard provisioned"
    return found


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def test_grafana_datasource_is_the_compose_prometheus():
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for _path, dashboard in _dashboards():
        for panel in _panels(dashboard):
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}


def test_the_dashboard_queries_only_exported_metrics():
    exported = exported_names()
    wanted = {"sensorstream_readings_in_total", "sensorstream_readings_accepted_total",
              "sensorstream_readings_dead_lettered_total", "sensorstream_readings_late_total",
              "sensorstream_readings_duplicate_total", "sensorstream_consumer_lag",
              "sensorstream_event_to_sink_seconds_bucket", "sensorstream_sink_batch_rows_bucket",
              "sensorstream_sink_write_seconds_bucket", "sensorstream_sink_errors_total",
              "sensorstream_sink_retries_total", "sensorstream_sink_up",
              "sensorstream_sink_paused", "sensorstream_lake_staging_bytes",
              "sensorstream_table_keys", "sensorstream_anomalies_total"}
    used: set[str] = set()
    for path, dashboard in _dashboards():
        assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
        ids = [panel["id"] for panel in _panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in _panels(dashboard):
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
            if panel["type"] == "row":
                continue
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                names = set(re.findall(r"\bsensorstream_[a-z0-9_]+", target["expr"]))
                unknown = names - exported
                assert not unknown, f"{panel['title']!r} queries {sorted(unknown)}"
                used |= names
    assert wanted <= used, sorted(wanted - used)


def test_a_misspelt_metric_would_be_noticed():
    exported = exported_names()
    assert "sensorstream_readings_in_total" in exported
    for wrong in ("sensorstream_readings_in", "sensorstream_readings_inn_total",
                  "sensorstream_sink_up_total", "sensorstream_sink_batch_rows"):
        assert wrong not in exported, wrong


# -- the image -------------------------------------------------------------------------

def test_the_dockerfile_runs_the_procfile_worker_command():
    dockerfile = (ROOT / "Dockerfile").read_text()
    [base] = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    assert re.search(r"^RUN pip install \.", dockerfile, re.MULTILINE)
    [cmd] = re.findall(r"^CMD\s+(\[.*\])\s*$", dockerfile, re.MULTILINE)
    assert json.loads(cmd) == WORKER_COMMAND == ["faust", "-A", "app", "worker", "-l", "info"]


def test_the_readme_tells_how_to_run_it():
    section = README.split("## Production deployment (docker-compose)", 1)[1].split("\n## ")[0]
    assert "docker compose up -d" in section
    for service in ("grafana", "prometheus"):
        for port in SERVICES[service]["ports"]:
            assert f"localhost:{str(port).split(':')[-2]}" in section, port


@pytest.mark.parametrize("value, expected", [
    ("plain", "plain"), ("a${X:-b}c", "abc"), ("${X-d}", "d"), ("$$HOME", "$HOME"),
    ("${NO_DEFAULT}", None)])
def test_literal(value, expected):
    assert literal(value) == expected
