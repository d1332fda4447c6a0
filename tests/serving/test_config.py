"""Service configuration (serving/config.py): defaults < environment < TOML < CLI flags,
secrets only from the environment, and errors that name what is wrong."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner

from quakescan.serving.app import make_app
from quakescan.serving.bus import redis_client
from quakescan.serving.cli import cli
from quakescan.serving.config import ConfigError, FeedConfig, ServiceConfig, load_config
from quakescan.serving.feeds import build_feeds
from quakescan.serving.feeds.files import FolderFeed, ReplayFeed, SDSFollowFeed

REPO = Path(__file__).resolve().parents[2]


def toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "quakescan.toml"
    p.write_text(text)
    return p


def test_defaults_work_without_any_setting():
    cfg = load_config(None, None, env={})
    assert cfg.broker_url == "redis://127.0.0.1:6379/0"
    assert cfg.backend_url == "redis://127.0.0.1:6379/1"  # results on db 1 of the broker
    assert cfg.streams_url == cfg.broker_url
    assert cfg.serializer == "json" and cfg.model == "convnetquake"
    assert cfg.chunk_s == 10.0 and cfg.max_in_flight == 4
    assert cfg.feeds == [] and cfg.stations == [] and cfg.data_roots == ()


def test_precedence_defaults_then_environment_then_toml_then_cli(tmp_path):
    env = {
        "QUAKESCAN_CHUNK_S": "20",
        "QUAKESCAN_MODEL": "slow-earthquake",
        "QUAKESCAN_OUT_DIR": "/env/catalogs",
        "QUAKESCAN_SPOOL_DIR": "/env/spool",
    }
    path = toml(
        tmp_path,
        '[service]\nchunk_s = 30.0\nmodel = "convnetquake"\nout_dir = "/toml/catalogs"\n',
    )
    assert load_config(None, None, env={}).chunk_s == 10.0
    from_env = load_config(None, None, env=env)
    assert (from_env.chunk_s, from_env.model, from_env.out_dir) == (
        20.0,
        "slow-earthquake",
        "/env/catalogs",
    )
    from_toml = load_config(path, None, env=env)
    assert (from_toml.chunk_s, from_toml.model, from_toml.out_dir) == (
        30.0,
        "convnetquake",
        "/toml/catalogs",
    )
    assert from_toml.spool_dir == "/env/spool", "what the file does not set stays from the env"
    flags = load_config(path, {"chunk_s": 40, "out_dir": None}, env=env)
    assert flags.chunk_s == 40.0, "a flag beats the file"
    assert flags.out_dir == "/toml/catalogs", "a flag not given (None) changes nothing"


def test_environment_values_are_typed():
    cfg = load_config(
        None,
        None,
        env={
            "QUAKESCAN_DATA_ROOTS": "/data/sds:/data/archive",
            "QUAKESCAN_THREADS": "3",
            "QUAKESCAN_METRICS_PORT": "9200",
            "QUAKESCAN_CHUNK_S": "5",
        },
    )
    assert cfg.data_roots == ("/data/sds", "/data/archive")
    assert cfg.threads == 3 and cfg.metrics_port == 9200 and cfg.chunk_s == 5.0
    with pytest.raises(ConfigError, match="chunk_s: 'ten'"):
        load_config(None, None, env={"QUAKESCAN_CHUNK_S": "ten"})


@pytest.mark.parametrize(
    "line",
    [
        'broker_url = "redis://:hunter2@redis:6379/0"',
        'redis_url = "redis://:hunter2@redis:6379/0"',
        'result_backend = "redis://:hunter2@redis:6379/1"',
        'redis_ssl_key = "/etc/quakescan/hunter2.key"',
    ],
)
def test_secrets_and_urls_are_refused_in_the_toml_file(tmp_path, line):
    key = line.split(" ")[0]
    with pytest.raises(ConfigError) as err:
        load_config(toml(tmp_path, f"[service]\n{line}\n"), None, env={})
    msg = str(err.value)
    assert key in msg and "environment" in msg
    assert "hunter2" not in msg, "the error must not echo the secret"


def test_pickle_is_refused_wherever_it_comes_from(tmp_path):
    for kwargs in (
        {"env": {"QUAKESCAN_SERIALIZER": "pickle"}},
        {"toml_path": toml(tmp_path, '[service]\nserializer = "pickle"\n'), "env": {}},
        {"overrides": {"serializer": "pickle"}, "env": {}},
    ):
        with pytest.raises(ConfigError, match="never pickle"):
            load_config(**kwargs)
    assert load_config(None, {"serializer": "msgpack"}, env={}).serializer == "msgpack"
    app = make_app(load_config(None, {"serializer": "msgpack"}, env={}))
    assert app.conf.accept_content == ["msgpack"]  # workers accept nothing else


def test_unknown_keys_and_tables_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[service\]: chunk_seconds"):
        load_config(toml(tmp_path, "[service]\nchunk_seconds = 5\n"), None, env={})
    with pytest.raises(ConfigError, match=r"unknown table\(s\): feed, servce"):
        load_config(toml(tmp_path, "[servce]\nmodel = 'x'\n[feed]\ntype = 'sds'\n"), None, env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(toml(tmp_path, "[service\nmodel = \n"), None, env={})
    with pytest.raises(FileNotFoundError, match="nowhere.toml"):
        load_config(tmp_path / "nowhere.toml", None, env={})


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match=r"max_in_flight \(0\)"):
        load_config(None, {"max_in_flight": 0}, env={})
    with pytest.raises(ConfigError, match=r"soft_time_limit_s \(200.0\)"):
        load_config(None, {"soft_time_limit_s": 200}, env={})
    with pytest.raises(ConfigError, match="format 'xlsx'"):
        load_config(None, {"formats": ("csv", "xlsx")}, env={})
    with pytest.raises(ConfigError, match=r"broker_url 'http://user:\*\*\*@host'") as err:
        ServiceConfig(broker_url="http://user:hunter2@host")
    assert "hunter2" not in str(err.value)


def test_feeds_and_stations_are_parsed(tmp_path, data_dir):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "sds").mkdir()
    path = toml(
        tmp_path,
        f"""
