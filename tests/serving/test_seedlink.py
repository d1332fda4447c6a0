"""SeedLinkFeed against a local SeedLink server serving real waveforms (tests/data)."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import obspy
import pytest
from obspy import Trace
from prometheus_client import CollectorRegistry

from quakescan.serving.feeds.seedlink import SeedLinkFeed, parse_stream
from quakescan.serving.metrics import Metrics

sys.path.insert(0, str(Path(__file__).parent))
from seedlink_server import SEQ_MODULUS, SeedLinkTestServer  # noqa: E402

WAIT_S = 10.0  # upper bound of every wait; the tests normally take far less

BKS = "ncal/BK.BKS.20170715T104920.mseed"  # 3 components, float32
KCR = "ncal/NC.KCR.20100305T062122.mseed"  # vertical only, float32
UV05 = "reunion/YA.UV05.00.HHZ.2010-09-01T0728.mseed"  # 10 min, STEIM2 integers
UV06 = "reunion/YA.UV06.00.HHZ.2010-09-01T0728.mseed"


class Collector:
    """The feed's ``emit``: keeps every trace, with the server connection it came on."""

    def __init__(self, server: SeedLinkTestServer | None = None) -> None:
        self.server = server
        self.traces: list[Trace] = []
        self.connection: list[int] = []  # server.connections_total when each trace came
        self._cond = threading.Condition()

    def __call__(self, trace: Trace) -> None:
        with self._cond:
            self.traces.append(trace)
            self.connection.append(self.server.connections_total if self.server else 0)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.traces) >= n, timeout)


@contextmanager
def running(feed: SeedLinkFeed, emit: Callable[[Trace], None]) -> Iterator[threading.Event]:
    """Run the feed in a thread; on exit, stop it and check that ``run`` returned promptly."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            feed.run(emit, stop)
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="seedlink-feed", daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=3.0)
    assert not thread.is_alive(), "SeedLinkFeed.run did not return within 3 s of stop"
    assert not errors, errors


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll a condition that has no event to wait on (a metric value)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def reconnects(metrics: Metrics, feed: SeedLinkFeed) -> float:
    return metrics.feed_reconnects_total.labels(feed=feed.name)._value.get()


def merged(traces: list[Trace]) -> dict[str, Trace]:
    """Per channel, the traces joined end to end; fails on any gap or overlap."""
    by_id: dict[str, list[Trace]] = {}
    for tr in traces:
        by_id.setdefault(tr.id, []).append(tr)
    out = {}
    for cid, parts in by_id.items():
        parts.sort(key=lambda t: t.stats.starttime)
        for prev, nxt in zip(parts, parts[1:], strict=False):
            expected = prev.stats.endtime + prev.stats.delta
            assert abs(nxt.stats.starttime - expected) < 1e-4, (
                f"{cid}: record at {nxt.stats.starttime} does not follow the one ending "
                f"{prev.stats.endtime} (gap or duplicate)"
            )
        out[cid] = Trace(np.concatenate([t.data for t in parts]), header=parts[0].stats.copy())
    return out


def assert_same_as_files(traces: list[Trace], files: list[Path]) -> None:
    """The received records, joined, are exactly the files' samples: nothing lost or doubled."""
    got = merged(traces)
    original = obspy.Stream()
    for f in files:
        original += obspy.read(str(f))
    assert sorted(got) == sorted(tr.id for tr in original)
    for tr in original:
        g = got[tr.id]
        assert g.stats.starttime == tr.stats.starttime, tr.id
        assert g.data.dtype == tr.data.dtype, tr.id
        np.testing.assert_array_equal(g.data, tr.data, err_msg=tr.id)


def seqs_by_station(server: SeedLinkTestServer, traces: list[Trace]) -> dict[tuple, list[int]]:
    """The sequence numbers of the delivered records, per (net, sta), in delivery order."""
    index = {(r.id, r.starttime.ns): r.seq for r in server.records}
    out: dict[tuple, list[int]] = {}
    for tr in traces:
        out.setdefault((tr.stats.network, tr.stats.station), []).append(
            index[(tr.id, tr.stats.starttime.ns)]
        )
    return out


def new_feed(server: SeedLinkTestServer, streams: list[str], **kw) -> SeedLinkFeed:
    kw.setdefault("backoff_initial_s", 0.05)
    kw.setdefault("backoff_max_s", 0.2)
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("metrics", Metrics(CollectorRegistry()))
    return SeedLinkFeed(server.address, streams, **kw)


# --------------------------------------------------------------------------- tests


