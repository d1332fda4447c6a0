"""Serving load benchmark (issue 4 section 9): how many real-time stations does
the distributed service sustain on this machine, and with what latency?

N three-component 100 Hz stations are replayed in real time (1 s packets, sample
times on the wall clock) into the feeder, through a Redis of the benchmark's
own and one ``quakescan worker -c 2`` (two prefork processes), to the sink. The
feeder and the sink run as separate processes, built from the same classes as
``quakescan feed`` / ``quakescan sink``, so the CPU each one uses can be read
from /proc. Latencies are the values the service's own histograms observe:

* chunk latency (``quakescan_chunk_latency_seconds``): last sample of a chunk to
  its probabilities triggered in the sink;
* detection latency (``quakescan_end_to_end_latency_seconds``): last sample of
  the chunk that completed a detection to the detection published.

Stations are made of REAL data with synthetic station codes: most replay the
Piton de la Fournaise noise day (``reunion_noise/``, Z = UV05 or UV06, N = the
other station, E = Z 12 h later, each station at its own offset in the day),
and a few (``--event-fraction``) loop the 3-component Northern California
earthquake records (``ncal/``, 90 s each), so that detections happen.

Run from the repository root:

    .venv/bin/python benchmarks/serving_bench.py                      # the sweep (about 3 min per N)
    .venv/bin/python benchmarks/serving_bench.py --quick              # smoke run: N = 20, 100 (~5 min)
    .venv/bin/python benchmarks/serving_bench.py --stations 1000 --batch-chunks 1   # a task per chunk
    .venv/bin/python benchmarks/serving_bench.py --json benchmarks/results/serving.json

Nothing here asserts a timing: the table prints PASS / FAIL against the target
(>= 1000 stations sustained at a 1 s step, chunk and detection latency p99 <= 2 s).
"Sustained" means every chunk whose last sample falls in the measured window was
triggered by the sink (within --drain s of the end), the feed kept the wall clock
(p99 lateness < 1 s), the feeder's in-flight bound held back no backlog, and the
chunk latency did not grow (median of the last third minus the first < 1 s).
The machine is shared: the table's "others" column is the CPU the rest of the
machine used meanwhile (from /proc/stat), so runs can be compared honestly.

``--batch-chunks`` sets the chunks per Celery task (the service's ``batch_chunks``,
default 32; 1 = one task per chunk) and ``--log-level`` the worker's log level, so
their cost can be measured; everything else is the shipped code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

# Nothing that imports prometheus_client may be imported at module level: the
# worker launcher imports this module before `quakescan worker` sets up the
# client's multiprocess mode.

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve()
TARGET_STATIONS = 1000
TARGET_P99_S = 2.0
PY_SPY_RATE = 100  # samples per second


# ================================================================ station data
class StationData:
    """Real waveforms for N synthetic stations: (3, n) arrays looped at per-station offsets."""

    def __init__(self, data_dir: Path, n_stations: int, event_fraction: float) -> None:
        import obspy

        noise_dir = data_dir / "reunion_noise"
        uv05 = obspy.read(str(noise_dir / "YA.UV05.00.HHZ.D.2010.244"))[0].data.astype(np.int32)
        uv06 = obspy.read(str(noise_dir / "YA.UV06.00.HHZ.D.2010.244"))[0].data.astype(np.int32)
        half = len(uv05) // 2
        # Two noise "instruments": channel order Z, N, E (ObsPy codes HHZ, HHN, HHE).
        self.noise = [
            np.stack([uv05, uv06, np.roll(uv05, half)]),
            np.stack([uv06, uv05, np.roll(uv06, half)]),
        ]
        self.events: list[np.ndarray] = []
        self.event_files: list[str] = []
        for p in sorted((data_dir / "ncal").glob("*.mseed")):
            st = obspy.read(str(p))
            chans = {tr.stats.channel[-1]: tr for tr in st}
            if set(chans) != {"Z", "N", "E"} or any(tr.stats.sampling_rate != 100 for tr in st):
                continue
            n = min(tr.stats.npts for tr in st)
            # demeaned so the loop seam is not a step (the records carry DC offsets)
            arr = np.stack([chans[c].data[:n].astype(np.float32) for c in "ZNE"])
            arr -= arr.mean(axis=1, keepdims=True)
            self.events.append(np.ascontiguousarray(arr))
            self.event_files.append(p.name)
        n_events = 0 if event_fraction <= 0 else max(1, round(n_stations * event_fraction))
        n_events = min(n_events, n_stations)
        self.stations: list[tuple[str, np.ndarray, int]] = []  # (station code, array, offset)
        day = self.noise[0].shape[1]
        for i in range(n_stations - n_events):
            arr = self.noise[i % 2]
            off = (i * 61_700 + 12_345) % (day - 100)  # about 10 min apart
            self.stations.append((f"N{i:04d}", arr, off))
        for j in range(n_events):
            arr = self.events[j % len(self.events)]
            self.stations.append((f"Q{j:03d}", arr, (j * 1_300) % arr.shape[1]))

    def describe(self) -> dict[str, Any]:
        return {
            "noise": "reunion_noise YA.UV05/UV06 HHZ 2010-09-01 (Z as recorded, N = the other "
            "station, E = Z 12 h later), each station at its own offset",
            "events": f"{len(self.events)} ncal 3-component records (90 s, looped, demeaned)",
            "noise_stations": sum(1 for s, _, _ in self.stations if s.startswith("N")),
            "event_stations": sum(1 for s, _, _ in self.stations if s.startswith("Q")),
        }


class RealtimeFeed:
    """A Feed: every second, one 1 s packet per channel of every station, at wall-clock pace.

    The packet of samples [T, T + 1 s) is emitted at wall time T + 1 s (when its last
    sample exists), with sample times on the wall clock, as ``ReplayFeed(speed=1,
    shift_to_now=True, packet_s=1)`` does for files, but for N stations held in memory.
    """

    name = "bench-realtime"

    def __init__(self, data: StationData, stop_at: float, network: str = "ZZ") -> None:
        self.data, self.stop_at, self.net = data, stop_at, network
        self.bursts: list[tuple[float, float, float]] = []  # (due, emit start, emit end)

    def run(self, emit, stop: threading.Event) -> None:
        from obspy import Trace, UTCDateTime

        t0 = math.ceil(time.time()) + 1.0  # first packet starts here, on a whole second
        s = 0
        while not stop.is_set():
            start = t0 + s
            due = start + 1.0
            if due > self.stop_at:
                return
            wait = due - time.time()
            if wait > 0 and stop.wait(wait):
                return
            a = time.time()
            ts = UTCDateTime(start)
            for code, arr, off in self.data.stations:
                n = arr.shape[1]
                i = (off + s * 100) % n
                j = i + 100
                for row, comp in enumerate("ZNE"):
                    x = arr[row, i:j] if j <= n else np.r_[arr[row, i:], arr[row, : j - n]]
                    emit(
                        Trace(
                            x.copy(),
                            header={
                                "network": self.net,
                                "station": code,
                                "location": "00",
                                "channel": "HH" + comp,
                                "sampling_rate": 100.0,
                                "starttime": ts,
                            },
                        )
                    )
            self.bursts.append((due, a, time.time()))
            s += 1


# ========================================================================= roles
def _role_config(args, tmp: Path):
    from quakescan.serving.config import load_config

    env = {"QUAKESCAN_BROKER_URL": args.broker, "QUAKESCAN_REDIS_URL": args.broker}
    return load_config(
        None,
        {
            "spool_dir": str(tmp / "spool"),
            "out_dir": str(tmp / "catalogs"),
            "chunk_s": args.chunk_s,
            "max_in_flight": args.max_in_flight,
            "batch_chunks": args.batch_chunks,
        },
        env=env,
    )


def role_feeder(args) -> None:
    """The feeder process: RealtimeFeed -> Feeder -> Celery detect queue (quakescan feed's wiring)."""
    from prometheus_client import CollectorRegistry

    from quakescan.serving.app import celery_sender, make_app
    from quakescan.serving.bus import redis_client
    from quakescan.serving.feeder import Feeder
    from quakescan.serving.grid import model_geometry
    from quakescan.serving.metrics import Metrics
    from quakescan.serving.sink import RedisState

    tmp = Path(args.tmp)
    cfg = _role_config(args, tmp)
    app = make_app(cfg)
    step_s, window_s = model_geometry(cfg)
    data = StationData(Path(args.data_dir), args.n, args.event_fraction)
    feed = RealtimeFeed(data, stop_at=args.until)
    sent: list[tuple[str, int, float, float]] = []  # station, seq, last sample, sent
    send, send_many = celery_sender(app), celery_sender(app, many=True)

    def timed_send(msg: dict) -> None:
        send(msg)
        sent.append((msg["station"], msg["seq"], msg["last_sample_time"], time.time()))

    def timed_send_many(msgs: list[dict]) -> None:
        send_many(msgs)
        now = time.time()
        sent.extend((m["station"], m["seq"], m["last_sample_time"], now) for m in msgs)

    feeder = Feeder(
        [feed],
        timed_send,
        step_s=step_s,
        window_s=window_s,
        chunk_s=cfg.chunk_s,
        metrics=Metrics(CollectorRegistry()),
        spool_dir=cfg.spool_dir,
        max_in_flight=cfg.max_in_flight,
        progress=RedisState(redis_client(cfg)).progress,
        send_many=timed_send_many if cfg.batch_chunks > 1 else None,
        batch_chunks=cfg.batch_chunks,
    )
    samples: list[tuple[float, int, int]] = []  # time, inbox size, held chunks
    stop = threading.Event()

    def monitor() -> None:
        while not stop.wait(0.5):
            held = sum(len(h) for h in list(feeder.held.values()))
            samples.append((time.time(), feeder.inbox.qsize(), held))

    threading.Thread(target=monitor, daemon=True).start()
    threading.Timer(max(0.0, args.until + args.feeder_grace - time.time()), stop.set).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("feeder ready", flush=True)
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    feeder.run(stop)
    if prof is not None:
        prof.disable()
        prof.dump_stats(str(Path(args.profile) / "feeder.prof"))
    held_end = sum(len(h) for h in feeder.held.values())
    out = {
        "stations": [s for s, _, _ in data.stations],
        "data": data.describe(),
        "sent": sent,
        "bursts": feed.bursts,
        "samples": samples,
        "held_end": held_end,
        "spooled_end": len(feeder.spool),
        "inbox_end": feeder.inbox.qsize(),
    }
    Path(args.out).write_text(json.dumps(out))


class _Recorder:
    """A histogram stand-in that keeps every observed value (and observes the real one)."""

    def __init__(self, hist) -> None:
        self.hist, self.values = hist, []

    def observe(self, v: float) -> None:
        self.values.append((time.time(), float(v)))
        self.hist.observe(v)


def role_sink(args) -> None:
    """The sink process: quakescan sink's wiring, with the latency histograms recorded."""
    from prometheus_client import CollectorRegistry

    from quakescan.serving.bus import RedisBus, redis_client
    from quakescan.serving.config import PROB_STREAM
    from quakescan.serving.metrics import Metrics
    from quakescan.serving.sink import CatalogFiles, RedisDetections, RedisState, Sink

    tmp = Path(args.tmp)
    cfg = _role_config(args, tmp)
    metrics = Metrics(CollectorRegistry())
    chunk_lat = metrics.chunk_latency_seconds = _Recorder(metrics.chunk_latency_seconds)
    det_lat = metrics.end_to_end_latency_seconds = _Recorder(metrics.end_to_end_latency_seconds)
    records: list[tuple] = []
    steps: list[tuple[float, float, int]] = []

    class BenchSink(Sink):
        def _handle(self, s, msg, now):
            out = super()._handle(s, msg, now)
            records.append(
                (
                    msg.get("station"),
                    msg.get("seq"),
                    msg.get("last_sample_time"),
                    msg.get("sent_at"),
                    msg.get("done_at"),
                    now,
                    len(msg.get("k") or ()),
                    msg.get("status"),
                    msg.get("worker", ""),
                )
            )
            return out

        def step(self, block_ms: int = 500, count: int = 500) -> int:
            a = time.time()
            n = super().step(block_ms, count)
            steps.append((a, time.time() - a, n))
            return n

    client = redis_client(cfg)
    sink = BenchSink(
        cfg,
        RedisBus(client, PROB_STREAM),
        RedisDetections(client),
        RedisState(client),
        CatalogFiles(cfg.out_dir, cfg.formats, cfg.catalog_rewrite_s),
        metrics,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("sink ready", flush=True)
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    sink.run(stop)
    if prof is not None:
        prof.disable()
        prof.dump_stats(str(Path(args.profile) / "sink.prof"))
    out = {
        "records": records,
        "chunk_latency": chunk_lat.values,
        "detection_latency": det_lat.values,
        "detections": sink.detections_published,
        "steps": steps,
    }
    Path(args.out).write_text(json.dumps(out))


# ================================================================ process tools
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process, in clock ticks (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def system_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle, total


def children(pid: int) -> list[int]:
    try:
        return [
            int(x)
            for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if x.strip()
        ]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            mem_kb = int(line.split()[1])
    import onnxruntime as ort

    try:
        import celery
        import redis as redis_py

        versions = {"celery": celery.__version__, "redis-py": redis_py.__version__}
    except ImportError:
        versions = {}
    rs = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    import obspy

    from quakescan.detector.model import OnnxModel

    provider = OnnxModel(None, device="auto", threads=1).provider  # what a worker picks
    return {
        "cpu": cpu,
        "provider": provider,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gb": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnxruntime": ort.__version__,
        "ort_providers_available": ort.get_available_providers(),
        "numpy": np.__version__,
        "obspy": obspy.__version__,
        **versions,
        "redis_server": rs.split()[2].removeprefix("v=") if rs else None,
    }


def pctl(x, q) -> float | None:
    return float(np.percentile(x, q)) if len(x) else None


class Services:
    """redis-server, one `quakescan worker -c C`, the sink and the feeder processes of one run."""

    def __init__(self, tmp: Path, args, n: int, chunk_s: float, until: float) -> None:
        self.tmp, self.args, self.n, self.chunk_s, self.until = tmp, args, n, chunk_s, until
        self.port = free_port()
        self.broker = f"redis://127.0.0.1:{self.port}/0"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUAKESCAN_")}
        env.update(
            QUAKESCAN_BROKER_URL=self.broker,
            QUAKESCAN_RESULT_BACKEND=self.broker.rsplit("/", 1)[0] + "/1",
            QUAKESCAN_REDIS_URL=self.broker,
            QUAKESCAN_LOG_LEVEL=self.args.log_level,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(REPO),
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(extra)
        return env

    def _popen(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.logs[name] = self.tmp / f"{name}.log"
        log = open(self.logs[name], "ab")
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = p
        return p

    def start_redis(self) -> None:
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            sys.exit("redis-server is not installed (apt-get install redis-server)")
        (self.tmp / "redis").mkdir(exist_ok=True)
        self._popen(
            "redis",
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.tmp / "redis")]
            + ["--save", "", "--appendonly", "no"],
            os.environ.copy(),
        )
        client = redis.Redis.from_url(self.broker)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if client.ping():
                    self.client = client
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def start_worker(self) -> None:
        mp = self.tmp / "prom-mp"
        mp.mkdir(exist_ok=True)
        argv = ["worker", "-c", str(self.args.concurrency), "--metrics-port", "0"]
        argv += ["-n", f"bench{os.getpid()}-{time.time_ns()}@%h"]
        cmd = [sys.executable, "-m", "quakescan.serving.cli", *argv]
        p = self._popen("worker", cmd, self.env(PROMETHEUS_MULTIPROC_DIR=str(mp)))
        deadline = time.time() + 90
        while time.time() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.logs['worker'].read_text()[-3000:]}")
            kids = children(p.pid)
            quiet = self.args.log_level.upper() not in ("INFO", "DEBUG")  # no "ready." line
            ready = quiet or b"ready." in self.logs["worker"].read_bytes()
            if ready and len(kids) >= self.args.concurrency:
                time.sleep(4.0 if quiet else 1.0)
                return
            time.sleep(0.2)
        raise RuntimeError("worker not ready in 90 s")

    def role_cmd(self, role: str, out: Path) -> list[str]:
        cmd = [sys.executable, str(BENCH), "--_role", role, "--_out", str(out)]
        cmd += ["--_broker", self.broker, "--_tmp", str(self.tmp), "--_n", str(self.n)]
        cmd += ["--_until", repr(self.until), "--chunk-s", repr(self.chunk_s)]
        cmd += ["--max-in-flight", str(self.args.max_in_flight)]
        cmd += ["--event-fraction", repr(self.args.event_fraction)]
        cmd += ["--data-dir", str(self.args.data_dir)]
        cmd += ["--batch-chunks", str(self.args.batch_chunks)]
        if self.args.profile and not self.args.py_spy:
            d = Path(self.args.profile_dir) / f"n{self.n}-chunk{self.chunk_s:g}"
            d.mkdir(parents=True, exist_ok=True)
            cmd += ["--_profile", str(d)]
        return cmd

    def start_role(self, role: str, out: Path) -> subprocess.Popen:
        p = self._popen(role, self.role_cmd(role, out), self.env())
        deadline = time.time() + 60
        while time.time() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"{role} exited:\n{self.logs[role].read_text()[-3000:]}")
            if f"{role} ready".encode() in self.logs[role].read_bytes():
                return p
            time.sleep(0.1)
        raise RuntimeError(f"{role} not ready in 60 s")

    def pids(self) -> dict[str, list[int]]:
        out = {}
        for name, p in self.procs.items():
            if p.poll() is None:
                out[name] = [p.pid] + (children(p.pid) if name == "worker" else [])
        return out

    def stop(self, name: str, timeout: float = 30) -> None:
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def stop_all(self) -> None:
        for name in ("feeder", "sink", "worker", "redis"):
            self.stop(name)


# ==================================================================== profiles
STAGES = {
    "worker": [
        ("task body (handle_chunk / detect_chunks)", ("handle_chunk (", "detect_chunks (")),
        ("  decode chunk message", ("Chunk.from_message (",)),
        ("  miniSEED decode", ("mseed_to_stream (",)),
        ("  prepare_stream", ("prepare_stream (",)),
        ("  window gather (iter_batches)", ("iter_batches (",)),
        ("  ONNX Runtime (run_batch)", ("OnnxModel.run_batch (",)),
        ("  result message (to_message)", ("ChunkResult.to_message (",)),
        ("  publish probabilities (XADD)", ("RedisBus.publish (", "_publish_results (")),
        ("  metrics (prometheus_client)", ("prometheus_client",)),
        ("Celery/kombu outside the task body", None),
        ("logging (anywhere)", ("logging/__init__.py",)),
        ("JSON (anywhere)", ("json/",)),
    ],
    "feeder": [
        ("feed: build 1 s Traces (RealtimeFeed.run)", ("RealtimeFeed.run (",)),
        ("Feeder.add (buffer + metrics)", ("Feeder.add (",)),
        ("Feeder.cut_and_send", ("Feeder.cut_and_send (",)),
        ("  StationBuffer.cut", ("StationBuffer.cut (", "<locals>.cut (")),
        ("    _slice (ObsPy slice + merge)", ("_slice (",)),
        ("    _trim", ("StationBuffer._trim (",)),
        ("    _earliest", ("StationBuffer._earliest (",)),
        ("  stream_to_mseed", ("stream_to_mseed (",)),
        ("  Chunk.to_message (base64)", ("Chunk.to_message (",)),
        ("  Feeder._release (in-flight check + send)", ("Feeder._release (",)),
        ("    Celery send_task", ("Celery.send_task (",)),
        ("save_state", ("Feeder.save_state (",)),
        ("metrics (prometheus_client)", ("prometheus_client",)),
        ("inbox queue get/put", ("queue.py",)),
    ],
    "sink": [
        ("Sink.step", ("Sink.step (", "BenchSink.step (")),
        ("  read (XREADGROUP + JSON)", ("RedisBus.read (",)),
        ("  Sink._release", ("Sink._release (",)),
        ("    _handle (trigger)", ("Sink._handle (", "BenchSink._handle (")),
        ("    _publish (detections)", ("Sink._publish (",)),
        (
            "      CatalogFiles.write (jsonl + csv/QuakeML rewrite)",
            ("CatalogFiles.write (", "<locals>.write ("),
        ),
        ("        write_quakeml", ("write_quakeml (",)),
        ("        write_csv", ("write_csv (",)),
        ("      RedisDetections.publish", ("RedisDetections.publish (",)),
        ("    state save (HSET)", ("RedisState.save (",)),
        ("  ack (XACK)", ("RedisBus.ack (",)),
        ("report_queues / flush_idle", ("Sink.report_queues (", "Sink.flush_idle (")),
        ("JSON (anywhere)", ("json/",)),
    ],
}


def summarise_stacks(path: Path, role: str, rate: int, seconds: float) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> inclusive share per stage and the top leaf functions."""
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        frames, _, n = line.rpartition(" ")
        if frames and n.isdigit():
            stacks.append((frames.split(";"), int(n)))
    total = sum(n for _, n in stacks) or 1
    stages = {}
    for name, pat in STAGES.get(role, []):
        if pat is None:  # worker: active outside the task body = Celery's own per-task work
            body = STAGES["worker"][0][1]
            n = sum(c for f, c in stacks if not any(b in x for x in f for b in body))
        else:
            n = sum(c for f, c in stacks if any(q in x for x in f for q in pat))
        stages[name] = round(100 * n / total, 1)
    leaves: dict[str, int] = {}
    for f, c in stacks:
        leaf = f[-1].split(" (")[0] + " (" + f[-1].split(" (")[-1].split("/")[-1]
        leaves[leaf] = leaves.get(leaf, 0) + c
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:12]
    return {
        "cores": round(total / rate / seconds, 2),
        "samples": total,
        "stages_pct": stages,
        "top_self_pct": [(k, round(100 * v / total, 1)) for k, v in top],
    }


def print_profile(prof: dict[str, Any]) -> None:
    for role, p in prof.items():
        print(
            f"  {role}: {p['samples']} samples, {p['cores']} cores active (py-spy counts "
            "running and runnable threads: on a busy machine, waiting for a CPU too)"
        )
        for k, v in p["stages_pct"].items():
            print(f"      {v:5.1f} %  {k}")
        print("      top self: " + "; ".join(f"{k} {v} %" for k, v in p["top_self_pct"][:8]))


# ===================================================================== one run
def run_one(args, n: int, chunk_s: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"quakescan-sbench-{n}-"))
    # Feeding starts about 2 s after the feeder is up; measured window after the warm-up.
    load_before = os.getloadavg()
    t_setup = time.time()
    svc = Services(tmp, args, n, chunk_s, until=0.0)
    samples: list[dict[str, Any]] = []
    profile: dict[str, Any] = {}
    try:
        svc.start_redis()
        svc.start_worker()
        sink = svc.start_role("sink", tmp / "sink.json")
        svc.until = time.time() + 8 + args.warmup + args.duration  # the feeder loads data first
        feeder = svc.start_role("feeder", tmp / "feeder.json")
        t_feed0 = time.time()
        stop_mon = threading.Event()

        def monitor() -> None:
            import redis

            while not stop_mon.wait(1.0):
                try:
                    r = svc.client
                    detect = r.llen("detect")
                    unacked = r.hlen("unacked")
                    lag = 0
                    try:
                        for g in r.xinfo_groups("quakescan:probabilities"):
                            lag = int(g.get("lag") or 0) + int(g.get("pending") or 0)
                    except redis.ResponseError:
                        pass
                except Exception:
                    detect = unacked = lag = -1
                pids = svc.pids()
                ticks = {k: sum(cpu_ticks(p) or 0 for p in v) for k, v in pids.items()}
                busy, total = system_busy_ticks()
                samples.append(
                    {
                        "t": time.time(),
                        "detect": detect,
                        "unacked": unacked,
                        "prob_lag": lag,
                        "ticks": ticks,
                        "busy": busy,
                        "total": total,
                        "load1": os.getloadavg()[0],
                    }
                )

        mon = threading.Thread(target=monitor, daemon=True)
        mon.start()
        spies = []
        if args.profile and args.py_spy:
            w0 = svc.until - 1.0 - args.duration
            time.sleep(max(0.0, w0 - time.time()))
            pdir = Path(args.profile_dir) / f"n{n}-chunk{chunk_s:g}"
            pdir.mkdir(parents=True, exist_ok=True)
            targets = [("feeder", feeder.pid), ("sink", sink.pid)]
            targets += [
                (f"worker-child{i}", p) for i, p in enumerate(children(svc.procs["worker"].pid))
            ]
            targets += [("worker-main", svc.procs["worker"].pid)]
            for name, pid in targets:
                out = pdir / f"{name}.txt"
                cmd = [
                    args.py_spy,
                    "record",
                    "-p",
                    str(pid),
                    "-d",
                    str(int(args.duration)),
                    "-r",
                    str(PY_SPY_RATE),
                    "--nonblocking",
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                ]
                spies.append(
                    (
                        name,
                        out,
                        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                    )
                )
        feeder.wait(svc.until - time.time() + args.feeder_grace + 60)
        # Drain: wait for the sink to have triggered every chunk sent (or give up).
        fd = json.loads((tmp / "feeder.json").read_text())
        last_seq: dict[str, int] = {}
        for st, seq, _, _ in fd["sent"]:
            last_seq[st] = max(seq, last_seq.get(st, -1))
        deadline = time.time() + args.drain
        while time.time() < deadline:
            prog = {
                k.decode().split("|")[0]: int(v)
                for k, v in svc.client.hgetall("quakescan:sink:progress").items()
            }
            if all(prog.get(st, -1) >= q for st, q in last_seq.items()):
                break
            time.sleep(0.5)
        stop_mon.set()
        mon.join(3)
        profile = {}
        for name, out, p in spies:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
            if out.exists():
                role = name.split("-")[0]
                profile[name] = summarise_stacks(out, role, PY_SPY_RATE, args.duration)
        svc.stop("sink")
        sk = json.loads((tmp / "sink.json").read_text())
        wlog = svc.logs["worker"].read_text(errors="replace")
    finally:
        svc.stop_all()
    provider = "unknown"
    for line in wlog.splitlines():
        if " serves " in line and " on " in line:  # logged at INFO only
            provider = line.rsplit(" on ", 1)[1].strip()
            break
    res = analyse(args, n, chunk_s, fd, sk, samples, svc.until, t_feed0)
    if profile:
        res["profile"] = profile
    res.update(
        provider=provider,
        load_before=[round(x, 2) for x in load_before],
        setup_s=round(t_feed0 - t_setup, 1),
        worker_errors=sum(1 for line in wlog.splitlines() if " ERROR" in line),
        tmp=str(tmp),
    )
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def analyse(args, n, chunk_s, fd, sk, samples, until, t_feed0) -> dict[str, Any]:
    w1 = until - 1.0  # the last packet was due at or before `until`
    w0 = w1 - args.duration
    hz = os.sysconf("SC_CLK_TCK")
    # ---- chunks sent in the window, and what the sink made of them
    sent = [(s, q, lst, t) for s, q, lst, t in fd["sent"] if w0 <= lst < w1]
    handled = {(s, q): r for r in sk["records"] for s, q in [(r[0], r[1])]}
    recs = [handled.get((s, q)) for s, q, _, _ in sent]
    got = [r for r in recs if r is not None]
    missing = len(sent) - len(got)
    lat = np.array([r[5] - r[2] for r in got])  # sink `now` - last sample: the metric's value
    # breakdown: last sample -> sent (feeder), sent -> done (queue + worker), done -> triggered (sink)
    feeder_lag = np.array([t - lst for _, _, lst, t in sent])
    queue_worker = np.array([r[4] - r[3] for r in got if r[3] and r[4]])
    sink_part = np.array([r[5] - r[4] for r in got if r[4]])
    windows = sum(r[6] for r in got)
    det = [v for t, v in sk["detection_latency"] if w0 <= t < w1 + args.drain]
    # ---- latency trend: first third vs last third of the window
    trend = None
    if len(got) >= 6:
        lst_t = np.array([r[2] for r in got])
        third = args.duration / 3
        a = lat[lst_t < w0 + third]
        b = lat[lst_t >= w1 - third]
        if len(a) and len(b):
            trend = float(np.median(b) - np.median(a))
    # ---- the feed's own timing: how late each second's packets were out
    bursts = [(due, a, e) for due, a, e in fd["bursts"] if w0 <= due - 1 < w1]
    emit_late = np.array([e - due for due, a, e in bursts])
    emit_dur = np.array([e - a for due, a, e in bursts])
    inbox = [x for t, x, h in fd["samples"] if w0 <= t < w1]
    held = [h for t, x, h in fd["samples"] if w0 <= t < w1]
    # ---- queues and CPU over the window
    ws = [s for s in samples if w0 <= s["t"] <= w1]
    cpu = {}
    others = None
    if len(ws) >= 2:
        s0, s1 = ws[0], ws[-1]
        dt = s1["t"] - s0["t"]
        for k in ("feeder", "worker", "sink", "redis"):
            if k in s0["ticks"] and k in s1["ticks"]:
                cpu[k] = round(100 * (s1["ticks"][k] - s0["ticks"][k]) / hz / dt, 1)
        ncpu = len(os.sched_getaffinity(0))
        busy_pct = 100 * (s1["busy"] - s0["busy"]) / max(1, s1["total"] - s0["total"]) * ncpu
        others = round(busy_pct - sum(cpu.values()), 1)
    detect_depth = [s["detect"] for s in ws]
    prob_lag = [s["prob_lag"] for s in ws]
    expected = n * args.duration / chunk_s
    emit_ok = len(emit_late) > 0 and float(np.percentile(emit_late, 99)) < 1.0
    sustained = (
        missing == 0
        and len(got) >= 0.9 * expected
        and trend is not None
        and trend < 1.0
        and emit_ok
        and (not held or max(held) <= n)  # the in-flight bound is not holding a backlog
    )
    reasons = []
    if missing:
        reasons.append(f"{missing} chunks not triggered within {args.drain:.0f} s")
    if len(got) < 0.9 * expected:
        reasons.append(f"{len(got)} of ~{expected:.0f} chunks")
    if trend is None:
        reasons.append("no chunks triggered in the first or last third of the window")
    elif trend >= 1.0:
        reasons.append(f"latency grew {trend:.1f} s over the window")
    if not emit_ok:
        reasons.append("feed fell behind the wall clock")
    if held and max(held) > n:
        reasons.append(f"feeder held up to {max(held)} chunks (in-flight bound)")
    p99 = pctl(lat, 99)
    det_p99 = pctl(det, 99)
    cps = len(got) / args.duration
    cpu_ms = {k: round(10 * v / cps, 2) for k, v in cpu.items()} if cps else {}
    cores_1000 = round(sum(cpu.values()) / 100 * 1000 / n, 2) if cpu else None
    meets = bool(
        sustained
        and p99 is not None
        and p99 <= TARGET_P99_S
        and (det_p99 is None or det_p99 <= TARGET_P99_S)
    )
    return {
        "stations": n,
        "event_stations": fd["data"]["event_stations"],
        "chunk_s": chunk_s,
        "batch_chunks": args.batch_chunks,
        "window_s": round(w1 - w0, 1),
        "windows_per_s": round(windows / args.duration, 1),
        "chunks_per_s": round(len(got) / args.duration, 2),
        "chunks_sent": len(sent),
        "chunks_missing": missing,
        "chunk_latency_s": {
            "p50": pctl(lat, 50),
            "p90": pctl(lat, 90),
            "p99": p99,
            "max": float(lat.max()) if len(lat) else None,
        },
        "latency_trend_s": trend,
        "breakdown_p50_s": {
            "feeder": pctl(feeder_lag, 50),
            "queue_worker": pctl(queue_worker, 50),
            "sink": pctl(sink_part, 50),
        },
        "breakdown_p99_s": {
            "feeder": pctl(feeder_lag, 99),
            "queue_worker": pctl(queue_worker, 99),
            "sink": pctl(sink_part, 99),
        },
        "detection_latency_s": {"p50": pctl(det, 50), "p99": det_p99, "n": len(det)},
        "detections_total": sk["detections"],
        "detect_queue_max": max(detect_depth) if detect_depth else None,
        "detect_queue_end": detect_depth[-1] if detect_depth else None,
        "prob_stream_lag_max": max(prob_lag) if prob_lag else None,
        "feed_emit_late_s": {
            "p50": pctl(emit_late, 50),
            "p99": pctl(emit_late, 99),
            "max": float(emit_late.max()) if len(emit_late) else None,
        },
        "feed_emit_s_per_second": pctl(emit_dur, 50),
        "feeder_inbox_max": max(inbox) if inbox else None,
        "feeder_held_max": max(held) if held else None,
        "feeder_held_end": fd["held_end"],
        "cpu_pct": cpu,
        "cpu_pct_other_processes": others,
        "cpu_ms_per_chunk": cpu_ms,
        "cores_per_1000_stations": cores_1000,
        "load1_window": [round(s["load1"], 2) for s in ws[:: max(1, len(ws) // 6)]],
        "sustained": bool(sustained),
        "unsustained_because": reasons,
        "meets_target": meets,
        "sink_step_s": {
            "p50": pctl([d for a, d, m in sk["steps"] if w0 <= a < w1 and m], 50),
            "max": max([d for a, d, m in sk["steps"] if w0 <= a < w1] or [0]),
        },
    }


# ====================================================================== output
def fmt(x, nd=2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def print_table(results: list[dict[str, Any]]) -> None:
    hdr = (
        "stations | chunk s | chunks/task | windows/s | chunks/s | chunk lat p50 / p99 s | "
        "detection lat p50 / p99 s (n) | detect queue max | feeder lag p99 s | feed late max s | "
        "CPU % feeder / workers / sink / redis (others) | sustained | target"
    )
    print()
    print(hdr)
    print("|".join("---" for _ in hdr.split("|")))
    for r in results:
        c = r["cpu_pct"]
        cl, dl = r["chunk_latency_s"], r["detection_latency_s"]
        print(
            " | ".join(
                [
                    str(r["stations"]),
                    fmt(r["chunk_s"], 0),
                    str(r["batch_chunks"]),
                    fmt(r["windows_per_s"], 0),
                    fmt(r["chunks_per_s"], 1),
                    f"{fmt(cl['p50'])} / {fmt(cl['p99'])}",
                    f"{fmt(dl['p50'])} / {fmt(dl['p99'])} ({dl['n']})",
                    fmt(r["detect_queue_max"]),
                    fmt(r["breakdown_p99_s"]["feeder"]),
                    fmt(r["feed_emit_late_s"]["max"]),
                    " / ".join(fmt(c.get(k), 0) for k in ("feeder", "worker", "sink", "redis"))
                    + f" ({fmt(r['cpu_pct_other_processes'], 0)})",
                    "yes" if r["sustained"] else "no: " + "; ".join(r["unsustained_because"]),
                    "PASS" if r["meets_target"] else "FAIL",
                ]
            )
        )
    print()


def print_breakdown(results: list[dict[str, Any]]) -> None:
    print(
        "per run: latency p50 / p99 (s) from the chunk's last sample to sent (feeder), "
        "sent to done (queue + worker), done to triggered (sink); CPU per chunk; feeder and sink"
    )
    for r in results:
        b50, b99 = r["breakdown_p50_s"], r["breakdown_p99_s"]
        cps, cpu = r["chunks_per_s"], r["cpu_pct"]
        cms = {k: 10 * v / cps for k, v in cpu.items()} if cps else {}
        cores = sum(cpu.values()) / 100 * 1000 / r["stations"] if cpu else None
        print(
            f"  N={r['stations']} chunk {fmt(r['chunk_s'], 0)} s, {r['batch_chunks']} chunks/task\n"
            f"      latency: feeder {fmt(b50['feeder'])} / {fmt(b99['feeder'])}"
            f", queue+worker {fmt(b50['queue_worker'])} / {fmt(b99['queue_worker'])}"
            f", sink {fmt(b50['sink'])} / {fmt(b99['sink'])}"
            f"; trend {fmt(r['latency_trend_s'])} s; missing {r['chunks_missing']}\n"
            f"      CPU ms per chunk: "
            + ", ".join(f"{k} {fmt(v, 1)}" for k, v in cms.items())
            + f"; pipeline {fmt(cores)} cores per 1000 stations\n"
            f"      feed emit {fmt(r['feed_emit_s_per_second'], 3)} s per second of data, "
            f"inbox max {r['feeder_inbox_max']}, held max {r['feeder_held_max']}; "
            f"sink step p50 {fmt(r['sink_step_s']['p50'], 3)} s, max {fmt(r['sink_step_s']['max'], 2)} s; "
            f"detections {r['detections_total']}; load avg {r['load1_window']}"
        )


# ======================================================================== main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stations", default="50,100,200,500,1000,2000", help="N values to sweep")
    ap.add_argument("--chunk-s", default="10", help="chunk length(s), comma-separated [10]")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds fed before measuring")
    ap.add_argument("--duration", type=float, default=90.0, help="measured seconds per N")
    ap.add_argument(
        "--drain", type=float, default=30.0, help="max wait for late chunks after feeding"
    )
    ap.add_argument("--feeder-grace", type=float, default=3.0, help=argparse.SUPPRESS)
    ap.add_argument("--concurrency", type=int, default=2, help="worker processes [2]")
    ap.add_argument(
        "--max-in-flight",
        type=int,
        default=4,
        help="feeder in-flight chunks per station [4, the default]",
    )
    ap.add_argument(
        "--event-fraction",
        type=float,
        default=0.02,
        help="stations looping earthquake records [0.02]",
    )
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument(
        "--batch-chunks", type=int, default=32, help="chunks per Celery task [32, the default]"
    )
    ap.add_argument("--log-level", default="INFO", help="worker log level [INFO, the default]")
    ap.add_argument("--keep-going", action="store_true", help="sweep on after an unsustained N")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="profile the measured window: py-spy on the feeder, sink and worker processes "
        "when py-spy is found (--py-spy), else cProfile of the feeder and sink",
    )
    ap.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable [on PATH]")
    ap.add_argument("--profile-dir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories (logs)")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: N=20,100, 15 s warm-up, 40 s measured"
    )
    ap.add_argument("--json", default=None, help="write the results here")
    # internal: the feeder / sink roles
    ap.add_argument("--_role", dest="role", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_out", dest="out", help=argparse.SUPPRESS)
    ap.add_argument("--_broker", dest="broker", help=argparse.SUPPRESS)
    ap.add_argument("--_tmp", dest="tmp", help=argparse.SUPPRESS)
    ap.add_argument("--_n", dest="n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_until", dest="until", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--_profile", dest="profile_out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.stations, args.warmup, args.duration, args.drain = "20,100", 15.0, 40.0, 20.0
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.role:
        args.chunk_s = float(args.chunk_s)
        args.profile = args.profile_out
        {"feeder": role_feeder, "sink": role_sink}[args.role](args)
        return
    if args.profile:
        args.profile_dir = Path(
            args.profile_dir or tempfile.mkdtemp(prefix="quakescan-sbench-prof-")
        )
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    m = machine()
    print(
        f"machine: {m['cpu']}, {m['usable_cpus']} of {m['logical_cpus']} CPUs usable, {m['ram_gb']} GB RAM; "
        f"Python {m['python']}, onnxruntime {m['onnxruntime']} (available: {', '.join(m['ort_providers_available'])}; a worker here runs {m['provider']}), "
        f"celery {m.get('celery')}, redis-server {m['redis_server']}"
    )
    print(f"load average at start: {os.getloadavg()}")
    results = []
    ns = [int(x) for x in args.stations.split(",") if x.strip()]
    chunk_ss = [float(x) for x in str(args.chunk_s).split(",") if x.strip()]
    for chunk_s in chunk_ss:
        for n in ns:
            print(
                f"-- N={n} chunk_s={chunk_s:g}: warm-up {args.warmup:g} s, measuring {args.duration:g} s "
                f"(load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
            r = run_one(args, n, chunk_s)
            results.append(r)
            print_table([r])
            if r.get("profile"):
                print_profile(r["profile"])
            if not r["sustained"] and not args.keep_going:
                break
    print("=" * 100)
    print(
        f"machine: {m['cpu']}, {m['usable_cpus']} CPUs, {m['ram_gb']} GB RAM; onnxruntime "
        f"{m['onnxruntime']}, provider {m['provider']}; worker -c {args.concurrency}, "
        f"max_in_flight {args.max_in_flight}, {args.batch_chunks} chunks/task, worker log {args.log_level}, "
        "step 1 s, window 10 s"
    )
    print_table(results)
    print_breakdown(results)
    ok = [r["stations"] for r in results if r["sustained"]]
    print(
        f"\nlargest N sustained: {max(ok) if ok else 'none'}; target: >= {TARGET_STATIONS} stations "
        f"with chunk and detection p99 <= {TARGET_P99_S} s"
    )
    for r in results:
        if r.get("profile"):
            print(
                f"\nprofile, N={r['stations']} chunk {r['chunk_s']:g} s, {r['batch_chunks']} chunks/task:"
            )
            print_profile(r["profile"])
    if args.profile:
        print(f"profiles in {args.profile_dir}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": m,
                    "args": {
                        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    },
                    "results": results,
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
