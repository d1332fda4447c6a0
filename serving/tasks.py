"""Celery tasks, kept thin: decode the message, call plain functions, record
metrics, own retries and time limits. The model is loaded once per worker process."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from quakescan.detector.core import Detector

from .app import (
    TASK_BATCH_DAY,
    TASK_BATCH_FINALIZE,
    TASK_DETECT,
    TASK_DETECT_MANY,
    app_config,
)
from .bus import Bus, RedisBus, redis_client
from .chunks import BadChunk, Chunk, chunk_probabilities, failure_message
from .config import DEADLETTER, PROB_STREAM, ServiceConfig
from .metrics import Metrics, default_metrics, failure_reason, prep_skip_reason

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    """What one worker process holds: the model session, where its results go, its metrics."""

    cfg: ServiceConfig
    detector: Detector
    bus: Bus  # probabilities out, to the sink
    deadletter: Callable[[dict[str, Any]], None]  # a chunk that could not be processed
    metrics: Metrics
    name: str  # host:pid, in results and dead-letter entries
    redis: redis.Redis | None = None  # batch jobs' client (made on first use)


def build_state(
    cfg: ServiceConfig,
    *,
    metrics: Metrics | None = None,
    bus: Bus | None = None,
    deadletter: Callable[[dict[str, Any]], None] | None = None,
) -> WorkerState:
    """Load the model; results go to ``bus`` and ``deadletter`` (Redis's when not given)."""
    det = Detector(cfg.model, step_s=cfg.step_s, device=cfg.device, threads=cfg.threads)
    metrics = metrics or default_metrics()
    if bus is None or deadletter is None:
        client = redis_client(cfg)
        bus = bus or RedisBus(client, PROB_STREAM)

        def push(entry: dict[str, Any], client: redis.Redis = client) -> None:
            client.lpush(DEADLETTER, json.dumps(entry))

        deadletter = deadletter or push
    spec = det.spec
    metrics.model_info.labels(spec.name, spec.version, det.provider).set(1)
    name = f"{socket.gethostname()}:{os.getpid()}"
    log.info("worker %s serves %s %s on %s", name, spec.name, spec.version, det.provider)
    return WorkerState(cfg, det, bus, deadletter, metrics, name)


# This process's worker state, the one place tasks get it from: given by the code that
# embeds a worker (`quakescan serve`: its in-memory bus and dead-letter list), or built
# from the app's config on the first task. One per process, not per app: Celery may hand
# a task the default app in a thread where the embedding app is not current.
_STATE: WorkerState | None = None
_GIVEN = False
_LOCK = threading.Lock()


def set_worker_state(state: WorkerState | None) -> None:
    """Tasks in this process use ``state`` (None: build one from the app's config again)."""
    global _STATE, _GIVEN
    with _LOCK:
        _STATE, _GIVEN = state, state is not None


def get_state(app: Celery) -> WorkerState:
    global _STATE
    with _LOCK:
        if _STATE is None:
            cfg = app_config(app)
            if cfg is None:
                raise RuntimeError(
                    f"Celery app {app.main!r} was not made by quakescan.serving.app.make_app"
                )
            _STATE = build_state(cfg)
        return _STATE


@worker_process_init.connect
def _load_model_in_child(**_kw) -> None:
    """Prefork children load the model once, before their first chunk."""
    global _STATE
    from celery import current_app

    app = current_app._get_current_object()
    with _LOCK:
        if not _GIVEN:
            _STATE = None  # a session or connection made before the fork is not this process's
    if app_config(app) is not None:
        try:
            get_state(app)
        except Exception:  # reported again, with the chunk, by the first task
            log.exception("model could not be loaded at worker start")


def _fail(state: WorkerState, msg: Any, reason: str, error: str) -> dict[str, Any]:
    m = state.metrics
    station = msg.get("station", "") if isinstance(msg, dict) else ""
    m.task_failures_total.labels(failure_reason(reason)).inc()
    m.chunks_total.labels(station or "unknown", "failed").inc()
    m.deadletter_total.labels(failure_reason(reason)).inc()
    entry = {
        "reason": reason,
        "error": error,
        "time": time.time(),
        "worker": state.name,
        "message": msg if isinstance(msg, dict) else repr(msg)[:2000],
    }
    log.error("chunk failed (%s): %s", reason, error)
    state.deadletter(entry)
    if isinstance(msg, dict) and isinstance(msg.get("seq"), int):
        # Tell the sink this chunk is done (failed), so it does not wait for it.
        state.bus.publish(failure_message(msg, reason, error, state.name))
    return {"status": "failed", "reason": reason}


def _probabilities(state: WorkerState, msg: Any) -> dict[str, Any] | dict[str, str]:
    """One chunk's probabilities message (not yet published), or a failure (dead-lettered)."""
    try:
        chunk = Chunk.from_message(msg)
        result = chunk_probabilities(state.detector, chunk)
    except BadChunk as exc:
        return _fail(state, msg, exc.reason, str(exc))
    m = state.metrics
    spec = state.detector.spec
    if result.batches:
        m.inference_seconds.labels(spec.name, state.detector.provider).observe(
            result.inference_s / len(result.batches)
        )
        for b in result.batches:
            m.inference_batch_size.labels(spec.name).observe(b)
    for reason, n in result.report.skipped.items():  # a missing component, NaNs, ...
        m.prepare_skipped_total.labels(chunk.station, prep_skip_reason(reason)).inc(n)
    m.windows_total.labels(chunk.station, spec.name).inc(len(result.k))
    m.chunks_total.labels(chunk.station, "ok").inc()
    return result.to_message(state.name)


def handle_chunk(state: WorkerState, msg: Any) -> dict[str, Any]:
    """A chunk message in, its probabilities published; a bad chunk is dead-lettered."""
    out = _probabilities(state, msg)
    if out.get("status") == "failed":
        return out
    state.bus.publish(out)
    return {"status": "ok", "windows": len(out["k"]), "chunk_id": out["chunk_id"]}


def handle_chunks(state: WorkerState, msgs: Any) -> dict[str, Any]:
    """Several chunks in one task: their probabilities published in one round trip.

    A bad chunk is dead-lettered and the others go on; past the soft time limit
    the chunks not yet done are failed (time_limit) and what was done is published.
    """
    if not isinstance(msgs, list):
        return _fail(state, msgs, "bad_message", "detect_chunks expects a list of chunk messages")
    done: list[dict[str, Any]] = []
    failed = 0
    i = 0
    try:
        for i, msg in enumerate(msgs):  # noqa: B007 (i is read after a time limit)
            out = _probabilities(state, msg)
            if out.get("status") == "failed":
                failed += 1
            else:
                done.append(out)
        i = len(msgs)
    except SoftTimeLimitExceeded:
        for msg in msgs[i:]:
            _fail(
                state,
                msg,
                "time_limit",
                f"chunk batch took longer than {state.cfg.soft_time_limit_s} s",
            )
            failed += 1
    if done:
        state.bus.publish_many(done)
    return {"status": "ok", "chunks": len(done), "failed": failed}


# Chunk tasks: late ack, redone if their worker dies; Redis hiccups retried with back-off.
_CHUNK_TASK = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "autoretry_for": (redis.ConnectionError, redis.TimeoutError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 20,
}


@shared_task(name=TASK_DETECT, **_CHUNK_TASK)
def detect_chunk(self, msg: dict[str, Any]) -> dict[str, Any]:
    state = get_state(self.app)
    try:
        return handle_chunk(state, msg)
    except SoftTimeLimitExceeded:
        return _fail(
            state, msg, "time_limit", f"chunk took longer than {state.cfg.soft_time_limit_s} s"
        )


@shared_task(name=TASK_DETECT_MANY, **_CHUNK_TASK)
def detect_chunks(self, msgs: list[dict[str, Any]]) -> dict[str, Any]:
    return handle_chunks(get_state(self.app), msgs)


@shared_task(
    bind=True, name=TASK_BATCH_DAY, acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def batch_station_day(self, job_id: str, item: dict[str, Any]) -> dict[str, Any]:
    from .batch import run_station_day

    state = get_state(self.app)
    return run_station_day(state, job_id, item, task=self)


@shared_task(bind=True, name=TASK_BATCH_FINALIZE, acks_late=True, ignore_result=True)
def batch_finalize(self, job_id: str) -> dict[str, Any]:
    from .batch import finalize_job

    state = get_state(self.app)
    return finalize_job(state, job_id)
