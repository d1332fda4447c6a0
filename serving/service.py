"""``quakescan serve``: feeder, worker and sink in one process.

The same classes as the distributed service, wired through Celery's in-memory
transport (a real Celery worker, in a thread, consuming the ``detect`` queue)
and an in-memory probability stream, so a single machine needs no Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

from celery.worker import WorkController
from celery.worker import state as worker_state

from quakescan.detector.catalog import Detection

from .app import celery_sender, make_app
from .bus import MemoryBus
from .config import ServiceConfig
from .feeder import Feeder
from .httpd import serve_http
from .metrics import Metrics, default_metrics
from .sink import CatalogFiles, MemoryDetections, MemoryState, Sink
from .tasks import build_state, set_worker_state

log = logging.getLogger(__name__)


class InProcessService:
    def __init__(
        self,
        cfg: ServiceConfig,
        feeds: list,
        *,
        metrics: Metrics | None = None,
        metrics_port: int = 0,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics or default_metrics()
        self.app = make_app(cfg)
        self.probs = MemoryBus("probabilities")
        self.dead: list[dict] = []
        self.worker_state = build_state(
            cfg, metrics=self.metrics, bus=self.probs, deadletter=self.dead.append
        )
        set_worker_state(self.worker_state)
        self.detector = self.worker_state.detector
        spec = self.detector.spec
        self.state = MemoryState()
        self.published = MemoryDetections()
        self.sink = Sink(
            cfg,
            self.probs,
            self.published,
            self.state,
            CatalogFiles(cfg.out_dir, cfg.formats, cfg.catalog_rewrite_s),
            self.metrics,
            spec=spec,
        )
        Path(cfg.spool_dir).mkdir(parents=True, exist_ok=True)
        self.feeder = Feeder(
            feeds,
            celery_sender(self.app),
            step_s=cfg.step_s or spec.step_s,
            window_s=spec.window_s,
            chunk_s=cfg.chunk_s,
            metrics=self.metrics,
            spool_dir=cfg.spool_dir,
            max_in_flight=cfg.max_in_flight,
            progress=self.state.progress,
            stations=[s["id"] for s in cfg.stations],
            send_many=celery_sender(self.app, many=True) if cfg.batch_chunks > 1 else None,
            batch_chunks=cfg.batch_chunks,
        )
        self.metrics_port = metrics_port

    def _health(self) -> dict:
        return {
            "ok": True,
            "component": "serve",
            "stations": len(self.sink.stations),
            "detections": self.sink.detections_published,
            "dead_letters": len(self.dead),
        }

    def _drained(self) -> bool:
        """Every chunk the feeder made has been through the sink."""
        prog = self.state.progress()
        for b in self.feeder.buffers.values():
            if b.seq and prog.get(f"{b.station}|{b.channel_prefix}", -1) < b.seq - 1:
                return False
        return not len(self.feeder.spool) and not any(self.feeder.held.values())

    def run(
        self, stop: threading.Event, until_done: bool = True, timeout_s: float = 3600.0
    ) -> list[Detection]:
        if self.metrics_port:
            serve_http(self.metrics_port, self._health)
        self.app.finalize()
        self.app.set_current()
        worker = WorkController(
            app=self.app,
            concurrency=1,
            pool="solo",
            queues=["detect"],
            loglevel="WARNING",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            ready_callback=None,
        )
        wt = threading.Thread(target=worker.start, name="celery-worker", daemon=True)
        wt.start()
        sink_stop = threading.Event()
        st = threading.Thread(
            target=self.sink.run, args=(sink_stop, 3600.0), name="sink", daemon=True
        )
        st.start()
        try:
            self.feeder.run(stop, until_feeds_end=until_done)
            if until_done:
                deadline = time.time() + timeout_s
                while not stop.is_set() and time.time() < deadline and not self._drained():
                    time.sleep(0.1)
        finally:
            sink_stop.set()
            st.join(120)  # the sink writes the day's CSV and QuakeML as it stops
            worker_state.should_terminate = 0
            wt.join(10)
            worker_state.should_terminate = None
        return sorted(self.published.items)

    def summary(self, seconds: float) -> str:
        d = self.published.items
        labels = Counter(x.label for x in d)
        spec = self.detector.spec
        return (
            f"served {len(self.feeder.buffers)} stations in {seconds:.1f} s: {self.feeder.chunks_sent} chunks, "
            f"{len(d)} detections ({', '.join(f'{k} {v}' for k, v in sorted(labels.items())) or 'none'}), "
            f"{len(self.dead)} dead-lettered; model {spec.name} {spec.version} on {self.detector.provider}"
        )
