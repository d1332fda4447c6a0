"""A catalog run: stations grouped, each detected in time order, counted, then associated.

What ``quakescan detect`` does, as library functions that the CLI and the
batch jobs share: ``run_files`` (waveform files, each station in one pass),
``run_sds`` (an SDS archive, station by station and day by day in bounded
memory), ``CatalogRun.associate`` (network coincidence) and
``CatalogRun.write`` (the catalog file in the format asked for).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from obspy import Stream, UTCDateTime
from tqdm import tqdm

from .associate import NetworkEvent, associate, write_network_quakeml
from .catalog import Detection, catalog_format, write_catalog
from .core import Detector
from .prepare import PrepReport, expand_paths, group_by_station, read_waveforms
from .sources import StationSelector, day_starts, iter_sds

UNREADABLE = "(unreadable files)"
COUNTS = ("windows", "detections", "gaps", "skipped")


@dataclass
class CatalogRun:
    """Detections of a run with what each station contributed.

    ``per_station[name]`` counts windows, detections, gaps and skipped pieces;
    ``events`` is set by ``associate`` (None: station detections only).
    """

    detections: list[Detection] = field(default_factory=list)
    per_station: dict[str, Counter] = field(default_factory=dict)
    seconds: float = 0.0
    events: list[NetworkEvent] | None = None
    min_stations: int = 1

    def add_station(self, det: Detector, name: str, dets: Iterable[Detection]) -> None:
        """Run ``dets`` (a lazy detect_iter) for one station and count what it did."""
        report = det.stats.report
        w0, g0, s0 = det.stats.windows, len(report.gaps), sum(report.skipped.values())
        got = list(dets)
        self.detections += got
        c = self.per_station.setdefault(name, Counter())
        c["windows"] += det.stats.windows - w0
        c["detections"] += len(got)
        c["gaps"] += len(report.gaps) - g0
        c["skipped"] += sum(report.skipped.values()) - s0

    def associate(self, min_stations: int, window_s: float) -> CatalogRun:
        """Keep network events seen at >= min_stations stations within window_s seconds."""
        self.min_stations = min_stations
        self.events = (
            associate(self.detections, min_stations, window_s) if min_stations > 1 else None
        )
        return self

    @property
    def kept(self) -> list[Detection]:
        """The station detections that the catalog holds (event members when associated)."""
        if self.events is None:
            return self.detections
        members = {d.id for ev in self.events for d in ev.detections}
        return [d for d in self.detections if d.id in members]

    @property
    def totals(self) -> Counter:
        out: Counter = Counter()
        for c in self.per_station.values():
            out.update({k: c[k] for k in COUNTS})
        return out

    def write(self, out: str | os.PathLike[str], fmt: str | None = None) -> tuple[str, int]:
        """Write the catalog; returns (format, records written)."""
        fmt = catalog_format(out, fmt)
        if self.events is not None and fmt == "quakeml":
            write_network_quakeml(self.events, out)
            return fmt, len(self.events)
        kept = self.kept
        write_catalog(kept, out, fmt)
        return fmt, len(kept)


def run_files(det: Detector, paths: list[str], *, progress: bool = False) -> CatalogRun:
    """Detect over waveform files (paths, globs or folders): each station in one pass.

    Unreadable files are skipped with a reason (counted under ``(unreadable files)``);
    raises FileNotFoundError for a path that matches nothing, ValueError when
    no waveform data was found at all.
    """
    t0 = time.perf_counter()
    run = CatalogRun()
    files = expand_paths(list(paths))
    read_report = PrepReport()
    stream = Stream()
    for f in tqdm(files, desc="reading", unit="file", disable=not progress):
        stream += read_waveforms([f], read_report)
    det.stats.report.merge(read_report)
    if read_report.skipped:
        run.per_station.setdefault(UNREADABLE, Counter())["skipped"] += sum(
            read_report.skipped.values()
        )
    groups = group_by_station(stream)
    if not groups and not read_report.skipped:
        raise ValueError("no waveform data found in the input")
    for (sta, prefix), traces in tqdm(
        groups.items(), desc="stations", unit="station", disable=not progress
    ):
        run.add_station(det, f"{sta}.{prefix}", det.detect_iter([Stream(traces)]))
    run.detections = sorted(run.detections)
    run.seconds = time.perf_counter() - t0
    return run


def run_sds(
    det: Detector,
    root: str | os.PathLike[str],
    selectors: list[StationSelector],
    start: UTCDateTime,
    end: UTCDateTime,
    *,
    progress: bool = False,
) -> CatalogRun:
    """Detect over an SDS archive, station by station, day by day (bounded memory).

    The progress bar counts station-days processed (not merely read).
    """
    t0 = time.perf_counter()
    run = CatalogRun()
    n_days = len(day_starts(start, end))
    with tqdm(
        total=len(selectors) * n_days, desc="station-days", unit="day", disable=not progress
    ) as bar:
        for sel in selectors:

            def pieces(sel: StationSelector = sel) -> Iterator[Stream]:
                for _day, st in iter_sds(Path(root), sel, start, end, det.stats.report):
                    yield st
                    bar.update(1)  # the consumer asked for the next day: this one is done

            run.add_station(det, f"{sel.network}.{sel.station}", det.detect_iter(pieces()))
    run.detections = sorted(run.detections)
    run.seconds = time.perf_counter() - t0
    return run


__all__ = ["CatalogRun", "run_files", "run_sds"]
