"""Every Prometheus metric of quakescan, in one place.

Names are prefixed ``quakescan_`` and end in their unit; label sets are small
and bounded (station, model, queue, label, reason, component; never ids or
times). ``Metrics(registry=...)`` builds them on any registry, so tests use a
fresh one. Prefork workers run prometheus_client in multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``), which ``quakescan worker`` (``serving.commands``)
sets up before the client is imported, and removes at exit if it made the folder.

Nothing is dropped without a count: failed chunks (``task_failures_total``,
``deadletter_total``), data the workers' preparation skipped
(``prepare_skipped_total``), samples the feeder dropped
(``feed_dropped_samples_total``) and chunks the sink gave up on
(``sink_skipped_chunks_total``). Label values come from the fixed sets below.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets from 50 ms to 5 min: operators alert on p99 of a few seconds.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120, 300)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Failure reasons (the `reason` label of task failures and dead letters): the known set.
# Anything else is counted as "internal" (a bug), so the label stays bounded.
FAILURE_REASONS = (
    "corrupt_chunk",
    "bad_message",
    "outside_data_roots",
    "missing_data",
    "time_limit",
    "internal",
)

# Why a worker's stream preparation skipped data of a chunk (the reasons of
# detector.prepare.PrepReport.skipped); anything else is "other".
PREP_SKIP_REASONS = (
    "unreadable_file",
    "no_data",
    "bad_dtype",
    "non_finite_samples",
    "mixed_sampling_rate",
    "merge_failed",
    "unknown_channel",
    "duplicate_component",
    "missing_vertical",
    "bad_sampling_rate",
    "sampling_rate_too_low",
    "short_segment",
    "other",
)

# Why the feeder dropped samples it received, before cutting them into chunks.
FEED_DROP_REASONS = (
    "unknown_channel",  # channel code not Z/N/E/1/2 (or shorter than three letters)
    "unlisted_station",  # not in the configured [[stations]]
    "already_cut",  # older than the chunks already cut (re-delivered after a restart, or late)
)


def failure_reason(reason: str) -> str:
    """``reason`` if it is one of FAILURE_REASONS, else "internal"."""
    return reason if reason in FAILURE_REASONS else "internal"


def prep_skip_reason(reason: str) -> str:
    """``reason`` if it is one of PREP_SKIP_REASONS, else "other"."""
    return reason if reason in PREP_SKIP_REASONS else "other"


def quakescan_version() -> str:
    """The installed quakescan distribution's version ("unknown" when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("quakescan")
    except PackageNotFoundError:
        return "unknown"


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """All metrics, built on ``registry`` (the default registry when None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        kw = {} if registry is None else {"registry": registry}
        mp = _multiprocess()

        def gauge(name, doc, labels=(), mode="max"):
            extra = {"multiprocess_mode": mode} if mp else {}
            return Gauge(name, doc, labels, **kw, **extra)

        # ------------------------------------------------------------ workers
        self.windows_total = Counter(
            "quakescan_windows_total", "Windows run through the model.", ["station", "model"], **kw
        )
        self.chunks_total = Counter(
            "quakescan_chunks_total",
            "Chunks handled by workers, by outcome (ok, failed, duplicate).",
            ["station", "status"],
            **kw,
        )
        self.inference_seconds = Histogram(
            "quakescan_inference_seconds",
            "Time of one ONNX Runtime batch.",
            ["model", "provider"],
            buckets=INFERENCE_BUCKETS,
            **kw,
        )
        self.inference_batch_size = Histogram(
            "quakescan_inference_batch_size",
            "Windows per ONNX Runtime batch.",
            ["model"],
            buckets=BATCH_BUCKETS,
            **kw,
        )
        self.task_failures_total = Counter(
            "quakescan_task_failures_total", "Tasks that failed, by reason.", ["reason"], **kw
        )
        self.deadletter_total = Counter(
            "quakescan_deadletter_total",
            "Chunks written to the dead-letter list.",
            ["reason"],
            **kw,
        )
        for reason in FAILURE_REASONS:  # every known reason is scraped, at 0 until it happens
            self.task_failures_total.labels(reason)
            self.deadletter_total.labels(reason)
        self.prepare_skipped_total = Counter(
            "quakescan_prepare_skipped_total",
            "Chunk data the workers' stream preparation skipped, by station and reason "
            "(traces or pieces; samples for non_finite_samples).",
            ["station", "reason"],
            **kw,
        )
        self.model_info = gauge(
            "quakescan_model_info",
            "The model a process serves (value 1), with its execution provider.",
            ["model", "version", "provider"],
            mode="max",
        )
        # -------------------------------------------------------------- feeds
        self.feed_samples_total = Counter(
            "quakescan_feed_samples_total", "Samples received from feeds.", ["station"], **kw
        )
        self.feed_lag_seconds = gauge(
            "quakescan_feed_lag_seconds",
            "Wall-clock time minus the time of the newest sample received.",
            ["station"],
        )
        self.feed_gaps_total = Counter(
            "quakescan_feed_gaps_total", "Gaps seen in a station's feed.", ["station"], **kw
        )
        self.feed_gap_seconds_total = Counter(
            "quakescan_feed_gap_seconds_total",
            "Seconds of data missing in gaps.",
            ["station"],
            **kw,
        )
        self.last_sample_timestamp_seconds = gauge(
            "quakescan_last_sample_timestamp_seconds",
            "Time of the newest sample received (Unix seconds), for 'station silent' alerts.",
            ["station"],
        )
        self.feed_reconnects_total = Counter(
            "quakescan_feed_reconnects_total",
            "Reconnections of a feed after an error.",
            ["feed"],
            **kw,
        )
        self.feed_dropped_samples_total = Counter(
            "quakescan_feed_dropped_samples_total",
            "Samples the feeder received and dropped before cutting chunks, by reason.",
            ["reason"],
            **kw,
        )
        for reason in FEED_DROP_REASONS:
            self.feed_dropped_samples_total.labels(reason)
        self.chunks_sent_total = Counter(
            "quakescan_chunks_sent_total", "Chunks sent to the detect queue.", ["station"], **kw
        )
        self.chunks_spooled = gauge(
            "quakescan_chunks_spooled",
            "Chunks waiting in the local spool because the broker is unreachable.",
        )
        self.chunks_in_flight = gauge(
            "quakescan_chunks_in_flight", "Chunks sent and not yet processed.", ["station"]
        )
        self.queue_depth = gauge(
            "quakescan_queue_depth", "Messages waiting in a queue or stream.", ["queue"]
        )
        # --------------------------------------------------------------- sink
        self.detections_total = Counter(
            "quakescan_detections_total",
            "Detections published, by label.",
            ["label", "model"],
            **kw,
        )
        self.end_to_end_latency_seconds = Histogram(
            "quakescan_end_to_end_latency_seconds",
            "Last sample of a chunk to its detection published.",
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.chunk_latency_seconds = Histogram(
            "quakescan_chunk_latency_seconds",
            "Last sample of a chunk to its probabilities triggered in the sink.",
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.sink_windows_total = Counter(
            "quakescan_sink_windows_total", "Windows the sink has triggered on.", ["station"], **kw
        )
        self.sink_skipped_chunks_total = Counter(
            "quakescan_sink_skipped_chunks_total",
            "Chunks the sink gave up waiting for (lost or failed), per station.",
            ["station"],
            **kw,
        )
        # -------------------------------------------------------------- batch
        self.batch_tasks_total = Counter(
            "quakescan_batch_tasks_total", "Batch station-day tasks by outcome.", ["status"], **kw
        )
        self.build_info = gauge("quakescan_build_info", "quakescan version (value 1).", ["version"])
        self.build_info.labels(quakescan_version()).set(1)  # every process that has metrics


_DEFAULT: Metrics | None = None


def default_metrics() -> Metrics:
    """The process-wide metrics on the default registry (created once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Metrics()
    return _DEFAULT
