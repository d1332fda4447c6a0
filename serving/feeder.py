"""The feeder: station feeds in, chunks on the time grid out to the ``detect`` queue.

Per station, incoming traces are buffered and cut into chunks responsible for
``chunk_s / step_s`` grid windows each, carrying window - step of overlap.
Chunks are numbered per station (``seq``) so the sink can put them back in
order. In-flight work per station is bounded (chunks sent and not yet
triggered by the sink). When the broker cannot be reached, chunks are spooled
to local disk and sent, oldest first, when it returns: nothing is lost.
The buffering and cutting are ``grid.StationBuffer``'s; the spool and the
inbox from the feed threads are in ``spool.py``; this module keeps the loop,
the sending and the state saved across restarts.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from obspy import Stream, Trace

from quakescan.detector.fsio import atomic_write
from quakescan.detector.prepare import COMPONENT_MAP

from .chunks import stream_to_mseed
from .feeds import Feed
from .grid import StationBuffer, chunk_phase
from .metrics import Metrics
from .spool import Inbox, Spool

log = logging.getLogger(__name__)


class SendError(RuntimeError):
    """The broker could not take a chunk (it is then spooled)."""


OUTBOX_LINGER_S = 0.05  # longest a cut chunk waits for others to share its Celery task


class Feeder:
    """Feeds -> station buffers -> chunks -> ``send`` (or the spool).

    With ``send_many``, cut chunks go out together, up to ``batch_chunks`` per call
    and at most OUTBOX_LINGER_S after the first was cut (one Celery task for many stations' chunks: at a
    thousand stations, a task per chunk costs the broker and the workers more than
    the inference). Spooled chunks are re-sent one by one through ``send``.
    """

    def __init__(
        self,
        feeds: list[Feed],
        send: Callable[[dict[str, Any]], None],
        *,
        step_s: float,
        window_s: float,
        chunk_s: float,
        metrics: Metrics,
        spool_dir: str | Path,
        max_in_flight: int = 4,
        progress: Callable[[], dict[str, int]] | None = None,
        state_file: str | Path | None = None,
        stations: list[str] | None = None,
        send_many: Callable[[list[dict[str, Any]]], None] | None = None,
        batch_chunks: int = 32,
    ) -> None:
        n = round(chunk_s / step_s)
        if n < 1 or abs(n * step_s - chunk_s) > 1e-6:
            raise ValueError(f"chunk_s ({chunk_s}) must be a whole number of steps ({step_s} s)")
        self.feeds, self.send_fn, self.metrics = feeds, send, metrics
        self.send_many, self.batch_chunks = send_many, max(1, batch_chunks)
        self._outbox: list[dict[str, Any]] = []
        self._outbox_t0 = 0.0
        self.step_s, self.window_s, self.windows_per_chunk = step_s, window_s, n
        self.spool = Spool(spool_dir)
        self.max_in_flight = max_in_flight
        self.progress = progress
        self.state_file = Path(state_file) if state_file else Path(spool_dir) / "feeder_state.json"
        # Operators' [[stations]] list: only these NET.STA.LOC (wildcards allowed) are fed.
        self.allowed = list(stations or [])
        self.ignored: set[str] = set()
        self.unknown_channels: set[str] = set()  # logged once each; every sample counted
        self.buffers: dict[tuple[str, str], StationBuffer] = {}
        self.held: dict[tuple[str, str], list[dict]] = defaultdict(list)  # over the in-flight bound
        self.inbox = Inbox(maxsize=100_000)
        self._samples: dict[str, int] = defaultdict(int)
        self.chunks_sent = 0
        self._feeds_done = 0
        self._load_state()
        metrics.chunks_spooled.set(len(self.spool))

    # --------------------------------------------------------------- state
    def _load_state(self) -> None:
        if not self.state_file.exists():
            return
        try:
            d = json.loads(self.state_file.read_text())
        except ValueError:
            log.error("feeder state %s is unreadable; starting fresh", self.state_file)
            return
        for key, v in d.get("stations", {}).items():
            station, prefix = key.split("|", 1)
            b = self._buffer(station, prefix)
            b.next_k, b.seq = v["next_k"], v["seq"]
            b.ends = dict(v.get("ends", {}))  # so a gap across the restart is seen and counted
            b.last_sample_time = float(v.get("last_sample_time", 0.0))
        n = self._load_buffers()
        log.info(
            "feeder resumed %d stations from %s (%d buffered traces restored)",
            len(d.get("stations", {})),
            self.state_file,
            n,
        )

    @property
    def buffer_dir(self) -> Path:
        return self.state_file.parent / "buffers"

    def save_buffers(self) -> int:
        """At a graceful stop: data received but not yet cut into chunks, as miniSEED."""
        self.buffer_dir.mkdir(parents=True, exist_ok=True)
        n = 0
        for b in self.buffers.values():
            st = b.buffered_stream()
            path = self.buffer_dir / f"{b.station}|{b.channel_prefix}.mseed"
            if not len(st):
                path.unlink(missing_ok=True)
                continue
            st = st.copy()
            st.merge(method=1, fill_value=None)
            st = st.split()
            atomic_write(path, stream_to_mseed(st))
            n += len(st)
        return n

    def _load_buffers(self) -> int:
        import obspy

        n = 0
        for path in sorted(self.buffer_dir.glob("*.mseed")) if self.buffer_dir.exists() else []:
            station, prefix = path.stem.split("|", 1)
            b = self._buffer(station, prefix)
            try:
                st = obspy.read(str(path))
            except Exception as exc:
                log.error("feeder: buffered data %s is unreadable (%s); skipped", path, exc)
                continue
            for tr in st:
                b.restore_trace(tr)
                n += 1
            path.unlink()
        return n

    def save_state(self) -> None:
        d = {
            "stations": {
                f"{b.station}|{b.channel_prefix}": {
                    "next_k": b.next_k,
                    "seq": b.seq,
                    "ends": b.ends,
                    "last_sample_time": b.last_sample_time,
                }
                for b in self.buffers.values()
                if b.next_k is not None
            }
        }
        atomic_write(self.state_file, json.dumps(d))

    def _buffer(self, station: str, prefix: str) -> StationBuffer:
        key = (station, prefix)
        b = self.buffers.get(key)
        if b is None:
            b = self.buffers[key] = StationBuffer(
                station,
                prefix,
                self.step_s,
                self.window_s,
                self.windows_per_chunk,
                phase=chunk_phase(station, prefix, self.windows_per_chunk),
            )
        return b

    # -------------------------------------------------------------- input
    def emit(self, tr: Trace) -> None:
        """Called by feeds (any thread)."""
        self.inbox.put(tr)

    def _drop(self, reason: str, tr: Trace) -> None:
        self.metrics.feed_dropped_samples_total.labels(reason).inc(tr.stats.npts)

    def add(self, tr: Trace) -> StationBuffer | None:
        s = tr.stats
        if tr.stats.npts == 0:
            return None
        if len(s.channel) < 3 or COMPONENT_MAP.get(s.channel[-1]) is None:
            if s.channel not in self.unknown_channels:
                self.unknown_channels.add(s.channel)
                log.warning("%s: channel code is not Z/N/E/1/2; its data are dropped", tr.id)
            self._drop("unknown_channel", tr)
            return None
        if np.ma.isMaskedArray(tr.data):
            b = None
            for piece in Stream([tr]).split():  # a trace with gaps: its pieces, gaps counted
                b = self.add(piece) or b
            return b
        station = f"{s.network}.{s.station}.{s.location}"
        if self.allowed and not any(fnmatch.fnmatchcase(station, pat) for pat in self.allowed):
            if station not in self.ignored:
                self.ignored.add(station)
                log.warning(
                    "%s is not in the configured [[stations]]; its data are ignored", station
                )
            self._drop("unlisted_station", tr)
            return None
        b = self._buffer(station, s.channel[:2])
        before = b.next_k
        if before is not None:
            # Data older than what was already cut (a replayed or re-delivered piece).
            step_ns = round(self.step_s * 1e9)
            if tr.stats.endtime.ns < before * step_ns:
                self._drop("already_cut", tr)
                return None
        gap = b.add(tr)
        m = self.metrics
        # Counted here, published to the metrics once a second (per-trace label lookups
        # cost more than the buffering itself at a thousand stations).
        self._samples[station] += tr.stats.npts
        if gap is not None and gap > 0:
            m.feed_gaps_total.labels(station).inc()
            m.feed_gap_seconds_total.labels(station).inc(gap)
            log.warning("%s.%s: %.2f s gap in the feed", station, s.channel, gap)
        return b

    def update_feed_metrics(self, now: float | None = None) -> None:
        """Samples received, newest sample time and lag per station."""
        now = time.time() if now is None else now
        m = self.metrics
        samples, self._samples = self._samples, defaultdict(int)
        for station, n in samples.items():
            m.feed_samples_total.labels(station).inc(n)
        for b in self.buffers.values():
            if b.last_sample_time:
                m.last_sample_timestamp_seconds.labels(b.station).set(b.last_sample_time)
                m.feed_lag_seconds.labels(b.station).set(max(0.0, now - b.last_sample_time))

    # ------------------------------------------------------------- output
    def _dispatch(self, msg: dict[str, Any]) -> None:
        if len(self.spool):
            self.spool.put(msg)  # keep order: older spooled chunks go first
            self.metrics.chunks_spooled.set(len(self.spool))
            return
        if self.send_many is not None:
            if not self._outbox:
                self._outbox_t0 = time.time()
            self._outbox.append(msg)
            if len(self._outbox) >= self.batch_chunks:
                self.flush_outbox()
            return
        try:
            self.send_fn(msg)
            self._sent([msg])
        except SendError as exc:
            self._spool([msg], exc)

    def flush_outbox(self) -> None:
        """Send the chunks gathered for ``send_many`` (spooled if the broker is away)."""
        msgs, self._outbox = self._outbox, []
        if not msgs:
            return
        if len(self.spool):
            self._spool(msgs, None)
            return
        try:
            for i in range(0, len(msgs), self.batch_chunks):
                part = msgs[i : i + self.batch_chunks]
                self.send_many(part)  # type: ignore[misc]
                self._sent(part)
        except SendError as exc:
            self._spool(msgs[i:], exc)

    def _sent(self, msgs: list[dict[str, Any]]) -> None:
        self.chunks_sent += len(msgs)
        for m in msgs:
            self.metrics.chunks_sent_total.labels(m["station"]).inc()

    def _spool(self, msgs: list[dict[str, Any]], exc: Exception | None) -> None:
        if exc is not None:
            log.warning("broker unreachable (%s); spooling chunks to %s", exc, self.spool.dir)
        for m in msgs:
            self.spool.put(m)
        self.metrics.chunks_spooled.set(len(self.spool))

    def flush_spool(self) -> int:
        if not len(self.spool):
            return 0

        def send(msg):
            self.send_fn(msg)
            self.chunks_sent += 1
            self.metrics.chunks_sent_total.labels(msg["station"]).inc()

        try:
            n = self.spool.drain(send)
        except SendError:
            n = 0
        self.metrics.chunks_spooled.set(len(self.spool))
        if n:
            log.info("sent %d spooled chunks; %d left", n, len(self.spool))
        return n

    def cut_and_send(self, b: StationBuffer, final: bool = False) -> int:
        n = 0
        for chunk, st in b.cut(final=final):
            chunk.mseed = stream_to_mseed(st)
            chunk.sent_at = time.time()
            msg = chunk.to_message()
            msg["final"] = False
            self.held[(b.station, b.channel_prefix)].append(msg)
            n += 1
        held = self.held[(b.station, b.channel_prefix)]
        if final and held:
            held[-1]["final"] = True
        if n or held:
            self._release(b)
        return n

    def _release(self, b: StationBuffer) -> None:
        held = self.held[(b.station, b.channel_prefix)]
        while held:
            in_flight = self._in_flight_sent(b)
            if in_flight >= self.max_in_flight and not held[0].get("final"):
                break
            self._dispatch(held.pop(0))
        self.metrics.chunks_in_flight.labels(b.station).set(max(0, self._in_flight_sent(b)))

    def _in_flight_sent(self, b: StationBuffer) -> int:
        sent_seq = b.seq - len(
            self.held[(b.station, b.channel_prefix)]
        )  # next seq not yet dispatched
        if self.progress is None:
            return 0
        done = self.progress().get(f"{b.station}|{b.channel_prefix}")
        return sent_seq - 1 - (done if done is not None else -1)

    # --------------------------------------------------------------- loop
    def run(self, stop: threading.Event, until_feeds_end: bool = False) -> None:
        threads = []
        for f in self.feeds:
            t = threading.Thread(
                target=self._run_feed, args=(f, stop), name=f"feed-{f.name}", daemon=True
            )
            t.start()
            threads.append(t)
        last_housekeeping = 0.0
        try:
            while not stop.is_set():
                self.inbox.wait(0.2)
                for item in self.inbox.drain():
                    if item is None:
                        self._feeds_done += 1
                        continue
                    b = self.add(item)
                    if b is not None:
                        # Cut as soon as a chunk is complete, not after the whole burst
                        # of a thousand stations' packets has been buffered.
                        self.cut_and_send(b)
                    if self._outbox and time.time() - self._outbox_t0 > OUTBOX_LINGER_S:
                        self.flush_outbox()
                for key, held in self.held.items():
                    if held:
                        self._release(self.buffers[key])
                self.flush_outbox()
                now = time.time()
                if now - last_housekeeping > 1.0:
                    self.flush_spool()
                    self.update_feed_metrics(now)
                    self.save_state()
                    last_housekeeping = now
                if until_feeds_end and self._feeds_done >= len(self.feeds) and self.inbox.empty():
                    break
            if until_feeds_end and not stop.is_set():
                self.finish()
        finally:
            self.flush_outbox()  # cut chunks are sent or spooled, never dropped
            self.update_feed_metrics()
            if not (until_feeds_end and not stop.is_set()):
                self.save_buffers()  # a stop, not the end of the data: keep what was not sent
            self.save_state()

    def finish(self, timeout_s: float = 600.0) -> None:
        """The feeds have ended: send the last partial chunks (flagged final) and the spool."""
        for b in self.buffers.values():
            self.cut_and_send(b, final=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self.flush_spool()
            for b in self.buffers.values():
                self._release(b)
            self.flush_outbox()
            if not len(self.spool) and not any(self.held.values()):
                break
            time.sleep(0.2)
        self.save_state()

    def _run_feed(self, feed: Feed, stop: threading.Event) -> None:
        try:
            feed.run(self.emit, stop)
        except Exception:
            log.exception("feed %s stopped with an error", feed.name)
        finally:
            self.inbox.put(None)
