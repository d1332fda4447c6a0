"""STA/LTA in the same pipeline: ObsPy's C recursive STA/LTA and its trigger.

Runs on the prepared vertical channel, band-passed (causal Butterworth, so a
piece can be continued), and gives the same ``Detection`` records as the CNN,
so operators can compare the two and fall back. For STA/LTA,
``peak_probability`` holds the peak STA/LTA ratio, not a probability, and
``peak_time`` is the trigger-on time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import obspy
import scipy.signal
from obspy import UTCDateTime
from obspy.signal.trigger import recursive_sta_lta, trigger_onset

from .catalog import Detection
from .prepare import Segment


@dataclass
class StaLtaParams:
    sta_s: float = 0.5
    lta_s: float = 10.0
    on: float = 4.0
    off: float = 1.5
    bandpass_hz: tuple[float, float] | None = (2.0, 25.0)
    filter_order: int = 4
    label: str = "earthquake"

    def __post_init__(self) -> None:
        if not 0 < self.sta_s < self.lta_s:
            raise ValueError(
                f"STA ({self.sta_s} s) must be shorter than LTA ({self.lta_s} s), both > 0"
            )
        if not 0 < self.off <= self.on:
            raise ValueError(f"STA/LTA off ({self.off}) must lie in (0, on={self.on}]")

    @property
    def version(self) -> str:
        band = (
            "raw"
            if self.bandpass_hz is None
            else f"{self.bandpass_hz[0]:g}-{self.bandpass_hz[1]:g}Hz"
        )
        return f"obspy{obspy.__version__}-sta{self.sta_s:g}-lta{self.lta_s:g}-on{self.on:g}-off{self.off:g}-{band}"

    def min_samples(self, rate_hz: float) -> int:
        return int(np.ceil(self.lta_s * rate_hz)) + 1

    def warmup_samples(self, rate_hz: float) -> int:
        """Data kept before new data so the filter and the LTA have settled (3 x LTA)."""
        return int(np.ceil(3 * self.lta_s * rate_hz))


class StaLtaStation:
    """Incremental STA/LTA for one station: ``feed(segment)`` -> final detections."""

    def __init__(
        self,
        station: str,
        channel_prefix: str,
        params: StaLtaParams,
        rate_hz: float,
        channel_order: str,
    ) -> None:
        self.station, self.channel_prefix, self.p, self.rate = (
            station,
            channel_prefix,
            params,
            rate_hz,
        )
        self.row = channel_order.index("Z") if "Z" in channel_order else 0
        self.sos = (
            None
            if params.bandpass_hz is None
            else scipy.signal.butter(
                params.filter_order, params.bandpass_hz, "bandpass", fs=rate_hz, output="sos"
            )
        )
        self.carry: tuple[int, np.ndarray] | None = None  # (start_ns, raw vertical samples)
        self.done_ns: int | None = None  # triggers with an onset before this are already out

    def _time_ns(self, start_ns: int, i: int) -> int:
        return start_ns + round(i * 1e9 / self.rate)

    def _cft(self, x: np.ndarray) -> np.ndarray | None:
        nsta, nlta = round(self.p.sta_s * self.rate), round(self.p.lta_s * self.rate)
        if len(x) <= nlta:
            return None
        y = x - x[:nlta].mean()
        if self.sos is not None:
            y = scipy.signal.sosfilt(self.sos, y)
        cft = recursive_sta_lta(y, nsta, nlta)
        cft[:nlta] = 0.0  # no trigger before the LTA has filled (ObsPy does this too)
        return cft

    def _detection(self, start_ns: int, cft: np.ndarray, a: int, b: int) -> Detection:
        t_on = self._time_ns(start_ns, a)
        return Detection(
            station=self.station,
            channel_prefix=self.channel_prefix,
            start=UTCDateTime(ns=t_on),
            end=UTCDateTime(ns=self._time_ns(start_ns, min(b, len(cft) - 1))),
            peak_time=UTCDateTime(ns=t_on),
            peak_probability=round(float(cft[a : b + 1].max()), 4),
            label=self.p.label,
            model="stalta",
            model_version=self.p.version,
        )

    def _run(self, start_ns: int, x: np.ndarray, final: bool) -> list[Detection]:
        """Triggers over buffered data x; unless final, one still on at the end waits."""
        out: list[Detection] = []
        cft = self._cft(x)
        if cft is None:
            self.carry = None if final else (start_ns, x)
            return out
        dt_ns = 1e9 / self.rate
        open_from = None
        for a, b in trigger_onset(cft, self.p.on, self.p.off):
            a, b = int(a), int(b)
            if self.done_ns is not None and self._time_ns(start_ns, a) < self.done_ns - dt_ns / 2:
                continue  # already reported from the previous piece
            if not final and b >= len(cft) - 1:
                open_from = a
                break
            out.append(self._detection(start_ns, cft, a, b))
        if final:
            self.carry = None
            return out
        warm = self.p.warmup_samples(self.rate)
        keep_from = max(0, len(x) - warm)
        if open_from is not None:
            keep_from = max(0, min(keep_from, open_from - warm))
            self.done_ns = self._time_ns(start_ns, open_from)
        else:
            self.done_ns = self._time_ns(start_ns, len(x))
        self.carry = (self._time_ns(start_ns, keep_from), x[keep_from:].copy())
        return out

    def feed(self, seg: Segment) -> list[Detection]:
        """Detections that are final after this segment (contiguous with the last one or not)."""
        x = seg.data[self.row].astype(np.float64)
        start_ns = seg.start_ns
        if self.carry is not None:
            c_start, c_x = self.carry
            dt_ns = 1e9 / self.rate
            if abs(c_start + round(len(c_x) * dt_ns) - start_ns) <= dt_ns / 2:
                x = np.concatenate([c_x, x])
                start_ns = c_start
            else:
                out = self._run(c_start, c_x, final=True)  # a gap: close what was open
                self.done_ns = None
                return out + self._run(start_ns, x, final=False)
        return self._run(start_ns, x, final=False)

    def flush(self) -> list[Detection]:
        """At the end of the data, a trigger still on ends at the last sample."""
        if self.carry is None:
            return []
        start_ns, x = self.carry
        return self._run(start_ns, x, final=True)
