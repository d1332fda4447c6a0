"""File feeds (serving/feeds/files.py) on real waveforms: replay, folder watcher, SDS follower.

Every feed runs as the feeder runs it: ``run(emit, stop)`` in a thread, stopped by a
``threading.Event``. What they emit is compared sample for sample with the files.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import obspy
import pytest
from obspy import Trace, UTCDateTime

from quakescan.serving.feeds.files import FolderFeed, ReplayFeed, SDSFollowFeed

WAIT_S = 10.0  # upper bound of every wait; the tests normally take far less

UV05 = "reunion/YA.UV05.00.HHZ.2010-09-01T0728.mseed"  # 10 min of STEIM2 integers
UV06 = "reunion/YA.UV06.00.HHZ.2010-09-01T0728.mseed"
BKS = "ncal/BK.BKS.20170715T104920.mseed"  # 3 components, float32


class Collector:
    """The feed's ``emit``: keeps every trace and when it came (monotonic seconds)."""

    def __init__(self, on_trace: Callable[[list[Trace]], None] | None = None) -> None:
        self.traces: list[Trace] = []
        self.times: list[float] = []
        self.on_trace = on_trace
        self._cond = threading.Condition()

    def __call__(self, tr: Trace) -> None:
        with self._cond:
            self.traces.append(tr)
            self.times.append(time.monotonic())
            self._cond.notify_all()
        if self.on_trace:
            self.on_trace(self.traces)

    def samples(self, trace_id: str | None = None) -> int:
        with self._cond:
            return sum(t.stats.npts for t in self.traces if trace_id in (None, t.id))

    def wait_samples(self, n: int, trace_id: str | None = None, timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: sum(t.stats.npts for t in self.traces if trace_id in (None, t.id)) >= n,
                timeout,
            )


class Running:
    """A feed running in a thread until ``stop()`` (which checks it returned promptly)."""

    def __init__(self, feed, emit) -> None:
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []

        def target() -> None:
            try:
                feed.run(emit, self.stop_event)
            except BaseException as exc:  # surfaced in the test, not lost in the thread
                self.errors.append(exc)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the feed did not return after stop was set"
        assert not self.errors, self.errors

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def joined(traces: list[Trace], trace_id: str) -> Trace:
    """The pieces of one channel, checked to be contiguous and without overlap, as one trace."""
    pieces = sorted((t for t in traces if t.id == trace_id), key=lambda t: t.stats.starttime)
    assert pieces, f"nothing of {trace_id} was emitted"
    for a, b in zip(pieces[:-1], pieces[1:], strict=True):
        step = b.stats.starttime - a.stats.endtime
        assert abs(step - a.stats.delta) < a.stats.delta / 100, (
            f"{trace_id}: {step - a.stats.delta:+.4f} s between pieces ending {a.stats.endtime} "
            f"and starting {b.stats.starttime} (gap or duplicate)"
        )
    out = pieces[0].copy()
    out.data = np.concatenate([p.data for p in pieces])
    return out


def assert_same_trace(got: Trace, want: Trace) -> None:
    assert got.id == want.id
    assert got.stats.starttime == want.stats.starttime
    assert got.stats.sampling_rate == want.stats.sampling_rate
    assert got.stats.npts == want.stats.npts
    np.testing.assert_array_equal(got.data, want.data)


def write_slice(src: Path, dst: Path, seconds: float) -> Trace:
    """The first ``seconds`` of a real record, written as its own miniSEED file."""
    tr = obspy.read(str(src))[0]
    tr = tr.slice(
        tr.stats.starttime,
        tr.stats.starttime + seconds - tr.stats.delta / 2,
        nearest_sample=False,
    )
    tr.write(str(dst), format="MSEED", encoding="STEIM2", reclen=512)
    return obspy.read(str(dst))[0]


