"""The sink: workers' per-chunk probabilities in, detections out.

Per station, chunks are put back in the feeder's order (sequence numbers) and
fed to the detector's own trigger, so the service gives the detections a local
``Detector.detect`` gives. Detections go to a Redis stream (at most once per
stable id, atomically) and to daily catalogs (JSON lines, CSV, QuakeML). The
trigger state and the last sequence number per station are saved after each
batch and messages are acknowledged only after that, so a restarted sink
resumes where it stopped without duplicates.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quakescan.detector.catalog import (
    Detection,
    detection_to_dict,
    read_jsonl,
    write_csv,
    write_quakeml,
)
from quakescan.detector.model import OnnxModel
from quakescan.detector.spec import ModelSpec
from quakescan.detector.trigger import StationTrigger, TriggerFactory

from .bus import Bus, Publisher, StateStore
from .config import DET_STREAM, ServiceConfig
from .metrics import Metrics

log = logging.getLogger(__name__)

STATE_KEY = "quakescan:sink:state"
PROGRESS_KEY = "quakescan:sink:progress"
IDS_KEY = "quakescan:detections:ids"

# Publish a detection once: the id set and the stream entry change together.
_PUBLISH_ONCE = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'data', ARGV[2])
  return 1
end
return 0
"""


# ------------------------------------------------------------------ outputs
class CatalogFiles:
    """Daily catalogs under ``out_dir``: detections-YYYY-MM-DD.{jsonl,csv,xml}.

    JSON lines are appended at once (the day's record of truth, also read back at
    start to skip detections already written); CSV and QuakeML are rewritten
    atomically from the day's detections, at most every ``rewrite_every_s`` (a
    rewrite of a busy day's QuakeML costs far more than a detection), when a
    newer day begins, and on ``flush()`` (the sink calls it when it stops).
    """

    EXT = {"jsonl": "jsonl", "csv": "csv", "quakeml": "xml"}

    def __init__(
        self,
        out_dir: str | Path,
        formats: tuple[str, ...] = ("quakeml", "csv", "jsonl"),
        rewrite_every_s: float = 30.0,
    ) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.formats = formats
        self.rewrite_every_s = rewrite_every_s
        self._days: dict[str, list[Detection]] = {}
        self._ids: dict[str, set[str]] = {}
        self._dirty: set[str] = set()
        self._last_rewrite = 0.0
        self._lock = threading.Lock()

    def _path(self, day: str, fmt: str) -> Path:
        return self.dir / f"detections-{day}.{self.EXT[fmt]}"

    def _load(self, day: str) -> list[Detection]:
        if day not in self._days:
            p = self._path(day, "jsonl")
            self._days[day] = read_jsonl(p) if p.exists() else []
            self._ids[day] = {d.id for d in self._days[day]}
        return self._days[day]

    def write(self, dets: list[Detection]) -> list[Detection]:
        """Write the detections not already in their day's catalog; returns those written."""
        new: list[Detection] = []
        with self._lock:
            for d in dets:
                day = d.start.strftime("%Y-%m-%d")
                have = self._load(day)
                if d.id in self._ids[day]:
                    continue
                have.append(d)
                self._ids[day].add(d.id)
                new.append(d)
                if self._dirty and day > max(self._dirty):
                    self._rewrite()  # a new day: the days before it are written out now
                self._dirty.add(day)
                with open(self._path(day, "jsonl"), "a") as f:
                    f.write(json.dumps(detection_to_dict(d)) + "\n")
            if time.time() - self._last_rewrite >= self.rewrite_every_s:
                self._rewrite()
        return new

    def flush(self, due_only: bool = False) -> None:
        """Rewrite the CSV/QuakeML of days with new detections (only if due, with due_only)."""
        with self._lock:
            if not due_only or time.time() - self._last_rewrite >= self.rewrite_every_s:
                self._rewrite()

    def _rewrite(self) -> None:
        for day in sorted(self._dirty):
            ds = sorted(self._days[day])
            if "csv" in self.formats:
                write_csv(ds, self._path(day, "csv"))
            if "quakeml" in self.formats:
                write_quakeml(ds, self._path(day, "quakeml"))
        self._dirty.clear()
        self._last_rewrite = time.time()

    def all(self) -> list[Detection]:
        out = []
        for p in sorted(self.dir.glob("detections-*.jsonl")):
            out += read_jsonl(p)
        return out


