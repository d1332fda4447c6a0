"""Augmentation for small real template sets, on numpy batches of raw windows.

Everything here acts before the in-graph window preparation, so a mixed or
shifted window goes through exactly the detrend / band-pass / normalisation the
detector applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GLITCH_KINDS = ("spike", "step", "pulse", "burst")


@dataclass
class AugmentConfig:
    enabled: bool = True
    # Where the event onset may fall inside a training window (context templates).
    onset_range_s: tuple[float, float] = (0.3, 6.0)
    # Templates exactly one window long: shift by up to this much, padding with the edge value.
    max_shift_s: float = 1.0
    # Log-uniform amplitude scaling (matters for mixing; peak normalisation removes it otherwise).
    scale_range: tuple[float, float] = (0.1, 10.0)
    polarity_flip_p: float = 0.5
    # Event windows added to real noise windows at a random signal-to-noise ratio.
    mix_p: float = 0.3
    mix_snr_db: tuple[float, float] = (0.0, 20.0)
    # Zero the horizontals (a vertical-only station), in both classes alike, so a
    # model cannot use channel presence as a label.
    vertical_only_p: float = 0.2
    # Then make vertical-only windows equally common in every class of the
    # batch (noise from vertical-only stations would otherwise teach "no
    # horizontals means noise").
    balance_vertical_only: bool = True
    # Zero one random channel, in both classes alike.
    drop_channel_p: float = 0.1
    # Replace the horizontals of a window by those of a real noise window (a
    # station with dead or noisy horizontals, as some real stations have).
    noisy_horizontals_p: float = 0.1
    # Swap the two horizontals (a station rotated by 90 degrees, or mislabelled
    # E/N), in both classes alike.
    swap_horizontals_p: float = 0.25
    # Add a glitch to noise windows (see glitch_classes): a one-sample spike, a step,
    # a one-sided decaying pulse (tau up to glitch_tau_s), or "burst": one to four
    # short 2-15 Hz wavelets (machinery, footsteps, traffic); on one channel or all,
    # glitch_amp times the window's high-passed RMS. Real stations have them
    # (telemetry spikes, mass re-centring, cal pulses, cultural noise); without
    # examples a model takes any sharp transient for an onset.
    glitch_p: float = 0.0
    glitch_amp: tuple[float, float] = (5.0, 300.0)
    glitch_tau_s: float = 1.0
    glitch_kinds: tuple[str, ...] = ("spike", "step", "pulse")
    # "noise": glitches only in noise windows (teaches "a glitch alone is not an event",
    # but also "a glitch means noise"); "all": in both classes alike (teaches that
    # glitches do not matter, without a shortcut).
    glitch_classes: str = "noise"
    # Replace one or two live channels (never all) by white noise, in both classes alike:
    # a dead sensor whose digitiser still records its own electronic noise. Zeroed channels
    # (drop_channel_p) are recognised as dead by the window preparation; these are not, so
    # without examples a model may miss an event seen on one channel only.
    dead_channel_p: float = 0.0

    def __post_init__(self) -> None:
        self.onset_range_s = tuple(float(x) for x in self.onset_range_s)
        self.glitch_amp = tuple(float(x) for x in self.glitch_amp)
        self.glitch_kinds = tuple(self.glitch_kinds)
        if self.glitch_classes not in ("noise", "all"):
            raise ValueError(f"glitch_classes {self.glitch_classes!r}: 'noise' or 'all'")
        unknown = set(self.glitch_kinds) - set(GLITCH_KINDS)
        if unknown or not self.glitch_kinds:
            raise ValueError(
                f"glitch_kinds {list(self.glitch_kinds)}: choose from {', '.join(GLITCH_KINDS)}"
            )
        self.scale_range = tuple(float(x) for x in self.scale_range)
        self.mix_snr_db = tuple(float(x) for x in self.mix_snr_db)


def _hp_rms(x: np.ndarray) -> np.ndarray:
    """RMS of the first difference per window: a cheap high-passed amplitude, float64[n]."""
    d = np.diff(x.astype(np.float64), axis=-1)
    return np.sqrt((d**2).mean(axis=(-2, -1))) + 1e-12


def shift_with_edges(x: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift each window [n, c, s] by shifts[n] samples (positive = later), padding with edge values."""
    out = np.empty_like(x)
    s = x.shape[-1]
    for i, k in enumerate(shifts):
        k = int(k)
        if k > 0:
            out[i, :, k:] = x[i, :, : s - k]
            out[i, :, :k] = x[i, :, :1]
        elif k < 0:
            out[i, :, :k] = x[i, :, -k:]
            out[i, :, k:] = x[i, :, -1:]
        else:
            out[i] = x[i]
    return out


