"""Batch catalog jobs for seismologists: station-days fanned out to workers,
one merged catalog back.

A job lives in Redis (``quakescan:job:<id>``), so status and results can be
read from any shell. Each station-day task computes the probabilities of the
windows that start in its day (reading a window's worth of the next day), and
the job's last task triggers a finalize step that runs the detector's trigger
over each station's days in time order: the catalog equals a single local pass
(``quakescan detect``) over the same data, every time.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from obspy import Stream, UTCDateTime

from quakescan.detector.catalog import (
    Detection,
    detection_from_dict,
    detection_to_dict,
)
from quakescan.detector.core import Detector
from quakescan.detector.model import resolve_model_path
from quakescan.detector.prepare import PrepReport, group_by_station, read_waveforms, station_key
from quakescan.detector.sources import (
    OutsideDataRoots,
    StationSelector,
    check_under_roots,
    day_starts,
    iter_sds,
)
from quakescan.detector.trigger import StationTrigger
from quakescan.detector.windows import step_ns

from .metrics import prep_skip_reason

log = logging.getLogger(__name__)

JOB = "quakescan:job:{}"
ITEMS = "quakescan:job:{}:items"
PROBS = "quakescan:job:{}:probs"
CATALOG = "quakescan:job:{}:catalog"
JOB_TTL_S = 30 * 86400


# ------------------------------------------------------------------ submit
@dataclass
class JobSpec:
    """A job's station-days and the settings every one of its tasks uses.

    ``model`` (shipped name or ONNX path on the workers), ``step_s``,
    ``threshold`` and ``off_threshold`` are fixed at submission (None: the
    model spec's), so a job's catalog does not depend on which worker ran it.
    """

    items: list[dict[str, Any]]
    model: str
    step_s: float | None
    threshold: float | None
    off_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "model": self.model,
            "step_s": self.step_s,
            "threshold": self.threshold,
            "off_threshold": self.off_threshold,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        return cls(
            items=list(d["items"]),
            model=str(d["model"]),
            step_s=d.get("step_s"),
            threshold=d.get("threshold"),
            off_threshold=d.get("off_threshold"),
        )


def plan_files(paths: list[str]) -> list[dict[str, Any]]:
    """Station-day items from waveform files (headers only are read here)."""
    import obspy

    from quakescan.detector.prepare import expand_paths

    groups: dict[tuple[str, str], set[str]] = {}
    days: dict[tuple[str, str], set[str]] = {}
    for p in expand_paths(paths):
        try:
            st = obspy.read(str(p), headonly=True)
        except Exception as exc:
            raise ValueError(f"{p}: not a readable waveform file ({exc})") from None
        for tr in st:
            key = station_key(tr)
            groups.setdefault(key, set()).add(str(Path(p).resolve()))
            for d in day_starts(tr.stats.starttime, tr.stats.endtime + tr.stats.delta):
                days.setdefault(key, set()).add(UTCDateTime(d.date).strftime("%Y-%m-%d"))
    items = []
    for (sta, prefix), files in sorted(groups.items()):
        for day in sorted(days[(sta, prefix)]):
            items.append(
                {
                    "kind": "files",
                    "station": sta,
                    "channel_prefix": prefix,
                    "day": day,
                    "files": sorted(files),
                }
            )
    return items


def plan_sds(
    root: str, stations: list[str], start: UTCDateTime, end: UTCDateTime
) -> list[dict[str, Any]]:
    items = []
    for s in stations:
        sel = StationSelector.parse(s)
        for d in day_starts(start, end):
            items.append(
                {
                    "kind": "sds",
                    "root": str(Path(root).resolve()),
                    "selector": str(sel),
                    "day": UTCDateTime(d.date).strftime("%Y-%m-%d"),
                    "start": str(max(UTCDateTime(d.date), start)),
                    "end": str(min(UTCDateTime(d.date) + 86400, end)),
                }
            )
    return items


def submit(app, client, spec: JobSpec) -> str:
    """Create the job in Redis and fan its station-day tasks out to the ``batch`` queue."""
    from .app import TASK_BATCH_DAY

    if not spec.items:
        raise ValueError("the job has no station-days to process")
    job_id = uuid.uuid4().hex[:16]
    now = time.time()
    client.hset(
        JOB.format(job_id),
        mapping={
            "spec": json.dumps(spec.to_dict()),
            "total": len(spec.items),
            "done": 0,
            "failed": 0,
            "state": "running",
            "submitted": now,
        },
    )
    client.expire(JOB.format(job_id), JOB_TTL_S)
    for i, item in enumerate(spec.items):
        item = {**item, "index": i}
        app.send_task(TASK_BATCH_DAY, args=[job_id, item], queue="batch")
    return job_id


# ------------------------------------------------------------------ worker
_JOB_DETECTORS: dict[tuple[str, float | None], Detector] = {}


def job_spec(client, job_id: str) -> JobSpec:
    raw = client.hget(JOB.format(job_id), "spec")
    if raw is None:
        raise ValueError(f"no batch job {job_id!r} (unknown id, or expired)")
    return JobSpec.from_dict(json.loads(raw))


def job_detector(state, spec: JobSpec) -> Detector:
    """The detector a job asked for: the worker's own when model and step agree, else one
    loaded once per worker process (on the worker's device and threads)."""
    det: Detector = state.detector
    same_model = resolve_model_path(spec.model) == det.model.path
    want_step = float(spec.step_s) if spec.step_s is not None else det.spec.step_s
    same_step = want_step == det.step_s
    if same_model and same_step and spec.threshold is None and spec.off_threshold is None:
        return det
    key = (str(resolve_model_path(spec.model)), spec.step_s, spec.threshold, spec.off_threshold)
    found = _JOB_DETECTORS.get(key)
    if found is None:
        found = _JOB_DETECTORS[key] = Detector(
            det.model if same_model else spec.model,
            step_s=want_step if same_model else spec.step_s,
            threshold=spec.threshold,
            off_threshold=spec.off_threshold,
            device=state.cfg.device,
            threads=state.cfg.threads,
        )
    return found


def _item_key(item: dict[str, Any]) -> str:
    return f"{item['index']:06d}"


def _read_item(
    item: dict[str, Any], roots: tuple[str, ...], window_s: float, report: PrepReport
) -> Stream:
    day0 = UTCDateTime(item["day"])
    if item["kind"] == "files":
        files = [check_under_roots(f, roots) for f in item["files"]]
        st = read_waveforms(files, report)
        net, sta, loc = item["station"].split(".")
        st = st.select(network=net, station=sta, location=loc, channel=item["channel_prefix"] + "?")
        t0, t1 = day0, day0 + 86400 + window_s
    else:
        root = check_under_roots(item["root"], roots)
        sel = StationSelector.parse(item["selector"])
        # Read a window's worth past the end: the last windows of the range need it.
        t0, t1 = UTCDateTime(item["start"]), UTCDateTime(item["end"]) + window_s
        st = Stream()
        for _d, piece in iter_sds(root, sel, t0, t1, report, roots=roots):
            st += piece
    return st.slice(t0, t1, nearest_sample=False) if len(st) else st


def run_station_day(state, job_id: str, item: dict[str, Any], task=None) -> dict[str, Any]:
    """Probabilities for the windows starting in one station-day, stored with the job."""
    r = _job_client(state)
    report = PrepReport()
    m = state.metrics
    try:
        det = job_detector(state, job_spec(r, job_id))
        st = _read_item(item, state.cfg.data_roots, det.spec.window_s, report)
        day0 = UTCDateTime(item["day"])
        lo = UTCDateTime(item.get("start", day0))
        hi = UTCDateTime(item.get("end", day0 + 86400))
        # The windows that start in [lo, hi): k * step in that span.
        s_ns = step_ns(det.step_s)
        k_first, k_last = -(-lo.ns // s_ns), -(-hi.ns // s_ns) - 1
        found = det.window_probabilities(st, k_first, k_last, report)
        out = {f"{sp.station}|{sp.channel_prefix}": sp for sp in found}
        pipe = r.pipeline()
        for key, sp in out.items():
            buf = io.BytesIO()
            np.savez(buf, k=sp.k, probs=sp.probs)
            pipe.hset(
                PROBS.format(job_id), f"{key}|{item['day']}|{_item_key(item)}", buf.getvalue()
            )
        station = item.get("station") or item.get("selector", "")
        for reason, n in report.skipped.items():  # a missing component, NaNs, a low rate, ...
            m.prepare_skipped_total.labels(station, prep_skip_reason(reason)).inc(n)
        status = {
            "status": "ok",
            "windows": int(sum(len(sp.k) for sp in out.values())),
            "skipped": dict(report.skipped),
        }
        if not out and not report.skipped:
            status["note"] = "no data"
        pipe.execute()
        result, field = status, "done"
        m.batch_tasks_total.labels("ok").inc()
    except (OutsideDataRoots, FileNotFoundError, ValueError) as exc:
        reason = "outside_data_roots" if isinstance(exc, OutsideDataRoots) else "missing_data"
        log.error("batch %s item %s: %s", job_id, item.get("index"), exc)
        result, field = {"status": "failed", "reason": reason, "error": str(exc)}, "failed"
        m.batch_tasks_total.labels("failed").inc()
        m.task_failures_total.labels(reason).inc()
    # Count each station-day once, also when a task is redone after a worker died.
    if not r.hsetnx(ITEMS.format(job_id), _item_key(item), json.dumps(result)):
        return {"status": "duplicate"}
    n = r.hincrby(JOB.format(job_id), field, 1)
    other = int(r.hget(JOB.format(job_id), "failed" if field == "done" else "done") or 0)
    total = int(r.hget(JOB.format(job_id), "total") or 0)
    if n + other == total and r.hsetnx(JOB.format(job_id), "finalizing", 1):
        if task is not None:
            from .app import TASK_BATCH_FINALIZE

            task.app.send_task(TASK_BATCH_FINALIZE, args=[job_id], queue="batch")
        else:
            finalize_job(state, job_id)
    return {"status": field}


def finalize_job(state, job_id: str) -> dict[str, Any]:
    """Trigger each station's windows in time order and store the merged catalog."""
    r = _job_client(state)
    det = job_detector(state, job_spec(r, job_id))
    per_station: dict[str, list[tuple[str, bytes]]] = {}
    for field, blob in r.hgetall(PROBS.format(job_id)).items():
        station, prefix, day, idx = field.decode().split("|")
        per_station.setdefault(f"{station}|{prefix}", []).append((f"{day}|{idx}", blob))
    dets: list[Detection] = []
    for key, parts in sorted(per_station.items()):
        station, prefix = key.split("|")
        trig: StationTrigger = det.new_trigger(station, prefix)
        ks, ps = [], []
        for _name, blob in sorted(parts):
            z = np.load(io.BytesIO(blob))
            ks.append(z["k"])
            ps.append(z["probs"])
        k = np.concatenate(ks)
        p = np.concatenate(ps)
        order = np.argsort(k, kind="stable")
        k, p = k[order], p[order]
        k, first = np.unique(k, return_index=True)
        dets += trig.feed(k, p[first]) + trig.flush()
    dets = sorted(dets)
    pipe = r.pipeline()
    pipe.set(CATALOG.format(job_id), "\n".join(json.dumps(detection_to_dict(d)) for d in dets))
    pipe.hset(
        JOB.format(job_id),
        mapping={"state": "done", "finished": time.time(), "detections": len(dets)},
    )
    pipe.delete(PROBS.format(job_id))
    for key in (CATALOG, ITEMS):
        pipe.expire(key.format(job_id), JOB_TTL_S)
    pipe.execute()
    log.info("batch %s finished: %d detections", job_id, len(dets))
    return {"status": "done", "detections": len(dets)}


def _job_client(state):
    c = getattr(state, "redis", None)
    if c is None:
        from .bus import redis_client

        c = state.redis = redis_client(state.cfg)
    return c


# ------------------------------------------------------------------ client
def job_status(client, job_id: str) -> dict[str, Any]:
    h = client.hgetall(JOB.format(job_id))
    if not h:
        raise ValueError(f"no batch job {job_id!r} (unknown id, or expired)")
    d = {k.decode(): v.decode() for k, v in h.items()}
    items = {k.decode(): json.loads(v) for k, v in client.hgetall(ITEMS.format(job_id)).items()}
    spec = json.loads(d["spec"])
    failures = []
    for key, st in sorted(items.items()):
        if st.get("status") == "failed":
            it = spec["items"][int(key)]
            failures.append(
                {
                    "item": it.get("station") or it.get("selector"),
                    "day": it["day"],
                    "reason": st.get("reason"),
                    "error": st.get("error"),
                }
            )
    return {
        "job": job_id,
        "state": d["state"],
        "total": int(d["total"]),
        "done": int(d["done"]),
        "failed": int(d["failed"]),
        "detections": int(d.get("detections", 0)) if d.get("detections") else None,
        "submitted": float(d["submitted"]),
        "finished": float(d["finished"]) if d.get("finished") else None,
        "failures": failures,
        "windows": sum(st.get("windows", 0) for st in items.values()),
    }


def job_detections(client, job_id: str) -> list[Detection]:
    st = job_status(client, job_id)
    if st["state"] != "done":
        raise ValueError(
            f"job {job_id} is {st['state']} ({st['done'] + st['failed']}/{st['total']} station-days); fetch it when done"
        )
    text = (client.get(CATALOG.format(job_id)) or b"").decode()
    return [
        detection_from_dict(json.loads(line), f"job {job_id} line {i + 1}")
        for i, line in enumerate(text.splitlines())
        if line
    ]


__all__ = [
    "JobSpec",
    "plan_files",
    "plan_sds",
    "submit",
    "job_status",
    "job_detections",
    "group_by_station",
]