def test_two_stations_arrive_complete_and_exact(data_dir: Path) -> None:
    files = [data_dir / BKS, data_dir / UV05]
    with SeedLinkTestServer(files, paused=True) as server:
        got = Collector(server)
        feed = new_feed(server, ["BK.BKS", "YA_UV05:00HH?"])
        assert feed.name == f"seedlink:{server.address}"
        with running(feed, got):
            assert server.wait_until(lambda s: s.sessions_started == 1, WAIT_S)
            server.resume()  # every record is published after the feed subscribed (DATA)
            assert got.wait_for(len(server.records))
        assert len(got.traces) == len(server.records)
        assert_same_as_files(got.traces, files)
        # one Trace per record, plain stats, per-station positions at the last record
        assert {tr.stats.npts for tr in got.traces} <= {r.npts for r in server.records}
        assert feed.positions() == {
            f"{n}.{s}": server.station_records(n, s)[-1].seq for n, s in server.stations
        }
        assert server.requests_of_connection(1)[("YA", "UV05")].seq is None
        assert "SELECT 00HH?" in server.commands


def test_disconnect_mid_stream_resumes_without_loss_or_duplicates(data_dir: Path) -> None:
    files = [data_dir / BKS, data_dir / KCR]
    metrics = Metrics(CollectorRegistry())
    with SeedLinkTestServer(files, paused=True, records_per_s=600) as server:
        got = Collector(server)
        feed = new_feed(server, ["BK.BKS", "NC.KCR"], metrics=metrics)
        with running(feed, got):
            assert server.wait_until(lambda s: s.sessions_started == 1, WAIT_S)
            server.resume()
            assert got.wait_for(80)
            assert server.drop_connections() == 1  # records in flight are lost in transit
            assert server.wait_until(lambda s: s.sessions_started == 2, WAIT_S)
            assert got.wait_for(len(server.records))
        assert reconnects(metrics, feed) == 1
        assert server.connections_total == 2
        assert_same_as_files(got.traces, files)
        # the second connection asked each station for the record after its last delivered one
        resumed = server.requests_of_connection(2)
        for key, seqs in seqs_by_station(server, got.traces).items():
            n_before = sum(
                1
                for tr, conn in zip(got.traces, got.connection, strict=True)
                if conn == 1 and (tr.stats.network, tr.stats.station) == key
            )
            assert resumed[key].command == "DATA"
            assert resumed[key].seq == server.station_records(*key)[n_before].seq
            assert seqs == [r.seq for r in server.station_records(*key)]  # in order, once each


def test_restart_with_state_file_resumes_after_last_record(data_dir: Path, tmp_path: Path) -> None:
    files = [data_dir / BKS, data_dir / UV06]
    state = tmp_path / "state" / "seedlink.json"
    with SeedLinkTestServer(files, paused=True, records_per_s=600) as server:
        first, second = Collector(server), Collector(server)
        feed1 = new_feed(server, ["BK.BKS", "YA.UV06"], state_file=state)
        with running(feed1, first):
            assert server.wait_until(lambda s: s.sessions_started == 1, WAIT_S)
            server.resume()
            assert first.wait_for(100)
        # stopped mid-stream: the state file holds the last delivered record per station
        doc = json.loads(state.read_text())
        assert doc["format"] == "quakescan-seedlink-state" and doc["server"] == server.address
        last = {k: v[-1] for k, v in seqs_by_station(server, first.traces).items()}
        assert {k: v["seq"] for k, v in doc["stations"].items()} == {
            f"{n}.{s}": seq for (n, s), seq in last.items()
        }
        assert not list(state.parent.glob(".*.tmp")), "temporary state file left behind"
        assert len(first.traces) < len(server.records), "the stop was not mid-stream"

        feed2 = new_feed(server, ["BK.BKS", "YA.UV06"], state_file=state)
        assert feed2.positions() == {f"{n}.{s}": seq for (n, s), seq in last.items()}
        with running(feed2, second):
            assert server.wait_until(lambda s: s.sessions_started == 2, WAIT_S)
            assert second.wait_for(len(server.records) - len(first.traces))
        for key, seq in last.items():
            assert server.requests_of_connection(2)[key].seq == (seq + 1) % SEQ_MODULUS
        union = first.traces + second.traces
        assert len(union) == len(server.records)
        assert_same_as_files(union, files)


def test_server_down_at_start_retries_with_backoff_then_streams(data_dir: Path) -> None:
    files = [data_dir / UV05]
    metrics = Metrics(CollectorRegistry())
    server = SeedLinkTestServer(files)  # port reserved, connections refused until start()
    try:
        got = Collector(server)
        begin = server.records[0].starttime  # TIME: everything from the first record
        feed = new_feed(server, ["YA.UV05"], metrics=metrics, begin_time=begin)
        with running(feed, got):
            assert wait_until(lambda: reconnects(metrics, feed) >= 3)
            server.start()
            assert got.wait_for(len(server.records))
        assert server.requests_of_connection(1)[("YA", "UV05")].command == "TIME"
        assert_same_as_files(got.traces, files)
    finally:
        server.stop()


