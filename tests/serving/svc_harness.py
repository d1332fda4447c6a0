"""Test harness: the distributed path (feeder -> Redis/Celery -> real workers ->
Redis stream -> sink) run from a test, with the same classes the commands use."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry

from quakescan.serving.app import celery_sender, make_app
from quakescan.serving.bus import RedisBus, redis_client
from quakescan.serving.config import PROB_STREAM, load_config
from quakescan.serving.feeder import Feeder
from quakescan.serving.feeds.files import ReplayFeed
from quakescan.serving.metrics import Metrics
from quakescan.serving.sink import CatalogFiles, RedisDetections, RedisState, Sink


def config(broker: str, tmp: Path, **kw):
    env = {"QUAKESCAN_BROKER_URL": broker, "QUAKESCAN_REDIS_URL": broker}
    return load_config(
        None, {"spool_dir": str(tmp / "spool"), "out_dir": str(tmp / "catalogs"), **kw}, env=env
    )


class Pipeline:
    """Feeder and sink in this process; workers are separate processes."""

    def __init__(
        self,
        broker: str,
        tmp: Path,
        paths: list,
        chunk_s: float = 10.0,
        max_in_flight: int = 1000,
        **kw,
    ) -> None:
        self.cfg = config(broker, tmp, chunk_s=chunk_s, max_in_flight=max_in_flight, **kw)
        self.app = make_app(self.cfg)
        self.client = redis_client(self.cfg)
        self.metrics = Metrics(CollectorRegistry())
        self.feeder = Feeder(
            [ReplayFeed(paths, speed=0.0)],
            celery_sender(self.app),
            step_s=1.0,
            window_s=10.0,
            chunk_s=chunk_s,
            metrics=self.metrics,
            spool_dir=self.cfg.spool_dir,
            max_in_flight=max_in_flight,
            progress=RedisState(self.client).progress,
            send_many=celery_sender(self.app, many=True) if self.cfg.batch_chunks > 1 else None,
            batch_chunks=self.cfg.batch_chunks,
        )
        self.sink_stop = threading.Event()
        self.sink: Sink | None = None
        self.sink_thread: threading.Thread | None = None

    def new_sink(self, consumer: str = "sink-1") -> Sink:
        return Sink(
            self.cfg,
            RedisBus(self.client, PROB_STREAM),
            RedisDetections(self.client),
            RedisState(self.client),
            CatalogFiles(self.cfg.out_dir, self.cfg.formats, self.cfg.catalog_rewrite_s),
            self.metrics,
            consumer=consumer,
        )

    def start_sink(self) -> None:
        self.sink = self.new_sink()
        self.sink_stop = threading.Event()
        self.sink_thread = threading.Thread(
            target=self.sink.run, args=(self.sink_stop, 3600.0), daemon=True
        )
        self.sink_thread.start()

    def stop_sink(self) -> None:
        self.sink_stop.set()
        if self.sink_thread:
            self.sink_thread.join(20)

    def feed_all(self, timeout_s: float = 120) -> None:
        stop = threading.Event()
        t = threading.Thread(target=self.feeder.run, args=(stop, True), daemon=True)
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            stop.set()
            raise TimeoutError("feeder did not finish")

    def drained(self) -> bool:
        prog = {
            k.decode(): int(v) for k, v in self.client.hgetall("quakescan:sink:progress").items()
        }
        return all(
            prog.get(f"{b.station}|{b.channel_prefix}", -1) >= b.seq - 1
            for b in self.feeder.buffers.values()
            if b.seq
        )

    def wait_drained(self, timeout_s: float = 120) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.drained() and not len(self.feeder.spool):
                return
            time.sleep(0.1)
        raise TimeoutError("the sink did not see every chunk")

    def detections(self):
        return self.sink.catalogs.all() if self.sink else CatalogFiles(self.cfg.out_dir).all()

    def stream_detections(self) -> list[dict]:
        import json

        return [json.loads(f[b"data"]) for _id, f in self.client.xrange("quakescan:detections")]


def redis_alive(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.ConnectionError:
        return False
