"""deploy/compose.yaml: the Compose Specification schema, `docker compose config`
where the plugin exists, and the stack's own rules (health checks, scaling,
secrets, ports, scrape targets)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed: pip install 'quakescan[test]'")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SCHEMA = Path(__file__).parent / "compose_spec.json"
QUAKESCAN_SERVICES = {"worker": 9101, "worker-gpu": 9101, "feeder": 9102, "sink": 9103}

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ is a literal $.
_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _services() -> dict:
    return _compose()["services"]


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, enough for this file (raises on a missing required var)."""

    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op in (":-", "-"):
            return value if value not in (None, "") else arg
        if op in (":?", "?"):
            if value in (None, ""):
                raise KeyError(f"required variable {name} is not set: {arg}")
            return value
        return value or ""

    return _VAR.sub(sub, text).replace("$$", "$")


def test_compose_file_matches_compose_spec_schema():
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    schema = json.loads(SCHEMA.read_text())
    text = _interpolate(COMPOSE.read_text(), {"REDIS_PASSWORD": "x", "GRAFANA_ADMIN_PASSWORD": "y"})
    doc = yaml.safe_load(text)
    # Top-level `name` (the project name) joined the specification after this
    # schema was published; check it by the specification's own rule instead.
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", doc.pop("name"))
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(doc),
        key=lambda e: list(e.absolute_path),
    )
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_check_rejects_a_broken_file():
    """The vendored schema really constrains services (not a permissive stub)."""
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema")
    schema = json.loads(SCHEMA.read_text())
    broken = {"services": {"worker": {"image": "x", "restart_policy": "always"}}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))
    broken = {"services": {"worker": {"image": "x", "healthcheck": {"interval": 30}}}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_docker_compose_config(tmp_path):
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not installed: `docker compose config` not run")
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip(
            "the Docker Compose v2 plugin is missing "
            f"({(probe.stderr or probe.stdout).strip().splitlines()[0]}): "
            "`docker compose config` not run"
        )
    env = {
        **os.environ,
        "REDIS_PASSWORD": "test-password",
        "GRAFANA_ADMIN_PASSWORD": "test-password",
    }
    for profile in ([], ["--profile", "gpu"]):
        proc = subprocess.run(
            [docker, "compose", "-f", str(COMPOSE), *profile, "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr


def test_required_variables_are_in_the_env_example():
    """Every ${VAR} without a default is listed in deploy/config/compose.env.example."""
    example = (DEPLOY / "config" / "compose.env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", example, flags=re.MULTILINE))
    used = _VAR.findall(COMPOSE.read_text())
    required = {name for name, op, _ in used if op in ("", ":?", "?")}
    assert required == {"REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    assert required <= listed
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        _interpolate(COMPOSE.read_text(), {"GRAFANA_ADMIN_PASSWORD": "y"})


def test_every_service_has_a_health_check():
    for name, svc in _services().items():
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), name


def test_quakescan_health_checks_probe_the_metrics_port():
    services = _services()
    assert set(QUAKESCAN_SERVICES) <= set(services)
    for name, port in QUAKESCAN_SERVICES.items():
        svc = services[name]
        command = [str(x) for x in svc["command"]]
        assert command[command.index("--metrics-port") + 1] == str(port), name
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and test[-2:] == ["/usr/local/bin/quakescan-healthcheck", str(port)]


def test_workers_are_scalable():
    worker = _services()["worker"]
    assert "container_name" not in worker, "a fixed container_name prevents --scale"
    assert "ports" not in worker, "published ports collide when scaled"
    assert worker["command"][0] == "worker"
    assert "stop_grace_period" in worker


def test_redis_requires_a_password_and_keeps_data():
    redis = _services()["redis"]
    command = " ".join(redis["command"])
    assert "--requirepass" in command and "$$REDIS_PASSWORD" in command
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert "ports" not in redis, "Redis must not be published"
    assert any(v.startswith("redis-data:") for v in redis["volumes"])


def test_published_ports_bind_to_loopback():
    for name, svc in _services().items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def test_quakescan_services_get_urls_with_the_password_from_env():
    for name in QUAKESCAN_SERVICES:
        env = _services()[name]["environment"]
        for var in ("QUAKESCAN_BROKER_URL", "QUAKESCAN_RESULT_BACKEND", "QUAKESCAN_REDIS_URL"):
            assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD[^}]*\}@redis:6379/\d", env[var]), var
        assert env["QUAKESCAN_BROKER_URL"].endswith("/0")
        assert env["QUAKESCAN_RESULT_BACKEND"].endswith("/1")


def test_bind_mounts_exist_and_named_volumes_are_declared():
    compose = _compose()
    declared = set(compose.get("volumes", {}))
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} not declared"


def test_feeder_replays_the_sample_and_sink_writes_to_a_volume():
    services = _services()
    feeder, sink = services["feeder"], services["sink"]
    assert "./config/stations.replay.toml:/etc/quakescan/stations.toml:ro" in feeder["volumes"]
    assert any(v.startswith("spool:/var/lib/quakescan/spool") for v in feeder["volumes"])
    out_dir = sink["command"][sink["command"].index("--out-dir") + 1]
    assert f"catalogs:{out_dir}" in sink["volumes"]


def test_build_uses_the_repo_root_and_existing_dockerfiles():
    for name in ("worker", "worker-gpu", "feeder", "sink"):
        build = _services()[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT, name
        assert (context / build["dockerfile"]).is_file(), name


def test_gpu_worker_is_opt_in_and_reserves_a_gpu():
    gpu = _services()["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["build"]["dockerfile"].endswith("Dockerfile.gpu")


def test_prometheus_scrapes_every_quakescan_service():
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = set()
    for sc in prom["scrape_configs"]:
        for static in sc.get("static_configs", []):
            targets.update(static["targets"])
        for dns in sc.get("dns_sd_configs", []):
            targets.update(f"{n}:{dns['port']}" for n in dns["names"])
    for name, port in QUAKESCAN_SERVICES.items():
        assert f"{name}:{port}" in targets, f"{name} is not scraped"


def test_prometheus_and_grafana_mount_the_shipped_configs():
    services = _services()
    prom_mounts = services["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom_mounts
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prom_mounts
    grafana = services["grafana"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./grafana/dashboards:/etc/grafana/dashboards:ro" in grafana["volumes"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "quakescan.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()