def test_backoff_grows_to_its_cap(data_dir: Path) -> None:
    server = SeedLinkTestServer([data_dir / UV06])  # never started: every attempt is refused
    try:
        metrics = Metrics(CollectorRegistry())
        feed = new_feed(
            server, ["YA.UV06"], metrics=metrics, backoff_initial_s=0.05, backoff_max_s=0.2
        )
        with running(feed, Collector()):
            assert wait_until(lambda: reconnects(metrics, feed) >= 1)
            t0 = time.monotonic()
            assert wait_until(lambda: reconnects(metrics, feed) >= 7)
            elapsed = time.monotonic() - t0
        # waits 0.05 0.1 0.2 0.2 0.2 0.2 (minus <= 20 % jitter) = 0.95 s; uncapped: 3.15 s
        assert 0.95 * 0.8 <= elapsed < 2.0
    finally:
        server.stop()


def test_stop_returns_promptly_while_waiting_to_reconnect(data_dir: Path) -> None:
    server = SeedLinkTestServer([data_dir / UV06])
    try:
        metrics = Metrics(CollectorRegistry())
        feed = new_feed(
            server, ["YA.UV06"], metrics=metrics, backoff_initial_s=30, backoff_max_s=60
        )
        with running(feed, Collector()) as stop:
            assert wait_until(lambda: reconnects(metrics, feed) == 1)
            t0 = time.monotonic()
            stop.set()
        assert time.monotonic() - t0 < 2.0
    finally:
        server.stop()


def test_stop_returns_promptly_on_a_quiet_link_kept_alive(data_dir: Path) -> None:
    with SeedLinkTestServer([data_dir / UV06], paused=True) as server:
        metrics = Metrics(CollectorRegistry())
        feed = new_feed(server, ["YA.UV06"], metrics=metrics, keepalive_s=0.2, timeout_s=1.0)
        with running(feed, Collector()) as stop:
            assert server.wait_until(lambda s: s.sessions_started == 1, WAIT_S)
            # nothing to send: the feed keeps the link alive with INFO ID, no reconnection
            assert server.wait_until(lambda s: s.info_requests_total >= 3, WAIT_S)
            assert reconnects(metrics, feed) == 0
            t0 = time.monotonic()
            stop.set()
        assert time.monotonic() - t0 < 2.0
        assert server.wait_until(lambda s: s.commands[-1] == "BYE", WAIT_S)  # a polite goodbye


def test_hung_link_is_detected_by_timeout(data_dir: Path) -> None:
    files = [data_dir / UV06]
    with SeedLinkTestServer(files, paused=True) as server:
        metrics = Metrics(CollectorRegistry())
        got = Collector(server)
        feed = new_feed(server, ["YA.UV06"], metrics=metrics, keepalive_s=0.1, timeout_s=0.5)
        with running(feed, got):
            assert server.wait_until(lambda s: s.sessions_started == 1, WAIT_S)
            server.set_silent(True)  # connection open, but neither data nor INFO answers
            assert wait_until(lambda: reconnects(metrics, feed) >= 1)
            server.set_silent(False)
            assert server.wait_until(lambda s: s.sessions_started >= 2, WAIT_S)
            server.resume()
            assert got.wait_for(len(server.records))
        assert_same_as_files(got.traces, files)


def test_sequence_numbers_wrap_around(data_dir: Path) -> None:
    files = [data_dir / UV06]
    first_seq = SEQ_MODULUS - 20
    with SeedLinkTestServer(files, paused=True, first_seq=first_seq) as server:
        got = Collector(server)
        feed = new_feed(server, ["YA.UV06"])
        with running(feed, got):
            assert server.wait_until(lambda s: s.sessions_started == 1, WAIT_S)
            server.publish(30)  # 20 records before the wrap, 10 after
            assert got.wait_for(30)
            server.drop_connections()
            assert server.wait_until(lambda s: s.sessions_started == 2, WAIT_S)
            server.publish()
            assert got.wait_for(len(server.records))
        assert server.requests_of_connection(2)[("YA", "UV06")].seq == 10
        assert_same_as_files(got.traces, files)


