"""File-based feeds: replay of files, a folder watcher, an SDS archive follower."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import threading
import time
from pathlib import Path

import obspy
from obspy import Stream, Trace, UTCDateTime
from obspy.io.mseed.util import get_record_information

from quakescan.detector.fsio import atomic_write
from quakescan.detector.prepare import expand_paths, trace_header

from . import Emit, Feed

log = logging.getLogger(__name__)


def _pieces(st: Stream, packet_s: float) -> list[Trace]:
    """Traces cut into packets of ``packet_s`` seconds, ordered by end time (as a live feed sends them)."""
    out = []
    for tr in st:
        t = tr.stats.starttime
        n = max(1, round(packet_s * tr.stats.sampling_rate))
        for i in range(0, tr.stats.npts, n):
            out.append(
                Trace(tr.data[i : i + n].copy(), header=trace_header(tr, t + i * tr.stats.delta))
            )
    out.sort(key=lambda p: (p.stats.endtime, p.id))
    return out


class ReplayFeed(Feed):
    """Replay files as if they were arriving now.

    speed: 1.0 is real time, 10 ten times faster, 0 as fast as possible.
    shift_to_now: move the data's times so the first sample is "now" (load
    tests and demos measure latency against the wall clock).
    """

    def __init__(
        self,
        paths: list[str | os.PathLike],
        *,
        speed: float = 0.0,
        packet_s: float = 1.0,
        shift_to_now: bool = False,
        loop: bool = False,
    ) -> None:
        if speed < 0:
            raise ValueError(f"replay speed ({speed}) must be >= 0 (0: as fast as possible)")
        if packet_s <= 0:
            raise ValueError(f"packet_s ({packet_s}) must be > 0")
        self.paths = expand_paths(list(paths))
        self.speed, self.packet_s, self.shift_to_now, self.loop = (
            speed,
            packet_s,
            shift_to_now,
            loop,
        )
        self.name = f"replay:{len(self.paths)} files"

    def _load(self) -> Stream:
        st = Stream()
        for p in self.paths:
            try:
                st += obspy.read(str(p))
            except Exception as exc:
                log.warning("replay: %s is not readable (%s); skipped", p, exc)
        st.merge(method=1, fill_value=None)
        return st.split()

    def run(self, emit: Emit, stop: threading.Event) -> None:
        st = self._load()
        if not len(st):
            log.warning("replay: nothing to replay")
            return
        while True:
            t_first = min(tr.stats.starttime for tr in st)
            shift = (UTCDateTime() - t_first) if self.shift_to_now else 0.0
            pieces = _pieces(st, self.packet_s)
            wall0 = time.time()
            for p in pieces:
                if stop.is_set():
                    return
                if self.speed > 0:
                    due = wall0 + (p.stats.endtime - t_first) / self.speed
                    wait = due - time.time()
                    if wait > 0 and stop.wait(wait):
                        return
                if self.shift_to_now:
                    p.stats.starttime += shift
                emit(p)
            if not self.loop:
                return
            span = max(tr.stats.endtime for tr in st) - t_first + min(tr.stats.delta for tr in st)
            for tr in st:
                tr.stats.starttime += span


class FolderFeed(Feed):
    """Watch a folder for miniSEED files dropped into it.

    A file is read once its size has stopped changing; it is then moved to
    ``processed/`` (or ``rejected/`` when unreadable, with a logged error), so a
    restart never reads it twice.
    """

    def __init__(self, path: str | os.PathLike, *, pattern: str = "*", poll_s: float = 1.0) -> None:
        self.dir = Path(path)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"folder feed: {self.dir} is not a directory")
        self.pattern, self.poll_s = pattern, poll_s
        (self.dir / "processed").mkdir(exist_ok=True)
        (self.dir / "rejected").mkdir(exist_ok=True)
        self.name = f"folder:{self.dir}"
        self.rejected = 0

    def run(self, emit: Emit, stop: threading.Event) -> None:
        sizes: dict[Path, int] = {}
        while not stop.is_set():
            for p in sorted(self.dir.glob(self.pattern)):
                if not p.is_file() or p.name.startswith(".") or p.suffix in (".tmp", ".part"):
                    continue
                size = p.stat().st_size
                if sizes.get(p) != size:
                    sizes[p] = size  # still being written, or new: look again next time
                    continue
                sizes.pop(p, None)
                try:
                    st = obspy.read(str(p))
                except Exception as exc:
                    log.error(
                        "folder feed: %s is not readable miniSEED (%s); moved to rejected/",
                        p.name,
                        exc,
                    )
                    os.replace(p, self.dir / "rejected" / p.name)
                    self.rejected += 1
                    continue
                for tr in sorted(st, key=lambda t: t.stats.starttime):
                    emit(tr)
                os.replace(p, self.dir / "processed" / p.name)
            stop.wait(self.poll_s)


class SDSFollowFeed(Feed):
    """Follow an SDS archive as it is written (e.g. by slarchive or ringserver).

    For each station it reads the current day's files from where it stopped
    (a byte offset per file, on record boundaries, saved in ``state_file``),
    and moves on to the next day's files at midnight. Yesterday's files are
    still followed for the records written after midnight; a ``start`` in the
    past reads every day from there to today.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        stations: list[str],
        *,
        poll_s: float = 2.0,
        state_file: str | os.PathLike | None = None,
        start: UTCDateTime | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"SDS feed: root {self.root} is not a directory")
        self.stations = []
        for s in stations:
            parts = s.split(".")
            if len(parts) < 2:
                raise ValueError(
                    f"SDS feed station {s!r}: expected NET.STA[.LOC[.CHA]] (wildcards allowed)"
                )
            parts += ["*"] * (4 - len(parts))
            self.stations.append(tuple(parts[:4]))
        self.poll_s = poll_s
        self.state_file = Path(state_file) if state_file else None
        self.offsets: dict[str, int] = {}
        if self.state_file and self.state_file.exists():
            self.offsets = json.loads(self.state_file.read_text()).get("offsets", {})
        self.day = UTCDateTime(start or UTCDateTime()).date
        self.name = f"sds:{self.root}"

    def _files(self, day) -> list[Path]:
        t = UTCDateTime(day)
        out = []
        for net, sta, loc, cha in self.stations:
            pattern = (
                f"{t.year}/{net}/{sta}/{cha}.D/{net}.{sta}.{loc}.{cha}.D.{t.year}.{t.julday:03d}"
            )
            out += sorted(self.root.glob(pattern))
        return out

    def _read_new(self, p: Path) -> Stream:
        off = self.offsets.get(str(p), 0)
        size = p.stat().st_size
        if size <= off:
            return Stream()
        with open(p, "rb") as f:
            f.seek(off)
            data = f.read(size - off)
        reclen = (
            get_record_information(io.BytesIO(data))["record_length"]
            if off == 0
            else self.offsets.get(str(p) + "#reclen", 512)
        )
        usable = (len(data) // reclen) * reclen  # whole records only; the rest next time
        if not usable:
            return Stream()
        st = obspy.read(io.BytesIO(data[:usable]), format="MSEED")
        self.offsets[str(p)] = off + usable
        self.offsets[str(p) + "#reclen"] = reclen
        return st

    def _save(self) -> None:
        if self.state_file:
            atomic_write(self.state_file, json.dumps({"offsets": self.offsets}))

    def _days(self, today) -> list:
        """Every day from the oldest followed one up to today (a late start catches up)."""
        days, d = [], self.day
        while d <= today:
            days.append(d)
            d += datetime.timedelta(days=1)
        return days

    def run(self, emit: Emit, stop: threading.Event) -> None:
        while not stop.is_set():
            today = UTCDateTime().date
            for day in self._days(today):
                for p in self._files(day):
                    try:
                        st = self._read_new(p)
                    except Exception as exc:
                        log.error("SDS feed: cannot read new records of %s (%s)", p, exc)
                        continue
                    for tr in sorted(st, key=lambda t: t.stats.starttime):
                        emit(tr)
            # Keep following yesterday's files: an archiver files a record by its start
            # time, so the last records of a day are written there after midnight.
            self.day = max(self.day, today - datetime.timedelta(days=1))
            self._save()
            stop.wait(self.poll_s)
        self._save()
