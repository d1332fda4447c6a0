"""Service subcommands: worker, feed, sink, batch, serve."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click

from quakescan.detector.cli import catalog_options, utc_option

log = logging.getLogger("quakescan")


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM / SIGINT: every loop here checks it (graceful stop)."""
    stop = threading.Event()

    def handler(signum, _frame):
        log.warning("received %s: stopping gracefully", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _config(config_file: str | None, **overrides: Any):
    from .config import ConfigError, load_config

    try:
        return load_config(config_file, overrides)
    except (ConfigError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None


def _feeds(cfg) -> list:
    from .config import ConfigError
    from .feeds import build_feeds

    try:
        return build_feeds(cfg)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _metrics_option(default: int):
    return click.option(
        "--metrics-port",
        type=int,
        default=None,
        help=f"Port of /metrics and /healthz [{default}; 0 disables; env QUAKESCAN_METRICS_PORT].",
    )


def _port(cfg, flag: int | None, default: int) -> int:
    if flag is not None:
        return flag
    return cfg.metrics_port if cfg.metrics_port is not None else default


# ------------------------------------------------------------------ worker
@click.command("worker")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML file ([service] table)."
)
@click.option("--concurrency", "-c", type=int, help="Worker processes [number of cores].")
@click.option(
    "--queues", "-Q", default="detect,batch", show_default=True, help="Queues to consume."
)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "solo", "threads"]),
    default="prefork",
    show_default=True,
)
@click.option(
    "--model", help="Shipped model name or ONNX file [convnetquake; env QUAKESCAN_MODEL]."
)
@click.option("--threads", type=int, help="ONNX Runtime threads per process [1 with prefork].")
@click.option("--hostname", "-n", default=None, help="Celery node name [quakescan@<host>].")
@_metrics_option(9101)
def worker_cmd(config_file, concurrency, queues, pool, model, threads, hostname, metrics_port):
    """Run a Celery worker: chunks in, probabilities out (model loaded once per process)."""
    made_dir = None  # a metrics folder this process made (and removes when it exits)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") and pool == "prefork":
        made_dir = tempfile.mkdtemp(prefix="quakescan-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made_dir
    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if mp_dir:
        Path(mp_dir).mkdir(parents=True, exist_ok=True)
        for f in Path(mp_dir).glob("*.db"):
            f.unlink()
    n = concurrency or os.cpu_count() or 1
    if threads is None and pool == "prefork":
        threads = max(1, (os.cpu_count() or 1) // n)
    cfg = _config(config_file, model=model, threads=threads, concurrency=n)
    from celery.signals import worker_process_shutdown

    from .app import make_app
    from .httpd import serve_http
    from .metrics import default_metrics

    app = make_app(cfg)
    import quakescan.serving.tasks  # noqa: F401  (registers the tasks on the app)

    @worker_process_shutdown.connect
    def _dead(pid=None, **_kw):
        if mp_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid or os.getpid())

    default_metrics()
    port = _port(cfg, metrics_port, 9101)
    if port:

        def health() -> dict:
            from .bus import redis_client

            ok = (
                bool(redis_client(cfg, cfg.broker_url).ping())
                if cfg.broker_url.startswith("redis")
                else True
            )
            return {"ok": ok, "component": "worker", "queues": queues, "model": cfg.model}

        serve_http(port, health)
    log.info("worker config: %s", cfg.redacted())
    argv = [
        "worker",
        "-Q",
        queues,
        "-c",
        str(n),
        "-P",
        pool,
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        os.environ.get("QUAKESCAN_LOG_LEVEL", "INFO"),
    ]
    if hostname:
        argv += ["-n", hostname]
    try:
        app.worker_main(argv=argv)  # returns, or raises SystemExit, after SIGTERM's warm shutdown
    finally:
        if made_dir:
            shutil.rmtree(made_dir, ignore_errors=True)


# -------------------------------------------------------------------- feed
@click.command("feed")
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="Stations and feeds (TOML).",
)
@click.option(
    "--until-done",
    is_flag=True,
    help="Exit when finite feeds (replay) have ended and all chunks are sent.",
)
@_metrics_option(9102)
def feed_cmd(config_file, until_done, metrics_port):
    """Stream station feeds to the workers' detect queue (spooling while the broker is down)."""
    cfg = _config(config_file)
    from .app import celery_sender, make_app
    from .bus import redis_client
    from .feeder import Feeder
    from .grid import model_geometry
    from .httpd import serve_http
    from .metrics import default_metrics
    from .sink import RedisState

    feeds = _feeds(cfg)
    if not feeds:
        raise click.ClickException(f"{config_file}: no [[feeds]] configured")
    app = make_app(cfg)
    step_s, window_s = model_geometry(cfg)
    metrics = default_metrics()
    try:
        feeder = Feeder(
            feeds,
            celery_sender(app),
            step_s=step_s,
            window_s=window_s,
            chunk_s=cfg.chunk_s,
            metrics=metrics,
            spool_dir=cfg.spool_dir,
            max_in_flight=cfg.max_in_flight,
            progress=RedisState(redis_client(cfg)).progress,
            stations=[s["id"] for s in cfg.stations],
            send_many=celery_sender(app, many=True) if cfg.batch_chunks > 1 else None,
            batch_chunks=cfg.batch_chunks,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    stop = _stop_on_signals()
    port = _port(cfg, metrics_port, 9102)
    if port:
        serve_http(
            port,
            lambda: {
                "ok": True,
                "component": "feed",
                "spooled": len(feeder.spool),
                "stations": len(feeder.buffers),
            },
        )
    log.info("feeding %d feeds; config %s", len(feeds), cfg.redacted())
    feeder.run(stop, until_feeds_end=until_done)
    click.echo(f"feeder stopped: {feeder.chunks_sent} chunks sent, {len(feeder.spool)} spooled")


# -------------------------------------------------------------------- sink
@click.command("sink")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML file ([service] table)."
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False),
    help="Catalog directory [catalogs; env QUAKESCAN_OUT_DIR].",
)
@click.option(
    "--consumer",
    default="sink-1",
    show_default=True,
    help="Consumer name (stable across restarts).",
)
@_metrics_option(9103)
def sink_cmd(config_file, out_dir, consumer, metrics_port):
    """Trigger on the workers' probabilities; publish detections and write daily catalogs."""
    cfg = _config(config_file, out_dir=out_dir)
    from .bus import RedisBus, redis_client
    from .config import PROB_STREAM
    from .httpd import serve_http
    from .metrics import default_metrics
    from .sink import CatalogFiles, RedisDetections, RedisState, Sink

    client = redis_client(cfg)
    metrics = default_metrics()
    sink = Sink(
        cfg,
        RedisBus(client, PROB_STREAM),
        RedisDetections(client),
        RedisState(client),
        CatalogFiles(cfg.out_dir, cfg.formats, cfg.catalog_rewrite_s),
        metrics,
        consumer=consumer,
    )
    stop = _stop_on_signals()
    port = _port(cfg, metrics_port, 9103)
    if port:
        serve_http(
            port,
            lambda: {
                "ok": bool(client.ping()),
                "component": "sink",
                "stations": len(sink.stations),
                "detections": sink.detections_published,
            },
        )
    log.info("sink writing catalogs to %s", cfg.out_dir)
    sink.run(stop)


