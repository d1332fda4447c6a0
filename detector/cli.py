"""Detector subcommands: detect, plot, score, models (no torch, no Celery)."""

from __future__ import annotations

import json
import sys
from collections import Counter

import click
from obspy import UTCDateTime

from .catalog import Detection, catalog_format


def utc_option(_ctx, _param, value):
    if value is None:
        return None
    try:
        return UTCDateTime(value)
    except Exception:
        raise click.BadParameter(
            f"{value!r} is not a time (use e.g. 2010-09-01 or 2010-09-01T12:00:00)"
        ) from None


def catalog_options(f):
    """--min-stations, --association-window and --format: how a catalog is written
    (``detect`` and ``batch fetch`` alike)."""
    opts = [
        click.option(
            "--min-stations",
            type=int,
            default=1,
            show_default=True,
            help="Keep only events seen at this many stations (network coincidence).",
        ),
        click.option(
            "--association-window",
            "association_window_s",
            type=float,
            default=5.0,
            show_default=True,
            help="Seconds within which station detections form one event.",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["quakeml", "csv", "jsonl"]),
            help="Catalog format [from --out's extension].",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


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
@click.option("--start", callback=utc_option, help="Start time for --sds.")
@click.option("--end", callback=utc_option, help="End time for --sds.")
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
@catalog_options
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
    from .run import run_files, run_sds
    from .sources import StationSelector, sample_paths
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
    show = sys.stderr.isatty() if progress is None else progress
    try:
        if sds_root:
            try:
                selectors = [StationSelector.parse(s) for s in stations.split(",") if s.strip()]
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--stations") from None
            run = run_sds(det, sds_root, selectors, start, end, progress=show)
        else:
            if not paths:
                paths = [str(p) for p in sample_paths()]
                click.echo(
                    f"no input given: running on the shipped sample ({len(paths)} files)", err=True
                )
            run = run_files(det, list(paths), progress=show)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    run.associate(min_stations, association_window_s)
    click.echo(_summary(det, run.per_station, run.detections, run.seconds))
    if det.stats.segments == 0:
        why = ", ".join(f"{k} {v}" for k, v in sorted(det.stats.report.skipped.items()))
        raise click.ClickException(
            "nothing could be processed"
            + (f" (skipped: {why}); see the messages above" if why else "")
        )
    if run.events is not None:
        click.echo(f"network events with >= {min_stations} stations: {len(run.events)}")
    if out:
        fmt, n = run.write(out, fmt)
        click.echo(f"catalog written to {out} ({fmt}, {n} records)")
    elif run.kept:
        click.echo("")
        for d in run.kept:
            click.echo(str(d))


@click.command("plot")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@_common_model_options
@click.option("--station", help="Only this station (NET.STA).")
@click.option("--start", callback=utc_option, help="Plot from this time.")
@click.option("--end", callback=utc_option, help="Plot up to this time.")
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


__all__ = ["detect_cmd", "plot_cmd", "models_cmd"]
