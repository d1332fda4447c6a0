"""The deploy files against the service itself: the stations TOML files load
with serving.config, the replay feed names the shipped sample, every
QUAKESCAN_* variable the deploy files set is one the service reads, and every
`quakescan ...` command line they run parses with the real CLI."""

from __future__ import annotations

import glob
import json
import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed: pip install 'quakescan[test]'")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SAMPLE = ROOT / "detector" / "data" / "sample"
IMAGE_SAMPLE = "/usr/share/quakescan/sample/"
STATIONS_FILES = [
    DEPLOY / "config" / "stations.example.toml",
    DEPLOY / "config" / "stations.replay.toml",
    DEPLOY / "k8s" / "stations.toml",
]
# What each feed type needs in its [[feeds]] table (the schema the feeder reads).
FEED_KEYS = {
    "seedlink": {"server", "streams"},
    "sds": {"root", "stations"},
    "folder": {"path"},
    "replay": {"paths"},
}
# Variables only the systemd units use, to build ExecStart; the service never reads them.
UNIT_ONLY_VARS = {"QUAKESCAN_WORKER_QUEUES", "QUAKESCAN_WORKER_ARGS"}
# Read by the CLI itself (serving/cli.py), not by serving.config.
CLI_VARS = {"QUAKESCAN_LOG_LEVEL"}


