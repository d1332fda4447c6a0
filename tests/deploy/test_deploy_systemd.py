"""deploy/systemd: unit structure, restart/stop/hardening settings, and
`systemd-analyze verify` where systemd is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNITS = {
    "quakescan-worker@.service": ("worker", "9101"),
    "quakescan-feed@.service": ("feed", "9102"),
    "quakescan-sink.service": ("sink", "9103"),
}
EXEC = "/opt/quakescan/venv/bin/quakescan"


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """{section: [(key, value), ...]}, keeping repeated keys (Environment=, EnvironmentFile=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}:{n}: key outside a section"
        assert "=" in line, f"{path.name}:{n}: not KEY=VALUE: {line!r}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= set {len(found)} times"
    return found[0]


def environment(unit: dict) -> dict[str, str]:
    env = {}
    for entry in values(unit, "Service", "Environment"):
        name, _, value = entry.partition("=")
        env[name] = value
    return env


@pytest.mark.parametrize("name", UNITS)
def test_unit_structure_and_command(name):
    unit = parse_unit(SYSTEMD / name)
    assert {"Unit", "Service", "Install"} <= set(unit)
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    assert one(unit, "Unit", "Description")
    subcommand, port = UNITS[name]
    exec_start = one(unit, "Service", "ExecStart").split()
    assert exec_start[:2] == [EXEC, subcommand]
    assert exec_start[exec_start.index("--metrics-port") + 1] == "${QUAKESCAN_METRICS_PORT}"
    assert environment(unit)["QUAKESCAN_METRICS_PORT"] == port


@pytest.mark.parametrize("name", UNITS)
def test_unit_restarts_and_stops_gracefully(name):
    unit = parse_unit(SYSTEMD / name)
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "RestartSec")
    assert int(one(unit, "Unit", "StartLimitIntervalSec")) >= 60
    assert 1 < int(one(unit, "Unit", "StartLimitBurst")) <= 10
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    # only the main process gets SIGTERM; Celery's pool finishes its chunk
    assert one(unit, "Service", "KillMode") == "mixed"
    minimum = 130 if name.startswith("quakescan-worker") else 30
    assert int(one(unit, "Service", "TimeoutStopSec")) >= minimum


@pytest.mark.parametrize("name", UNITS)
def test_unit_secrets_user_and_hardening(name):
    unit = parse_unit(SYSTEMD / name)
    assert values(unit, "Service", "EnvironmentFile")[0] == "/etc/quakescan/quakescan.env"
    assert one(unit, "Service", "User") == "quakescan"
    assert one(unit, "Service", "Group") == "quakescan"
    for key, want in (
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ):
        assert one(unit, "Service", key) == want, key
    env = environment(unit)
    assert not any("PASSWORD" in k or "redis://" in v for k, v in env.items()), (
        "secrets belong in the EnvironmentFile, not the unit"
    )


def test_writable_paths_are_the_spool_and_catalogs():
    feed = parse_unit(SYSTEMD / "quakescan-feed@.service")
    spool = environment(feed)["QUAKESCAN_SPOOL_DIR"]
    assert spool == "/var/lib/quakescan/spool/%i"
    assert one(feed, "Service", "ReadWritePaths") == spool
    assert one(feed, "Service", "StateDirectory") == "quakescan/spool/%i"
    assert "--config /etc/quakescan/%i.toml" in one(feed, "Service", "ExecStart")

    sink = parse_unit(SYSTEMD / "quakescan-sink.service")
    out_dir = "/var/lib/quakescan/catalogs"
    assert f"--out-dir {out_dir}" in one(sink, "Service", "ExecStart")
    assert one(sink, "Service", "ReadWritePaths") == out_dir
    assert one(sink, "Service", "StateDirectory") == "quakescan/catalogs"


def test_worker_instances_get_their_own_metrics_dir_and_settings():
    worker = parse_unit(SYSTEMD / "quakescan-worker@.service")
    assert environment(worker)["PROMETHEUS_MULTIPROC_DIR"] == "/run/quakescan-worker-%i"
    assert one(worker, "Service", "RuntimeDirectory") == "quakescan-worker-%i"
    assert "-/etc/quakescan/worker-%i.env" in values(worker, "Service", "EnvironmentFile")
    assert "PrivateDevices" not in dict(worker["Service"]), "GPU workers need /dev/nvidia*"


def test_sysusers_creates_the_service_user():
    lines = [
        line
        for line in (SYSTEMD / "quakescan.sysusers.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 1
    assert re.match(r'u quakescan - "[^"]+" /var/lib/quakescan /usr/sbin/nologin$', lines[0])


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not found (`apt-get install -y systemd`): units not verified")
    # verify insists that ExecStart's program exists: stand in for the venv's quakescan
    stub = tmp_path / "bin" / "quakescan"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    paths = []
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        assert EXEC in text
        (tmp_path / name).write_text(text.replace(EXEC, str(stub)))
        paths.append(str(tmp_path / name))
    proc = subprocess.run(
        [tool, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=60
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # unknown keys and bad values are only warnings for verify: fail on them here
    assert not re.search(r"Unknown (key|section)|Failed to parse|Invalid|ignoring", output), output
