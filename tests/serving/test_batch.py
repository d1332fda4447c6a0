"""Batch catalog jobs end to end: `quakescan batch submit/status/fetch` (click's CliRunner,
in this process) against a real Redis server and real `quakescan worker` processes."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import obspy
import pytest
import redis
from click.testing import CliRunner, Result
from conftest import WorkerProcess
from obspy import Stream, UTCDateTime

from quakescan.detector import Detector
from quakescan.detector.catalog import read_catalog
from quakescan.serving.cli import cli

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "data"
REUNION = [
    "reunion/YA.UV05.00.HHZ.2010-09-01T0728.mseed",
    "reunion/YA.UV06.00.HHZ.2010-09-01T0728.mseed",
]
BKS = "ncal/BK.BKS.20170715T104920.mseed"
# The reunion records moved so that the 07:33:25 event (UV05: 07:33:25-07:33:44) straddles
# midnight: the records start 23:54:25 and that detection runs 23:59:50 -> 00:00:09.
SHIFTED_START = UTCDateTime("2010-09-01T23:54:25")
MIDNIGHT = UTCDateTime("2010-09-02T00:00:00")


def shifted_reunion() -> Stream:
    st = Stream()
    for f in REUNION:
        st += obspy.read(str(DATA / f))
    for tr in st:
        tr.stats.starttime = SHIFTED_START
    return st


def write_sds(st: Stream, root: Path) -> None:
    """An SDS archive, one file per channel and day."""
    for tr in st:
        day = UTCDateTime(tr.stats.starttime.date)
        while day < tr.stats.endtime:
            piece = tr.slice(
                max(day, tr.stats.starttime), day + 86400 - tr.stats.delta / 2, nearest_sample=False
            )
            s = piece.stats
            d = root / f"{day.year}/{s.network}/{s.station}/{s.channel}.D"
            d.mkdir(parents=True, exist_ok=True)
            name = f"{s.network}.{s.station}.{s.location}.{s.channel}.D.{day.year}.{day.julday:03d}"
            piece.write(str(d / name), format="MSEED", encoding="STEIM2")
            day += 86400


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The data roots the workers may read: a folder of files and an SDS archive."""
    files = tmp_path_factory.mktemp("batch_files")
    for tr in shifted_reunion():
        tr.write(str(files / f"{tr.id}.shifted.mseed"), format="MSEED", encoding="STEIM2")
    sds = tmp_path_factory.mktemp("batch_sds")
    write_sds(shifted_reunion(), sds)
    return {"files": files, "sds": sds}


@pytest.fixture(scope="module")
def batch_worker(redis_url, archive, tmp_path_factory):
    roots = ":".join(str(p) for p in (DATA, archive["files"], archive["sds"]))
    w = WorkerProcess(
        redis_url,
        tmp_path_factory.mktemp("batch_worker") / "worker.log",
        QUAKESCAN_DATA_ROOTS=roots,
    ).start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def local():
    """What `quakescan detect` finds on the same data: name -> (detections, windows)."""
    out = {}
    for name, st in (
        ("shifted", shifted_reunion()),
        ("bks", obspy.read(str(DATA / BKS))),
        ("uv06", obspy.read(str(DATA / REUNION[1]))),
    ):
        det = Detector(device="cpu")
        out[name] = (det.detect(st), det.stats.windows)
    return out


def env_for(url: str) -> dict[str, str]:
    return {
        "QUAKESCAN_BROKER_URL": url,
        "QUAKESCAN_REDIS_URL": url,
        "QUAKESCAN_RESULT_BACKEND": url.rsplit("/", 1)[0] + "/1",
    }


def quakescan(url: str, *args, timeout_s: float = 60.0) -> Result:
    """Run a quakescan command in a thread, so that a command that never returns fails the test."""
    box: list[Result] = []
    t = threading.Thread(
        target=lambda: box.append(
            CliRunner().invoke(cli, [str(a) for a in args], env=env_for(url))
        ),
        daemon=True,
    )
    t.start()
    t.join(timeout_s)
    if not box:
        pytest.fail(f"`quakescan {' '.join(map(str, args))}` did not return in {timeout_s} s")
    return box[0]


