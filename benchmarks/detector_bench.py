"""Detector speed and memory on a real-length 3-component 100 Hz station-day, step 1 s.

Compares, on the same windows of the same data and the same network:

1. end to end: ``Detector.detect_iter`` over the miniSEED file (ObsPy read,
   stream preparation, window gather, ONNX Runtime, trigger);
2. raw ONNX Runtime: ``session.run`` alone on ready batches (the detector's
   batch size 256, and the best of a batch x threads sweep);
3. PyTorch eager: the same ``DetectorNet`` at its best batch size and threads;
4. SeisBench's ``annotate`` around that PyTorch network (benchmark-only
   dependency, ``pip install seisbench``).

Each measurement runs in its own fresh Python process, so the peak resident
memory (``VmHWM``) reported is that method's own; the methods run in
interleaved rounds and the fastest run of each is kept, so that load from
other work on a shared host falls on all of them alike. Before any timing the
PyTorch network is checked against ONNX Runtime on real windows (and SeisBench
against ONNX Runtime at matching window starts); after timing, each method's
full-day probabilities are compared with raw ONNX Runtime's again.

Run from the repository root::

    .venv/bin/python benchmarks/detector_bench.py               # the whole day
    .venv/bin/python benchmarks/detector_bench.py --hours 1     # a quick check
    .venv/bin/python benchmarks/detector_bench.py --json benchmarks/results/cpu.json

The station-day is built from real data in ``<data-dir>/reunion_noise`` (see
``build_station_day``) and written once to a temporary STEIM2 miniSEED file,
so reading it is part of the end-to-end time. Timing targets are printed, never
asserted (see CONVENTIONS.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DETECTOR_BATCH = 256  # Detector's default batch_size
SWEEP_BATCHES = (64, 128, 256, 512, 1024)
PARITY_ATOL = 1e-4  # as training/export.py's ONNX-vs-PyTorch check

# The stand-in 3-component day (all real recordings, 2010-09-01, network YA):
#   Z <- YA.UV05.00.HHZ as recorded
#   N <- YA.UV06.00.HHZ (the neighbouring station, ~4 km away), relabelled
#   E <- YA.UV05.00.HHZ delayed by 12 h, wrapping around the day, relabelled
# It has the size, sample type, compression and noise character of a real
# 3-C broadband day; it is not a physical 3-C recording.
SOURCE_Z = "YA.UV05.00.HHZ.D.2010.244"
SOURCE_N = "YA.UV06.00.HHZ.D.2010.244"
E_SHIFT_S = 12 * 3600
STATION = ("YA", "UV05", "00", "HH")

METHODS = ("e2e", "profile", "ort", "torch", "seisbench")


# ------------------------------------------------------------------ memory, machine
def _proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (VmHWM, VmRSS) in MB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    VmHWM, not ru_maxrss: Linux carries the forking parent's high-water mark
    into ru_maxrss across exec, VmHWM belongs to this process's own memory map.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_mb() -> float:
    """Current resident memory of this process in MB (NaN where /proc is missing)."""
    v = _proc_status_mb("VmRSS")
    return float("nan") if v is None else v


def mem_available_bytes() -> float:
    """MemAvailable from /proc/meminfo (infinite where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("inf")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, GPU (if any) and the library versions that matter here."""
    cpu = platform.processor() or platform.machine()
    mem_total_mb = float("nan")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_total_mb = int(line.split()[1]) / 1024.0
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "ram_gb": round(mem_total_mb / 1024.0, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": None,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        info["gpu"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    for mod in ("numpy", "obspy", "onnxruntime", "torch", "seisbench"):
        info[mod] = _version(mod)
    return info


def _version(module: str) -> str | None:
    from importlib import metadata

    dists = {"onnxruntime": ("onnxruntime-gpu", "onnxruntime")}.get(module, (module,))
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when ONNX Runtime's CUDA provider and an NVIDIA driver are both there."""
    import onnxruntime as ort

    from quakescan.detector.model import gpu_present

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device!r}: expected auto, cpu or cuda")
    cuda_ok = "CUDAExecutionProvider" in ort.get_available_providers() and gpu_present()
    if device == "cuda" and not cuda_ok:
        raise SystemExit(
            "--device cuda: ONNX Runtime has no usable CUDA provider on this host "
            f"(providers {ort.get_available_providers()}, NVIDIA driver "
            f"{'found' if gpu_present() else 'not found'}); "
            "it needs onnxruntime-gpu and an NVIDIA GPU with its driver"
        )
    if device == "auto":
        return "cuda" if cuda_ok else "cpu"
    return device


# ------------------------------------------------------------------- the data
def build_station_day(data_dir: Path, hours: float, out: Path) -> dict[str, Any]:
    """Write the stand-in 3-C station-day (first ``hours`` of it) to ``out`` as STEIM2 miniSEED.

    Z is YA.UV05 HHZ, N is YA.UV06 HHZ relabelled, E is YA.UV05 HHZ delayed
    by 12 h (np.roll over the day) relabelled; all int32 counts at 100 Hz
    from 2010-09-01T00:00:00 (on the 1 s window grid).
    """
    import obspy

    src = data_dir / "reunion_noise"
    traces = {}
    for comp, name in (("Z", SOURCE_Z), ("N", SOURCE_N)):
        path = src / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the benchmark needs the reunion_noise day")
        st = obspy.read(str(path))
        st.merge(method=1, fill_value=None)
        if len(st) != 1 or np.ma.isMaskedArray(st[0].data):
            raise ValueError(f"{path}: expected one gap-free trace, found {len(st)} piece(s)")
        if st[0].stats.sampling_rate != 100.0:
            raise ValueError(f"{path}: sampling rate {st[0].stats.sampling_rate} Hz, expected 100")
        traces[comp] = st[0]
    z, n = traces["Z"], traces["N"]
    if abs(z.stats.starttime - n.stats.starttime) > 0.005:
        raise ValueError(
            f"{SOURCE_Z} starts at {z.stats.starttime}, {SOURCE_N} at {n.stats.starttime}: "
            "expected the same start"
        )
    rate = z.stats.sampling_rate
    n_day = min(z.stats.npts, n.stats.npts)
    n_keep = int(round(hours * 3600 * rate))
    if n_keep > n_day:
        raise ValueError(f"--hours {hours}: the source day holds only {n_day / rate / 3600:.2f} h")
    start = z.stats.starttime
    z_day = np.asarray(z.data[:n_day], dtype=np.int32)
    data = {
        "Z": z_day[:n_keep],
        "N": np.asarray(n.data[:n_keep], dtype=np.int32),
        "E": np.roll(z_day, int(E_SHIFT_S * rate))[:n_keep],
    }
    net, sta, loc, prefix = STATION
    st = obspy.Stream()
    for comp in "ENZ":
        tr = obspy.Trace(np.ascontiguousarray(data[comp]))
        tr.stats.network, tr.stats.station, tr.stats.location = net, sta, loc
        tr.stats.channel = prefix + comp
        tr.stats.sampling_rate = rate
        tr.stats.starttime = start
        st.append(tr)
    out.parent.mkdir(parents=True, exist_ok=True)
    st.write(str(out), format="MSEED", encoding="STEIM2", reclen=4096)
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "start": str(start),
        "hours": hours,
        "samples_per_channel": n_keep,
        "channels": [tr.id for tr in st],
        "made_of": {
            "Z": f"{SOURCE_Z} as recorded",
            "N": f"{SOURCE_N} relabelled HHN",
            "E": f"{SOURCE_Z} delayed by {E_SHIFT_S // 3600} h (wrapped), relabelled HHE",
        },
    }