# ------------------------------------------------------------------ replay
def test_replay_delivers_every_sample_once_in_end_time_order(data_dir):
    paths = [data_dir / UV05, data_dir / BKS]
    want = obspy.read(str(paths[0])) + obspy.read(str(paths[1]))
    got = Collector()
    ReplayFeed(paths, speed=0.0, packet_s=2.0).run(got, threading.Event())  # returns at the end

    ends = [t.stats.endtime for t in got.traces]
    assert ends == sorted(ends), "pieces come in end-time order, as a live feed sends them"
    assert all(t.stats.npts <= 200 for t in got.traces), "2 s packets at 100 Hz"
    assert {t.id for t in got.traces} == {t.id for t in want}
    for tr in want:
        assert_same_trace(joined(got.traces, tr.id), tr)
    assert got.samples() == sum(tr.stats.npts for tr in want), "nothing delivered twice"


def test_replay_skips_an_unreadable_file_and_replays_the_rest(data_dir, tmp_path):
    bad = tmp_path / "broken.mseed"
    bad.write_bytes(b"this is not miniSEED\n" * 200)
    got = Collector()
    ReplayFeed([bad, data_dir / UV06], speed=0.0).run(got, threading.Event())
    assert_same_trace(joined(got.traces, "YA.UV06.00.HHZ"), obspy.read(str(data_dir / UV06))[0])


def test_replay_paces_the_data_at_the_requested_speed(data_dir, tmp_path):
    want = write_slice(data_dir / UV05, tmp_path / "uv05_20s.mseed", 20.0)
    got = Collector()
    t0 = time.monotonic()
    ReplayFeed([tmp_path / "uv05_20s.mseed"], speed=20.0, packet_s=1.0).run(got, threading.Event())
    took = time.monotonic() - t0
    assert_same_trace(joined(got.traces, want.id), want)
    # 20 s of data at 20x: about one second, each packet no earlier than its data would allow.
    assert 0.9 <= took < 3.0, f"a 20 s replay at 20x took {took:.2f} s"
    first_end, first_wall = got.traces[0].stats.endtime, got.times[0]
    for tr, wall in zip(got.traces, got.times, strict=True):
        due = (tr.stats.endtime - first_end) / 20.0
        assert wall - first_wall >= due - 0.03, f"packet ending {tr.stats.endtime} came early"
    span_wall = got.times[-1] - first_wall
    assert 0.85 <= span_wall < 2.0, f"19 s of packet ends spread over {span_wall:.2f} s"


def test_replay_shift_to_now_moves_the_data_to_the_wall_clock(data_dir):
    orig = obspy.read(str(data_dir / UV05)) + obspy.read(str(data_dir / UV06))
    got = Collector()
    before = UTCDateTime()
    ReplayFeed([data_dir / UV05, data_dir / UV06], speed=0.0, shift_to_now=True).run(
        got, threading.Event()
    )
    after = UTCDateTime()
    first = min(t.stats.starttime for t in got.traces)
    assert before - 1.0 <= first <= after, f"first sample at {first}, replay ran {before}..{after}"
    shift = first - orig[0].stats.starttime
    for tr in orig:
        g = joined(got.traces, tr.id)
        assert abs(g.stats.starttime - (tr.stats.starttime + shift)) < 1e-6
        np.testing.assert_array_equal(g.data, tr.data)  # times moved, samples untouched


def test_replay_loop_repeats_the_data_seamlessly(data_dir, tmp_path):
    want = write_slice(data_dir / UV06, tmp_path / "uv06_10s.mseed", 10.0)
    n = want.stats.npts

    def enough(traces: list[Trace]) -> None:
        if sum(t.stats.npts for t in traces) >= 2 * n + 100:
            feed_stop.set()

    got = Collector(on_trace=enough)
    feed_stop = threading.Event()
    feed = ReplayFeed([tmp_path / "uv06_10s.mseed"], speed=0.0, packet_s=1.0, loop=True)
    t = threading.Thread(target=feed.run, args=(got, feed_stop), daemon=True)
    t.start()
    t.join(WAIT_S)
    assert not t.is_alive(), "a looping replay stops when told to"
    whole = joined(got.traces, want.id)  # the passes follow each other with no gap or overlap
    assert whole.stats.starttime == want.stats.starttime
    assert whole.stats.npts >= 2 * n + 100
    np.testing.assert_array_equal(whole.data[:n], want.data)
    np.testing.assert_array_equal(whole.data[n : 2 * n], want.data)
    np.testing.assert_array_equal(whole.data[2 * n : 2 * n + 100], want.data[:100])


