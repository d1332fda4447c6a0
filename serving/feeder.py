"""The feeder: station feeds in, chunks on the time grid out to the ``detect`` queue.

Per station, incoming traces are buffered and cut into chunks responsible for
``chunk_s / step_s`` grid windows each, carrying window - step of overlap.
Chunks are numbered per station (``seq``) so the sink can put them back in
order. In-flight work per station is bounded (chunks sent and not yet
triggered by the sink). When the broker cannot be reached, chunks are spooled
to local disk and sent, oldest first, when it returns: nothing is lost.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from obspy import Stream, Trace, UTCDateTime
from quakescan.detector.fsio import atomic_write
from quakescan.detector.prepare import COMPONENT_MAP

from .chunks import Chunk, chunk_phase, chunk_windows, data_span, stream_to_mseed
from .feeds import Feed
from .metrics import Metrics

log = logging.getLogger(__name__)


class SendError(RuntimeError):
    """The broker could not take a chunk (it is then spooled)."""


# ----------------------------------------------------------------- buffers
class _Run:
    """Contiguous samples of one channel: pieces appended, joined lazily (one copy per cut)."""

    __slots__ = ("start_ns", "rate", "dt_ns", "pieces", "n", "header")

    def __init__(self, tr: Trace) -> None:
        s = tr.stats
        self.start_ns = s.starttime.ns
        self.rate = s.sampling_rate
        self.dt_ns = 1e9 / self.rate
        self.pieces = [np.asarray(tr.data)]
        self.n = len(tr.data)
        self.header = {
            "network": s.network,
            "station": s.station,
            "location": s.location,
            "channel": s.channel,
            "sampling_rate": s.sampling_rate,
        }

    @property
    def end_ns(self) -> int:
        """Time of the last sample."""
        return self.start_ns + round((self.n - 1) * self.dt_ns)

    def data(self) -> np.ndarray:
        if len(self.pieces) > 1:
            self.pieces = [np.concatenate(self.pieces)]
        return self.pieces[0]

    def index(self, t_ns: int) -> float:
        return (t_ns - self.start_ns) / self.dt_ns

    def trace(self, i0: int, i1: int) -> Trace:
        """Samples i0 .. i1 (inclusive) as a Trace."""
        hdr = dict(self.header)
        hdr["starttime"] = UTCDateTime(ns=self.start_ns + round(i0 * self.dt_ns))
        return Trace(self.data()[i0 : i1 + 1], header=hdr)


@dataclass
class StationBuffer:
    """Buffered data of one station (NET.STA.LOC + channel prefix) and its chunk counter.

    Each channel's data is a list of contiguous runs (numpy arrays): a feed's packets are
    appended, so cutting a chunk is an array slice, not a merge of many small traces.
    """

    station: str
    channel_prefix: str
    step_s: float
    window_s: float
    windows_per_chunk: int
    next_k: int | None = None  # first window not yet sent
    seq: int = 0  # sequence number of the next chunk
    runs: dict[str, list[_Run]] = field(default_factory=lambda: defaultdict(list))
    ends: dict[str, float] = field(default_factory=dict)  # newest sample time per channel
    last_sample_time: float = 0.0
    max_component_lag_s: float = 30.0
    phase: int = 0  # chunk boundaries of this station, staggered (see chunk_phase)

    def add(self, tr: Trace) -> float | None:
        """Buffer a trace; returns the gap in seconds before it, if there was one."""
        ch = tr.stats.channel
        if tr.stats.npts == 0:
            return None
        runs = self.runs[ch]
        start_ns, rate = tr.stats.starttime.ns, tr.stats.sampling_rate
        dt_ns = 1e9 / rate
        data = np.asarray(tr.data)
        if runs and runs[-1].rate == rate:
            last = runs[-1]
            skip = int(round((last.end_ns - start_ns) / dt_ns)) + 1  # samples already buffered
            if skip >= len(data):
                return None  # all of it is in the buffer already (a feed re-delivering)
            if skip > 0:
                data, start_ns = data[skip:], start_ns + round(skip * dt_ns)
        gap = None
        prev = self.ends.get(ch)
        end = (start_ns + round((len(data) - 1) * dt_ns)) / 1e9
        if prev is not None and start_ns / 1e9 - prev > 1.5 / rate:
            gap = start_ns / 1e9 - prev - 1 / rate
        if runs and runs[-1].rate == rate and abs(start_ns - runs[-1].end_ns - dt_ns) <= dt_ns / 2:
            runs[-1].pieces.append(data)
            runs[-1].n += len(data)
        else:
            if data is not tr.data:
                hdr = {k: tr.stats[k] for k in ("network", "station", "location", "channel")}
                hdr.update(sampling_rate=rate, starttime=UTCDateTime(ns=start_ns))
                tr = Trace(data, header=hdr)
            runs.append(_Run(tr))
        self.ends[ch] = max(end, prev if prev is not None else end)
        self.last_sample_time = max(self.last_sample_time, end)
        if self.next_k is None:
            step_ns = round(self.step_s * 1e9)
            self.next_k = -(-start_ns // step_ns)
        return gap

    def restore_trace(self, tr: Trace) -> None:
        """Put back data saved at a graceful stop (no duplicate or gap bookkeeping)."""
        self.runs[tr.stats.channel].append(_Run(tr))

    def _data_end(self) -> float | None:
        """Newest time up to which every component has data (lagging ones are waited for a while)."""
        if not self.ends:
            return None
        newest = max(self.ends.values())
        waiting = [e for e in self.ends.values() if newest - e <= self.max_component_lag_s]
        return min(waiting)

    def _last_k(self, k_first: int) -> int:
        return chunk_windows(k_first, self.windows_per_chunk, self.phase)

    def cut(self, final: bool = False) -> list[tuple[Chunk, Stream]]:
        """Chunks whose data is complete; with ``final`` also the last, partial one."""
        out: list[tuple[Chunk, Stream]] = []
        data_end = self._data_end()
        if self.next_k is None or data_end is None:
            return out
        step_ns = round(self.step_s * 1e9)
        # Cheap test first: is even the next chunk complete?
        k1 = self._last_k(self.next_k)
        if not final and data_end < (k1 * step_ns) / 1e9 + self.window_s - 1.0001 / self._rate():
            return out
        dt = 1.0 / self._rate()
        while True:
            earliest = self._earliest()
            if earliest is None:
                break
            # No window can start before the data does (a feed that resumed after a long gap).
            k_data = -(-round((earliest - dt / 2) * 1e9) // step_ns)
            self.next_k = max(self.next_k, k_data)
            k0 = self.next_k
            k1 = self._last_k(k0)
            t0, t1 = data_span(k0, k1, self.step_s, self.window_s)
            complete = data_end >= t1.timestamp - dt * 1.0001
            if not complete:
                if not final:
                    break
                # The end of the data: the windows that still fit; the sink flushes after it.
                k1 = max(k0, int(np.floor((data_end + dt - self.window_s) / self.step_s + 1e-6)))
                t0, t1 = data_span(k0, k1, self.step_s, self.window_s)
            st = self._slice(t0, t1 - dt / 2)
            if len(st):
                chunk = Chunk(
                    station=self.station,
                    channel_prefix=self.channel_prefix,
                    seq=self.seq,
                    k_first=k0,
                    k_last=k1,
                    step_s=self.step_s,
                    mseed=b"",
                    last_sample_time=min(data_end, max(tr.stats.endtime.timestamp for tr in st)),
                )
                out.append((chunk, st))
                self.seq += 1
            self.next_k = k1 + 1
            self._trim(UTCDateTime(ns=self.next_k * step_ns) - dt / 2)
            if not complete:
                break
        return out

    def _rate(self) -> float:
        for runs in self.runs.values():
            if runs:
                return runs[-1].rate
        return 100.0

    def _earliest(self) -> float | None:
        starts = [r.start_ns for runs in self.runs.values() for r in runs[:1]]
        return min(starts) / 1e9 if starts else None

    def _slice(self, t0: UTCDateTime, t1: UTCDateTime) -> Stream:
        """Samples with t0 <= time <= t1, one trace per contiguous run."""
        st = Stream()
        a_ns, b_ns = t0.ns, t1.ns
        for runs in self.runs.values():
            for r in runs:
                if r.end_ns < a_ns or r.start_ns > b_ns:
                    continue
                i0 = max(0, int(np.ceil(r.index(a_ns) - 1e-6)))
                i1 = min(r.n - 1, int(np.floor(r.index(b_ns) + 1e-6)))
                if i1 >= i0:
                    st.append(r.trace(i0, i1))
        return st

    def _trim(self, keep_from: UTCDateTime) -> None:
        k_ns = keep_from.ns
        for ch, runs in self.runs.items():
            kept = []
            for r in runs:
                if r.end_ns < k_ns:
                    continue
                if r.start_ns < k_ns:
                    i0 = max(0, int(np.ceil(r.index(k_ns) - 1e-6)))
                    data = r.data()[i0:]
                    r.pieces, r.n = [data], len(data)
                    r.start_ns += round(i0 * r.dt_ns)
                if r.n:
                    kept.append(r)
            self.runs[ch] = kept

    def buffered_stream(self) -> Stream:
        return Stream([r.trace(0, r.n - 1) for runs in self.runs.values() for r in runs if r.n])


# ------------------------------------------------------------------- spool
class Spool:
    """Chunk messages kept on local disk until the broker takes them (oldest first)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._n = len(self.files())

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("chunk-*.json"))

    def put(self, msg: dict[str, Any]) -> Path:
        name = (
            f"chunk-{time.time_ns():020d}-{msg['station']}-{msg['channel_prefix']}"
            f"-{msg['seq']:012d}.json"
        )
        atomic_write(self.dir / name, json.dumps(msg))
        self._n += 1
        return self.dir / name

    def __len__(self) -> int:
        return self._n

    def drain(self, send: Callable[[dict[str, Any]], None], limit: int = 1000) -> int:
        """Send spooled chunks in order; stops at the first failure. Returns how many went."""
        sent = 0
        for p in self.files()[:limit]:
            msg = json.loads(p.read_text())
            send(msg)  # raises SendError: keep the file
            p.unlink()
            self._n -= 1
            sent += 1
        return sent


