"""Detector subcommands: detect, plot, score, models (no torch, no Celery)."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import click
from obspy import Stream, UTCDateTime
from tqdm import tqdm

from .catalog import Detection, catalog_format, write_catalog
from .score import score_cmd  # noqa: F401  (registered as `quakescan score`)


def _utc(_ctx, _param, value):
    if value is None:
        return None
    try:
        return UTCDateTime(value)
    except Exception:
        raise click.BadParameter(
            f"{value!r} is not a time (use e.g. 2010-09-01 or 2010-09-01T12:00:00)"
        ) from None


def _common_model_options(f):
    opts = [
        click.option(
            "--model", default=None, help="Shipped model name or ONNX file [convnetquake]."
        ),
        click.option("--step", "step_s", type=float, help="Window step in seconds [model's spec]."),
        click.option(
            "--threshold", type=float, help="Trigger-on event probability [model's spec]."
        ),
        click.option(
            "--off-threshold", type=float, help="Trigger-off event probability [model's spec]."
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default="auto",
            show_default=True,
        ),
        click.option("--threads", type=int, help="ONNX Runtime intra-op threads [all cores]."),
        click.option(
            "--batch-size",
            type=int,
            default=256,
            show_default=True,
            help="Windows per inference batch.",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _make_detector(
    model, step_s, threshold, off_threshold, device, threads, batch_size, method="cnn", stalta=None
):
    from .core import Detector

    try:
        return Detector(
            model,
            step_s=step_s,
            threshold=threshold,
            off_threshold=off_threshold,
            method=method,
            stalta=stalta,
            device=device,
            threads=threads,
            batch_size=batch_size,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None


def _summary(det, per_station: dict, detections: list[Detection], seconds: float) -> str:
    rows = [("station", "windows", "detections", "gaps", "skipped")]
    for key in sorted(per_station):
        s = per_station[key]
        rows.append(
            (key, str(s["windows"]), str(s["detections"]), str(s["gaps"]), str(s["skipped"]))
        )
    tot = [
        sum(s[k] for s in per_station.values())
        for k in ("windows", "detections", "gaps", "skipped")
    ]
    rows.append(("total", *map(str, tot)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    rate = det.stats.windows / seconds if seconds > 0 else 0.0
    lines.append(
        f"model {det.model_name} {det.model_version} on {det.provider}; method {det.method}; "
        f"{det.stats.windows} windows in {seconds:.1f} s ({rate:,.0f} windows/s)"
    )
    labels = Counter(d.label for d in detections)
    if labels:
        lines.append(
            "detections by label: " + ", ".join(f"{k} {v}" for k, v in sorted(labels.items()))
        )
    skipped = det.stats.report.skipped
    if skipped:
        lines.append("skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    return "\n".join(lines)


@click.command("detect")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option(
    "--sds",
    "sds_root",
    type=click.Path(file_okay=False),
    help="SDS archive root (use with --stations, --start, --end).",
)
@click.option("--stations", help="Comma-separated NET.STA[.LOC[.CHA]] for --sds.")
@click.option("--start", callback=_utc, help="Start time for --sds.")
@click.option("--end", callback=_utc, help="End time for --sds.")
@_common_model_options
@click.option(
    "--method",
    type=click.Choice(["cnn", "stalta"]),
    default="cnn",
    show_default=True,
    help="CNN, or ObsPy's recursive STA/LTA through the same pipeline.",
)
@click.option(
    "--sta",
    "sta_s",
    type=float,
    default=0.5,
    show_default=True,
    help="STA seconds (--method stalta).",
)
@click.option(
    "--lta",
    "lta_s",
    type=float,
    default=10.0,
    show_default=True,
    help="LTA seconds (--method stalta).",
)
@click.option(
    "--stalta-on", type=float, default=4.0, show_default=True, help="STA/LTA trigger-on ratio."
)
@click.option(
    "--stalta-off", type=float, default=1.5, show_default=True, help="STA/LTA trigger-off ratio."
)
@click.option(
    "--min-stations",
    type=int,
    default=1,
    show_default=True,
    help="Keep only events seen at this many stations (network coincidence).",
)
@click.option(
    "--association-window",
    "association_window_s",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds within which station detections form one event.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["quakeml", "csv", "jsonl"]),
    help="Catalog format [from --out's extension].",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Catalog file to write (QuakeML, CSV or JSON lines).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar [on a terminal].")
def detect_cmd(
    paths,
    sds_root,
    stations,
    start,
    end,
    model,
    step_s,
    threshold,
    off_threshold,
    device,
    threads,
    batch_size,
    method,
    sta_s,
    lta_s,
    stalta_on,
    stalta_off,
    min_stations,
    association_window_s,
    fmt,
    out,
    progress,
):
    """Detect events in waveform files (PATH..., globs, folders) or an SDS archive.

    With no PATH and no --sds, runs on the real waveform sample shipped with quakescan.
    """
    from .prepare import PrepReport, group_by_station, read_waveforms
    from .sources import StationSelector, iter_sds, sample_paths
    from .stalta import StaLtaParams

    if paths and sds_root:
        raise click.UsageError("give waveform PATHs or --sds, not both")
    if sds_root and not (stations and start and end):
        raise click.UsageError("--sds needs --stations, --start and --end")
    stalta = None
    if method == "stalta":
        try:
            stalta = StaLtaParams(sta_s=sta_s, lta_s=lta_s, on=stalta_on, off=stalta_off)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    if out:
        try:
            fmt = catalog_format(out, fmt)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--format") from None
    det = _make_detector(
        model, step_s, threshold, off_threshold, device, threads, batch_size, method, stalta
    )
    if stalta is not None:
        det.stalta = stalta
    show = sys.stderr.isatty() if progress is None else progress
    t0 = time.perf_counter()
    detections: list[Detection] = []
    per_station: dict[str, Counter] = {}
    report = det.stats.report

    def account(
        key: str, dets: list[Detection], windows_before: int, gaps_before: int, skipped_before: int
    ):
        c = per_station.setdefault(key, Counter())
        c["windows"] += det.stats.windows - windows_before
        c["detections"] += len(dets)
        c["gaps"] += len(report.gaps) - gaps_before
        c["skipped"] += sum(report.skipped.values()) - skipped_before

    if sds_root:
        try:
            selectors = [StationSelector.parse(s) for s in stations.split(",") if s.strip()]
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--stations") from None
        from .sources import day_starts

        n_days = len(day_starts(start, end))
        bar = tqdm(total=len(selectors) * n_days, desc="station-days", unit="day", disable=not show)
        for sel in selectors:
            before = (det.stats.windows, len(report.gaps), sum(report.skipped.values()))

            def pieces(sel=sel):
                for _day, st in iter_sds(sds_root, sel, start, end, report):
                    bar.update(1)
                    yield st

            try:
                dets = list(det.detect_iter(pieces()))
            except FileNotFoundError as exc:
                raise click.ClickException(str(exc)) from None
            detections += dets
            account(f"{sel.network}.{sel.station}", dets, *before)
        bar.close()
    else:
        if not paths:
            paths = [str(p) for p in sample_paths()]
            click.echo(
                f"no input given: running on the shipped sample ({len(paths)} files)", err=True
            )
        read_report = PrepReport()
        try:
            from .prepare import expand_paths

            files = expand_paths(list(paths))
        except FileNotFoundError as exc:
            raise click.ClickException(str(exc)) from None
        stream = Stream()
        for f in tqdm(files, desc="reading", unit="file", disable=not show):
            stream += read_waveforms([f], read_report)
        report.merge(read_report)
        if read_report.skipped:
            per_station.setdefault("(unreadable files)", Counter())["skipped"] += sum(
                read_report.skipped.values()
            )
        groups = group_by_station(stream)
        if not groups and not read_report.skipped:
            raise click.ClickException("no waveform data found in the input")
        for (sta, prefix), traces in tqdm(
            groups.items(), desc="stations", unit="station", disable=not show
        ):
            before = (det.stats.windows, len(report.gaps), sum(report.skipped.values()))
            dets = list(det.detect_iter([Stream(traces)]))
            detections += dets
            account(f"{sta}.{prefix}", dets, *before)
    detections = sorted(detections)
    seconds = time.perf_counter() - t0
    events = None
    if min_stations > 1:
        from .associate import associate, write_network_quakeml

        events = associate(detections, min_stations, association_window_s)
        members = {d.id for ev in events for d in ev.detections}
        kept = [d for d in detections if d.id in members]
    else:
        kept = detections
    click.echo(_summary(det, per_station, detections, seconds))
    if events is not None:
        click.echo(f"network events with >= {min_stations} stations: {len(events)}")
    if out:
        if events is not None and fmt == "quakeml":
            write_network_quakeml(events, out)
        else:
            write_catalog(kept, out, fmt)
        click.echo(
            f"catalog written to {out} ({fmt}, {len(events) if events is not None and fmt == 'quakeml' else len(kept)} records)"
        )
    elif kept:
        click.echo("")
        for d in kept:
            click.echo(str(d))


@click.command("plot")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@_common_model_options
@click.option("--station", help="Only this station (NET.STA).")
@click.option("--start", callback=_utc, help="Plot from this time.")
@click.option("--end", callback=_utc, help="Plot up to this time.")
def plot_cmd(
    paths,
    out,
    model,
    step_s,
    threshold,
    off_threshold,
    device,
    threads,
    batch_size,
    station,
    start,
    end,
):
    """Plot waveforms, event probability and detections of each station to PNG."""
    from .plot import plot_detections
    from .prepare import read_waveforms
    from .sources import sample_paths

    if not paths:
        paths = [str(p) for p in sample_paths()]
    try:
        st = read_waveforms(list(paths))
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    if station:
        net, sta = (station.split(".") + [""])[:2]
        st = st.select(network=net, station=sta)
    if start or end:
        st = st.slice(start, end)
    if not len(st):
        raise click.ClickException("no waveform data to plot (check --station/--start/--end)")
    det = _make_detector(model, step_s, threshold, off_threshold, device, threads, batch_size)
    try:
        path = plot_detections(det, st, out)
    except ImportError:
        raise click.ClickException(
            "`quakescan plot` needs matplotlib: pip install 'quakescan[plot]'"
        ) from None
    click.echo(f"figure written to {path}")


@click.command("models")
@click.argument("model", required=False)
def models_cmd(model):
    """List shipped models, or print the spec of MODEL (name or ONNX file) as JSON."""
    from .model import OnnxModel, shipped_models

    if model is None:
        for name, path in shipped_models().items():
            if not path.exists():
                click.echo(f"{name:<16} (missing: {path})")
                continue
            m = OnnxModel(path, device="cpu")
            s = m.spec
            test = s.metrics.get("test", {})
            click.echo(
                f"{name:<16} {s.name} v{s.version}  {s.architecture}  classes {','.join(s.class_names)}  "
                f"test recall {test.get('recall', float('nan')):.3f} FPR {test.get('false_positive_rate', float('nan')):.4f}"
            )
            if s.trained_on:
                click.echo(f"{'':<16} trained on: {s.trained_on}")
        return
    try:
        m = OnnxModel(model, device="cpu")
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(json.loads(m.spec.to_json()), indent=2))


__all__ = ["detect_cmd", "plot_cmd", "score_cmd", "models_cmd", "Path"]