def submitted_job(res: Result) -> str:
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert first.startswith("job ") and "station-days submitted" in first, res.output
    return first.split()[1].rstrip(":")


def wait_done(url: str, job: str, timeout_s: float = 90.0) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        res = quakescan(url, "batch", "status", job, "--json")
        assert res.exit_code == 0, res.output
        st = json.loads(res.output)
        if st["state"] == "done":
            return st
        time.sleep(0.3)
    pytest.fail(f"job {job} not done in {timeout_s} s: {st}")


def key(d):
    return (
        d.id,
        d.station,
        str(d.start),
        str(d.end),
        str(d.peak_time),
        d.peak_probability,
        d.label,
    )


def assert_same_catalog(got, want) -> None:
    g, w = set(map(key, got)), set(map(key, want))
    assert g == w, f"missing: {sorted(w - g)}\nextra: {sorted(g - w)}"
    assert len(got) == len(want), "no duplicates"


def test_files_job_gives_exactly_the_local_catalog_across_midnight(
    clean_redis, batch_worker, archive, local, tmp_path
):
    files = sorted(archive["files"].glob("*.mseed")) + [DATA / BKS]
    out = tmp_path / "catalog.xml"
    res = quakescan(clean_redis, "batch", "submit", *files, "--wait", "--out", out)
    job = submitted_job(res)
    assert f"job {job}: 5 station-days submitted" in res.output  # 2 stations x 2 days + BKS
    want = local["shifted"][0] + local["bks"][0]
    windows = local["shifted"][1] + local["bks"][1]
    assert f"job {job} done: {len(want)} detections, 0 failed station-days" in res.output
    assert f"{len(want)} detections written to {out}" in res.output
    got = read_catalog(out)
    assert_same_catalog(got, want)
    across = [d for d in got if d.start < MIDNIGHT < d.end]
    assert sorted(d.station for d in across) == ["YA.UV05.00", "YA.UV06.00"], "the event at 00:00"
    assert len(obspy.read_events(str(out))) == len(want)
    # Status counts every station-day and every window.
    res = quakescan(clean_redis, "batch", "status", job)
    assert res.exit_code == 0, res.output
    assert f"job {job}: done  5/5 station-days (0 failed), {windows:,} windows" in res.output
    assert f"detections: {len(want)}" in res.output
    # Fetch again, as CSV: the same catalog.
    csv = tmp_path / "catalog.csv"
    res = quakescan(clean_redis, "batch", "fetch", job, "--out", csv)
    assert res.exit_code == 0, res.output
    assert_same_catalog(read_catalog(csv), want)


def test_sds_job_equals_detect_on_the_archive_across_midnight(
    clean_redis, batch_worker, archive, local, tmp_path
):
    sds, start, end = archive["sds"], "2010-09-01T23:00:00", "2010-09-02T01:00:00"
    select = ["--sds", sds, "--stations", "YA.UV05,YA.UV06.00.HHZ", "--start", start, "--end", end]
    res = quakescan(clean_redis, "batch", "submit", *select)
    job = submitted_job(res)
    assert f"job {job}: 4 station-days submitted" in res.output  # 2 stations x 2 days
    st = wait_done(clean_redis, job)
    assert (st["total"], st["done"], st["failed"], st["failures"]) == (4, 4, 0, [])
    out = tmp_path / "sds.csv"
    res = quakescan(clean_redis, "batch", "fetch", job, "--out", out)
    assert res.exit_code == 0, res.output
    # One pass over the continuous records, as `quakescan detect` (also over this archive).
    want, windows = local["shifted"]
    got = read_catalog(out)
    assert_same_catalog(got, want)
    assert st["windows"] == windows, "no window lost or computed twice at midnight"
    assert st["detections"] == len(want)
    assert sorted(d.station for d in got if d.start < MIDNIGHT < d.end) == [
        "YA.UV05.00",
        "YA.UV06.00",
    ]