class RedisDetections:
    """Detections published to the Redis stream at most once per id."""

    def __init__(self, client, stream: str = DET_STREAM, maxlen: int = 1_000_000) -> None:
        self.r, self.stream, self.maxlen = client, stream, maxlen
        self._script = client.register_script(_PUBLISH_ONCE)

    def publish(self, d: Detection) -> bool:
        return bool(
            self._script(
                keys=[IDS_KEY, self.stream],
                args=[d.id, json.dumps(detection_to_dict(d)), self.maxlen],
            )
        )


class MemoryDetections:
    def __init__(self) -> None:
        self.items: list[Detection] = []
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def publish(self, d: Detection) -> bool:
        with self._lock:
            if d.id in self._ids:
                return False
            self._ids.add(d.id)
            self.items.append(d)
            return True


class RedisState:
    """The sink's state in Redis; ``progress()`` is also what a feeder on another host reads."""

    def __init__(self, client, progress_every_s: float = 0.5) -> None:
        self.r = client
        self.progress_every_s = progress_every_s
        self._progress: dict[str, int] = {}
        self._progress_t = 0.0

    def progress(self) -> dict[str, int]:
        """The last triggered chunk per station (read from Redis at most every progress_every_s)."""
        if time.time() - self._progress_t > self.progress_every_s:
            try:
                self._progress = {
                    k.decode(): int(v) for k, v in self.r.hgetall(PROGRESS_KEY).items()
                }
            except Exception:  # Redis down: keep the last known progress
                pass
            self._progress_t = time.time()
        return self._progress

    def load(self) -> dict[str, dict]:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(STATE_KEY).items()}

    def save(self, states: dict[str, dict]) -> None:
        if states:
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(STATE_KEY, mapping={k: json.dumps(v) for k, v in states.items()})
            pipe.hset(
                PROGRESS_KEY,
                mapping={k: v["last_seq"] for k, v in states.items() if v["last_seq"] is not None},
            )
            pipe.execute()


class MemoryState:
    def __init__(self) -> None:
        self.data: dict[str, dict] = {}

    def load(self) -> dict[str, dict]:
        return json.loads(json.dumps(self.data))

    def save(self, states: dict[str, dict]) -> None:
        self.data.update(json.loads(json.dumps(states)))

    def progress(self) -> dict[str, int]:
        return {k: v["last_seq"] for k, v in self.data.items() if v.get("last_seq") is not None}


# --------------------------------------------------------------------- sink
@dataclass
class _Station:
    trigger: StationTrigger
    last_seq: int | None = None
    buffer: dict[int, tuple[str, dict]] = field(default_factory=dict)
    first_seen: float = 0.0
    oldest_wait: float | None = None
    last_activity: float = 0.0


def station_key(station: str, prefix: str) -> str:
    return f"{station}|{prefix}"


