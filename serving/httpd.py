"""A small HTTP endpoint per process: /metrics for Prometheus, /healthz for
health checks (JSON; 200 when healthy, 503 otherwise)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


def metrics_registry() -> CollectorRegistry:
    """The registry to expose: the multiprocess collector for prefork workers, else the default."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return reg
    from prometheus_client import REGISTRY

    return REGISTRY


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = generate_latest(self.server.registry_fn())
            self._send(200, CONTENT_TYPE_LATEST, body)
        elif path in ("/healthz", "/health", "/"):
            try:
                status = self.server.health()
            except Exception as exc:  # a failing probe is unhealthy, not a crash
                status = {"ok": False, "error": str(exc)}
            self._send(
                200 if status.get("ok") else 503, "application/json", json.dumps(status).encode()
            )
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("http: " + fmt, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry_fn: Callable[[], CollectorRegistry]
    health: Callable[[], dict]


def serve_http(
    port: int,
    health: Callable[[], dict] | None = None,
    registry_fn: Callable[[], CollectorRegistry] = metrics_registry,
    host: str = "0.0.0.0",
) -> _Server:
    """Start the endpoint in a daemon thread; returns the server (``.shutdown()`` stops it)."""
    srv = _Server((host, port), _Handler)
    srv.registry_fn = registry_fn
    srv.health = health or (lambda: {"ok": True})
    threading.Thread(target=srv.serve_forever, name=f"http-{port}", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics, health on /healthz", host, srv.server_address[1])
    return srv
