"""Service configuration: typed defaults in code, then QUAKESCAN_* environment
variables, then the operator's TOML file (stations, feeds), then CLI flags.
Secrets (passwords, TLS keys) come only from the environment."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
PROB_STREAM = "quakescan:probabilities"
DET_STREAM = "quakescan:detections"
DEADLETTER = "quakescan:deadletter"
QUEUE_DETECT = "detect"
QUEUE_BATCH = "batch"


class ConfigError(ValueError):
    """A configuration value or file that is wrong; the message names it."""


@dataclass
class FeedConfig:
    """One feed of the TOML file's [[feeds]] tables."""

    type: str
    options: dict[str, Any] = field(default_factory=dict)

    TYPES = ("seedlink", "sds", "folder", "replay")

    def __post_init__(self) -> None:
        if self.type not in self.TYPES:
            raise ConfigError(f"feed type {self.type!r}: expected one of {', '.join(self.TYPES)}")


@dataclass
class ServiceConfig:
    # connections (URLs may carry a password: redis://:secret@host:6379/0)
    broker_url: str = DEFAULT_REDIS
    result_backend: str = ""  # default: the broker URL with db 1
    redis_url: str = ""  # streams, dead letters, batch jobs; default: the broker URL
    redis_ssl_ca: str = ""
    redis_ssl_cert: str = ""
    redis_ssl_key: str = ""
    serializer: str = "json"  # or msgpack; pickle is never accepted
    # model and detection
    model: str = "convnetquake"
    step_s: float | None = None  # default: the model's spec
    threshold: float | None = None
    off_threshold: float | None = None
    threads: int | None = None
    device: str = "auto"
    # feeder
    chunk_s: float = 10.0
    batch_chunks: int = 32  # chunks (of any stations) per Celery task; 1 = one task per chunk
    max_in_flight: int = 4  # chunks per station sent and not yet processed
    spool_dir: str = "/var/lib/quakescan/spool"
    # worker
    soft_time_limit_s: float = 60.0
    time_limit_s: float = 120.0
    # A chunk taken by a worker and never acknowledged (its host vanished, or the broker
    # restarted under it) is redelivered after this long.
    visibility_timeout_s: float = 300.0
    concurrency: int | None = None
    # sink
    out_dir: str = "catalogs"
    # CSV and QuakeML are rewritten whole from the day's detections; at most this often
    # (JSON lines are appended at once; 0 rewrites on every detection).
    catalog_rewrite_s: float = 30.0
    formats: tuple[str, ...] = ("quakeml", "csv", "jsonl")
    reorder_timeout_s: float = (
        600.0  # how long the sink waits for a missing chunk (> broker redelivery)
    )
    # batch
    data_roots: tuple[str, ...] = ()
    # metrics
    metrics_port: int | None = None
    # from the TOML file
    feeds: list[FeedConfig] = field(default_factory=list)
    stations: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> ServiceConfig:
        if self.serializer not in ("json", "msgpack"):
            raise ConfigError(
                f"serializer {self.serializer!r}: only 'json' or 'msgpack' (never pickle)"
            )
        for name in ("broker_url", "result_backend", "redis_url"):
            url = getattr(self, name)
            if url and not url.startswith(
                ("redis://", "rediss://", "memory://", "cache+memory://", "unix://")
            ):
                raise ConfigError(f"{name} {_redact(url)!r}: expected a redis:// or rediss:// URL")
        if not self.chunk_s > 0:
            raise ConfigError(f"chunk_s ({self.chunk_s}) must be > 0")
        if self.batch_chunks < 1:
            raise ConfigError(f"batch_chunks ({self.batch_chunks}) must be >= 1")
        if self.catalog_rewrite_s < 0:
            raise ConfigError(f"catalog_rewrite_s ({self.catalog_rewrite_s}) must be >= 0")
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight ({self.max_in_flight}) must be >= 1")
        if self.soft_time_limit_s >= self.time_limit_s:
            raise ConfigError(
                f"soft_time_limit_s ({self.soft_time_limit_s}) must be below time_limit_s ({self.time_limit_s})"
            )
        for f in self.formats:
            if f not in ("quakeml", "csv", "jsonl"):
                raise ConfigError(f"format {f!r}: expected quakeml, csv or jsonl")
        return self

    # ------------------------------------------------------------- derived
    @property
    def backend_url(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.broker_url.startswith(("redis://", "rediss://")):
            return _with_db(self.broker_url, 1)
        return "cache+memory://"

    @property
    def streams_url(self) -> str:
        return self.redis_url or self.broker_url

    def ssl_options(self) -> dict[str, Any] | None:
        """redis-py / Celery SSL options for rediss:// URLs (None for plain redis://)."""
        if not self.streams_url.startswith("rediss://") and not self.broker_url.startswith(
            "rediss://"
        ):
            return None
        import ssl

        opts: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        if self.redis_ssl_ca:
            opts["ssl_ca_certs"] = self.redis_ssl_ca
        if self.redis_ssl_cert:
            opts["ssl_certfile"] = self.redis_ssl_cert
        if self.redis_ssl_key:
            opts["ssl_keyfile"] = self.redis_ssl_key
        return opts

    def redacted(self) -> dict[str, Any]:
        """The configuration for logs, with passwords masked."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = _redact(v) if isinstance(v, str) else v
        return out


def _with_db(url: str, db: int) -> str:
    base, _, tail = url.rpartition("/")
    if base.endswith(":") or "/" not in url.split("://", 1)[1] or not tail.isdigit():
        return url.rstrip("/") + f"/{db}"
    return f"{base}/{db}"


def _redact(url: str) -> str:
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0] if ":" in creds else ""
        return f"{scheme}://{user}:***@{host}"
    return url


_ENV = {
    "broker_url": "QUAKESCAN_BROKER_URL",
    "result_backend": "QUAKESCAN_RESULT_BACKEND",
    "redis_url": "QUAKESCAN_REDIS_URL",
    "redis_ssl_ca": "QUAKESCAN_REDIS_SSL_CA",
    "redis_ssl_cert": "QUAKESCAN_REDIS_SSL_CERT",
    "redis_ssl_key": "QUAKESCAN_REDIS_SSL_KEY",
    "serializer": "QUAKESCAN_SERIALIZER",
    "model": "QUAKESCAN_MODEL",
    "spool_dir": "QUAKESCAN_SPOOL_DIR",
    "out_dir": "QUAKESCAN_OUT_DIR",
    "data_roots": "QUAKESCAN_DATA_ROOTS",
    "chunk_s": "QUAKESCAN_CHUNK_S",
    "threads": "QUAKESCAN_THREADS",
    "device": "QUAKESCAN_DEVICE",
    "metrics_port": "QUAKESCAN_METRICS_PORT",
    "visibility_timeout_s": "QUAKESCAN_VISIBILITY_TIMEOUT_S",
    "batch_chunks": "QUAKESCAN_BATCH_CHUNKS",
    "catalog_rewrite_s": "QUAKESCAN_CATALOG_REWRITE_S",
}
# Settings an operator may put in the TOML file's [service] table (no secrets).
_TOML_KEYS = {
    "model",
    "step_s",
    "threshold",
    "off_threshold",
    "threads",
    "device",
    "chunk_s",
    "max_in_flight",
    "spool_dir",
    "soft_time_limit_s",
    "time_limit_s",
    "out_dir",
    "formats",
    "reorder_timeout_s",
    "data_roots",
    "serializer",
    "concurrency",
    "visibility_timeout_s",
    "batch_chunks",
    "catalog_rewrite_s",
}


def _coerce(name: str, value: Any) -> Any:
    ftype = {f.name: f.type for f in fields(ServiceConfig)}[name]
    if value is None:
        return None
    try:
        if "tuple" in str(ftype):
            if isinstance(value, str):
                return tuple(v for v in value.replace(",", ":").split(":") if v)
            return tuple(value)
        if "int" in str(ftype) and "float" not in str(ftype):
            return int(value)
        if "float" in str(ftype):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {ftype}") from None
    return value


def load_config(
    toml_path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> ServiceConfig:
    """Defaults < environment < TOML file < CLI overrides (None values ignored)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, var in _ENV.items():
        if env.get(var):
            values[name] = _coerce(name, env[var])
    if toml_path:
        path = Path(toml_path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        svc = doc.get("service", {})
        unknown = sorted(set(svc) - _TOML_KEYS)
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) in [service]: {', '.join(unknown)} "
                "(secrets and URLs belong in the environment: QUAKESCAN_BROKER_URL, ...)"
            )
        for k, v in svc.items():
            values[k] = _coerce(k, v)
        feeds = []
        for i, f in enumerate(doc.get("feeds", [])):
            f = dict(f)
            if "type" not in f:
                raise ConfigError(f"{path}: [[feeds]] entry {i + 1} has no 'type'")
            feeds.append(FeedConfig(type=f.pop("type"), options=f))
        values["feeds"] = feeds
        stations = doc.get("stations", [])
        for i, s in enumerate(stations):
            if "id" not in s:
                raise ConfigError(f"{path}: [[stations]] entry {i + 1} has no 'id' (NET.STA.LOC)")
        values["stations"] = stations
        unknown_tables = sorted(set(doc) - {"service", "feeds", "stations"})
        if unknown_tables:
            raise ConfigError(f"{path}: unknown table(s): {', '.join(unknown_tables)}")
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = _coerce(k, v) if k in {f.name for f in fields(ServiceConfig)} else v
    return ServiceConfig(**values)