# ------------------------------------------------------------------ the models
def load_torch_net(model_path: str, checkpoint: str | None) -> tuple[Any, str]:
    """The PyTorch ``DetectorNet`` behind the ONNX file, and where it came from.

    From ``checkpoint`` when given (the run whose export is the ONNX file),
    else rebuilt from the ONNX file itself: a ``ModelConfig`` from its spec,
    then every parameter and buffer from the graph's initializers (by name, as
    the exporter keeps the state-dict names; by order and shape otherwise).
    The caller checks parity with ONNX Runtime before trusting it.
    """
    if checkpoint:
        from quakescan.training.export import load_checkpoint

        net, _ = load_checkpoint(checkpoint)
        return net.eval(), f"checkpoint {checkpoint}"

    from quakescan.training.export import net_from_onnx

    net, how = net_from_onnx(model_path)
    return net, f"rebuilt from {Path(model_path).name} (spec config, weights {how})"


def ort_session(model_path: str, device: str, threads: int | None) -> Any:
    """A bare ONNX Runtime session, set up as ``OnnxModel`` sets up its own."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    sess = ort.InferenceSession(model_path, sess_options=so, providers=providers)
    if device == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError("ONNX Runtime did not start its CUDA provider on this host")
    return sess


def prepared_windows(path: str, model_path: str, step_s: float | None) -> dict[str, Any]:
    """The detector's own windows of the file: segments, grid indices and offsets (untimed).

    Returns {"spec", "step_s", "n", "read_s", "segments"}; segments are
    [(data float32[C, n], k int64[m], offset int64[m])].
    """
    import obspy

    from quakescan.detector.model import OnnxModel
    from quakescan.detector.prepare import prepare_stream
    from quakescan.detector.windows import grid_windows

    spec = OnnxModel(model_path, device="cpu").spec
    step = float(step_s if step_s is not None else spec.step_s)
    t0 = time.perf_counter()
    st = obspy.read(path)
    read_s = time.perf_counter() - t0
    segs = prepare_stream(
        st,
        sampling_rate_hz=spec.sampling_rate_hz,
        channel_order=spec.channel_order,
        min_samples=spec.window_samples,
    )
    del st
    out = []
    for seg in segs:
        k, off = grid_windows(
            seg.start_ns, seg.n_samples, seg.sampling_rate_hz, spec.window_samples, step
        )
        out.append((seg.data, k, off))
    return {
        "spec": spec,
        "step_s": step,
        "segments": out,
        "n": sum(len(k) for _, k, _ in out),
        "read_s": read_s,
    }


def gather_windows(view: np.ndarray, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Copy windows ``view[idx]`` into a contiguous batch; view: strided float32[n - W + 1, C, W].

    Evenly spaced offsets (one gap-free segment, the usual case) are a basic
    slice of the view, copied without any temporary; others go through fancy
    indexing, which reads only the windows asked for. Never ``np.take``: it
    first makes the whole strided view C-contiguous, i.e. W times the data.
    """
    if out is None:
        out = np.empty((len(idx), *view.shape[1:]), dtype=view.dtype)
    if len(idx) == 1:
        out[0] = view[idx[0]]
        return out
    d = int(idx[1] - idx[0])
    if d > 0 and bool((np.diff(idx) == d).all()):
        np.copyto(out, view[idx[0] : idx[-1] + 1 : d])
    else:
        np.copyto(out, view[idx])
    return out