# ------------------------------------------------------------------- batch
@click.group("batch")
def batch_group():
    """Batch catalog jobs over archives (needs Redis and running workers)."""


@batch_group.command("submit")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="Service TOML whose [service] model, step_s, threshold, off_threshold the job uses.",
)
@click.option("--sds", "sds_root", type=click.Path(file_okay=False), help="SDS archive root.")
@click.option("--stations", help="Comma-separated NET.STA[.LOC[.CHA]] for --sds.")
@click.option("--start", callback=utc_option, help="Start time for --sds.")
@click.option("--end", callback=utc_option, help="End time for --sds.")
@click.option("--model", help="Shipped model name or ONNX file on the workers [the config's].")
@click.option("--step", "step_s", type=float, help="Window step in seconds [config, else model].")
@click.option("--threshold", type=float, help="Trigger-on probability [config, else model].")
@click.option("--off-threshold", type=float, help="Trigger-off probability [config, else model].")
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it is done.")
@click.option("--out", type=click.Path(dir_okay=False), help="With --wait: write the catalog here.")
def batch_submit(
    paths,
    config_file,
    sds_root,
    stations,
    start,
    end,
    model,
    step_s,
    threshold,
    off_threshold,
    wait,
    out,
):
    """Split files or an SDS archive into station-day tasks and submit them.

    The job records its model, step and trigger thresholds (flags, else the config,
    else the model's spec), so every worker computes it the same way.
    """
    cfg = _config(config_file)
    from .app import make_app
    from .batch import JobSpec, plan_files, plan_sds, submit
    from .bus import redis_client

    if bool(paths) == bool(sds_root):
        raise click.UsageError("give waveform PATHs or --sds (with --stations, --start, --end)")
    try:
        if sds_root:
            if not (stations and start and end):
                raise click.UsageError("--sds needs --stations, --start and --end")
            items = plan_sds(sds_root, [s for s in stations.split(",") if s.strip()], start, end)
        else:
            items = plan_files(list(paths))
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    app = make_app(cfg)
    client = redis_client(cfg)
    job = submit(
        app,
        client,
        JobSpec(
            items,
            model or cfg.model,
            step_s if step_s is not None else cfg.step_s,
            threshold if threshold is not None else cfg.threshold,
            off_threshold if off_threshold is not None else cfg.off_threshold,
        ),
    )
    click.echo(f"job {job}: {len(items)} station-days submitted")
    click.echo(
        f"  follow: quakescan batch status {job}\n  fetch:  quakescan batch fetch {job} --out catalog.xml"
    )
    if wait:
        st = _follow(client, job)
        if out:
            _fetch(client, job, out, None)
        _exit_on_failures(st)


