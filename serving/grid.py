"""The chunk grid, and cutting a station's buffered data into chunks on it.

Window k of a station starts at k * step_s (an absolute grid: two workers that
see overlapping data compute the same windows). A chunk is responsible for the
windows k_first .. k_last and carries the data from k_first * step_s to
k_last * step_s + window_s, so consecutive chunks overlap by window - step and
no window is lost at a boundary. ``StationBuffer.cut`` makes them from a
station's buffered traces; the feeder encodes and sends them.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from obspy import Stream, Trace, UTCDateTime

from .chunks import Chunk

if TYPE_CHECKING:
    from .config import ServiceConfig


def model_geometry(cfg: ServiceConfig) -> tuple[float, float]:
    """(step_s, window_s) of the configured model: the grid the feeder cuts on."""
    from quakescan.detector.model import OnnxModel

    spec = OnnxModel(cfg.model, device="cpu", threads=1).spec
    return (cfg.step_s or spec.step_s, spec.window_s)


# -------------------------------------------------------------------- grid
def chunk_phase(station: str, channel_prefix: str, chunk_windows_n: int) -> int:
    """A station's fixed offset of chunk boundaries, so that all stations' chunks do not
    fall due in the same second (a burst the feeder would have to cut all at once)."""
    return zlib.crc32(f"{station}|{channel_prefix}".encode()) % chunk_windows_n


def chunk_windows(k_first: int, chunk_windows_n: int, phase: int = 0) -> int:
    """The last k of a chunk that starts at k_first: chunks end at k = phase - 1 (mod n)."""
    return ((k_first - phase) // chunk_windows_n + 1) * chunk_windows_n - 1 + phase


def data_span(
    k_first: int, k_last: int, step_s: float, window_s: float
) -> tuple[UTCDateTime, UTCDateTime]:
    """The data a chunk of windows k_first..k_last needs: first window start, last window end."""
    step_ns = round(step_s * 1e9)
    t0 = UTCDateTime(ns=k_first * step_ns)
    t1 = UTCDateTime(ns=k_last * step_ns) + window_s
    return t0, t1


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