def test_a_path_outside_the_data_roots_is_refused_and_the_rest_succeeds(
    clean_redis, batch_worker, local, tmp_path
):
    outside = tmp_path / "elsewhere" / "BKS.mseed"
    outside.parent.mkdir()
    shutil.copy(DATA / BKS, outside)
    inside = DATA / REUNION[1]
    job = submitted_job(quakescan(clean_redis, "batch", "submit", outside, inside))
    st = wait_done(clean_redis, job)
    assert (st["total"], st["done"], st["failed"]) == (2, 1, 1)
    [failure] = st["failures"]
    assert failure["item"] == "BK.BKS." and failure["day"] == "2017-07-15"
    assert failure["reason"] == "outside_data_roots"
    assert str(outside) in failure["error"]
    res = quakescan(clean_redis, "batch", "status", job)
    assert res.exit_code == 0, res.output
    assert f"job {job}: done  2/2 station-days (1 failed)" in res.output
    assert "failed BK.BKS. 2017-07-15: outside_data_roots:" in res.output
    # The station-day inside the roots is in the catalog, exactly as a local run gives it.
    out = tmp_path / "partial.jsonl"
    res = quakescan(clean_redis, "batch", "fetch", job, "--out", out)
    assert res.exit_code == 0, res.output
    want = local["uv06"][0]
    assert_same_catalog(read_catalog(out), want)
    assert want


def test_submit_wait_with_failed_station_days_exits_non_zero_and_says_why(
    clean_redis, batch_worker, local, tmp_path
):
    """A seismologist scripting `batch submit --wait` must not take a partial catalog for a
    complete one: the command names each failed station-day and exits 1, and the catalog of
    the station-days that ran is still written, exact."""
    outside = tmp_path / "elsewhere" / "BKS.mseed"
    outside.parent.mkdir()
    shutil.copy(DATA / BKS, outside)
    out = tmp_path / "partial.jsonl"
    res = quakescan(
        clean_redis, "batch", "submit", outside, DATA / REUNION[1], "--wait", "--out", out
    )
    assert res.exit_code == 1, res.output
    assert "failed BK.BKS. 2017-07-15: outside_data_roots:" in res.output
    assert "1 of 2 station-days failed" in res.output
    assert_same_catalog(read_catalog(out), local["uv06"][0])
    # Following the job later says the same, with the same exit status.
    job = res.output.splitlines()[0].split()[1].rstrip(":")
    res = quakescan(clean_redis, "batch", "status", job, "--follow")
    assert res.exit_code == 1, res.output
    assert "1 of 2 station-days failed" in res.output


def test_fetch_before_the_job_is_done_is_a_clear_error(redis_url, tmp_path):
    idle = redis_url.rsplit("/", 1)[0] + "/7"  # a database no worker consumes from
    r = redis.Redis.from_url(idle)
    r.flushdb()
    try:
        job = submitted_job(quakescan(idle, "batch", "submit", DATA / REUNION[0]))
        res = quakescan(idle, "batch", "status", job)
        assert res.exit_code == 0 and f"job {job}: running  0/1 station-days" in res.output
        out = tmp_path / "early.xml"
        res = quakescan(idle, "batch", "fetch", job, "--out", out)
        assert res.exit_code == 1
        assert f"job {job} is running (0/1 station-days); fetch it when done" in res.output
        assert "Traceback" not in res.output
        assert not out.exists()
    finally:
        r.flushdb()


def test_an_unknown_job_id_is_a_clear_error(clean_redis, tmp_path):
    fetch = ["fetch", "0123456789abcdef", "--out", tmp_path / "x.xml"]
    for args in (["status", "0123456789abcdef"], fetch):
        res = quakescan(clean_redis, "batch", *args)
        assert res.exit_code == 1, res.output
        assert "no batch job '0123456789abcdef' (unknown id, or expired)" in res.output
        assert "Traceback" not in res.output
    assert not (tmp_path / "x.xml").exists()


def test_submit_needs_paths_or_a_complete_sds_selection(clean_redis, tmp_path):
    res = quakescan(clean_redis, "batch", "submit")
    assert res.exit_code == 2 and "give waveform PATHs or --sds" in res.output
    res = quakescan(clean_redis, "batch", "submit", "--sds", tmp_path, "--stations", "YA.UV05")
    assert res.exit_code == 2 and "--sds needs --stations, --start and --end" in res.output
    bad = tmp_path / "notes.mseed"
    bad.write_text("field notes, not a waveform\n")
    res = quakescan(clean_redis, "batch", "submit", bad)
    assert res.exit_code == 1 and "notes.mseed: not a readable waveform file" in res.output


