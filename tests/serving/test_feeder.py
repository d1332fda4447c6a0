"""The feeder (serving/feeder.py) cutting real waveforms into chunks on the window grid.

``send`` is the feeder's boundary with the broker: a plain list's ``append`` stands
for a broker that takes every chunk, a callable raising ``SendError`` for one that is
down. The chunks are checked the way the workers and the sink use them: their windows,
run through the real model, are exactly the windows of a local ``Detector`` pass.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import obspy
import pytest
from obspy import Stream, Trace, UTCDateTime
from prometheus_client import CollectorRegistry

from quakescan.detector import Detector
from quakescan.serving.chunks import Chunk, chunk_probabilities, mseed_to_stream
from quakescan.serving.feeder import Feeder, SendError
from quakescan.serving.feeds.files import ReplayFeed, SDSFollowFeed
from quakescan.serving.grid import chunk_phase
from quakescan.serving.metrics import Metrics

STEP_S, WINDOW_S = 1.0, 10.0  # the shipped model's geometry
UV05 = "reunion/YA.UV05.00.HHZ.2010-09-01T0728.mseed"  # 600 s, HHZ only
UV06 = "reunion/YA.UV06.00.HHZ.2010-09-01T0728.mseed"
BKS = "ncal/BK.BKS.20170715T104920.mseed"  # 90 s, three components
KEY05 = "YA.UV05.00|HH"


@pytest.fixture(scope="module")
def det():
    return Detector(device="cpu", threads=1)


def make_feeder(tmp: Path, send, feeds=(), chunk_s: float = 10.0, **kw) -> Feeder:
    kw.setdefault("metrics", Metrics(CollectorRegistry()))
    kw.setdefault("spool_dir", tmp / "spool")
    return Feeder(list(feeds), send, step_s=STEP_S, window_s=WINDOW_S, chunk_s=chunk_s, **kw)


def start_feeder(feeder: Feeder) -> tuple[threading.Thread, list[BaseException]]:
    """``feeder.run(until_feeds_end=True)`` in a thread; its exception, if any, in the list."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            feeder.run(threading.Event(), until_feeds_end=True)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, errors


def run_to_end(feeder: Feeder, timeout_s: float = 60.0) -> None:
    """``feeder.run`` until its feeds end and every chunk is out, as ``quakescan feed --until-done``."""
    t, errors = start_feeder(feeder)
    t.join(timeout_s)
    assert not t.is_alive(), "the feeder did not finish"
    assert not errors, f"the feeder stopped with {errors[0]!r}"


def replay_pieces(paths, packet_s: float = 1.0) -> list[Trace]:
    """What a replay feed emits, in order."""
    out: list[Trace] = []
    ReplayFeed(paths, packet_s=packet_s).run(out.append, threading.Event())
    return out


def feed_by_hand(feeder: Feeder, traces: list[Trace]) -> None:
    """The feeder's loop, one trace at a time (deterministic, no threads)."""
    for tr in traces:
        b = feeder.add(tr)
        if b is not None:
            feeder.cut_and_send(b)


def of_station(msgs: list[dict], station: str) -> list[dict]:
    return sorted((m for m in msgs if m["station"] == station), key=lambda m: m["seq"])


def sample(metric, **labels) -> float:
    for fam in metric.collect():
        for s in fam.samples:
            if s.name.endswith(("_total", "_count")) or s.name == fam.name:
                if all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
    return 0.0