# ------------------------------------------------------------------ feeder
class Inbox:
    """Traces from the feed threads to the feeder loop.

    A deque (append and popleft are atomic) polled by the loop every 5 ms, rather
    than a queue.Queue: at a thousand stations (3,000 traces a second, arriving in
    a burst) the Queue's lock, taken by both threads for every trace, was contended
    on most gets (about 70 us each in a profile). Bounded: a feed waits while it is full.
    """

    POLL_S = 0.005

    def __init__(self, maxsize: int = 100_000) -> None:
        self.q: deque[Trace | None] = deque()
        self.maxsize = maxsize

    def put(self, item: Trace | None) -> None:
        while len(self.q) >= self.maxsize:
            time.sleep(0.01)
        self.q.append(item)

    def wait(self, timeout: float) -> bool:
        """True as soon as something is in the inbox; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.q:
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.POLL_S)
        return True

    def drain(self):
        """Yield what is in the inbox now (what arrives meanwhile waits for the next pass)."""
        q = self.q
        for _ in range(len(q)):
            yield q.popleft()

    def qsize(self) -> int:
        return len(self.q)

    def empty(self) -> bool:
        return not self.q


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

    def add(self, tr: Trace) -> StationBuffer | None:
        s = tr.stats
        if len(s.channel) < 3 or COMPONENT_MAP.get(s.channel[-1]) is None or tr.stats.npts == 0:
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
            return None
        b = self._buffer(station, s.channel[:2])
        before = b.next_k
        if before is not None:
            # Data older than what was already cut (a replayed or re-delivered piece).
            step_ns = round(self.step_s * 1e9)
            if tr.stats.endtime.ns < before * step_ns:
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