def test_a_jobs_model_and_thresholds_are_the_ones_submitted(clean_redis, batch_worker, tmp_path):
    """`batch submit --threshold/--off-threshold/--model` (or the [service] settings of
    --config) decide the job's catalog, as they do for `detect` and the live sink."""
    uv06 = DATA / REUNION[1]
    st = obspy.read(str(uv06))
    default = Detector(device="cpu").detect(st)
    low = Detector(threshold=0.3, off_threshold=0.2, device="cpu").detect(st)
    slow = Detector("slow-earthquake", device="cpu").detect(st)
    assert len(low) > len(default), "the lower threshold must matter on this record"

    out = tmp_path / "low.jsonl"
    res = quakescan(clean_redis, "batch", "submit", uv06, "--threshold", 0.3,
                    "--off-threshold", 0.2, "--wait", "--out", out)  # fmt: skip
    submitted_job(res)
    assert_same_catalog(read_catalog(out), low)

    cfg = tmp_path / "svc.toml"
    cfg.write_text("[service]\nthreshold = 0.3\noff_threshold = 0.2\n")
    out = tmp_path / "cfg.jsonl"
    res = quakescan(clean_redis, "batch", "submit", uv06, "--config", cfg, "--wait", "--out", out)
    submitted_job(res)
    assert_same_catalog(read_catalog(out), low)

    out = tmp_path / "slow.jsonl"
    res = quakescan(clean_redis, "batch", "submit", uv06, "--model", "slow-earthquake",
                    "--wait", "--out", out)  # fmt: skip
    submitted_job(res)
    got = read_catalog(out)
    assert_same_catalog(got, slow)
    assert {d.model for d in got} <= {"slow-earthquake"}


def test_fetch_with_min_stations_gives_the_network_events_of_detect(
    clean_redis, batch_worker, tmp_path
):
    """Network coincidence is one library function: `batch fetch --min-stations 2` writes
    the QuakeML network events that `detect --min-stations 2` writes for the same data."""
    reunion = [DATA / f for f in REUNION]
    job = submitted_job(quakescan(clean_redis, "batch", "submit", *reunion, "--wait"))
    got = tmp_path / "batch.xml"
    res = quakescan(clean_redis, "batch", "fetch", job, "--out", got, "--min-stations", 2)
    assert res.exit_code == 0, res.output
    assert "network events with >= 2 stations" in res.output
    want = tmp_path / "detect.xml"
    res = CliRunner().invoke(
        cli, ["detect", *map(str, reunion), "--min-stations", "2", "--device", "cpu",
              "--out", str(want)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    ev_got, ev_want = obspy.read_events(str(got)), obspy.read_events(str(want))
    assert len(ev_want) >= 1
    assert sorted(str(e.resource_id) for e in ev_got) == sorted(str(e.resource_id) for e in ev_want)
    assert sorted(len(e.picks) for e in ev_got) == sorted(len(e.picks) for e in ev_want)


def test_a_symlinked_folder_in_an_sds_root_pointing_outside_the_roots_is_refused(
    clean_redis, batch_worker, archive, tmp_path
):
    """The data roots are checked on the resolved path of every file a job reads: a symlink
    inside an allowed SDS archive that points elsewhere is refused, not followed."""
    outside = tmp_path / "not_a_root"
    st = shifted_reunion().select(station="UV05")
    for tr in st:
        tr.stats.station = "LNK"
    write_sds(st, outside)
    link = archive["sds"] / "2010" / "YA" / "LNK"
    link.symlink_to(outside / "2010" / "YA" / "LNK", target_is_directory=True)
    try:
        select = ["--sds", archive["sds"], "--stations", "YA.LNK", "--start",
                  "2010-09-01T23:00:00", "--end", "2010-09-02T00:00:00"]  # fmt: skip
        job = submitted_job(quakescan(clean_redis, "batch", "submit", *select))
        st = wait_done(clean_redis, job)
        assert (st["total"], st["done"], st["failed"]) == (1, 0, 1)
        [failure] = st["failures"]
        assert failure["reason"] == "outside_data_roots"
        assert "outside the configured data roots" in failure["error"]
        assert str(outside) in failure["error"]
    finally:
        link.unlink()