def chunk_windows(det: Detector, msgs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """What the workers compute from these chunks: window indices and probabilities."""
    ks, ps = [], []
    for m in msgs:
        r = chunk_probabilities(det, Chunk.from_message(m))
        ks.append(r.k)
        ps.append(r.probs)
    return np.concatenate(ks), np.concatenate(ps)


def local_windows(det: Detector, st: Stream, station: str) -> tuple[np.ndarray, np.ndarray]:
    sps = [sp for sp in det.probabilities(st) if sp.station == station]
    return np.concatenate([sp.k for sp in sps]), np.concatenate([sp.probs for sp in sps])


# ---------------------------------------------------------------- chunking
def test_stations_chunks_fall_due_in_different_seconds(tmp_path):
    """A thousand stations whose chunks all completed in the same second made the
    feeder cut and send them in one burst (seconds of latency); each station's
    chunk grid has its own fixed phase instead."""
    f = make_feeder(tmp_path, lambda m: None, [], chunk_s=10.0)
    phases = {f._buffer(f"XX.S{i:03d}.", "HH").phase for i in range(200)}
    assert phases == set(range(10))
    # fixed per station, so a restarted feeder cuts on the same grid
    again = make_feeder(tmp_path / "b", lambda m: None, [], chunk_s=10.0)
    assert again._buffer("XX.S007.", "HH").phase == f._buffer("XX.S007.", "HH").phase


@pytest.mark.parametrize("chunk_s", [10.0, 30.0])
def test_chunks_partition_the_windows_and_overlap_by_window_minus_step(
    data_dir, tmp_path, det, chunk_s
):
    paths = [data_dir / UV05, data_dir / BKS]
    st = obspy.read(str(paths[0])) + obspy.read(str(paths[1]))
    sent: list[dict] = []
    run_to_end(make_feeder(tmp_path, sent.append, [ReplayFeed(paths)], chunk_s=chunk_s))
    per_chunk = round(chunk_s / STEP_S)
    for station, t0 in (
        ("YA.UV05.00", UTCDateTime("2010-09-01T07:28:00")),
        ("BK.BKS.", UTCDateTime("2017-07-15T10:49:20.61")),
    ):
        msgs = of_station(sent, station)
        assert [m["seq"] for m in msgs] == list(range(len(msgs)))
        # Window k ranges: contiguous, no gap and no overlap, on the station's chunk grid
        # (multiples of the chunk size plus a fixed per-station phase).
        phase = chunk_phase(station, msgs[0]["channel_prefix"], per_chunk)
        assert msgs[0]["k_first"] == int(np.ceil(t0.timestamp / STEP_S))
        for a, b in zip(msgs[:-1], msgs[1:], strict=True):
            assert b["k_first"] == a["k_last"] + 1, f"{station}: chunks {a['seq']}, {b['seq']}"
            assert (a["k_last"] + 1 - phase) % per_chunk == 0
        # The last, partial chunk is flagged final and ends with the last whole window.
        assert [m["final"] for m in msgs] == [False] * (len(msgs) - 1) + [True]
        data_end = st.select(station=station.split(".")[1])[0].stats.endtime
        last_whole = int(np.floor(data_end.timestamp + 0.01 - WINDOW_S))
        if msgs[-1]["k_first"] > last_whole:
            # The data ended right after a chunk boundary: the final chunk is a marker
            # that holds no whole window (it tells the sink to close the trigger).
            msgs = msgs[:-1]
        assert msgs[-1]["k_last"] == last_whole
        # The data of consecutive chunks overlap by window - step.
        spans = []
        for m in msgs:
            cs = mseed_to_stream(Chunk.from_message(m).mseed)
            spans.append((min(t.stats.starttime for t in cs), max(t.stats.endtime for t in cs)))
            assert len(cs) == len(st.select(station=station.split(".")[1])), "every component"
        for (_, end_a), (start_b, _) in zip(spans[:-1], spans[1:], strict=True):
            assert end_a + 0.01 - start_b == pytest.approx(WINDOW_S - STEP_S, abs=1e-6)
        # What workers compute from the chunks is exactly the windows of a local pass.
        k, p = chunk_windows(det, msgs)
        k_loc, p_loc = local_windows(det, st, station)
        np.testing.assert_array_equal(k, k_loc)
        np.testing.assert_allclose(p, p_loc, rtol=0, atol=1e-5)


def test_a_gap_is_counted_and_no_window_is_made_up_across_it(data_dir, tmp_path, det):
    tr = obspy.read(str(data_dir / UV05))[0]
    t0 = tr.stats.starttime
    before = tr.slice(t0, t0 + 180 - 0.005, nearest_sample=False)  # ends 07:30:59.99
    after = tr.slice(t0 + 210.5, None, nearest_sample=False)  # resumes 07:31:30.50: 30.5 s missing
    gappy = tmp_path / "uv05_gap.mseed"
    (Stream([before]) + Stream([after])).write(str(gappy), format="MSEED", encoding="STEIM2")
    sent: list[dict] = []
    feeder = make_feeder(tmp_path, sent.append, [ReplayFeed([gappy])])
    run_to_end(feeder)
    m = feeder.metrics
    assert sample(m.feed_gaps_total, station="YA.UV05.00") == 1
    assert sample(m.feed_gap_seconds_total, station="YA.UV05.00") == pytest.approx(30.5, abs=0.02)
    # No chunk holds a sample inside the gap.
    for msg in sent:
        for piece in mseed_to_stream(Chunk.from_message(msg).mseed):
            inside = piece.slice(t0 + 180, t0 + 210.49, nearest_sample=False)
            assert inside.stats.npts == 0, f"chunk {msg['seq']} has samples in the gap"
    # Only windows wholly on data: up to 07:30:50 and from 07:31:31 on, exactly as a local pass.
    k, _ = chunk_windows(det, sent)
    start, last = int(t0.timestamp), round(tr.stats.endtime.timestamp + 0.01 - WINDOW_S)
    expected = np.r_[start : start + 171, start + 211 : last + 1]
    np.testing.assert_array_equal(k, expected)
    k_loc, _ = local_windows(det, Stream([before, after]), "YA.UV05.00")
    np.testing.assert_array_equal(k, k_loc)


def test_stations_allow_list_drops_the_other_stations(data_dir, tmp_path):
    sent: list[dict] = []
    feeds = [ReplayFeed([data_dir / UV05, data_dir / UV06, data_dir / BKS])]
    feeder = make_feeder(tmp_path, sent.append, feeds, stations=["YA.UV05.00", "BK.*"])
    run_to_end(feeder)
    assert {m["station"] for m in sent} == {"YA.UV05.00", "BK.BKS."}
    assert sample(feeder.metrics.feed_samples_total, station="YA.UV06.00") == 0
    assert sample(feeder.metrics.feed_samples_total, station="YA.UV05.00") == 60000


def test_chunk_s_must_be_a_whole_number_of_steps(tmp_path):
    with pytest.raises(ValueError, match=r"chunk_s \(2.5\)"):
        make_feeder(tmp_path, [].append, chunk_s=2.5)


# ------------------------------------------------------- in-flight bound
def test_in_flight_bound_holds_chunks_until_the_sink_progresses(data_dir, tmp_path):
    n_all = len(reference_chunks(tmp_path / "ref", [data_dir / UV05]))
    sent: list[dict] = []
    progress: dict[str, int] = {}
    feeder = make_feeder(
        tmp_path,
        sent.append,
        [ReplayFeed([data_dir / UV05])],
        max_in_flight=3,
        progress=lambda: dict(progress),
    )
    t, errors = start_feeder(feeder)

    def settles_at(n: int) -> None:
        deadline = time.time() + 10
        while time.time() < deadline and len(sent) < n:
            time.sleep(0.02)
        time.sleep(0.5)  # the feeder keeps looping: nothing more may go out
        assert len(sent) == n, f"{len(sent)} chunks sent, the bound allows {n}"

    settles_at(3)  # nothing processed yet: 3 in flight
    assert sample(feeder.metrics.chunks_in_flight, station="YA.UV05.00") == 3
    assert sum(len(h) for h in feeder.held.values()) > 50, "the rest is held, not dropped"
    progress[KEY05] = 0  # the sink has triggered chunk 0
    settles_at(4)
    progress[KEY05] = 20
    settles_at(24)
    progress[KEY05] = 10_000  # the sink keeps up from here on
    t.join(30)
    assert not t.is_alive() and not errors
    assert [m["seq"] for m in sent] == list(range(n_all)), "every chunk went, in order"
    assert sent[-1]["final"]


# ------------------------------------------------------------------- spool
class Broker:
    """A broker that is down for the calls numbered in ``down`` (0-based), up otherwise."""

    def __init__(self, down: range) -> None:
        self.down, self.calls, self.taken = down, 0, []

    def __call__(self, msg: dict) -> None:
        n, self.calls = self.calls, self.calls + 1
        if n in self.down:
            raise SendError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.taken.append(msg)


def test_spool_keeps_the_chunk_order_while_the_broker_is_away(data_dir, tmp_path):
    n_all = len(reference_chunks(tmp_path / "ref", [data_dir / UV05]))
    assert n_all > 50
    broker = Broker(down=range(5, 9))  # down at the 6th chunk, back a few tries later
    feeder = make_feeder(tmp_path, broker, [ReplayFeed([data_dir / UV05])])
    run_to_end(feeder)
    seqs = [m["seq"] for m in broker.taken]
    assert seqs == list(range(n_all)), "chunks made while the broker was away came late, in order"
    assert len(feeder.spool) == 0 and not list((tmp_path / "spool").glob("*-*.json"))
    assert sample(feeder.metrics.chunks_spooled) == 0
    assert feeder.chunks_sent == n_all
    assert sample(feeder.metrics.chunks_sent_total, station="YA.UV05.00") == n_all


def reference_chunks(tmp: Path, paths) -> list[dict]:
    sent: list[dict] = []
    run_to_end(make_feeder(tmp, sent.append, [ReplayFeed(paths)]))
    return sent


def test_spool_survives_a_restart_and_is_sent_first(data_dir, tmp_path):
    paths = [data_dir / UV05]
    ref = reference_chunks(tmp_path / "ref", paths)
    state = tmp_path / "feeder_state.json"
    pieces = replay_pieces(paths)
    # The broker is down for the first four minutes; then the feeder host restarts.
    down = Broker(down=range(10**9))
    a = make_feeder(tmp_path, down, state_file=state)
    feed_by_hand(a, pieces[:240])
    a.save_state()
    spooled = sorted((tmp_path / "spool").glob("*.json"))
    n_old = len(spooled)  # four minutes of 10 s chunks, less the first window's wait
    assert 20 <= n_old <= 24
    assert len(a.spool) == n_old
    assert sample(a.metrics.chunks_spooled) == n_old
    old = [json.loads(p.read_text()) for p in spooled]
    assert [m["seq"] for m in old] == list(range(n_old))
    assert [(m["id"], m["mseed_b64"]) for m in old] == [
        (m["id"], m["mseed_b64"]) for m in ref[:n_old]
    ], "spooled as they would have been sent"
    # The restarted feeder (same spool and state) finds the broker back; its feed replays
    # the whole file again.
    sent: list[dict] = []
    b = make_feeder(tmp_path, sent.append, [ReplayFeed(paths)], state_file=state)
    assert len(b.spool) == n_old
    run_to_end(b)
    assert sent[:n_old] == old, "the spooled chunks go first, unchanged"
    assert [m["seq"] for m in sent] == list(range(len(ref)))
    assert [m["id"] for m in sent] == [m["id"] for m in ref]
    assert [m["mseed_b64"] for m in sent] == [m["mseed_b64"] for m in ref]
    assert len(b.spool) == 0 and not list((tmp_path / "spool").glob("*-*.json"))


# ------------------------------------------------------------------- state
def test_state_file_resumes_seq_and_next_window(data_dir, tmp_path):
    paths = [data_dir / UV05]
    ref = reference_chunks(tmp_path / "ref", paths)
    state = tmp_path / "feeder_state.json"
    first: list[dict] = []
    a = make_feeder(tmp_path, first.append, state_file=state)
    feed_by_hand(a, replay_pieces(paths)[:300])
    a.save_state()
    saved = json.loads(state.read_text())["stations"][KEY05]
    assert {k: saved[k] for k in ("seq", "next_k")} == {
        "seq": len(first),
        "next_k": first[-1]["k_last"] + 1,
    }
    second: list[dict] = []
    b = make_feeder(tmp_path, second.append, [ReplayFeed(paths)], state_file=state)
    run_to_end(b)
    assert second[0]["seq"] == len(first), "sequence numbers continue"
    assert second[0]["k_first"] == first[-1]["k_last"] + 1, "no window is sent twice"
    assert [m["id"] for m in first + second] == [m["id"] for m in ref]


def test_restart_with_the_default_state_file_sends_each_chunk_once(data_dir, tmp_path):
    """As `quakescan feed` and `quakescan serve` run it: the state file in the spool dir."""
    paths = [data_dir / UV05]
    ref = reference_chunks(tmp_path / "ref", paths)
    first: list[dict] = []
    a = make_feeder(tmp_path, first.append)
    feed_by_hand(a, replay_pieces(paths)[:300])
    a.save_state()
    second: list[dict] = []
    b = make_feeder(tmp_path, second.append, [ReplayFeed(paths)])
    run_to_end(b)
    assert all("station" in m and "mseed_b64" in m for m in second), (
        f"not chunk messages were sent: {[m for m in second if 'station' not in m]}"
    )
    assert [m["id"] for m in first + second] == [m["id"] for m in ref]


def _sds_file(root: Path, tr: Trace) -> Path:
    t, s = tr.stats.starttime, tr.stats
    return (
        root
        / f"{t.year}/{s.network}/{s.station}/{s.channel}.D"
        / f"{s.network}.{s.station}.{s.location}.{s.channel}.D.{t.year}.{t.julday:03d}"
    )


def _records(tr: Trace) -> bytes:
    buf = io.BytesIO()
    tr.write(buf, format="MSEED", encoding="STEIM2", reclen=512)
    return buf.getvalue()


def test_feeder_restarted_on_an_sds_feed_loses_no_window(data_dir, tmp_path):
    """Stop the feeder and its SDS feed halfway through a day file, start them again:
    every window of the data must still go out in some chunk."""
    tr = obspy.read(str(data_dir / UV05))[0]
    tr.stats.starttime = UTCDateTime(UTCDateTime().date) + 600
    t0 = tr.stats.starttime
    path = _sds_file(tmp_path / "sds", tr)
    path.parent.mkdir(parents=True)
    path.write_bytes(_records(tr.slice(t0, t0 + 300 - 0.005, nearest_sample=False)))

    def run_for(sent: list[dict], samples: int) -> Feeder:
        feed = SDSFollowFeed(
            tmp_path / "sds", ["YA.UV05"], poll_s=0.05, state_file=tmp_path / "sds.json"
        )
        f = make_feeder(tmp_path, sent.append, [feed], state_file=tmp_path / "feeder.json")
        stop = threading.Event()
        t = threading.Thread(target=f.run, args=(stop,), daemon=True)
        t.start()
        deadline = time.time() + 10
        while time.time() < deadline and (
            sample(f.metrics.feed_samples_total, station="YA.UV05.00") < samples
        ):
            time.sleep(0.05)
        time.sleep(0.5)
        stop.set()  # a graceful stop (SIGTERM)
        t.join(10)
        return f

    first: list[dict] = []
    run_for(first, 30000)
    with open(path, "ab") as f:
        f.write(_records(tr.slice(t0 + 300, None, nearest_sample=False)))
    second: list[dict] = []
    run_for(second, 30000)
    msgs = first + second
    assert [m["seq"] for m in msgs] == list(range(len(msgs)))
    for a, b in zip(msgs[:-1], msgs[1:], strict=True):
        assert b["k_first"] == a["k_last"] + 1, (
            f"windows {a['k_last'] + 1}..{b['k_first'] - 1} "
            f"({UTCDateTime(a['k_last'] + 1)}..{UTCDateTime(b['k_first'] - 1)}) were never sent"
        )
