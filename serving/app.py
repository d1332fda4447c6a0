"""The Celery application: Redis broker and backend from the environment,
json/msgpack only (a pickled message is refused), late acks with
reject-on-worker-lost and prefetch 1, so a worker that dies mid-chunk loses
nothing: the chunk is redone and idempotent ids keep the result free of duplicates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from celery import Celery

from .config import QUEUE_BATCH, QUEUE_DETECT, ServiceConfig, load_config

TASK_DETECT = "quakescan.detect_chunk"
TASK_DETECT_MANY = "quakescan.detect_chunks"  # a list of chunks (of any stations) per task
TASK_BATCH_DAY = "quakescan.batch_station_day"
TASK_BATCH_FINALIZE = "quakescan.batch_finalize"

# The configuration each app was made from; prefork children inherit it with the app.
_CONFIGS: WeakKeyDictionary[Celery, ServiceConfig] = WeakKeyDictionary()


def app_config(app: Celery) -> ServiceConfig | None:
    """The ServiceConfig ``app`` was made from by ``make_app`` (None for any other app)."""
    return _CONFIGS.get(app)


def make_app(cfg: ServiceConfig | None = None) -> Celery:
    cfg = cfg or load_config()
    broker = cfg.broker_url
    if broker == "memory://":
        # kombu logs "No hostname was supplied" for a URL without a host (once per
        # connection); the in-memory transport ignores the host, so name one.
        broker = "memory://localhost/"
    app = Celery(
        "quakescan",
        broker=broker,
        backend=cfg.backend_url,
        include=["quakescan.serving.tasks"],
    )
    content = [cfg.serializer]
    ssl = cfg.ssl_options()
    app.conf.update(
        task_serializer=cfg.serializer,
        result_serializer=cfg.serializer,
        accept_content=content,
        result_accept_content=content,
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=cfg.soft_time_limit_s,
        task_time_limit=cfg.time_limit_s,
        task_default_queue=QUEUE_DETECT,
        task_routes={
            TASK_DETECT: {"queue": QUEUE_DETECT},
            TASK_DETECT_MANY: {"queue": QUEUE_DETECT},
            TASK_BATCH_DAY: {"queue": QUEUE_BATCH},
            TASK_BATCH_FINALIZE: {"queue": QUEUE_BATCH},
        },
        task_ignore_result=True,
        result_expires=7 * 86400,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        broker_transport_options={
            # A chunk not acked in time (its worker host gone for good) is
            # redelivered; above the hard time limit, below the sink's reorder wait.
            "visibility_timeout": cfg.visibility_timeout_s,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        },
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
    )
    if cfg.broker_url.startswith("memory://"):
        # The in-memory transport polls; keep it responsive for `quakescan serve`.
        app.conf.broker_transport_options = {"polling_interval": 0.01}
    if ssl:
        app.conf.broker_use_ssl = ssl
        app.conf.redis_backend_use_ssl = ssl
    _CONFIGS[app] = cfg
    return app


def celery_sender(app: Celery, many: bool = False) -> Callable[[Any], None]:
    """The feeder's ``send``: send(msg) as one detect task (or, with many=True, send(msgs)
    as one task for several chunks); broker trouble raises SendError (the feeder spools)."""
    from kombu.exceptions import OperationalError

    from .feeder import SendError

    def send(msg) -> None:
        try:
            if many:
                app.send_task(TASK_DETECT_MANY, args=[msg], queue="detect", retry=False)
            else:
                app.send_task(TASK_DETECT, args=[msg], queue="detect", retry=False)
        except (OperationalError, ConnectionError, OSError) as exc:
            raise SendError(str(exc)) from None
        except Exception as exc:  # redis-py errors surface through kombu in several forms
            if "connect" in str(exc).lower() or "redis" in type(exc).__module__:
                raise SendError(str(exc)) from None
            raise

    return send