def test_duplicates_from_a_replaying_server_are_dropped(data_dir: Path) -> None:
    files = [data_dir / KCR]
    with SeedLinkTestServer(files, paused=True, replay_on_resume=True) as server:
        got = Collector(server)
        feed = new_feed(server, ["NC.KCR"])
        with running(feed, got):
            assert server.wait_until(lambda s: s.sessions_started == 1, WAIT_S)
            server.publish(40)
            assert got.wait_for(40)
            server.drop_connections()
            assert server.wait_until(lambda s: s.sessions_started == 2, WAIT_S)
            server.publish()
            assert got.wait_for(len(server.records))
            # the replay sends the first 40 again: they were dropped, not delivered
            assert server.wait_until(lambda s: s.records_sent_total >= len(s.records) + 40, WAIT_S)
        assert feed.duplicates_dropped == 40
        assert len(got.traces) == len(server.records)
        assert_same_as_files(got.traces, files)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("BKBKS", "'BKBKS' is not 'NET.STA[:SELECTORS]'"),
        ("BK.BKS.00", "is not 'NET.STA[:SELECTORS]'"),
        ("BKX.BKS", "network code 'BKX'"),
        ("BK.BKSTAT", "station code 'BKSTAT'"),
        ("BK.*", "station code '*'"),
        ("BK.BKS:", "no selector after ':'"),
        ("BK.BKS:HHZ H", "'H' is not a SeedLink selector"),
        ("BK.BKS:00HHZ.DX", "'00HHZ.DX' is not a SeedLink selector"),
    ],
)
def test_bad_stream_spec_is_a_clear_value_error(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="stream .*") as info:
        SeedLinkFeed("127.0.0.1:18000", [spec], metrics=Metrics(CollectorRegistry()))
    assert fragment in str(info.value)


def test_stream_spec_forms_and_other_bad_arguments() -> None:
    assert parse_stream("bk.bks").selectors == ("???.D",)
    assert parse_stream("GE_WLF:BH?.D !LOG").selectors == ("BH?.D", "!LOG")
    assert parse_stream("YA.UV05:00HHZ").key == "YA.UV05"
    m = Metrics(CollectorRegistry())
    feed = SeedLinkFeed("seedlink://example.org", "BK.BKS:HH?,NC.KCR", metrics=m)
    assert feed.name == "seedlink:example.org:18000"
    assert [s.key for s in feed.streams] == ["BK.BKS", "NC.KCR"]
    bad = [
        ({"server": "example.org:port"}, "port 'port'"),
        ({"server": ""}, "server ''"),
        ({"streams": []}, "streams is empty"),
        ({"streams": ["BK.BKS:HHZ", "BK_BKS:HHN"]}, "BK.BKS is listed twice"),
        ({"backoff_initial_s": 0}, "backoff_initial_s must be > 0, got 0"),
        ({"backoff_max_s": 0.5}, "backoff_max_s (0.5) is smaller than backoff_initial_s (1.0)"),
        ({"timeout_s": -1}, "timeout_s must be > 0, got -1"),
    ]
    for change, fragment in bad:
        kw = {"server": "127.0.0.1:18000", "streams": ["BK.BKS"], "metrics": m} | change
        with pytest.raises(ValueError) as info:
            SeedLinkFeed(kw.pop("server"), kw.pop("streams"), **kw)
        assert fragment in str(info.value), (change, str(info.value))


def test_corrupt_state_file_is_a_clear_value_error(tmp_path: Path) -> None:
    state = tmp_path / "seedlink.json"
    state.write_text("{not json")
    with pytest.raises(ValueError, match=r"state file .*seedlink\.json cannot be read as JSON"):
        SeedLinkFeed(
            "127.0.0.1:18000", ["BK.BKS"], state_file=state, metrics=Metrics(CollectorRegistry())
        )


def test_emit_error_ends_run_and_the_record_comes_again(data_dir: Path, tmp_path: Path) -> None:
    files = [data_dir / KCR]
    state = tmp_path / "seedlink.json"
    with SeedLinkTestServer(files) as server:
        begin = server.records[0].starttime
        delivered: list[Trace] = []

        def failing_emit(trace: Trace) -> None:
            if len(delivered) == 10:
                raise RuntimeError("downstream is full")
            delivered.append(trace)

        feed = new_feed(server, ["NC.KCR"], state_file=state, begin_time=begin)
        with pytest.raises(RuntimeError, match="downstream is full"):
            feed.run(failing_emit, threading.Event())
        records = server.station_records("NC", "KCR")
        assert feed.positions() == {"NC.KCR": records[9].seq}
        assert json.loads(state.read_text())["stations"]["NC.KCR"]["seq"] == records[9].seq

        rest = Collector(server)
        feed2 = new_feed(server, ["NC.KCR"], state_file=state, begin_time=begin)
        with running(feed2, rest):
            assert rest.wait_for(len(records) - 10)
        assert rest.traces[0].stats.starttime == records[10].starttime  # the failed one, again
        assert_same_as_files(delivered + rest.traces, files)