[service]
spool_dir = "{tmp_path / "spool"}"

[[feeds]]
type = "replay"
paths = ["{data_dir / "reunion"}"]
speed = 2.0
loop = true

[[feeds]]
type = "folder"
path = "{tmp_path / "inbox"}"
pattern = "*.mseed"

[[feeds]]
type = "sds"
root = "{tmp_path / "sds"}"
stations = ["YA.UV05", "YA.UV06.00.HHZ"]
poll_s = 0.5

[[stations]]
id = "YA.UV05.00"

[[stations]]
id = "YA.UV06.00"
""",
    )
    cfg = load_config(path, None, env={})
    assert [f.type for f in cfg.feeds] == ["replay", "folder", "sds"]
    assert cfg.feeds[2].options == {
        "root": str(tmp_path / "sds"),
        "stations": ["YA.UV05", "YA.UV06.00.HHZ"],
        "poll_s": 0.5,
    }
    assert [s["id"] for s in cfg.stations] == ["YA.UV05.00", "YA.UV06.00"]
    replay, folder, sds = build_feeds(cfg)
    assert isinstance(replay, ReplayFeed) and replay.speed == 2.0 and replay.loop
    assert len(replay.paths) == 2
    assert isinstance(folder, FolderFeed) and folder.pattern == "*.mseed"
    assert isinstance(sds, SDSFollowFeed) and sds.poll_s == 0.5
    assert sds.state_file == tmp_path / "spool" / "sds_state.json"  # positions kept in the spool
    assert sds.stations == [("YA", "UV05", "*", "*"), ("YA", "UV06", "00", "HHZ")]


def test_bad_feeds_and_stations_are_named(tmp_path):
    with pytest.raises(ConfigError, match="feed type 'ftp'"):
        load_config(toml(tmp_path, '[[feeds]]\ntype = "ftp"\n'), None, env={})
    with pytest.raises(ConfigError, match=r"\[\[feeds\]\] entry 2 has no 'type'"):
        load_config(
            toml(tmp_path, '[[feeds]]\ntype = "folder"\npath = "/x"\n[[feeds]]\npath = "/y"\n'),
            None,
            env={},
        )
    with pytest.raises(ConfigError, match=r"\[\[stations\]\] entry 1 has no 'id'"):
        load_config(toml(tmp_path, '[[stations]]\nname = "BKS"\n'), None, env={})
    # Options are checked when the feeds are built: a missing or unknown one is named.
    cfg = ServiceConfig(feeds=[FeedConfig("sds", {"stations": ["YA.UV05"]})])
    with pytest.raises(ConfigError, match="type 'sds' needs 'root'"):
        build_feeds(cfg)
    cfg = ServiceConfig(feeds=[FeedConfig("folder", {"path": str(tmp_path), "speed": 2})])
    with pytest.raises(ConfigError, match=r"unknown option\(s\) speed"):
        build_feeds(cfg)


def test_a_bad_config_file_is_a_clear_cli_error(tmp_path):
    path = toml(tmp_path, '[service]\nbroker_url = "redis://:hunter2@redis:6379/0"\n')
    res = CliRunner().invoke(cli, ["feed", "--config", str(path)], env={})
    assert res.exit_code == 1
    assert "broker_url" in res.output and "hunter2" not in res.output
    assert "Traceback" not in res.output


def test_passwords_are_redacted_for_logs():
    cfg = load_config(
        None,
        None,
        env={
            "QUAKESCAN_BROKER_URL": "redis://:s3cr3tpass@redis.example:6379/0",
            "QUAKESCAN_REDIS_URL": "rediss://quakescan:s3cr3tpass@redis.example:6380/0",
        },
    )
    red = cfg.redacted()
    assert "s3cr3tpass" not in repr(red)
    assert red["broker_url"] == "redis://:***@redis.example:6379/0"
    assert red["redis_url"] == "rediss://quakescan:***@redis.example:6380/0"
    assert red["chunk_s"] == 10.0  # the rest is shown as is
    assert cfg.broker_url.endswith("s3cr3tpass@redis.example:6379/0"), "the config keeps it"


def test_rediss_urls_get_verified_tls_with_the_ca_from_the_environment(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not used to connect here\n")
    cfg = load_config(
        None,
        None,
        env={
            "QUAKESCAN_BROKER_URL": "rediss://:pw@redis.example:6380/0",
            "QUAKESCAN_REDIS_SSL_CA": str(ca),
            "QUAKESCAN_REDIS_SSL_CERT": "/etc/quakescan/client.crt",
            "QUAKESCAN_REDIS_SSL_KEY": "/etc/quakescan/client.key",
        },
    )
    opts = cfg.ssl_options()
    assert opts == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(ca),
        "ssl_certfile": "/etc/quakescan/client.crt",
        "ssl_keyfile": "/etc/quakescan/client.key",
    }
    assert cfg.backend_url == "rediss://:pw@redis.example:6380/1"
    app = make_app(cfg)  # Celery's broker and result backend both verify the server
    assert app.conf.broker_use_ssl == opts and app.conf.redis_backend_use_ssl == opts
    kw = redis_client(cfg).connection_pool.connection_kwargs  # and so do the streams
    assert kw["ssl_ca_certs"] == str(ca) and kw["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    plain = load_config(None, None, env={"QUAKESCAN_BROKER_URL": "redis://redis:6379/0"})
    assert plain.ssl_options() is None