def _exit_on_failures(st: dict) -> None:
    """A job with failed station-days is not a success: name each one and exit 1.

    Whatever succeeded is still fetched (and written with --out): the catalog of the
    station-days that ran is exact, and the failures say which ones are missing.
    """
    if not st["failed"]:
        return
    for f in st["failures"]:
        click.echo(f"  failed {f['item']} {f['day']}: {f['reason']}: {f['error']}", err=True)
    raise click.ClickException(
        f"{st['failed']} of {st['total']} station-days failed; their detections are not in "
        f"the catalog (quakescan batch status {st['job']})"
    )


def _follow(client, job: str, poll_s: float = 0.5) -> dict:
    from tqdm import tqdm

    from .batch import job_status

    st = job_status(client, job)
    with tqdm(
        total=st["total"], desc=f"job {job}", unit="station-day", disable=not sys.stderr.isatty()
    ) as bar:
        while True:
            st = job_status(client, job)
            bar.n = st["done"] + st["failed"]
            bar.set_postfix(failed=st["failed"])
            bar.refresh()
            if st["state"] == "done":
                break
            time.sleep(poll_s)
    click.echo(f"job {job} done: {st['detections']} detections, {st['failed']} failed station-days")
    return st


def _fetch(
    client, job: str, out: str, fmt: str | None, min_stations: int = 1, window_s: float = 5.0
) -> None:
    from quakescan.detector.run import CatalogRun

    from .batch import job_detections

    try:
        run = CatalogRun(detections=job_detections(client, job))
        run.associate(min_stations, window_s)
        _fmt, n = run.write(out, fmt)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if run.events is None:
        click.echo(f"{n} detections written to {out}")
    else:
        click.echo(
            f"{len(run.events)} network events with >= {min_stations} stations "
            f"({len(run.kept)} station detections) written to {out}"
        )


@batch_group.command("status")
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--follow", is_flag=True, help="Show a progress bar until the job is done.")
def batch_status(job, as_json, follow):
    """Progress of a batch job."""
    import json

    from .batch import job_status
    from .bus import redis_client

    client = redis_client(_config(None))
    if follow:
        try:
            _exit_on_failures(_follow(client, job))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        return
    try:
        st = job_status(client, job)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(
        f"job {job}: {st['state']}  {st['done'] + st['failed']}/{st['total']} station-days "
        f"({st['failed']} failed), {st['windows']:,} windows"
    )
    if st["detections"] is not None:
        click.echo(f"  detections: {st['detections']}")
    for f in st["failures"]:
        click.echo(f"  failed {f['item']} {f['day']}: {f['reason']}: {f['error']}")


@batch_group.command("fetch")
@click.argument("job")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Catalog file (.xml, .csv, .jsonl).",
)
@catalog_options
def batch_fetch(job, out, min_stations, association_window_s, fmt):
    """Write a finished job's merged catalog."""
    from .bus import redis_client

    _fetch(redis_client(_config(None)), job, out, fmt, min_stations, association_window_s)


# ------------------------------------------------------------------- serve
@click.command("serve")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="Stations and feeds (TOML) [replay the shipped sample].",
)
@click.option("--out-dir", type=click.Path(file_okay=False), help="Catalog directory [catalogs].")
@click.option(
    "--until-done/--forever",
    default=None,
    help="Exit when finite feeds have ended [default without --config].",
)
@_metrics_option(9100)
def serve_cmd(config_file, out_dir, until_done, metrics_port):
    """Feeder, worker and sink in one process on Celery's in-memory transport (no Redis)."""
    from .service import InProcessService

    cfg = _config(
        config_file, out_dir=out_dir, broker_url="memory://", result_backend="cache+memory://"
    )
    made_dir = None
    if not cfg.feeds:
        from quakescan.detector.sources import sample_paths

        from .config import FeedConfig

        cfg.feeds = [
            FeedConfig("replay", {"paths": [str(p) for p in sample_paths()], "speed": 0.0})
        ]
        # A replay keeps no state: a private spool, removed when serve exits.
        cfg.spool_dir = made_dir = tempfile.mkdtemp(prefix="quakescan-serve-")
        click.echo(
            f"no --config: replaying the shipped sample ({len(cfg.feeds[0].options['paths'])} files)",
            err=True,
        )
        if until_done is None:
            until_done = True
    if until_done is None:
        until_done = False
    try:
        feeds = _feeds(cfg)
        stop = _stop_on_signals()  # SIGTERM/SIGINT end the run below; the finally still runs
        svc = InProcessService(cfg, feeds, metrics_port=_port(cfg, metrics_port, 9100))
        t0 = time.time()
        dets = svc.run(stop, until_done=until_done)
    finally:
        if made_dir:
            shutil.rmtree(made_dir, ignore_errors=True)
    click.echo(svc.summary(time.time() - t0))
    for d in dets:
        click.echo(str(d))
    click.echo(f"catalogs in {cfg.out_dir}/")
