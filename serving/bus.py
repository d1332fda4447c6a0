"""The message bus between workers and the sink, and the small interfaces around it.

``RedisBus`` is a Redis stream read through a consumer group (each message
delivered to one sink consumer, acknowledged after it is handled, re-read
after a crash). ``MemoryBus`` offers the same calls inside one process
(``quakescan serve``, no Redis). (Named bus, not stream: an ObsPy ``Stream``
is a waveform container, and both kinds of stream meet in the workers.)

The Protocols say what the workers and the sink need from their surroundings,
so the Redis and in-memory implementations are interchangeable and typed:
``Bus`` (probability messages), ``Publisher`` (detections, at most once per id)
and ``StateStore`` (the sink's per-station state and progress).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

import redis

from .config import ServiceConfig

if TYPE_CHECKING:
    from quakescan.detector.catalog import Detection


class Bus(Protocol):
    """JSON messages from workers to one consumer group (the sink): at-least-once delivery."""

    def publish(self, msg: dict[str, Any]) -> str: ...

    def publish_many(self, msgs: list[dict[str, Any]]) -> list[str]: ...

    def ensure_group(self) -> None: ...

    def read(
        self, consumer: str, count: int = 100, block_ms: int = 1000, pending: bool = False
    ) -> list[tuple[str, dict]]: ...

    def ack(self, ids: list[str]) -> None: ...

    def depth(self) -> int: ...


class Publisher(Protocol):
    """Where the sink's detections go; ``publish`` is False for an id already published."""

    def publish(self, d: Detection) -> bool: ...


class StateStore(Protocol):
    """The sink's per-station state ("NET.STA.LOC|prefix" -> dict), and its progress:
    the last chunk sequence number triggered per station (the feeder's in-flight bound)."""

    def load(self) -> dict[str, dict]: ...

    def save(self, states: dict[str, dict]) -> None: ...

    def progress(self) -> dict[str, int]: ...


def redis_client(cfg: ServiceConfig, url: str | None = None) -> redis.Redis:
    """A client for the streams' Redis (password and TLS taken from the URL / environment)."""
    kw: dict[str, Any] = {
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
        "health_check_interval": 30,
    }
    ssl = cfg.ssl_options()
    if ssl and (url or cfg.streams_url).startswith("rediss://"):
        kw.update(ssl)
    return redis.Redis.from_url(url or cfg.streams_url, **kw)


class RedisBus:
    """A Redis stream of JSON messages with one consumer group."""

    def __init__(
        self, client: redis.Redis, name: str, group: str = "sink", maxlen: int = 1_000_000
    ) -> None:
        self.r, self.name, self.group, self.maxlen = client, name, group, maxlen

    def publish(self, msg: dict[str, Any]) -> str:
        return self.r.xadd(
            self.name, {"data": json.dumps(msg)}, maxlen=self.maxlen, approximate=True
        ).decode()

    def publish_many(self, msgs: list[dict[str, Any]]) -> list[str]:
        """Several messages in one round trip (a pipeline; not a transaction)."""
        pipe = self.r.pipeline(transaction=False)
        for msg in msgs:
            pipe.xadd(self.name, {"data": json.dumps(msg)}, maxlen=self.maxlen, approximate=True)
        return [mid.decode() for mid in pipe.execute()]

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.name, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(
        self, consumer: str, count: int = 100, block_ms: int = 1000, pending: bool = False
    ) -> list[tuple[str, dict]]:
        """New messages for this consumer, or (pending=True) those delivered before and not acked."""
        start = "0" if pending else ">"
        resp = self.r.xreadgroup(
            self.group,
            consumer,
            {self.name: start},
            count=count,
            block=None if pending else block_ms,
        )
        out = []
        for _stream, entries in resp or []:
            for mid, fields in entries:
                if not fields:  # acknowledged-and-trimmed entry in the pending list
                    continue
                try:
                    msg = json.loads(fields[b"data"])
                except (KeyError, ValueError):
                    msg = {"status": "unreadable"}
                out.append((mid.decode(), msg))
        return out

    def ack(self, ids: list[str]) -> None:
        if ids:
            self.r.xack(self.name, self.group, *ids)

    def depth(self) -> int:
        """Entries not yet delivered to the group (lag), or the stream length as a fallback."""
        try:
            for g in self.r.xinfo_groups(self.name):
                if g["name"].decode() == self.group and g.get("lag") is not None:
                    return int(g["lag"]) + int(g.get("pending", 0))
        except redis.ResponseError:
            return 0
        return int(self.r.xlen(self.name))


class MemoryBus:
    """In-process stand-in for RedisBus (same calls, one group)."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._cv = threading.Condition()
        self._new: OrderedDict[str, dict] = OrderedDict()
        self._pending: OrderedDict[str, dict] = OrderedDict()
        self._seq = 0
        self.published: list[dict] = []  # for consumers that just want everything (tests, serve)

    def publish(self, msg: dict[str, Any]) -> str:
        with self._cv:
            self._seq += 1
            mid = f"{int(time.time() * 1000)}-{self._seq}"
            self._new[mid] = json.loads(json.dumps(msg))  # the same round trip as Redis
            self.published.append(self._new[mid])
            self._cv.notify_all()
            return mid

    def publish_many(self, msgs: list[dict[str, Any]]) -> list[str]:
        return [self.publish(m) for m in msgs]

    def ensure_group(self) -> None:
        return None

    def read(
        self, consumer: str, count: int = 100, block_ms: int = 1000, pending: bool = False
    ) -> list[tuple[str, dict]]:
        with self._cv:
            if pending:
                return list(self._pending.items())[:count]
            if not self._new:
                self._cv.wait(block_ms / 1000)
            out = []
            while self._new and len(out) < count:
                mid, msg = self._new.popitem(last=False)
                self._pending[mid] = msg
                out.append((mid, msg))
            return out

    def ack(self, ids: list[str]) -> None:
        with self._cv:
            for i in ids:
                self._pending.pop(i, None)
            self._cv.notify_all()

    def depth(self) -> int:
        with self._cv:
            return len(self._new) + len(self._pending)

    def wait_empty(self, timeout_s: float) -> bool:
        deadline = time.time() + timeout_s
        with self._cv:
            while self._new or self._pending:
                left = deadline - time.time()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.2))
        return True
