"""Training subcommands: templates build / info, train, evaluate, export.

torch is imported only inside the commands that need it (train, evaluate,
export): ``quakescan templates build`` and ``templates info`` run without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import ARCHITECTURES


@click.group()
def templates() -> None:
    """HDF5 waveform templates (the format is described in training/templates.py)."""


@templates.command("build")
@click.option(
    "--waveforms",
    multiple=True,
    help="Waveform file, folder or glob (quote it); repeatable. Or use --sds.",
)
@click.option("--sds", "sds_root", type=click.Path(file_okay=False), help="SDS archive root.")
@click.option(
    "--catalog",
    required=True,
    type=click.Path(dir_okay=False),
    help="QuakeML, CSV of picks (p_time/pick_time/time + station) or CSV of origins.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Templates file.")
@click.option("--window-s", default=10.0, show_default=True, help="Window length (s).")
@click.option("--pre-onset-s", default=1.5, show_default=True, help="Window start before P (s).")
@click.option(
    "--min-pre-onset-s",
    type=float,
    default=None,
    help="Start at the data's start when it has less than --pre-onset-s before P, down to this.",
)
@click.option("--components", default="ENZ", show_default=True, help="Component order.")
@click.option("--sampling-rate-hz", default=100.0, show_default=True)
@click.option("--noise-margin-s", default=2.0, show_default=True, help="Noise ends this before P.")
@click.option("--noise-after-s", default=60.0, show_default=True, help="Noise starts this after P.")
@click.option("--noise-per-record", default=2, show_default=True, help="Per file / station-day.")
@click.option("--noise-stride-s", type=float, default=None, help="Noise grid (default: window).")
@click.option("--vp-km-s", default=6.0, show_default=True, help="P velocity for travel times.")
@click.option("--max-distance-km", type=float, default=None, help="Travel-time stations within.")
@click.option(
    "--stations",
    type=click.Path(dir_okay=False),
    default=None,
    help="StationXML or CSV (id,latitude,longitude) for origin catalogs.",
)
@click.option(
    "--max-flat-s",
    type=float,
    default=0.5,
    show_default=True,
    help="Identical values for longer than this are filled data: a gap (0 keeps them).",
)
@click.option("--clusters", type=int, default=None, help="k-means location classes.")
@click.option("--seed", default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def build_cmd(
    waveforms: tuple[str, ...],
    sds_root: str | None,
    catalog: str,
    out: str,
    window_s: float,
    pre_onset_s: float,
    min_pre_onset_s: float | None,
    components: str,
    sampling_rate_hz: float,
    noise_margin_s: float,
    noise_after_s: float,
    noise_per_record: int,
    noise_stride_s: float | None,
    vp_km_s: float,
    max_distance_km: float | None,
    stations: str | None,
    max_flat_s: float,
    clusters: int | None,
    seed: int,
    progress: bool,
) -> None:
    """Build a templates file from continuous waveforms (files or SDS) and a catalog."""
    from .build import build_templates

    if bool(waveforms) == bool(sds_root):
        raise click.UsageError("give --waveforms (repeatable) or --sds, exactly one of them")
    try:
        report = build_templates(
            list(waveforms) or None,
            sds_root,
            catalog,
            out,
            window_s=window_s,
            pre_onset_s=pre_onset_s,
            min_pre_onset_s=min_pre_onset_s,
            component_order=components,
            sampling_rate_hz=sampling_rate_hz,
            noise_margin_s=noise_margin_s,
            noise_after_s=noise_after_s,
            noise_per_record=noise_per_record,
            noise_window_stride_s=noise_stride_s,
            vp_km_s=vp_km_s,
            max_distance_km=max_distance_km,
            stations=stations,
            max_flat_s=max_flat_s or None,
            clusters=clusters,
            seed=seed,
            progress=progress,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.table())


@templates.command("info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def templates_info(path: str) -> None:
    """Validate a templates file and print what it holds."""
    from .templates import read_templates

    t = read_templates(path)
    click.echo(f"{path}")
    click.echo(f"  sampling rate    {t.sampling_rate_hz} Hz")
    click.echo(f"  components       {t.component_order}")
    click.echo(f"  window           {t.samples} samples ({t.samples / t.sampling_rate_hz:g} s)")
    click.echo(f"  classes          {t.counts()}")
    click.echo(f"  dropped          {t.dropped}")
    stations = sorted({s for s in t.station if s})
    click.echo(f"  stations         {len(stations)}")
    click.echo(f"  sha256           {t.sha256}")


def _load_config_file(path: str | None) -> dict:
    if not path:
        return {}
    p = Path(path)
    text = p.read_text()
    if p.suffix == ".json":
        return json.loads(text)
    import tomllib

    return tomllib.loads(text)


@click.command("train")
@click.argument("model", type=click.Choice(ARCHITECTURES))
@click.option(
    "--templates",
    "templates_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="HDF5 templates file.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Run directory (checkpoints, history, figure).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="TOML/JSON with TrainConfig fields ([model], [augment] tables).",
)
@click.option("--epochs", type=int, help="Maximum epochs [30].")
@click.option("--batch-size", type=int, help="Windows per step [64].")
@click.option("--lr", type=float, help="Adam learning rate [1e-3].")
@click.option("--seed", type=int, help="Seed for split, crops, augmentation, init [0].")
@click.option(
    "--split-seed",
    type=int,
    help="Seed of the train/validation/test split alone [--seed]: runs with other seeds "
    "then hold out the same stations (needed to export them as one ensemble).",
)
@click.option(
    "--ema-decay",
    type=float,
    help="Keep an exponential moving average of the weights, e.g. 0.995 [off].",
)
@click.option(
    "--patience",
    type=int,
    help="Early stop after this many epochs without a better validation loss [8].",
)
@click.option("--repeats", type=int, help="Random crops per template per epoch [1].")
@click.option("--balance/--no-balance", default=None, help="Class-weighted loss [on].")
@click.option("--augment/--no-augment", default=None, help="Augmentation [on].")
@click.option(
    "--split-by",
    type=click.Choice(["auto", "station", "window"]),
    help="Hold out whole stations or single windows [auto].",
)
@click.option("--window-samples", type=int, help="Model window in samples [1000].")
@click.option(
    "--bandpass", nargs=2, type=float, help="In-graph FIR band-pass corners in Hz [2 25]."
)
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/last.pt.")
def train_cmd(
    model: str, templates_path: str, out: str, config_file: str | None, resume: bool, **opts
) -> None:
    """Train MODEL (convnetquake or slow-earthquake) on templates; writes RUN_DIR."""
    from .train import TrainConfig, train

    d = _load_config_file(config_file)
    d.setdefault("model", {})["architecture"] = model
    d["templates"], d["out"] = templates_path, out
    cfg = TrainConfig.from_dict(d)
    simple = (
        "epochs",
        "batch_size",
        "lr",
        "seed",
        "split_seed",
        "ema_decay",
        "patience",
        "repeats",
        "balance",
        "split_by",
        "threads",
    )
    for key in simple:
        if opts.get(key) is not None:
            setattr(cfg, key, opts[key])
    if opts.get("augment") is not None:
        cfg.augment.enabled = opts["augment"]
    if opts.get("window_samples"):
        cfg.model.window_samples = opts["window_samples"]
    if opts.get("bandpass"):
        cfg.model.preparation.bandpass_hz = tuple(opts["bandpass"])
    result = train(cfg, resume=resume, progress=sys.stderr.isatty())
    h = result["history"]
    if h:
        best = min(h, key=lambda r: r["val_loss"])
        click.echo(
            f"trained {len(h)} epochs{' (early stop)' if result['stopped_early'] else ''}; best epoch "
            f"{best['epoch']}: val_loss {best['val_loss']:.4f}, val_recall {best['val_recall']:.3f}, "
            f"val_fpr {best['val_fpr']:.3f}"
        )
    click.echo(f"run directory: {out} (best.pt, last.pt, history.json, learning_curve.png)")


@click.command("evaluate")
@click.argument("model", type=str)
@click.option(
    "--templates",
    "templates_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Templates file (default: the run's own).",
)
@click.option(
    "--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True
)
@click.option(
    "--run",
    type=click.Path(exists=True, file_okay=False),
    help="Run directory an ONNX file came from (for its split).",
)
@click.option("--threshold", type=float, help="Event-probability threshold (default: the model's).")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), help="Write the metrics as JSON here."
)
def evaluate_cmd(
    model: str,
    templates_path: str | None,
    split: str,
    run: str | None,
    threshold: float | None,
    json_out: str | None,
) -> None:
    """Precision, recall, F1, accuracy, ROC-AUC, confusion matrix, false-positive rate.

    MODEL is an .onnx file, a shipped model name, a checkpoint (.pt) or a run directory.
    """
    from .evaluate import evaluate, save

    try:
        ev = evaluate(model, templates=templates_path, split=split, threshold=threshold, run=run)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(ev.table())
    if json_out:
        save(ev, json_out)
        click.echo(f"metrics written to {json_out}")


@click.command("export")
@click.argument("checkpoint", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option("--name", help="Model name in the spec [the architecture].")
@click.option(
    "--version", "version", default="1", show_default=True, help="Model version in the spec."
)
@click.option(
    "--threshold",
    type=float,
    help="Trigger-on threshold (default: from validation, see --target-recall).",
)
@click.option(
    "--target-recall",
    type=float,
    default=0.95,
    show_default=True,
    help="Pick the highest threshold that keeps this recall on validation event windows.",
)
@click.option(
    "--target-fpr",
    type=float,
    help="Instead: pick the lowest threshold that keeps the false-positive rate on "
    "validation noise windows at or below this (e.g. 0.005).",
)
@click.option(
    "--merge-gap",
    "merge_gap_s",
    type=float,
    default=5.0,
    show_default=True,
    help="Default trigger merge gap in seconds (in the spec).",
)
@click.option("--description", default="", help="What the model is for.")
@click.option("--trained-on", default="", help="What data it was trained on, in words.")
@click.option(
    "--step",
    "step_s",
    type=float,
    default=1.0,
    show_default=True,
    help="Default window step in seconds.",
)
@click.option(
    "--templates",
    type=click.Path(exists=True, dir_okay=False),
    help="Templates file: for a checkpoint, evaluate on it instead of the run's own; "
    "for an .onnx file, the real windows that check the rebuilt graph (required then).",
)
def export_cmd(checkpoint: tuple[str, ...], out: str, templates: str | None, **opts) -> None:
    """Export CHECKPOINT (best.pt, or a run directory) to a self-contained ONNX model.

    Several CHECKPOINTs (runs trained with the same split_seed, e.g. other seeds) become
    one ensemble graph: the preparation once, each member's network, the mean of their
    probabilities.

    CHECKPOINT may also be an .onnx file exported by an older quakescan: its weights
    and spec are kept and the graph is rebuilt as this version writes it (faster on
    CPU), checked against the old one on the windows of --templates.
    """
    from .export import export

    if any(c.endswith(".onnx") for c in checkpoint):
        if len(checkpoint) > 1:
            raise click.UsageError("rebuild one .onnx file at a time")
        _rebuild(checkpoint[0], out, templates)
        return
    checkpoint = checkpoint[0] if len(checkpoint) == 1 else list(checkpoint)
    opts["templates"] = templates
    try:
        r = export(checkpoint, out, **opts)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    m = r.spec.metrics["test"]
    click.echo(f"wrote {r.path} ({r.path.stat().st_size / 1024:.0f} KiB), onnx.checker passed")
    click.echo(
        f"  parity with PyTorch: max |diff| {r.max_abs_diff:.2e} on {r.n_parity_windows} real windows"
    )
    members = r.spec.training.get("ensemble_members")
    if members:
        click.echo(f"  ensemble of {len(members)} members (seeds {[m['seed'] for m in members]})")
    click.echo(
        f"  trigger on/off: {r.spec.trigger.on:.4f} / {r.spec.trigger.off:.4f} "
        f"({r.spec.metrics['threshold_rule']})"
    )
    click.echo(
        f"  test: recall {m['recall']:.3f}  precision {m['precision']:.3f}  F1 {m['f1']:.3f}  "
        f"FPR {m['false_positive_rate']:.4f}  ROC-AUC {m['roc_auc']:.3f}"
    )


def _rebuild(src: str, out: str, templates_path: str | None) -> None:
    import numpy as np

    from .export import rebuild_onnx
    from .templates import read_templates

    if templates_path is None:
        raise click.UsageError(
            "rebuilding an .onnx file needs --templates (real windows for the check)"
        )
    try:
        t = read_templates(templates_path)
        x = np.asarray(t.windows[:512], dtype=np.float32)
        diff = rebuild_onnx(src, out, x)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out}: {src}'s weights and spec in this version's graph")
    click.echo(f"  old vs new graph: max |diff| {diff:.2e} on {len(x)} real windows")


__all__ = ["templates", "train_cmd", "evaluate_cmd", "export_cmd"]
