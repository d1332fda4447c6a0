"""Detections and catalogs: the Detection record and its QuakeML / CSV / JSON-lines I/O."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from obspy import UTCDateTime


def detection_id(station: str, channel_prefix: str, start: UTCDateTime, model: str, model_version: str) -> str:
    """Stable id from station + start + model: the same detection always gets the same id.

    ``start`` is rounded to the millisecond so that float noise cannot change it.
    """
    key = f"{station}|{channel_prefix}|{UTCDateTime(start).ns // 1_000_000}|{model}|{model_version}"
    return hashlib.sha1(key.encode()).hexdigest()[:20]


@dataclass
class Detection:
    """One detection at one station.

    station: NET.STA.LOC; channel_prefix: band + instrument code (``HH``);
    start / end: the first triggered window's start and the last triggered
    window's end; peak_time: estimated onset of the event (the peak window's
    start plus the model's onset offset); peak_probability: highest event
    probability; label: the event class with the highest probability.
    """

    station: str
    channel_prefix: str
    start: UTCDateTime
    end: UTCDateTime
    peak_time: UTCDateTime
    peak_probability: float
    label: str
    model: str
    model_version: str
    id: str = field(default="")

    def __post_init__(self) -> None:
        self.start = UTCDateTime(self.start)
        self.end = UTCDateTime(self.end)
        self.peak_time = UTCDateTime(self.peak_time)
        self.peak_probability = float(self.peak_probability)
        if not self.id:
            self.id = detection_id(self.station, self.channel_prefix, self.start, self.model, self.model_version)

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    @property
    def seed_id(self) -> str:
        """NET.STA.LOC.CH? (channel prefix plus a wildcard component)."""
        return f"{self.station}.{self.channel_prefix}?"
