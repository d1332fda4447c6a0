"""Trigger: per-window class probabilities of one station, in time order -> detections.

A trigger switches on at the first window whose event probability (1 - p(noise))
reaches ``on`` and stays on while it is at least ``off``; a missing window (a
gap in the data) switches it off. Triggers closer than ``merge_gap_s`` (from the
last window of one to the first of the next) are merged; triggers shorter than
``min_duration_s`` (first to last window start, plus one step) are dropped.

``StationTrigger`` keeps its state between calls, so feeding a station's
probabilities in pieces (day by day, or chunk by chunk in the sink) gives the
same detections as one pass; ``trigger_onoff`` is the array form of the same logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from obspy import UTCDateTime

from .catalog import Detection

if TYPE_CHECKING:
    from .spec import ModelSpec


@dataclass(frozen=True)
class TriggerParams:
    """Trigger settings on the event probability (1 - p(noise)).

    The one class for them: a model's spec carries the builder's recommendation,
    and ``from_spec`` applies a user's overrides to it by one rule everywhere
    (``detect``, batch jobs, the live sink).
    """

    on: float = 0.9
    off: float = 0.5
    min_duration_s: float = 0.0
    merge_gap_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.on <= 1.0:
            raise ValueError(f"trigger on-threshold ({self.on}) must lie in (0, 1]")
        if not 0.0 <= self.off <= self.on:
            raise ValueError(f"trigger off-threshold ({self.off}) must lie in [0, on={self.on}]")
        if self.min_duration_s < 0 or self.merge_gap_s < 0:
            raise ValueError(
                f"trigger min_duration_s ({self.min_duration_s}) and merge_gap_s "
                f"({self.merge_gap_s}) must be >= 0"
            )

    def with_overrides(
        self,
        *,
        on: float | None = None,
        off: float | None = None,
        min_duration_s: float | None = None,
        merge_gap_s: float | None = None,
    ) -> TriggerParams:
        """These settings with the given ones replaced (None keeps a setting).

        An on-threshold given without an off-threshold keeps this off-threshold
        unless it would exceed the new on-threshold, in which case off = on.
        """
        on_ = self.on if on is None else float(on)
        return TriggerParams(
            on=on_,
            off=float(off) if off is not None else min(self.off, on_),
            min_duration_s=self.min_duration_s if min_duration_s is None else min_duration_s,
            merge_gap_s=self.merge_gap_s if merge_gap_s is None else merge_gap_s,
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "on": self.on,
            "off": self.off,
            "min_duration_s": self.min_duration_s,
            "merge_gap_s": self.merge_gap_s,
        }


@dataclass(frozen=True)
class TriggerFactory:
    """Everything a station's trigger needs besides its probabilities: one per run.

    ``from_spec(spec, ...overrides)`` is the only place where a model's spec and a
    user's settings become trigger settings; ``new(station, prefix)`` makes a trigger.
    """

    params: TriggerParams
    step_s: float
    window_s: float
    onset_offset_s: float
    class_names: tuple[str, ...]
    model: str
    model_version: str

    @classmethod
    def from_spec(
        cls,
        spec: ModelSpec,
        *,
        step_s: float | None = None,
        threshold: float | None = None,
        off_threshold: float | None = None,
        min_duration_s: float | None = None,
        merge_gap_s: float | None = None,
        model: str | None = None,
        model_version: str | None = None,
    ) -> TriggerFactory:
        """The spec's trigger settings and step with the given overrides (None: the spec's)."""
        params = spec.trigger.with_overrides(
            on=threshold, off=off_threshold, min_duration_s=min_duration_s, merge_gap_s=merge_gap_s
        )
        step = float(step_s) if step_s is not None else float(spec.step_s)
        if step <= 0:
            raise ValueError(f"step_s ({step}) must be > 0")
        return cls(
            params=params,
            step_s=step,
            window_s=spec.window_s,
            onset_offset_s=spec.onset_offset_s,
            class_names=tuple(spec.class_names),
            model=spec.name if model is None else model,
            model_version=spec.version if model_version is None else model_version,
        )

    def new(self, station: str, channel_prefix: str) -> StationTrigger:
        return StationTrigger(
            station,
            channel_prefix,
            params=self.params,
            step_s=self.step_s,
            window_s=self.window_s,
            onset_offset_s=self.onset_offset_s,
            class_names=self.class_names,
            model=self.model,
            model_version=self.model_version,
        )


# Windows within this much of the peak probability form the peak "plateau"; its middle
# window dates the event (a first maximum would be early on saturated plateaus).
PLATEAU_DELTA = 0.02


@dataclass
class _Open:
    k_first: int
    k_last: int
    k_peak: int
    p_peak: float
    class_p: np.ndarray  # class probabilities at the peak window
    ks: list = None  # grid index and event probability of every window of the trigger
    ss: list = None

    def add(self, kk: np.ndarray, ss: np.ndarray) -> None:
        self.ks = (self.ks or []) + [int(x) for x in kk]
        self.ss = (self.ss or []) + [float(x) for x in ss]

    def k_centre(self) -> int:
        """The middle window of the peak plateau."""
        if not self.ks:
            return self.k_peak
        ss = np.asarray(self.ss)
        plateau = np.flatnonzero(ss >= ss.max() - PLATEAU_DELTA)
        return int(self.ks[int(plateau[len(plateau) // 2])])


def trigger_onoff(score: np.ndarray, on: float, off: float) -> list[tuple[int, int]]:
    """(first, last) window indices of each trigger over one contiguous score array.

    score: float[n] event probability. NaN counts as a missing window.
    """
    out: list[tuple[int, int]] = []
    s = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-1.0)
    i, n = 0, len(s)
    while i < n:
        above = np.flatnonzero(s[i:] >= on)
        if not len(above):
            break
        a = i + int(above[0])
        below = np.flatnonzero(s[a:] < off)
        b = a + int(below[0]) - 1 if len(below) else n - 1
        out.append((a, b))
        i = b + 1
    return out


class StationTrigger:
    """Incremental trigger for one station (and channel prefix).

    ``feed(k, probs)`` with grid indices k (int64[n], increasing) and class
    probabilities float[n, K] returns the detections that are final; ``flush()``
    returns the rest at the end of the data.
    """

    def __init__(
        self,
        station: str,
        channel_prefix: str,
        *,
        params: TriggerParams,
        step_s: float,
        window_s: float,
        onset_offset_s: float,
        class_names: tuple[str, ...],
        model: str,
        model_version: str,
    ) -> None:
        self.station = station
        self.channel_prefix = channel_prefix
        self.p = params
        self.step_s = step_s
        self.window_s = window_s
        self.onset_offset_s = onset_offset_s
        self.class_names = tuple(class_names)
        self.model = model
        self.model_version = model_version
        self._open: _Open | None = None  # trigger still on
        self._pending: _Open | None = None  # closed, may still merge with the next
        self._last_k: int | None = None
        self._merge_k = int(np.floor(params.merge_gap_s / step_s + 1e-9))

    @property
    def last_k(self) -> int | None:
        """The last grid index fed so far."""
        return self._last_k

    def _close(self, tr: _Open, out: list[Detection]) -> None:
        pend = self._pending
        if pend is not None and tr.k_first - pend.k_last <= self._merge_k:
            if tr.p_peak > pend.p_peak:
                pend.k_peak, pend.p_peak, pend.class_p = tr.k_peak, tr.p_peak, tr.class_p
            pend.k_last = tr.k_last
            pend.add(tr.ks or [], tr.ss or [])
            return
        if pend is not None:
            self._emit(pend, out)
        self._pending = tr

    def _emit(self, tr: _Open, out: list[Detection]) -> None:
        duration = (tr.k_last - tr.k_first + 1) * self.step_s
        if duration + 1e-9 < self.p.min_duration_s:
            return
        ev = tr.class_p[1:]
        label = self.class_names[1 + int(np.argmax(ev))]
        start = UTCDateTime(ns=tr.k_first * round(self.step_s * 1e9))
        out.append(
            Detection(
                station=self.station,
                channel_prefix=self.channel_prefix,
                start=start,
                end=UTCDateTime(ns=tr.k_last * round(self.step_s * 1e9)) + self.window_s,
                peak_time=UTCDateTime(ns=tr.k_centre() * round(self.step_s * 1e9))
                + self.onset_offset_s,
                peak_probability=round(float(tr.p_peak), 6),
                label=label,
                model=self.model,
                model_version=self.model_version,
            )
        )

    def _release_pending(self, k_now: int, out: list[Detection]) -> None:
        """A pending trigger is final once no window within the merge gap can still come."""
        if (
            self._pending is not None
            and self._open is None
            and k_now - self._pending.k_last > self._merge_k
        ):
            self._emit(self._pending, out)
            self._pending = None

    def feed(self, k: np.ndarray, probs: np.ndarray) -> list[Detection]:
        out: list[Detection] = []
        k = np.asarray(k, dtype=np.int64)
        if len(k) == 0:
            return out
        if self._last_k is not None and k[0] <= self._last_k:
            raise ValueError(
                f"{self.station}: windows must arrive in time order (got k={int(k[0])} after {self._last_k})"
            )
        if len(k) > 1 and (np.diff(k) <= 0).any():
            raise ValueError(f"{self.station}: window indices are not strictly increasing")
        score = 1.0 - np.asarray(probs[:, 0], dtype=np.float64)
        # Split where windows are missing: a gap switches the trigger off.
        breaks = np.flatnonzero(np.diff(k) > 1) + 1
        prev = self._last_k
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(k)], strict=True):
            kk, ss, pp = k[lo:hi], score[lo:hi], probs[lo:hi]
            if prev is not None and kk[0] != prev + 1 and self._open is not None:
                self._close(self._open, out)
                self._open = None
            i = 0
            if self._open is not None:  # continue the open trigger
                below = np.flatnonzero(ss < self.p.off)
                end = int(below[0]) if len(below) else len(ss)
                if end > 0:
                    j = int(np.argmax(ss[:end]))
                    if ss[j] > self._open.p_peak:
                        self._open.k_peak, self._open.p_peak, self._open.class_p = (
                            int(kk[j]),
                            float(ss[j]),
                            pp[j].copy(),
                        )
                    self._open.k_last = int(kk[end - 1])
                    self._open.add(kk[:end], ss[:end])
                if end < len(ss):
                    self._close(self._open, out)
                    self._open = None
                i = end
            for a, b in trigger_onoff(ss[i:], self.p.on, self.p.off):
                a, b = a + i, b + i
                j = a + int(np.argmax(ss[a : b + 1]))
                tr = _Open(int(kk[a]), int(kk[b]), int(kk[j]), float(ss[j]), pp[j].copy())
                tr.add(kk[a : b + 1], ss[a : b + 1])
                if b == len(ss) - 1:
                    self._open = tr  # may continue in the next piece
                else:
                    self._release_pending(int(kk[a]), out)
                    self._close(tr, out)
            prev = int(kk[-1])
            self._release_pending(prev, out)
        self._last_k = prev
        return out

    def to_state(self) -> dict:
        """What the trigger remembers, as JSON-safe data (the sink persists it)."""

        def enc(t: _Open | None):
            if t is None:
                return None
            return [
                t.k_first,
                t.k_last,
                t.k_peak,
                t.p_peak,
                [float(x) for x in t.class_p],
                list(t.ks or []),
                list(t.ss or []),
            ]

        return {"open": enc(self._open), "pending": enc(self._pending), "last_k": self._last_k}

    def restore(self, state: dict) -> None:
        """Continue from ``to_state()`` output."""

        def dec(v):
            if v is None:
                return None
            t = _Open(
                int(v[0]), int(v[1]), int(v[2]), float(v[3]), np.asarray(v[4], dtype=np.float32)
            )
            if len(v) > 5:
                t.add(v[5], v[6])
            return t

        self._open, self._pending = dec(state.get("open")), dec(state.get("pending"))
        self._last_k = state.get("last_k")

    def flush(self) -> list[Detection]:
        out: list[Detection] = []
        if self._open is not None:
            self._close(self._open, out)
            self._open = None
        if self._pending is not None:
            self._emit(self._pending, out)
            self._pending = None
        return out