class Sink:
    """Probabilities in (a ``Bus``), detections out (a ``Publisher`` and daily catalogs)."""

    def __init__(
        self,
        cfg: ServiceConfig,
        source: Bus,
        publisher: Publisher,
        state_store: StateStore,
        catalogs: CatalogFiles | None,
        metrics: Metrics,
        *,
        spec: ModelSpec | None = None,
        consumer: str = "sink-1",
        on_detection: Callable[[Detection], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg, self.source, self.publisher, self.store = cfg, source, publisher, state_store
        self.catalogs, self.metrics, self.consumer = catalogs, metrics, consumer
        self.spec = spec or OnnxModel(cfg.model, device="cpu", threads=1).spec
        s = self.spec
        self.triggers = TriggerFactory.from_spec(
            s, step_s=cfg.step_s, threshold=cfg.threshold, off_threshold=cfg.off_threshold
        )
        self.params = self.triggers.params
        self.step_s = self.triggers.step_s
        self.on_detection = on_detection
        self.clock = clock
        self.stations: dict[str, _Station] = {}
        self.detections_published = 0
        self._restore()

    # ------------------------------------------------------------ state
    def _new_station(self, station: str, prefix: str) -> _Station:
        trig = self.triggers.new(station, prefix)
        return _Station(trigger=trig, first_seen=self.clock(), last_activity=self.clock())

    def _restore(self) -> None:
        for key, st in self.store.load().items():
            station, prefix = key.split("|", 1)
            s = self._new_station(station, prefix)
            s.last_seq = st.get("last_seq")
            s.trigger.restore(st.get("trigger", {}))
            self.stations[key] = s
        if self.stations:
            log.info("sink restored the state of %d stations", len(self.stations))

    def _state(self, s: _Station) -> dict:
        return {"last_seq": s.last_seq, "trigger": s.trigger.to_state()}

    # ------------------------------------------------------------ steps
    def recover_pending(self) -> int:
        """After a restart: messages delivered before and not acknowledged."""
        msgs = self.source.read(self.consumer, count=100_000, pending=True)
        touched = self._ingest(msgs)
        self._release(touched)
        return len(msgs)

    def step(self, block_ms: int = 500, count: int = 500) -> int:
        msgs = self.source.read(self.consumer, count=count, block_ms=block_ms)
        touched = self._ingest(msgs)
        self._release(touched | set(self.stations))
        return len(msgs)

    def _ingest(self, msgs: list[tuple[str, dict]]) -> set[str]:
        touched, ack_now = set(), []
        for mid, msg in msgs:
            if (
                msg.get("status") not in ("ok", "failed")
                or not msg.get("station")
                or not isinstance(msg.get("seq"), int)
                or msg["seq"] < 0
            ):
                log.error("sink: unusable message %s: %s", mid, str(msg)[:200])
                ack_now.append(mid)
                continue
            if msg.get("job"):
                ack_now.append(mid)  # batch results do not go through the live sink
                continue
            key = station_key(msg["station"], msg.get("channel_prefix", ""))
            s = self.stations.get(key)
            if s is None:
                s = self.stations[key] = self._new_station(
                    msg["station"], msg.get("channel_prefix", "")
                )
            seq = msg["seq"]
            if s.last_seq is not None and seq <= s.last_seq:
                last_k = s.trigger.last_k
                if seq == 0 and not s.buffer and msg.get("k_first", -1) > (last_k or -1):
                    # Chunk 0 again, but of windows never seen: a feeder that restarted
                    # without its state file. Follow its new numbering, do not drop it.
                    log.warning(
                        "%s: chunk 0 again with new windows (from k %s): the feeder restarted "
                        "without its state; following its new numbering",
                        key,
                        msg.get("k_first"),
                    )
                    s.last_seq = -1
                else:
                    ack_now.append(mid)  # a redelivered chunk: its windows are already in
                    continue
            if seq in s.buffer:
                if s.buffer[seq][0] != mid:
                    ack_now.append(mid)  # the same chunk done twice; one copy waits in the buffer
                continue
            s.buffer[seq] = (mid, msg)
            touched.add(key)
        self.source.ack(ack_now)
        return touched

    def _release(self, keys: set[str]) -> None:
        now = self.clock()
        states, acks, dets = {}, [], []
        for key in keys:
            s = self.stations[key]
            if not s.buffer:
                continue
            if s.last_seq is None:
                # A station new to this sink. Its chunk 0 may be late (a worker died
                # with it, or it still waits in the queue): it is waited for like any
                # missing chunk. Only if it never comes (the sink's state was lost after
                # older results were acknowledged) does the sink start where it can.
                if 0 in s.buffer:
                    s.last_seq = -1
                elif now - s.first_seen >= self.cfg.reorder_timeout_s:
                    s.last_seq = min(s.buffer) - 1
                    log.warning(
                        "%s: first chunk seen is seq %d; starting there", key, s.last_seq + 1
                    )
                else:
                    continue
            progressed = False
            while True:
                nxt = s.last_seq + 1
                if nxt not in s.buffer:
                    if s.oldest_wait is None:
                        s.oldest_wait = now
                    if now - s.oldest_wait < self.cfg.reorder_timeout_s:
                        break
                    skip_to = min(s.buffer)
                    log.warning("%s: chunks %d..%d never arrived; moving on", key, nxt, skip_to - 1)
                    self.metrics.sink_skipped_chunks_total.labels(s.trigger.station).inc(
                        skip_to - nxt
                    )
                    s.last_seq = skip_to - 1
                    continue
                mid, msg = s.buffer.pop(nxt)
                s.oldest_wait = None
                dets += self._handle(s, msg, now)
                s.last_seq = nxt
                acks.append(mid)
                progressed = True
                if not s.buffer:
                    break
            if progressed:
                s.last_activity = now
                states[key] = self._state(s)
        self._publish(dets)
        self.store.save(states)
        self.source.ack(acks)

    def _handle(self, s: _Station, msg: dict, now: float) -> list[tuple[Detection, float]]:
        last_t = msg.get("last_sample_time")
        if msg["status"] == "ok" and msg.get("k"):
            k = np.asarray(msg["k"], dtype=np.int64)
            probs = np.asarray(msg["probs"], dtype=np.float32)
            if s.trigger.last_k is not None:
                keep = k > s.trigger.last_k
                k, probs = k[keep], probs[keep]
            out = s.trigger.feed(k, probs)
            self.metrics.sink_windows_total.labels(s.trigger.station).inc(len(k))
        else:
            out = []
        if msg.get("final"):
            out += s.trigger.flush()
        if last_t:
            self.metrics.chunk_latency_seconds.observe(max(0.0, now - float(last_t)))
        return [(d, float(last_t) if last_t else now) for d in out]

    def _publish(self, dets: list[tuple[Detection, float]]) -> None:
        if not dets:
            return
        if self.catalogs is not None:
            self.catalogs.write([d for d, _ in dets])
        for d, last_t in dets:
            if self.publisher.publish(d):
                self.detections_published += 1
                self.metrics.detections_total.labels(d.label, d.model).inc()
                self.metrics.end_to_end_latency_seconds.observe(max(0.0, self.clock() - last_t))
                if self.on_detection:
                    self.on_detection(d)

    def flush_idle(self, idle_s: float) -> int:
        """Close triggers of stations that sent nothing for ``idle_s`` (a silent station)."""
        now, n = self.clock(), 0
        dets, states = [], {}
        for key, s in self.stations.items():
            if not s.buffer and now - s.last_activity > idle_s:
                out = s.trigger.flush()
                if out:
                    dets += [(d, now) for d in out]
                    states[key] = self._state(s)
                    n += len(out)
        self._publish(dets)
        self.store.save(states)
        return n

    def report_queues(self) -> None:
        """Queue depths for dashboards and autoscaling: probabilities waiting, and the Celery queues."""
        self.metrics.queue_depth.labels("probabilities").set(self.source.depth())
        r = getattr(self.source, "r", None)
        if r is not None:
            from .config import QUEUE_BATCH, QUEUE_DETECT

            for q in (QUEUE_DETECT, QUEUE_BATCH):
                self.metrics.queue_depth.labels(q).set(r.llen(q))

    def run(self, stop: threading.Event, idle_flush_s: float = 300.0) -> None:
        """Until ``stop``: read, trigger, publish. Redis outages are waited out, not fatal."""
        import redis

        try:
            self._run(stop, idle_flush_s, redis)
        finally:
            if self.catalogs is not None:
                self.catalogs.flush()  # CSV and QuakeML complete on a graceful stop

    def _run(self, stop: threading.Event, idle_flush_s: float, redis) -> None:
        started, backoff, last_depth = False, 0.5, 0.0
        while not stop.is_set():
            try:
                if not started:
                    self.source.ensure_group()
                    n = self.recover_pending()
                    if n:
                        log.info("sink re-read %d unacknowledged messages", n)
                    started = True
                self.step()
                now = self.clock()
                if now - last_depth > 5:
                    self.report_queues()
                    self.flush_idle(idle_flush_s)
                    if self.catalogs is not None:
                        self.catalogs.flush(due_only=True)
                    last_depth = now
                backoff = 0.5
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("sink: Redis unreachable (%s); retrying in %.1f s", exc, backoff)
                started = False  # re-read what was delivered but not acknowledged
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