def test_replay_refuses_bad_arguments(data_dir, tmp_path):
    with pytest.raises(ValueError, match="speed"):
        ReplayFeed([data_dir / UV05], speed=-1)
    with pytest.raises(ValueError, match="packet_s"):
        ReplayFeed([data_dir / UV05], packet_s=0)
    with pytest.raises(FileNotFoundError, match="nowhere.mseed"):
        ReplayFeed([tmp_path / "nowhere.mseed"])


# ------------------------------------------------------------------ folder
def _names(d: Path) -> set[str]:
    return {p.name for p in d.iterdir() if p.is_file()} if d.exists() else set()


def test_folder_reads_each_dropped_file_once_and_moves_it_to_processed(data_dir, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    got = Collector()
    feed = FolderFeed(inbox, poll_s=0.05)
    with Running(feed, got):
        shutil.copy(data_dir / UV05, inbox / "a.mseed")
        shutil.copy(data_dir / BKS, inbox / "b.mseed")
        assert got.wait_samples(60000 + 3 * 9001)
        time.sleep(0.3)  # several more polls: nothing is read again
    want = obspy.read(str(data_dir / UV05)) + obspy.read(str(data_dir / BKS))
    assert got.samples() == sum(t.stats.npts for t in want), "each file read exactly once"
    for tr in want:
        assert_same_trace(joined(got.traces, tr.id), tr)
    assert _names(inbox) == set()
    assert _names(inbox / "processed") == {"a.mseed", "b.mseed"}
    assert _names(inbox / "rejected") == set()


def test_folder_waits_until_a_growing_file_is_complete(data_dir, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    raw = (data_dir / UV05).read_bytes()  # 20 records of 4096 bytes
    got = Collector()
    feed = FolderFeed(inbox, poll_s=0.3)
    with Running(feed, got):
        # A writer copying the file slowly: the size changes between every two polls.
        with open(inbox / "slow.mseed", "wb") as f:
            for i in range(0, len(raw), 4096):
                f.write(raw[i : i + 4096])
                f.flush()
                assert not got.traces, "the file was read while it was still being written"
                time.sleep(0.03)
        # A writer that writes to a temporary name and renames when done.
        part = inbox / "renamed.mseed.part"
        part.write_bytes((data_dir / UV06).read_bytes())
        time.sleep(0.8)  # two polls: a .part file is never read
        assert got.samples("YA.UV06.00.HHZ") == 0
        part.rename(inbox / "renamed.mseed")
        assert got.wait_samples(60000, "YA.UV05.00.HHZ")
        assert got.wait_samples(60000, "YA.UV06.00.HHZ")
    assert_same_trace(joined(got.traces, "YA.UV05.00.HHZ"), obspy.read(str(data_dir / UV05))[0])
    assert_same_trace(joined(got.traces, "YA.UV06.00.HHZ"), obspy.read(str(data_dir / UV06))[0])
    assert _names(inbox / "processed") == {"slow.mseed", "renamed.mseed"}


def test_folder_moves_corrupt_files_to_rejected_and_reads_the_rest(data_dir, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "0-garbage.mseed").write_bytes(b"\x00not a seismogram\n" * 300)
    shutil.copy(data_dir / UV06, inbox / "1-good.mseed")
    shutil.copy(data_dir / BKS, inbox / "2-good.mseed")
    got = Collector()
    feed = FolderFeed(inbox, poll_s=0.05)
    with Running(feed, got):
        assert got.wait_samples(60000 + 3 * 9001)
        deadline = time.time() + WAIT_S
        while time.time() < deadline and _names(inbox):
            time.sleep(0.05)
    assert _names(inbox / "rejected") == {"0-garbage.mseed"}
    assert _names(inbox / "processed") == {"1-good.mseed", "2-good.mseed"}
    assert feed.rejected == 1
    assert (inbox / "rejected" / "0-garbage.mseed").read_bytes().startswith(b"\x00not a")
    for tr in obspy.read(str(data_dir / UV06)) + obspy.read(str(data_dir / BKS)):
        assert_same_trace(joined(got.traces, tr.id), tr)


def test_folder_restart_reads_only_new_files(data_dir, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    first = Collector()
    with Running(FolderFeed(inbox, poll_s=0.05), first):
        shutil.copy(data_dir / UV05, inbox / "a.mseed")
        assert first.wait_samples(60000)
    # The service restarts: the processed file stays processed, a file dropped meanwhile is read.
    shutil.copy(data_dir / UV06, inbox / "b.mseed")
    second = Collector()
    with Running(FolderFeed(inbox, poll_s=0.05), second):
        assert second.wait_samples(60000)
        time.sleep(0.3)
    assert {t.id for t in second.traces} == {"YA.UV06.00.HHZ"}
    assert second.samples() == 60000
    assert _names(inbox / "processed") == {"a.mseed", "b.mseed"}


def test_folder_feed_needs_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        FolderFeed(tmp_path / "missing")


# --------------------------------------------------------------------- SDS
def sds_path(root: Path, tr: Trace) -> Path:
    s, t = tr.stats, tr.stats.starttime
    return (
        root
        / f"{t.year}"
        / s.network
        / s.station
        / f"{s.channel}.D"
        / f"{s.network}.{s.station}.{s.location}.{s.channel}.D.{t.year}.{t.julday:03d}"
    )


def today_trace(src: Path) -> Trace:
    """A real record moved to start at 00:10 today (UTC), as a live archive would hold it."""
    tr = obspy.read(str(src))[0]
    tr.stats.starttime = UTCDateTime(UTCDateTime().date) + 600
    return tr


def records(tr: Trace) -> bytes:
    """A piece of data as a datalogger writes it: whole 512-byte STEIM2 records."""
    buf = io.BytesIO()
    tr.write(buf, format="MSEED", encoding="STEIM2", reclen=512)
    return buf.getvalue()


def pieces(tr: Trace, seconds: float) -> list[Trace]:
    n = round(seconds * tr.stats.sampling_rate)
    out = []
    for i in range(0, tr.stats.npts, n):
        p = tr.copy()
        p.data = tr.data[i : i + n].copy()
        p.stats.starttime = tr.stats.starttime + i * tr.stats.delta
        out.append(p)
    return out


def append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)


def test_sds_follow_emits_appended_records_incrementally_without_duplicates(data_dir, tmp_path):
    root = tmp_path / "sds"
    root.mkdir()
    uv05, uv06 = today_trace(data_dir / UV05), today_trace(data_dir / UV06)
    f05, f06 = sds_path(root, uv05), sds_path(root, uv06)
    got = Collector()
    feed = SDSFollowFeed(root, ["YA.UV05"], poll_s=0.05, state_file=tmp_path / "sds.json")
    written = 0
    with Running(feed, got):
        for p05, p06 in zip(pieces(uv05, 60.0), pieces(uv06, 60.0), strict=True):
            append(f05, records(p05))
            append(f06, records(p06))  # another station: not followed
            written += p05.stats.npts
            assert got.wait_samples(written), f"{written} samples written, {got.samples()} came"
            assert got.samples() == written, "each poll emits only what is new"
        time.sleep(0.3)
    assert {t.id for t in got.traces} == {"YA.UV05.00.HHZ"}
    assert len(got.traces) >= 10, "one emit per minute of data appended, not one at the end"
    assert_same_trace(joined(got.traces, uv05.id), uv05)


def test_sds_follow_reads_whole_records_only(data_dir, tmp_path):
    root = tmp_path / "sds"
    root.mkdir()
    tr = today_trace(data_dir / UV05)
    path = sds_path(root, tr)
    first, second = pieces(tr, 30.0)[:2]
    b1, b2 = records(first), records(second)
    assert len(b2) > 1024 and len(b2) % 512 == 0
    cut = len(b2) - 700  # the writer is in the middle of the second-last record
    got = Collector()
    with Running(SDSFollowFeed(root, ["YA.UV05.00.HHZ"], poll_s=0.05), got):
        append(path, b1 + b2[:cut])
        whole = obspy.read(io.BytesIO(b1 + b2[: cut // 512 * 512]))[0].stats.npts
        assert got.wait_samples(whole)
        time.sleep(0.3)  # more polls while the record stays incomplete
        assert got.samples() == whole, "no sample of an incomplete record is emitted"
        append(path, b2[cut:])
        assert got.wait_samples(first.stats.npts + second.stats.npts)
        time.sleep(0.2)
    both = first.copy()
    both.data = np.concatenate([first.data, second.data])
    assert got.samples() == both.stats.npts
    assert_same_trace(joined(got.traces, tr.id), both)


def test_sds_follow_restarted_with_its_state_file_continues_without_reemitting(data_dir, tmp_path):
    root = tmp_path / "sds"
    root.mkdir()
    state = tmp_path / "state" / "sds.json"
    state.parent.mkdir()
    tr = today_trace(data_dir / UV05)
    path = sds_path(root, tr)
    parts = pieces(tr, 100.0)
    first = Collector()
    with Running(SDSFollowFeed(root, ["YA.UV05"], poll_s=0.05, state_file=state), first):
        for p in parts[:3]:
            append(path, records(p))
        assert first.wait_samples(30000)
    assert state.exists() and json.loads(state.read_text())["offsets"]
    for p in parts[3:]:  # written while the feed was down
        append(path, records(p))
    second = Collector()
    with Running(SDSFollowFeed(root, ["YA.UV05"], poll_s=0.05, state_file=state), second):
        assert second.wait_samples(30000)
        time.sleep(0.3)
    assert second.samples() == 30000, "the restarted feed emits only the data it had not read"
    rest = joined(second.traces, tr.id)
    assert rest.stats.starttime == parts[3].stats.starttime
    np.testing.assert_array_equal(rest.data, tr.data[30000:])
    assert_same_trace(joined(first.traces + second.traces, tr.id), tr)


def test_sds_follow_reads_the_previous_day_records_that_arrive_after_midnight(data_dir, tmp_path):
    """slarchive files a record by its start time: the last records of a day are written
    a little after midnight, into yesterday's file. They must still be read."""
    root = tmp_path / "sds"
    root.mkdir()
    tr = obspy.read(str(data_dir / UV05))[0]
    yesterday = UTCDateTime(UTCDateTime().date) - 86400
    tr.stats.starttime = yesterday + 86400 - tr.stats.npts * tr.stats.delta  # ends at midnight
    path = sds_path(root, tr)
    head, tail = pieces(tr, 540.0)  # the last minute of yesterday arrives late
    got = Collector()
    feed = SDSFollowFeed(root, ["YA.UV05"], poll_s=0.05, start=yesterday)
    with Running(feed, got):
        append(path, records(head))
        assert got.wait_samples(head.stats.npts)
        time.sleep(0.2)  # the feed has moved on to today's files
        append(path, records(tail))
        assert got.wait_samples(tr.stats.npts), "the late records of yesterday were not read"
    assert_same_trace(joined(got.traces, tr.id), tr)


def test_sds_follow_started_days_back_catches_up_every_day_to_today(data_dir, tmp_path):
    root = tmp_path / "sds"
    root.mkdir()
    today = UTCDateTime(UTCDateTime().date)
    src = obspy.read(str(data_dir / UV05))[0]
    days = [today - 2 * 86400, today - 86400, today]
    for i, day in enumerate(days):
        tr = src.copy()
        tr.data = src.data[i * 20000 : (i + 1) * 20000].copy()
        tr.stats.starttime = day + 3600
        append(sds_path(root, tr), records(tr))
    got = Collector()
    with Running(SDSFollowFeed(root, ["YA.UV05"], poll_s=0.05, start=days[0]), got):
        assert got.wait_samples(60000), f"{got.samples()} of 3 days' 60000 samples came"
        time.sleep(0.2)
    assert got.samples() == 60000
    assert sorted({t.stats.starttime.date for t in got.traces}) == [d.date for d in days]


def test_sds_follow_refuses_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        SDSFollowFeed(tmp_path / "missing", ["YA.UV05"])
    with pytest.raises(ValueError, match="NET.STA"):
        SDSFollowFeed(tmp_path, ["UV05"])
