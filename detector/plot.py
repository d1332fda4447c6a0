"""Waveforms, event probability and detections in one figure (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from obspy import Stream

from .windows import step_ns


def plot_detections(det, stream: Stream, out: str | Path, max_stations: int = 8) -> Path:
    """One panel pair per station: band-passed waveforms above, event probability below.

    The probability of the window starting at t is drawn at t + the model's
    onset offset, where the onset of a detected event typically lies;
    detections are shaded from start to end and their onset estimate marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import scipy.signal

    segs = det.prepare(stream)
    if not segs:
        raise ValueError("no station has enough data for one window")
    stations = sorted({s.key for s in segs})[:max_stations]
    dets = det.detect(stream)
    spec = det.spec
    fig, axes = plt.subplots(
        2 * len(stations),
        1,
        figsize=(12, 3.2 * len(stations)),
        sharex=False,
        gridspec_kw={"height_ratios": [2, 1] * len(stations)},
        squeeze=False,
    )
    axes = axes[:, 0]
    sos = None
    if spec.preparation.bandpass_hz is not None:
        sos = scipy.signal.butter(
            4, spec.preparation.bandpass_hz, "bandpass", fs=spec.sampling_rate_hz, output="sos"
        )
    for i, key in enumerate(stations):
        ax_w, ax_p = axes[2 * i], axes[2 * i + 1]
        for seg in (s for s in segs if s.key == key):
            t = (seg.start_ns + np.arange(seg.n_samples) * (1e9 / seg.sampling_rate_hz)) / 1e9
            tt = t / 86400.0  # matplotlib date numbers: days since 1970
            for row, comp in enumerate(spec.channel_order):
                if comp not in seg.components:
                    continue
                x = seg.data[row].astype(np.float64)
                x = scipy.signal.sosfiltfilt(sos, x - x.mean()) if sos is not None else x - x.mean()
                peak = np.abs(x).max() or 1.0
                ax_w.plot(tt, x / peak + 2 * row, lw=0.5, color="k")
            sp = det.segment_probabilities(seg)
            if len(sp.k):
                tp = (sp.k * step_ns(det.step_s)) / 1e9 + spec.onset_offset_s
                ax_p.plot(tp / 86400.0, 1 - sp.probs[:, 0], color="tab:blue", lw=1)
        ax_w.set_yticks([2 * r for r in range(len(spec.channel_order))], list(spec.channel_order))
        ax_w.set_title(f"{key[0]}.{key[1]}", loc="left", fontsize=10)
        ax_p.axhline(det.trigger_params.on, color="tab:red", ls="--", lw=0.8, label="on")
        ax_p.axhline(det.trigger_params.off, color="tab:orange", ls=":", lw=0.8, label="off")
        ax_p.set_ylim(-0.05, 1.05)
        ax_p.set_ylabel("P(event)")
        for d in dets:
            if (d.station, d.channel_prefix) != key:
                continue
            for ax in (ax_w, ax_p):
                ax.axvspan(
                    d.start.timestamp / 86400.0,
                    d.end.timestamp / 86400.0,
                    color="tab:green",
                    alpha=0.15,
                )
                ax.axvline(d.peak_time.timestamp / 86400.0, color="tab:green", lw=1)
        for ax in (ax_w, ax_p):
            ax.xaxis_date()
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax_p.legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("time (UTC)")
    fig.suptitle(f"{spec.name} v{spec.version}: {len(dets)} detections (green)", fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