@pytest.mark.parametrize("path", STATIONS_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_stations_file_loads_with_the_service_config(path):
    from quakescan.serving.config import load_config

    config = load_config(path, env={})
    assert config.feeds, "no [[feeds]]"
    assert config.stations, "no [[stations]]"
    for feed in config.feeds:
        missing = FEED_KEYS[feed.type] - set(feed.options)
        assert not missing, f"{feed.type} feed lacks {sorted(missing)}"
    for station in config.stations:
        assert re.fullmatch(r"[A-Z0-9]{1,2}\.[A-Z0-9]{1,5}\.[A-Z0-9]{0,2}", station["id"]), station


@pytest.mark.parametrize("path", STATIONS_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_the_feeder_builds_every_feed_of_the_file(path, tmp_path):
    """The real feed constructors accept every option (paths moved to local stand-ins)."""
    from quakescan.serving.config import load_config
    from quakescan.serving.feeds import build_feeds

    for sub in ("sds", "incoming"):
        (tmp_path / sub).mkdir()
    text = (
        path.read_text()
        .replace(IMAGE_SAMPLE, f"{SAMPLE}/")
        .replace('"/data/sds"', f'"{tmp_path / "sds"}"')
        .replace('"/data/incoming"', f'"{tmp_path / "incoming"}"')
        .replace('"/var/lib/quakescan/spool"', f'"{tmp_path / "spool"}"')
    )
    local = tmp_path / "stations.toml"
    local.write_text(text)
    config = load_config(local, env={"QUAKESCAN_SPOOL_DIR": str(tmp_path / "spool")})
    feeds = build_feeds(config)
    assert len(feeds) == len(config.feeds)


def test_stations_example_shows_every_feed_type():
    text = (DEPLOY / "config" / "stations.example.toml").read_text()
    for kind in FEED_KEYS:
        assert re.search(rf'^#?\s*type = "{kind}"', text, flags=re.MULTILINE), kind


def test_stations_loader_rejects_secrets_in_the_file(tmp_path):
    """The example's rule "no URLs in the file" is the loader's rule too."""
    from quakescan.serving.config import ConfigError, load_config

    bad = tmp_path / "stations.toml"
    bad.write_text('[service]\nbroker_url = "redis://:secret@redis:6379/0"\n')
    with pytest.raises(ConfigError, match="broker_url"):
        load_config(bad, env={})


@pytest.mark.parametrize("path", STATIONS_FILES[1:], ids=lambda p: str(p.relative_to(DEPLOY)))
def test_replay_feed_plays_the_whole_shipped_sample(path):
    from obspy import read

    from quakescan.serving.config import load_config

    config = load_config(path, env={})
    replays = [f for f in config.feeds if f.type == "replay"]
    assert len(replays) == len(config.feeds)
    paths = [p for f in replays for p in f.options["paths"]]
    assert all(p.startswith(IMAGE_SAMPLE) for p in paths)
    shipped = sorted(Path(p).name for p in glob.glob(str(SAMPLE / "*.mseed")))
    assert sorted(Path(p).name for p in paths) == shipped
    for feed in replays:
        # one file per feed: a replay runs on the clock of its earliest sample,
        # and the sample files were recorded years apart
        assert len(feed.options["paths"]) == 1
        assert feed.options["speed"] == 1.0
        assert feed.options["loop"] is True and feed.options["shift_to_now"] is True
    # the [[stations]] are exactly the stations in those files
    ids = set()
    for name in shipped:
        for trace in read(str(SAMPLE / name), headonly=True):
            s = trace.stats
            ids.add(f"{s.network}.{s.station}.{s.location}")
    assert {s["id"] for s in config.stations} == ids


# --------------------------------------------------------- environment names
def _deploy_env_names() -> dict[str, str]:
    """{QUAKESCAN_* variable: where} for every variable a deploy file sets for the service."""
    found: dict[str, str] = {}
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        for var in svc.get("environment") or {}:
            found[var] = f"compose.yaml:{name}"
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            pod = ((doc or {}).get("spec", {}).get("template") or {}).get("spec", {})
            for container in pod.get("containers", []):
                for entry in container.get("env", []):
                    found[entry["name"]] = str(path.relative_to(DEPLOY))
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        for m in re.finditer(r"^Environment=(\w+)=", path.read_text(), flags=re.MULTILINE):
            found[m.group(1)] = path.name
    # (compose.env.example holds compose's own interpolation variables, not the service's)
    for path in [DEPLOY / "config" / "quakescan.env.example"]:
        for m in re.finditer(r"^#?(QUAKESCAN_\w+)=", path.read_text(), flags=re.MULTILINE):
            found[m.group(1)] = path.name
    for path in sorted((DEPLOY / "docker").glob("Dockerfile*")):
        if path.suffix == ".dockerignore":
            continue
        for m in re.finditer(r"\b(QUAKESCAN_\w+)=", path.read_text()):
            found[m.group(1)] = path.name
    return {k: v for k, v in found.items() if k.startswith("QUAKESCAN_")}


def test_every_quakescan_variable_is_one_the_service_reads():
    from quakescan.serving import config

    known = set(config._ENV.values()) | CLI_VARS | UNIT_ONLY_VARS
    unknown = {k: v for k, v in _deploy_env_names().items() if k not in known}
    assert unknown == {}, "variables the service does not read"
    for var in UNIT_ONLY_VARS:
        assert var in (DEPLOY / "systemd" / "quakescan-worker@.service").read_text()


def test_deploy_files_set_the_connection_variables():
    names = _deploy_env_names()
    for var in ("QUAKESCAN_BROKER_URL", "QUAKESCAN_RESULT_BACKEND", "QUAKESCAN_REDIS_URL"):
        assert var in names


# ------------------------------------------------------------- command lines
def _command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv after `quakescan`) for every service command in deploy/."""
    lines = []
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        if str(svc.get("image", "")).startswith("${QUAKESCAN"):
            command = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(a)) for a in svc["command"]]
            lines.append((f"compose:{name}", command))
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            pod = ((doc or {}).get("spec", {}).get("template") or {}).get("spec", {})
            for container in pod.get("containers", []):
                if container["image"].startswith("quakescan"):
                    lines.append((f"{path.name}:{container['name']}", list(container["args"])))
    unit_env = {
        "${QUAKESCAN_WORKER_QUEUES}": "detect,batch",
        "${QUAKESCAN_METRICS_PORT}": "9101",
        "$QUAKESCAN_WORKER_ARGS": "--concurrency 2",
        "%i": "stations",
    }
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        exec_start = re.search(r"^ExecStart=(.+)$", path.read_text(), flags=re.MULTILINE)[1]
        for token, value in unit_env.items():
            exec_start = exec_start.replace(token, value)
        argv = shlex.split(exec_start)
        assert argv[0].endswith("/quakescan")
        lines.append((path.name, argv[1:]))
    for path in (DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.gpu"):
        cmd = re.search(r"^CMD (\[.+\])$", path.read_text(), flags=re.MULTILINE)[1]
        lines.append((path.name, json.loads(cmd)))
    return lines


def test_every_service_command_parses_with_the_real_cli(tmp_path):
    import click

    from quakescan.serving.cli import cli

    real_paths = {
        "/etc/quakescan/stations.toml": str(DEPLOY / "config" / "stations.replay.toml"),
        "/var/lib/quakescan/catalogs": str(tmp_path),
    }
    lines = _command_lines()
    assert {argv[0] for _, argv in lines} == {"worker", "feed", "sink"}
    for where, argv in lines:
        argv = [real_paths.get(a, a) for a in argv]
        ctx = click.Context(cli, info_name="quakescan")
        try:
            command = cli.get_command(ctx, argv[0])
        except click.ClickException as exc:  # a missing module: the service would not start
            pytest.fail(f"{where}: quakescan {argv[0]} cannot load: {exc.format_message()}")
        assert command is not None, f"{where}: no subcommand {argv[0]!r}"
        try:
            command.make_context(argv[0], argv[1:], parent=ctx)
        except click.UsageError as exc:
            pytest.fail(f"{where}: quakescan {' '.join(argv)}: {exc.format_message()}")