def proposed_iter_batches(
    data: np.ndarray, offsets: np.ndarray, window_samples: int, batch_size: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """``detector.windows.iter_batches`` with the gather fix proposed to the lead.

    Same contract (a reused float32[b, C, W] buffer per batch); the only
    change is ``gather_windows`` in place of ``np.take(view, idx, axis=0, out=out)``.
    """
    from quakescan.detector.windows import window_view

    if len(offsets) == 0:
        return
    view = window_view(data, window_samples)
    buf = np.empty((min(batch_size, len(offsets)), data.shape[0], window_samples), np.float32)
    for i in range(0, len(offsets), batch_size):
        idx = offsets[i : i + batch_size]
        yield slice(i, i + len(idx)), gather_windows(view, idx, buf[: len(idx)])


def shipped_gather_copy_factor() -> float:
    """Bytes the shipped ``iter_batches`` allocates per byte of batch it returns (1 is ideal).

    A probe on a 60 s, 3-channel segment under tracemalloc (numpy reports its
    buffers to it): a gather that copies the whole strided view shows up as
    a factor in the hundreds.
    """
    import tracemalloc

    from quakescan.detector.windows import iter_batches

    data = np.zeros((3, 6000), np.float32)
    offsets = np.arange(0, 6000 - 1000 + 1, 100)
    tracemalloc.start()
    try:
        for _, batch in iter_batches(data, offsets[:8], 1000, 8):
            nbytes = batch.nbytes
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / nbytes


def iter_ready_batches(
    segments: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    window_samples: int,
    batch: int,
    limit: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(k int64[b], contiguous float32[b, C, W] batch) over the segments, a fresh array each.

    ``limit``: stop after that many windows (the batch-size sweep).
    """
    from quakescan.detector.windows import window_view

    left = limit
    for data, k, off in segments:
        if left is not None:
            k, off = k[:left], off[:left]
            left -= len(k)
        if not len(k):
            continue
        view = window_view(data, window_samples)
        for i in range(0, len(off), batch):
            yield k[i : i + batch], gather_windows(view, off[i : i + batch])


def time_batches(
    run: Callable[[Any], Any],
    segments: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    window_samples: int,
    batch: int,
    premake: str,
    *,
    limit: int | None = None,
    keep: bool = False,
    upload: Callable[[np.ndarray], Any] | None = None,
) -> tuple[int, float, float, np.ndarray | None, np.ndarray | None]:
    """Time ``run`` alone over ready batches; returns (windows, seconds, CPU seconds, k, probs).

    premake "each": each batch is gathered (and uploaded) just before its call,
    outside the timer; "all": every batch is made first, then all are run.
    """
    upload = upload or (lambda b: b)
    ks: list[np.ndarray] = []
    ps: list[np.ndarray] = []
    n, secs, cpu = 0, 0.0, 0.0
    source: Any = iter_ready_batches(segments, window_samples, batch, limit)
    if premake == "all":
        source = [(k, upload(b)) for k, b in source]
    for k, b in source:
        x = upload(b) if premake == "each" else b
        c0, t0 = cpu_s(), time.perf_counter()
        p = run(x)
        secs += time.perf_counter() - t0
        cpu += cpu_s() - c0
        n += len(k)
        if keep:
            ks.append(k)
            ps.append(np.asarray(p))
    if keep and ks:
        return n, secs, cpu, np.concatenate(ks), np.concatenate(ps)
    return n, secs, cpu, None, None


def compare_to_ort(k: np.ndarray, p: np.ndarray, ref_path: Path) -> dict[str, Any]:
    """Max |p - p_ort| over the windows both have (ORT probabilities saved by the ort worker)."""
    if not ref_path.exists():
        return {"max_abs_diff": None, "matched": 0}
    ref = np.load(ref_path)
    common, ia, ib = np.intersect1d(k, ref["k"], return_indices=True)
    if not len(common):
        return {"max_abs_diff": None, "matched": 0}
    diff = float(np.abs(p[ia] - ref["probs"][ib]).max())
    return {"max_abs_diff": diff, "matched": int(len(common)), "ort_windows": int(len(ref["k"]))}


# ------------------------------------------------------------------- workers
def worker_build(cfg: dict[str, Any]) -> dict[str, Any]:
    return build_station_day(Path(cfg["data_dir"]), cfg["hours"], Path(cfg["mseed"]))


def worker_parity(cfg: dict[str, Any]) -> dict[str, Any]:
    """PyTorch vs ONNX Runtime on real windows spread over the day; SeisBench likewise."""
    import torch

    from quakescan.detector.model import OnnxModel
    from quakescan.detector.windows import window_view

    pw = prepared_windows(cfg["mseed"], cfg["model"], cfg["step_s"])
    spec = pw["spec"]
    data, k_all, off_all = max(pw["segments"], key=lambda s: len(s[1]))
    pick = np.unique(np.linspace(0, len(k_all) - 1, min(cfg["parity_windows"], len(k_all))))
    pick = pick.astype(np.int64)
    x = gather_windows(window_view(data, spec.window_samples), off_all[pick])
    model = OnnxModel(cfg["model"], device="cpu")
    p_ort = model.predict(x)
    net, origin = load_torch_net(cfg["model"], cfg["checkpoint"])
    with torch.inference_mode():
        p_torch = np.concatenate(
            [net(torch.from_numpy(x[i : i + 256])).numpy() for i in range(0, len(x), 256)]
        )
    out: dict[str, Any] = {
        "torch_origin": origin,
        "windows": int(len(x)),
        "torch_max_abs_diff": float(np.abs(p_torch - p_ort).max()),
        "event_windows_ort": int((p_ort[:, 0] < 0.5).sum()),
    }
    if cfg["run_seisbench"]:
        import obspy

        from quakescan.detector.windows import step_ns

        st = obspy.read(cfg["mseed"])
        t0 = st[0].stats.starttime
        st.trim(t0, t0 + cfg["parity_minutes"] * 60 - 1 / spec.sampling_rate_hz)
        sb = seisbench_model(net, spec, pw["step_s"], "cpu")
        ann = sb.annotate(st, stride=int(round(pw["step_s"] * spec.sampling_rate_hz)))
        k_sb, p_sb = annotations_to_probs(ann, spec, pw["step_s"])
        k0 = int(k_sb[0])
        sel = (k_all >= k0) & (k_all <= int(k_sb[-1]))
        xs = gather_windows(window_view(data, spec.window_samples), off_all[sel])
        p_ref = model.predict(xs)
        common, ia, ib = np.intersect1d(k_sb, k_all[sel], return_indices=True)
        out["seisbench_windows"] = int(len(common))
        out["seisbench_of_ort_windows"] = int(sel.sum())
        out["seisbench_first_window"] = str(obspy.UTCDateTime(ns=k0 * step_ns(pw["step_s"])))
        out["seisbench_max_abs_diff"] = (
            float(np.abs(p_sb[ia] - p_ref[ib]).max()) if len(common) else None
        )
    return out


def worker_e2e(cfg: dict[str, Any], patched: bool = False) -> dict[str, Any]:
    """Detector.detect_iter over the file: read + prepare + gather + ONNX Runtime + trigger.

    patched: the what-if run, with ``proposed_iter_batches`` in place of the shipped gather.
    """
    import obspy

    from quakescan.detector import core as detector_core
    from quakescan.detector.core import Detector, RunStats

    if patched:
        detector_core.iter_batches = proposed_iter_batches

    rss_start = rss_mb()
    t0 = time.perf_counter()
    det = Detector(
        cfg["model"],
        step_s=cfg["step_s"],
        device=cfg["device"],
        threads=cfg["threads"],
        batch_size=DETECTOR_BATCH,
    )
    load_s = time.perf_counter() - t0
    spec = det.spec
    # One warm-up call, as a long-running worker has made long before its next chunk.
    det.model.run_batch(np.zeros((DETECTOR_BATCH, spec.n_channels, spec.window_samples), "f4"))
    rss_ready = rss_mb()
    best: dict[str, Any] | None = None
    for _ in range(cfg["repeat"]):
        det.stats = RunStats()  # fresh counters per repeat
        c0, t0 = cpu_s(), time.perf_counter()
        detections = list(det.detect_iter(obspy.read(p) for p in [cfg["mseed"]]))
        secs = time.perf_counter() - t0
        cpu = cpu_s() - c0
        if best is None or secs < best["seconds"]:
            best = {
                "seconds": secs,
                "cpu_s": cpu,
                "windows": det.stats.windows,
                "detections": len(detections),
                "inference_s": det.stats.inference_s,
                "batches": det.stats.batches,
            }
    assert best is not None
    return {
        **best,
        "batch": DETECTOR_BATCH,
        "gather": "proposed" if patched else "shipped",
        "threads": cfg["threads"],
        "provider": det.provider,
        "model_load_s": load_s,
        "rss_start_mb": rss_start,
        "rss_model_loaded_mb": rss_ready,
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_profile(cfg: dict[str, Any]) -> dict[str, Any]:
    """The end-to-end path stage by stage, with the resident memory after each stage."""
    import cProfile
    import io
    import pstats

    import obspy

    from quakescan.detector.core import Detector
    from quakescan.detector.prepare import prepare_stream
    from quakescan.detector.windows import grid_windows, iter_batches

    gather = cfg["profile_gather"]
    if gather == "proposed":
        iter_batches = proposed_iter_batches  # noqa: F811 (the what-if gather, see main)
    det = Detector(
        cfg["model"],
        step_s=cfg["step_s"],
        device=cfg["device"],
        threads=cfg["threads"],
        batch_size=DETECTOR_BATCH,
    )
    spec, w = det.spec, det.spec.window_samples
    det.model.run_batch(np.zeros((DETECTOR_BATCH, spec.n_channels, w), "f4"))
    stages: dict[str, float] = dict.fromkeys(
        ("read", "prepare", "grid", "gather", "onnxruntime", "trigger"), 0.0
    )
    rss_after: dict[str, float] = {"start": rss_mb()}
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    st = obspy.read(cfg["mseed"])
    stages["read"] = time.perf_counter() - t0
    rss_after["read"] = rss_mb()
    t0 = time.perf_counter()
    segs = prepare_stream(
        st, sampling_rate_hz=spec.sampling_rate_hz, channel_order=spec.channel_order, min_samples=1
    )
    stages["prepare"] = time.perf_counter() - t0
    rss_after["prepare"] = rss_mb()
    n_windows, detections = 0, 0
    for seg in segs:
        trig = det.new_trigger(seg.station, seg.channel_prefix)
        t0 = time.perf_counter()
        k, off = grid_windows(seg.start_ns, seg.n_samples, seg.sampling_rate_hz, w, det.step_s)
        probs = np.empty((len(k), len(spec.class_names)), dtype=np.float32)
        stages["grid"] += time.perf_counter() - t0
        it = iter_batches(seg.data, off, w, DETECTOR_BATCH)
        while True:
            t0 = time.perf_counter()
            try:
                sl, batch = next(it)
            except StopIteration:
                stages["gather"] += time.perf_counter() - t0
                break
            t1 = time.perf_counter()
            probs[sl] = det.model.run_batch(batch)
            t2 = time.perf_counter()
            stages["gather"] += t1 - t0
            stages["onnxruntime"] += t2 - t1
        rss_after["infer"] = rss_mb()
        t0 = time.perf_counter()
        detections += len(trig.feed(k, probs)) + len(trig.flush())
        stages["trigger"] += time.perf_counter() - t0
        n_windows += len(k)
    total = time.perf_counter() - t_all
    rss_after["trigger"] = rss_mb()
    peak = peak_rss_mb()

    # Where preparation spends its time (a second pass; memory already measured).
    prof = cProfile.Profile()
    prof.enable()
    prepare_stream(
        st, sampling_rate_hz=spec.sampling_rate_hz, channel_order=spec.channel_order, min_samples=1
    )
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(6)
    top = [ln.rstrip() for ln in buf.getvalue().splitlines() if ln.strip()][-7:]

    return {
        "gather": gather,
        "stages_s": stages,
        "total_s": total,
        "windows": n_windows,
        "detections": detections,
        "rss_after_mb": rss_after,
        "peak_rss_mb": peak,
        "input_mb": sum(tr.data.nbytes for tr in st) / 2**20,
        "segment_mb": sum(s.data.nbytes for s in segs) / 2**20,
        "prepare_top": top,
        "ort_ops": ort_op_profile(cfg, segs, spec),
    }


def ort_op_profile(cfg: dict[str, Any], segs: list[Any], spec: Any) -> list[tuple[str, float]]:
    """Share of ONNX Runtime's node time by operator type, over a few batches (profiling on)."""
    import onnxruntime as ort

    from quakescan.detector.windows import window_view

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(cfg["tmp"]) / "ortprof")
    if cfg["threads"] is not None:
        so.intra_op_num_threads = cfg["threads"]
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sess = ort.InferenceSession(
        cfg["model"],
        sess_options=so,
        providers=providers if cfg["device"] == "cuda" else providers[1:],
    )
    seg = max(segs, key=lambda s: s.n_samples)
    view = window_view(seg.data, spec.window_samples)
    step = int(round(cfg["step_s"] * spec.sampling_rate_hz)) if cfg["step_s"] else 100
    n = min(16 * DETECTOR_BATCH, view.shape[0] // step)
    x = np.ascontiguousarray(view[: n * step : step])
    for i in range(0, n, DETECTOR_BATCH):
        sess.run(None, {spec.input_name: x[i : i + DETECTOR_BATCH]})
    trace = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + ev.get("dur", 0)
    total = sum(by_op.values()) or 1.0
    return sorted(((op, d / total) for op, d in by_op.items()), key=lambda t: -t[1])


def worker_ort(cfg: dict[str, Any]) -> dict[str, Any]:
    """session.run alone on ready batches of the same windows: batch x threads sweep, full runs.

    Full runs: batch 256 with the detector's threads (``--threads`` or ORT's
    default), whose probabilities are the reference for the other methods, and
    the best of the sweep. Threads swept: that setting and, on CPU, 1.
    """
    import onnxruntime as ort

    pw = prepared_windows(cfg["mseed"], cfg["model"], cfg["step_s"])
    spec = pw["spec"]
    w = spec.window_samples
    iname, oname = spec.input_name, spec.output_name
    default_t = cfg["threads"]
    thread_options: list[int | None] = [default_t]
    if cfg["device"] != "cuda" and default_t != 1:
        thread_options.append(1)

    def runner(sess: Any) -> tuple[Callable[[Any], Any], Callable[[Any], np.ndarray], Any]:
        """(run, to_numpy, upload) for one session; on CUDA, inputs and outputs stay there."""
        if cfg["device"] != "cuda":
            return (lambda x: sess.run([oname], {iname: x})[0]), (lambda p: p), None
        io = sess.io_binding()

        def run(x: Any) -> Any:
            io.clear_binding_inputs()
            io.clear_binding_outputs()
            io.bind_ortvalue_input(iname, x)
            io.bind_output(oname, "cuda", 0)
            sess.run_with_iobinding(io)
            return io.get_outputs()[0]

        return (
            run,
            (lambda p: p.numpy()),
            (lambda b: ort.OrtValue.ortvalue_from_numpy(b, "cuda", 0)),
        )

    def label(t: int | None) -> str:
        return "default" if t is None else str(t)

    sessions = {t: ort_session(cfg["model"], cfg["device"], t) for t in thread_options}
    sweep: dict[str, float] = {}
    for t, sess in sessions.items():
        run, _, upload = runner(sess)
        for b in cfg["sweep_batches"]:
            lim = max(cfg["sweep_windows"], 2 * b)
            time_batches(run, pw["segments"], w, b, "each", limit=b, upload=upload)  # warm-up
            n, secs, _, _, _ = time_batches(
                run, pw["segments"], w, b, "each", limit=lim, upload=upload
            )
            sweep[f"{b}x{label(t)}"] = n / secs
    best_key = max(sweep, key=sweep.get)
    best_b = int(best_key.split("x")[0])
    best_t = next(t for t in thread_options if label(t) == best_key.split("x")[1])
    runs: dict[str, dict[str, Any]] = {}
    for tag, b, t in (("detector", DETECTOR_BATCH, default_t), ("best", best_b, best_t)):
        if tag == "best" and (b, t) == (DETECTOR_BATCH, default_t):
            runs["best"] = dict(runs["detector"])
            break
        run, to_numpy, upload = runner(sessions[t])
        best = None
        for _ in range(cfg["repeat"]):
            n, secs, cpu, k, p = time_batches(
                lambda x, run=run, to_numpy=to_numpy: to_numpy(run(x)),
                pw["segments"],
                w,
                b,
                cfg["premake"],
                keep=(tag == "detector"),
                upload=upload,
            )
            if tag == "detector" and k is not None:
                np.savez(cfg["ort_probs"], k=k, probs=p)
            if best is None or secs < best["seconds"]:
                best = {
                    "batch": b,
                    "threads": label(t),
                    "windows": n,
                    "seconds": secs,
                    "cpu_s": cpu,
                }
        runs[tag] = best
    return {
        "provider": sessions[default_t].get_providers()[0],
        "premake": cfg["premake"],
        "sweep": sweep,
        "sweep_key": "batch x threads",
        "best_batch": best_b,
        "best_threads": best_t,
        "runs": runs,
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_torch(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same network in PyTorch eager: batch x threads sweep, then the day at the best.

    Threads: ``--threads`` if given, else torch's default (all cores) and 1 (on
    a busy host one thread can beat an OpenMP team that waits on descheduled
    members); on CUDA only the default.
    """
    import torch

    net, origin = load_torch_net(cfg["model"], cfg["checkpoint"])
    all_threads = torch.get_num_threads()
    if cfg["threads"] is not None:
        thread_options = [cfg["threads"]]
    elif cfg["device"] == "cuda":
        thread_options = [all_threads]
    else:
        thread_options = list(dict.fromkeys([all_threads, 1]))
    dev = torch.device("cuda" if cfg["device"] == "cuda" else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but this torch build cannot use CUDA")
    net = net.to(dev)
    pw = prepared_windows(cfg["mseed"], cfg["model"], cfg["step_s"])
    w = pw["spec"].window_samples

    def upload(b: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(b).to(dev, non_blocking=False)

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            p = net(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return p

    sweep: dict[str, float] = {}
    for t in thread_options:
        torch.set_num_threads(t)
        for b in cfg["sweep_batches"]:
            lim = max(cfg["sweep_windows"], 2 * b)
            time_batches(run, pw["segments"], w, b, "each", limit=b, upload=upload)  # warm-up
            n, secs, _, _, _ = time_batches(
                run, pw["segments"], w, b, "each", limit=lim, upload=upload
            )
            sweep[f"{b}x{t}"] = n / secs
    best_key = max(sweep, key=sweep.get)
    best_b, best_t = (int(v) for v in best_key.split("x"))
    torch.set_num_threads(best_t)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best = None
    for _ in range(cfg["repeat"]):
        n, secs, cpu, k, p = time_batches(
            lambda x: run(x).cpu().numpy(),
            pw["segments"],
            w,
            best_b,
            cfg["premake"],
            keep=True,
            upload=upload,
        )
        if best is None or secs < best["seconds"]:
            best = {"batch": best_b, "windows": n, "seconds": secs, "cpu_s": cpu, "k": k, "p": p}
    assert best is not None
    parity = compare_to_ort(best.pop("k"), best.pop("p"), Path(cfg["ort_probs"]))
    return {
        **best,
        "origin": origin,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "sweep": sweep,
        "sweep_key": "batch x threads",
        "parity": parity,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
    }


def seisbench_model(net: Any, spec: Any, step_s: float, device: str) -> Any:
    """The wrapper from seisbench_wrapper.py around ``net``, on ``device``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from seisbench_wrapper import QuakescanAnnotator

    model = QuakescanAnnotator(
        net,
        channel_order=spec.channel_order,
        sampling_rate_hz=spec.sampling_rate_hz,
        window_samples=spec.window_samples,
        class_names=spec.class_names,
        step_samples=int(round(step_s * spec.sampling_rate_hz)),
    )
    return model.to(device).eval()


def annotations_to_probs(ann: Any, spec: Any, step_s: float) -> tuple[np.ndarray, np.ndarray]:
    """SeisBench annotation traces -> (grid index k int64[n], probabilities float32[n, classes])."""
    from quakescan.detector.windows import step_ns

    cols = []
    k0 = None
    for cname in spec.class_names:
        sel = ann.select(channel=f"QuakescanAnnotator_{cname}")
        if len(sel) != 1:
            raise ValueError(f"SeisBench returned {len(sel)} trace(s) for class {cname!r}")
        tr = sel[0]
        k_start = round(tr.stats.starttime.ns / step_ns(step_s))
        if abs(tr.stats.starttime.ns - k_start * step_ns(step_s)) > 1e9 / spec.sampling_rate_hz / 2:
            raise ValueError(
                f"SeisBench windows start off the {step_s} s grid ({tr.stats.starttime})"
            )
        if k0 is not None and k_start != k0:
            raise ValueError("SeisBench class traces start at different times")
        k0 = k_start
        cols.append(np.asarray(tr.data, dtype=np.float32))
    n = min(len(c) for c in cols)
    probs = np.stack([c[:n] for c in cols], axis=1)
    return np.arange(k0, k0 + n, dtype=np.int64), probs


def worker_seisbench(cfg: dict[str, Any]) -> dict[str, Any]:
    """SeisBench ``annotate`` over the read stream (reading is not timed here)."""
    import obspy
    import seisbench
    import torch

    from quakescan.detector.model import OnnxModel

    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    spec = OnnxModel(cfg["model"], device="cpu").spec
    step_s = float(cfg["step_s"] if cfg["step_s"] is not None else spec.step_s)
    net, origin = load_torch_net(cfg["model"], cfg["checkpoint"])
    dev = "cuda" if cfg["device"] == "cuda" else "cpu"
    if dev == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but this torch build cannot use CUDA")
    model = seisbench_model(net, spec, step_s, dev)
    batch = cfg["seisbench_batch"] or 256
    stride = int(round(step_s * spec.sampling_rate_hz))
    t0 = time.perf_counter()
    st = obspy.read(cfg["mseed"])
    read_s = time.perf_counter() - t0
    with torch.inference_mode():  # warm-up of the network, outside the timer
        model(torch.zeros((batch, spec.n_channels, spec.window_samples), device=dev))
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best = None
    for _ in range(cfg["repeat"]):
        c0, t0 = cpu_s(), time.perf_counter()
        ann = model.annotate(st, stride=stride, batch_size=batch)
        secs = time.perf_counter() - t0
        cpu = cpu_s() - c0
        if best is None or secs < best["seconds"]:
            best = {"seconds": secs, "cpu_s": cpu, "ann": ann}
    assert best is not None
    k, p = annotations_to_probs(best.pop("ann"), spec, step_s)
    return {
        **best,
        "batch": batch,
        "windows": int(len(k)),
        "read_s": read_s,
        "origin": origin,
        "device": dev,
        "seisbench": seisbench.__version__,
        "parity": compare_to_ort(k, p, Path(cfg["ort_probs"])),
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None,
    }


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "build": worker_build,
    "parity": worker_parity,
    "e2e": worker_e2e,
    "e2e_fix": lambda cfg: worker_e2e(cfg, patched=True),
    "e2e_threads": lambda cfg: worker_e2e({**cfg, "threads": cfg["e2e_threads"]}),
    "profile": worker_profile,
    "ort": worker_ort,
    "torch": worker_torch,
    "seisbench": worker_seisbench,
}


def worker_main(name: str, config_path: str, result_path: str) -> int:
    """Entry point of a measurement subprocess: run one worker, write its result as JSON."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = json.loads(Path(config_path).read_text())
    limit = cfg.get("e2e_as_limit_bytes") if name == "e2e" else None
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        res = WORKERS[name](cfg)
    except MemoryError as exc:
        cap = f" (address space capped at {limit / 1e9:.1f} GB)" if limit else ""
        res = {"error": f"MemoryError{cap}: {exc}"}
    Path(result_path).write_text(json.dumps(res, default=_json_default))
    return 0


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def keep_best(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Merge two rounds of one method: the faster run, the larger peak RSS, the best sweep rates."""
    if old is None or "error" in old:
        return new
    if "error" in new:
        return old

    def faster(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return a if a["seconds"] <= b["seconds"] else b

    if "runs" in new:  # raw ORT: each full run on its own
        out = dict(new)
        out["runs"] = {t: faster(old["runs"][t], r) for t, r in new["runs"].items()}
    else:
        out = dict(faster(old, new))
    if "sweep" in new:
        out["sweep"] = {k: max(old["sweep"].get(k, 0.0), v) for k, v in new["sweep"].items()}
    out["peak_rss_mb"] = max(old["peak_rss_mb"], new["peak_rss_mb"])
    out["rounds"] = old.get("rounds", 1) + 1
    return out


def run_worker(name: str, cfg_path: Path, tmp: Path) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; its result, or {"error": ...} if it failed."""
    result = tmp / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
    cmd += ["--worker-config", str(cfg_path), "--worker-result", str(result)]
    print(f"  running {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result.exists():
        return {"error": f"worker {name!r} exited with status {proc.returncode}", "wall_s": wall}
    res = json.loads(result.read_text())
    res["wall_s"] = wall
    return res


# -------------------------------------------------------------------- report
def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


ROW_NAMES = {
    "e2e": "end to end: read+prepare+gather+infer+trigger",
    "e2e_fix": "end to end, proposed gather fix (what-if)",
    "e2e_threads": "end to end, raw ORT's best threads",
    "ort": "raw ONNX Runtime session.run",
    "ort_best": "raw ONNX Runtime session.run, best of sweep",
    "torch": "PyTorch eager forward, best batch",
    "seisbench": "SeisBench annotate, same network",
}


def build_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows (one per method), with rates and ratios against raw ONNX Runtime at batch 256.

    A method that failed or was not run is a row with an ``error`` and no numbers.
    """
    rows: list[dict[str, Any]] = []
    for key in ("e2e", "e2e_fix", "e2e_threads", "ort", "torch", "seisbench"):
        r = res.get(key)
        if r is None:
            continue
        if "error" in r:
            rows.append({"key": key, "method": ROW_NAMES[key], "error": r["error"]})
            continue
        if key.startswith("e2e"):
            threads = "" if r.get("threads") is None else f" x{r['threads']}"
            rows.append(
                {
                    "key": key,
                    "runs_on": r["provider"] + threads,
                    **{k: r[k] for k in ("batch", "windows", "seconds", "cpu_s", "peak_rss_mb")},
                    "max_abs_diff": None,
                }
            )
        elif key == "ort":
            for tag, run in r["runs"].items():
                threads = "" if run["threads"] == "default" else f" x{run['threads']}"
                rows.append(
                    {
                        "key": "ort" if tag == "detector" else "ort_best",
                        "runs_on": r["provider"] + threads,
                        "batch": run["batch"],
                        "windows": run["windows"],
                        "seconds": run["seconds"],
                        "cpu_s": run["cpu_s"],
                        "peak_rss_mb": r["peak_rss_mb"],
                        "max_abs_diff": 0.0 if tag == "detector" else None,
                    }
                )
        else:
            rows.append(
                {
                    "key": key,
                    "runs_on": f"torch {r['device']} x{r['threads']}"
                    if key == "torch"
                    else f"torch {r['device']}",
                    **{k: r[k] for k in ("batch", "windows", "seconds", "cpu_s", "peak_rss_mb")},
                    "max_abs_diff": r["parity"]["max_abs_diff"],
                }
            )
    for r in rows:
        r.setdefault("method", ROW_NAMES[r["key"]])
        if "error" not in r:
            r["windows_per_s"] = r["windows"] / r["seconds"] if r["seconds"] > 0 else float("nan")
    ref = next((r for r in rows if r["key"] == "ort" and "error" not in r), None)
    for r in rows:
        if "error" not in r:
            r["vs_raw_ort"] = r["windows_per_s"] / ref["windows_per_s"] if ref else None
    return rows


def targets(
    rows: list[dict[str, Any]], max_rss_mb: float, key: str = "e2e"
) -> list[dict[str, Any]]:
    """The issue's targets for end-to-end row ``key``, each with its value and PASS / FAIL / n/a."""
    by = {r["key"]: r for r in rows if "error" not in r}
    e2e = by.get(key)

    def ratio(other: str) -> float | None:
        if e2e is None or other not in by:
            return None
        return e2e["windows_per_s"] / by[other]["windows_per_s"]

    out = [
        {"target": ">= 0.8 x raw ONNX Runtime (batch 256)", "value": ratio("ort"), "need": 0.8},
        {
            "target": ">= 0.8 x raw ONNX Runtime (best of sweep)",
            "value": ratio("ort_best") or ratio("ort"),
            "need": 0.8,
        },
        {"target": ">= 2 x SeisBench annotate", "value": ratio("seisbench"), "need": 2.0},
        {"target": ">= 2 x PyTorch eager (best batch)", "value": ratio("torch"), "need": 2.0},
    ]
    for t in out:
        t["unit"] = "x"
    out.append(
        {
            "target": f"peak RSS <= {max_rss_mb:.0f} MB",
            "value": e2e["peak_rss_mb"] if e2e else None,
            "need": max_rss_mb,
            "unit": "MB",
        }
    )
    for t in out:
        v = t["value"]
        if v is None:
            t["result"] = "n/a"
        elif t["unit"] == "MB":
            t["result"] = "PASS" if v <= t["need"] else "FAIL"
        else:
            t["result"] = "PASS" if v >= t["need"] else "FAIL"
    return out


def print_report(res: dict[str, Any], args: argparse.Namespace) -> None:
    m = res["machine"]
    p = print
    p()
    p("quakescan detector benchmark")
    p(
        f"machine   : {m['cpu']}; {m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs; "
        f"{m['ram_gb']} GB RAM; GPU: {m['gpu'] or 'none'}; 1-min load average "
        f"{m['load_avg_1m']} at start, {res.get('load_avg_1m_end')} at end"
    )
    p(
        f"software  : Python {m['python']}, numpy {m['numpy']}, obspy {m['obspy']}, "
        f"onnxruntime {m['onnxruntime']}, torch {m['torch']}, "
        f"seisbench {m['seisbench'] or 'not installed'}"
    )
    prov = (res.get("e2e") or {}).get("provider") or (res.get("ort") or {}).get("provider")
    p(
        f"device    : {res['device']} (ONNX Runtime execution provider: {prov or '?'}; "
        f"threads: {args.threads or 'library default'})"
    )
    d = res["data"]
    p(
        f"data      : {d['hours']} h x {len(d['channels'])} channels at 100 Hz, "
        f"{d['bytes'] / 2**20:.1f} MB "
        f"STEIM2 miniSEED from {d['start']}; step {res['step_s']} s"
    )
    p(f"            {'; '.join(f'{c}: {s}' for c, s in d['made_of'].items())}")
    p(f"model     : {res['model']} (PyTorch: {res.get('parity', {}).get('torch_origin', '?')})")
    par = res.get("parity", {})
    if par and "error" not in par:
        line = (
            f"parity    : PyTorch vs ORT max |dp| {par['torch_max_abs_diff']:.1e} on "
            f"{par['windows']} real windows"
        )
        if "seisbench_max_abs_diff" in par:
            line += (
                f"; SeisBench vs ORT max |dp| {_f(par['seisbench_max_abs_diff'], '.1e')} on "
                f"{par['seisbench_windows']}/{par['seisbench_of_ort_windows']} windows "
                f"(first {args.parity_minutes} min)"
            )
        p(line)
    p()
    rows = res["rows"]
    head = (
        "method",
        "runs on",
        "batch",
        "windows",
        "seconds",
        "CPU s",
        "windows/s",
        "peak RSS MB",
        "vs raw ORT",
        "max|dp| vs ORT",
    )
    body = []
    for r in rows:
        if "error" in r:
            body.append((r["method"], *["-"] * 9))
            continue
        body.append(
            (
                r["method"],
                r["runs_on"],
                str(r["batch"]),
                str(r["windows"]),
                f"{r['seconds']:.2f}",
                f"{r['cpu_s']:.1f}",
                f"{r['windows_per_s']:,.0f}",
                f"{r['peak_rss_mb']:.0f}",
                _f(r["vs_raw_ort"], ".2f"),
                _f(r["max_abs_diff"], ".1e"),
            )
        )
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    fmt = " | ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    p(fmt.format(*head))
    p("-+-".join("-" * w for w in widths))
    for b in body:
        p(fmt.format(*b))
    for r in rows:
        if "error" in r:
            p(f"{r['method']}: {r['error']}")
    g = res.get("gather_probe", {})
    if g.get("copy_factor", 0) > 4:
        p(
            f"shipped gather (detector.windows.iter_batches, np.take on the strided window view) "
            f"allocates {g['copy_factor']:.0f} x the batch it returns; for this piece "
            f"{g['view_gb']:.1f} GB per batch"
        )
    for key, name in (("ort", "raw ORT"), ("torch", "PyTorch")):
        r = res.get(key, {})
        if "sweep" in r:
            sw = ", ".join(f"{b}: {v:,.0f}" for b, v in r["sweep"].items())
            what = r.get("sweep_key", "batch")
            p(f"{name} sweep, {what} (windows/s on {args.sweep_windows} windows): {sw}")
    gpu = [
        (k, res[k].get("peak_gpu_mb"))
        for k in ("torch", "seisbench")
        if res.get(k, {}).get("peak_gpu_mb")
    ]
    if gpu:
        p("peak GPU memory (torch allocator): " + ", ".join(f"{k} {v:.0f} MB" for k, v in gpu))

    prof = res.get("profile", {})
    if prof and "error" not in prof:
        p()
        gather = " with the proposed gather fix" if prof["gather"] == "proposed" else ""
        p(
            f"end-to-end profile{gather} ({prof['windows']} windows, {prof['total_s']:.2f} s, "
            f"input {prof['input_mb']:.0f} MB int32, "
            f"prepared segment {prof['segment_mb']:.0f} MB float32)"
        )
        p(f"  {'stage':<12} {'seconds':>8} {'share':>6} {'RSS after MB':>13}")
        rss = prof["rss_after_mb"]
        rss_key = {
            "read": "read",
            "prepare": "prepare",
            "onnxruntime": "infer",
            "trigger": "trigger",
        }
        for st, s in prof["stages_s"].items():
            r = rss.get(rss_key.get(st, ""), None)
            p(f"  {st:<12} {s:>8.2f} {s / prof['total_s']:>6.1%} {_f(r, '.0f'):>13}")
        other = prof["total_s"] - sum(prof["stages_s"].values())
        p(f"  {'other':<12} {other:>8.2f} {other / prof['total_s']:>6.1%}")
        p(
            f"  process start {rss['start']:.0f} MB (imports + model), "
            f"peak {prof['peak_rss_mb']:.0f} MB"
        )
        ops = ", ".join(f"{op} {share:.0%}" for op, share in prof["ort_ops"][:6])
        p(f"  ONNX Runtime node time by operator: {ops}")
        p("  prepare_stream, top functions by own time (cProfile):")
        for ln in prof["prepare_top"]:
            p(f"    {ln}")
    p()
    p("targets (all measured in this run):")
    for key, tlist in res["targets"].items():
        p(f"  {ROW_NAMES[key]}:")
        for t in tlist:
            if t["value"] is None:
                v = "-"
            elif t["unit"] == "MB":
                v = f"{t['value']:.0f} MB"
            else:
                v = f"{t['value']:.2f} x"
            p(f"    [{t['result']:>4}] {t['target']}: {v}")
    p()


# ----------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder holding reunion_noise/ (default: %(default)s)",
    )
    ap.add_argument(
        "--hours",
        type=float,
        default=24.0,
        help="length of the station-day piece to run on, 0 < h <= 24 (default 24)",
    )
    ap.add_argument(
        "--model",
        default=None,
        help="ONNX model file or shipped model name (default: the shipped convnetquake)",
    )
    ap.add_argument(
        "--checkpoint",
        default=None,
        help="the training run (best.pt) the ONNX file was exported from (one network, "
        "not an ensemble); default: the network is rebuilt from the ONNX file itself",
    )
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads for ONNX Runtime and torch (default: their own, all cores)",
    )
    ap.add_argument("--step-s", type=float, default=None, help="window step (default: the model's)")
    ap.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (default: all)",
    )
    ap.add_argument(
        "--sweep-batches",
        default=",".join(map(str, SWEEP_BATCHES)),
        help="batch sizes tried for raw ORT and PyTorch (default: %(default)s)",
    )
    ap.add_argument(
        "--sweep-windows",
        type=int,
        default=8192,
        help="windows timed per batch size in the sweep (default: %(default)s)",
    )
    ap.add_argument(
        "--seisbench-batch",
        type=int,
        default=None,
        help="SeisBench annotate batch size (default: PyTorch's best)",
    )
    ap.add_argument(
        "--premake",
        choices=("each", "all"),
        default="each",
        help="raw ORT / PyTorch batches: gathered just before each untimed ('each') "
        "or all materialised first ('all': ~1 GB for a day)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds over all methods, interleaved, best time of each kept (default: %(default)s)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="timed repeats inside each method's process"
    )
    ap.add_argument("--parity-windows", type=int, default=2048)
    ap.add_argument(
        "--parity-minutes",
        type=float,
        default=20.0,
        help="length of the SeisBench parity piece (default: %(default)s)",
    )
    ap.add_argument("--max-rss-mb", type=float, default=600.0, help="peak RSS target (default 600)")
    ap.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--worker-config", help=argparse.SUPPRESS)
    ap.add_argument("--worker-result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.worker:
        if not 0 < args.hours <= 24:
            ap.error(f"--hours {args.hours}: expected 0 < hours <= 24")
        if args.rounds < 1:
            ap.error("--rounds must be >= 1")
        if args.repeat < 1:
            ap.error("--repeat must be >= 1")
        if args.threads is not None and args.threads < 1:
            ap.error("--threads must be >= 1")
        bad = set(args.methods.split(",")) - set(METHODS)
        if bad:
            ap.error(f"--methods: unknown {sorted(bad)}; choose from {','.join(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.worker_config, args.worker_result)

    src = args.data_dir / "reunion_noise"
    missing = [n for n in (SOURCE_Z, SOURCE_N) if not (src / n).is_file()]
    if missing:
        raise SystemExit(
            f"benchmark data not found: {src} lacks {', '.join(missing)}. Pass --data-dir "
            "pointing at the shared data folder (the one holding reunion_noise/)."
        )
    from quakescan.detector.model import OnnxModel, resolve_model_path

    model = str(resolve_model_path(args.model))
    spec = OnnxModel(model, device="cpu").spec
    checkpoint = args.checkpoint
    if checkpoint is not None and not Path(checkpoint).exists():
        raise SystemExit(f"--checkpoint {checkpoint} does not exist")
    device = resolve_device(args.device)
    methods = [m for m in METHODS if m in args.methods.split(",")]
    have_torch = importlib.util.find_spec("torch") is not None
    have_sb = importlib.util.find_spec("seisbench") is not None
    if not have_torch:
        print(
            "torch is not installed: skipping PyTorch and SeisBench (pip install -e '.[train]')",
            file=sys.stderr,
        )
        methods = [m for m in methods if m not in ("torch", "seisbench")]
    if "seisbench" in methods and not have_sb:
        print(
            "seisbench is not installed: skipping it (pip install -e '.[bench]')", file=sys.stderr
        )
        methods.remove("seisbench")

    # The shipped gather is probed first: if it copies the whole strided window
    # view per batch, the day cannot run as shipped, so a what-if row measures
    # the proposed fix (and the profile uses it) next to the shipped code.
    copy_factor = shipped_gather_copy_factor()
    n_samples = args.hours * 3600 * spec.sampling_rate_hz
    view_bytes = n_samples * spec.n_channels * spec.window_samples * 4
    gather_probe = {
        "copy_factor": copy_factor,
        "view_gb": view_bytes / 1e9 if copy_factor > 4 else 0.0,
    }
    if copy_factor > 4 and "e2e" in methods:
        methods.insert(methods.index("e2e") + 1, "e2e_fix")
    # The shipped end-to-end run gets an address-space cap of half the available
    # memory, so a gather that asks for the whole window view fails fast and is
    # reported (MemoryError), instead of pushing the host into swap or the OOM killer.
    avail = mem_available_bytes()
    e2e_as_limit = int(0.5 * avail) if copy_factor > 4 and avail != float("inf") else None

    res: dict[str, Any] = {
        "gather_probe": gather_probe,
        "machine": machine_info(),
        "device": device,
        "model": model,
        "checkpoint": checkpoint,
        "args": vars(args),
        "step_s": args.step_s or spec.step_s,
    }
    with tempfile.TemporaryDirectory(prefix="quakescan-bench-") as tmp_s:
        tmp = Path(tmp_s)
        cfg: dict[str, Any] = {
            "data_dir": str(args.data_dir),
            "hours": args.hours,
            "mseed": str(tmp / "YA.UV05.00.HH_.stand-in-3C.mseed"),
            "model": model,
            "checkpoint": checkpoint,
            "device": device,
            "threads": args.threads,
            "step_s": args.step_s,
            "sweep_batches": [int(b) for b in args.sweep_batches.split(",")],
            "sweep_windows": args.sweep_windows,
            "premake": args.premake,
            "repeat": args.repeat,
            "parity_windows": args.parity_windows,
            "parity_minutes": args.parity_minutes,
            "run_seisbench": "seisbench" in methods,
            "seisbench_batch": args.seisbench_batch,
            "profile_gather": "proposed" if copy_factor > 4 else "shipped",
            "e2e_as_limit_bytes": e2e_as_limit,
            "ort_probs": str(tmp / "ort_probs.npz"),
            "tmp": str(tmp),
        }
        cfg_path = tmp / "config.json"
        cfg_path.write_text(json.dumps(cfg))
        print(f"building the {args.hours:g} h station-day and checking parity", file=sys.stderr)
        res["data"] = run_worker("build", cfg_path, tmp)
        if "error" in res["data"]:
            raise SystemExit("could not build the station-day (see the error above)")
        if have_torch:
            res["parity"] = run_worker("parity", cfg_path, tmp)
            par = res["parity"]
            if "error" in par:
                raise SystemExit("the parity check failed to run (see the error above)")
            bad = [
                f"{what} vs ONNX Runtime differ by {par[key]:.2e} (> {PARITY_ATOL})"
                for what, key in (
                    ("PyTorch", "torch_max_abs_diff"),
                    ("SeisBench", "seisbench_max_abs_diff"),
                )
                if par.get(key) is not None and par[key] > PARITY_ATOL
            ]
            if bad:
                raise SystemExit(
                    "the PyTorch network is not the ONNX model, so the timings would not "
                    "compare one network: "
                    + "; ".join(bad)
                    + ". Pass --checkpoint with the matching run."
                )
        # Rounds: every method once per round, interleaved, best time kept, so
        # that load from other work on the host falls on all methods alike.
        timed = [m for m in methods if m != "profile"]
        for rnd in range(args.rounds):
            print(f"round {rnd + 1} of {args.rounds}", file=sys.stderr)
            for m in list(timed):
                if m == "seisbench" and cfg["seisbench_batch"] is None:
                    cfg["seisbench_batch"] = res.get("torch", {}).get("batch", 256)
                    cfg_path.write_text(json.dumps(cfg))
                res[m] = keep_best(res.get(m), run_worker(m, cfg_path, tmp))
                best_t = res[m].get("best_threads", args.threads) if m == "ort" else args.threads
                if "e2e" in timed and "e2e_threads" not in timed and best_t != args.threads:
                    # ONNX Runtime did best with other threads than the detector's: run that too.
                    cfg["e2e_threads"] = best_t
                    cfg_path.write_text(json.dumps(cfg))
                    timed.append("e2e_threads")
                    res["e2e_threads"] = run_worker("e2e_threads", cfg_path, tmp)
        if "profile" in methods:
            res["profile"] = run_worker("profile", cfg_path, tmp)
    res["load_avg_1m_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    res["rows"] = build_rows(res)
    res["targets"] = {
        key: targets(res["rows"], args.max_rss_mb, key)
        for key in ("e2e", "e2e_fix", "e2e_threads")
        if key in res
    }
    print_report(res, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=_json_default))
        print(f"results written to {args.json}")
    failed = [m for m in methods if "error" in res.get(m, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