def augment_batch(
    x: np.ndarray,
    y: np.ndarray,
    noise_pool: np.ndarray,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    *,
    sampling_rate_hz: float,
    vertical_index: int,
    shift: bool,
) -> np.ndarray:
    """Augment raw windows x: float32[n, c, s] with labels y: int[n]; returns a new array.

    noise_pool: float32[m, c, s] real noise windows to mix events into.
    """
    if not cfg.enabled:
        return x
    x = x.astype(np.float32, copy=True)
    n, c, _ = x.shape
    if shift and cfg.max_shift_s > 0:
        k = round(cfg.max_shift_s * sampling_rate_hz)
        x = shift_with_edges(x, rng.integers(-k, k + 1, size=n))
    ev = np.flatnonzero(y > 0)
    if len(noise_pool) and len(ev) and cfg.mix_p > 0:
        mix = ev[rng.random(len(ev)) < cfg.mix_p]
        if len(mix):
            noise = noise_pool[rng.integers(0, len(noise_pool), size=len(mix))].astype(np.float32)
            snr_db = rng.uniform(*cfg.mix_snr_db, size=len(mix))
            gain = 10 ** (snr_db / 20) * _hp_rms(noise) / _hp_rms(x[mix])
            x[mix] = noise + (x[mix] * gain[:, None, None]).astype(np.float32)
    if cfg.glitch_p > 0:
        pick = rng.random(n) < cfg.glitch_p
        if cfg.glitch_classes == "noise":
            pick &= y == 0
        add_glitches(x, np.flatnonzero(pick), cfg, rng, sampling_rate_hz)
    swap = rng.random(n) < cfg.noisy_horizontals_p
    if len(noise_pool) and swap.any() and c > 1:
        horiz = [i for i in range(c) if i != vertical_index]
        src = noise_pool[rng.integers(0, len(noise_pool), size=int(swap.sum()))]
        x[np.ix_(swap, horiz)] = src[:, horiz].astype(np.float32)
    if c == 3 and cfg.swap_horizontals_p > 0:
        h = [i for i in range(c) if i != vertical_index]
        sw = np.flatnonzero(rng.random(n) < cfg.swap_horizontals_p)
        x[np.ix_(sw, h)] = x[np.ix_(sw, h[::-1])]
    lo, hi = np.log10(cfg.scale_range)
    x *= (10 ** rng.uniform(lo, hi, size=n)).astype(np.float32)[:, None, None]
    flip = rng.random(n) < cfg.polarity_flip_p
    x[flip] *= -1
    vert = rng.random(n) < cfg.vertical_only_p
    if vert.any() and c > 1:
        horiz = [i for i in range(c) if i != vertical_index]
        x[np.ix_(vert, horiz)] = 0.0
    if cfg.balance_vertical_only and c > 1:
        balance_vertical_only(x, y, vertical_index, rng)
    live = np.abs(x).max(axis=-1) > 0  # [n, c]
    for i in np.flatnonzero(~vert & (rng.random(n) < cfg.drop_channel_p)):
        alive = np.flatnonzero(live[i])
        if len(alive) > 1:  # never leave a window with no live channel
            x[i, rng.choice(alive)] = 0.0
    if cfg.dead_channel_p > 0 and c > 1:
        dead_channels(x, np.flatnonzero(rng.random(n) < cfg.dead_channel_p), rng)
    return x


def dead_channels(x: np.ndarray, idx: np.ndarray, rng: np.random.Generator) -> None:
    """Replace one or two live channels of each window x[i], i in idx, by white noise, in
    place; at least one live channel keeps its data, so an event stays an event."""
    for i in idx:
        live = np.flatnonzero(np.abs(x[i]).max(axis=-1) > 0)
        if len(live) < 2:
            continue
        k = int(rng.integers(1, len(live)))
        for ch in rng.choice(live, size=k, replace=False):
            level = float(np.std(x[i, ch])) or 1.0
            x[i, ch] = rng.normal(0.0, level, size=x.shape[2]).astype(np.float32)


def balance_vertical_only(
    x: np.ndarray, y: np.ndarray, vertical_index: int, rng: np.random.Generator
) -> None:
    """Zero the horizontals of more windows, in place, until every class has the same
    share of vertical-only windows (the largest share found in the batch)."""
    horiz = [i for i in range(x.shape[1]) if i != vertical_index]
    vo = ~(np.abs(x[:, horiz]).max(axis=-1) > 0).any(axis=1)
    classes = np.unique(y)
    if len(classes) < 2:
        return
    target = max(vo[y == k].mean() for k in classes)
    for k in classes:
        idx = np.flatnonzero((y == k) & ~vo)
        need = int(round(target * (y == k).sum())) - int((vo & (y == k)).sum())
        if need > 0 and len(idx):
            pick = rng.choice(idx, size=min(need, len(idx)), replace=False)
            x[np.ix_(pick, horiz)] = 0.0


def add_glitches(
    x: np.ndarray,
    idx: np.ndarray,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    sampling_rate_hz: float,
) -> None:
    """Add one instrument glitch to each window x[i] for i in idx, in place (see AugmentConfig)."""
    if len(idx) == 0:
        return
    s = x.shape[2]
    t = np.arange(s)
    amp = np.exp(rng.uniform(*np.log(cfg.glitch_amp), size=len(idx))) * _hp_rms(x[idx])
    for i, a in zip(idx, amp, strict=True):
        live = np.flatnonzero(np.abs(x[i]).max(axis=-1) > 0)
        if len(live) == 0:
            continue
        chans = live if rng.random() < 0.5 else [live[rng.integers(len(live))]]
        t0 = int(rng.integers(0, s))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        kind = cfg.glitch_kinds[rng.integers(len(cfg.glitch_kinds))]
        if kind == "spike":  # telemetry spike
            shape = (t == t0).astype(np.float64)
        elif kind == "step":  # offset jump
            shape = (t >= t0).astype(np.float64)
        elif kind == "burst":  # short oscillatory bursts (machinery, footsteps, traffic)
            shape = np.zeros(s)
            for t1 in [t0, *rng.integers(0, s, size=int(rng.integers(0, 4)))]:
                f = rng.uniform(2.0, 15.0) / sampling_rate_hz
                w = rng.uniform(0.05, 0.4) * sampling_rate_hz
                shape += (
                    rng.uniform(0.3, 1.0)
                    * np.exp(-(((t - t1) / w) ** 2))
                    * np.cos(2 * np.pi * f * (t - t1) + rng.uniform(0, 2 * np.pi))
                )
        else:  # one-sided decaying pulse
            tau = rng.uniform(0.02, cfg.glitch_tau_s) * sampling_rate_hz
            shape = np.where(t >= t0, np.exp(-(t - t0) / tau), 0.0)
        for ch in chans:
            x[i, ch] += (sign * a * shape).astype(np.float32)
