"""Cut windows of one class (``WindowSet``), a cut's result and the build report with its counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class BuildReport:
    """What a build wrote and skipped (every skip is counted under its reason)."""

    path: Path | None = None
    catalog_onsets: int = 0
    records_read: int = 0
    records_skipped: dict[str, int] = field(default_factory=dict)  # e.g. unreadable files
    events_written: int = 0
    events_skipped: dict[str, int] = field(default_factory=dict)
    noise_written: int = 0
    noise_skipped: dict[str, int] = field(default_factory=dict)
    clusters: int | None = None
    size_bytes: int = 0

    def table(self) -> str:
        """A short plain-text summary: written, then skipped by reason."""
        rows = [
            ("catalog onsets", self.catalog_onsets),
            ("records read", self.records_read),
            *((f"records skipped: {k}", v) for k, v in sorted(self.records_skipped.items())),
            ("event windows written", self.events_written),
            *((f"events skipped: {k}", v) for k, v in sorted(self.events_skipped.items())),
            ("noise windows written", self.noise_written),
            *((f"noise skipped: {k}", v) for k, v in sorted(self.noise_skipped.items())),
        ]
        if self.clusters is not None:
            rows.append(("location clusters", self.clusters))
        if self.path is not None:
            rows.append((f"written to {self.path}", f"{self.size_bytes / 1e6:.2f} MB"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def merge(self, other: BuildReport) -> None:
        """Add another build's counts to this one (used to concatenate sets)."""
        self.catalog_onsets += other.catalog_onsets
        self.records_read += other.records_read
        self.events_written += other.events_written
        self.noise_written += other.noise_written
        for mine, theirs in (
            (self.records_skipped, other.records_skipped),
            (self.events_skipped, other.events_skipped),
            (self.noise_skipped, other.noise_skipped),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v


@dataclass
class WindowSet:
    """Windows of one class: windows float32[n, channels, samples], p_sample int64[n] (-1 noise),
    source and station str[n], coords float64[n, 3] (event lat, lon, depth km; NaN if unknown)."""

    windows: np.ndarray
    p_sample: np.ndarray
    source: list[str]
    station: list[str]
    coords: np.ndarray

    @classmethod
    def empty(cls, channels: int, samples: int) -> WindowSet:
        return cls(
            np.zeros((0, channels, samples), np.float32),
            np.zeros(0, np.int64),
            [],
            [],
            np.zeros((0, 3)),
        )

    def __len__(self) -> int:
        return len(self.p_sample)

    def to_class(self) -> dict[str, np.ndarray | list[str]]:
        return {
            "windows": self.windows,
            "p_sample": self.p_sample,
            "source": self.source,
            "station": self.station,
        }

    @staticmethod
    def concat(sets: Sequence[WindowSet]) -> WindowSet:
        return WindowSet(
            np.concatenate([s.windows for s in sets]),
            np.concatenate([s.p_sample for s in sets]),
            [x for s in sets for x in s.source],
            [x for s in sets for x in s.station],
            np.concatenate([s.coords for s in sets]),
        )


@dataclass
class CutResult:
    """Event and noise windows cut from the data, before clustering and writing."""

    events: WindowSet
    noise: WindowSet
    report: BuildReport
    sampling_rate_hz: float
    component_order: str


class WindowAccumulator:
    """Growing lists of windows for one class."""

    def __init__(self) -> None:
        self.w: list[np.ndarray] = []
        self.p: list[int] = []
        self.src: list[str] = []
        self.sta: list[str] = []
        self.coords: list[tuple[float, float, float]] = []

    def add(self, w: np.ndarray, p: int, src: str, sta: str, coords=None) -> None:
        self.w.append(w)
        self.p.append(p)
        self.src.append(src)
        self.sta.append(sta)
        self.coords.append(coords if coords is not None else (np.nan, np.nan, np.nan))

    def done(self, channels: int, samples: int) -> WindowSet:
        if not self.w:
            return WindowSet.empty(channels, samples)
        return WindowSet(
            np.stack(self.w).astype(np.float32),
            np.asarray(self.p, np.int64),
            self.src,
            self.sta,
            np.asarray(self.coords, np.float64).reshape(-1, 3),
        )
