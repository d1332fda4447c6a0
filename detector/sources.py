"""Where waveforms come from for batch detection: files, or an SDS archive day by day."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from obspy import Stream, UTCDateTime
from obspy.clients.filesystem.sds import Client as SDSClient

from .prepare import PrepReport

log = logging.getLogger(__name__)


class OutsideDataRoots(PermissionError):
    """A path that resolves (symlinks followed) outside the configured data roots."""


def check_under_roots(path: str | os.PathLike, roots: Sequence[str]) -> Path:
    """The resolved path (every symlink on the way followed) if it lies under a data root.

    Raises OutsideDataRoots otherwise, or when no roots are configured.
    """
    if not roots:
        raise OutsideDataRoots(
            f"{path}: no data roots are configured (set QUAKESCAN_DATA_ROOTS); refusing to read"
        )
    p = Path(path).resolve()
    for r in roots:
        root = Path(r).resolve()
        if p == root or root in p.parents:
            return p
    raise OutsideDataRoots(
        f"{path}: resolves to {p}, outside the configured data roots ({', '.join(roots)}); refused"
    )


def sample_paths() -> list[Path]:
    """The real waveform sample shipped with the package (see detector/data/README.md)."""
    base = Path(str(resources.files("quakescan.detector") / "data" / "sample"))
    paths = sorted(base.glob("*.mseed"))
    if not paths:
        raise FileNotFoundError(
            f"the shipped waveform sample is missing from {base}; reinstall quakescan"
        )
    return paths


@dataclass(frozen=True)
class StationSelector:
    """NET.STA[.LOC[.CHA]] with wildcards, as operators write them."""

    network: str
    station: str
    location: str = "*"
    channel: str = "*"

    @classmethod
    def parse(cls, text: str) -> StationSelector:
        parts = text.strip().split(".")
        if len(parts) < 2 or len(parts) > 4 or not all(parts[:2]):
            raise ValueError(f"station {text!r}: expected NET.STA, NET.STA.LOC or NET.STA.LOC.CHA")
        parts += ["*"] * (4 - len(parts))
        loc = parts[2] if parts[2] not in ("", "--") else ""
        return cls(parts[0], parts[1], loc, parts[3] or "*")

    def __str__(self) -> str:
        return f"{self.network}.{self.station}.{self.location}.{self.channel}"


def day_starts(start: UTCDateTime, end: UTCDateTime) -> list[UTCDateTime]:
    """Start of each piece: [start, next midnight), then whole days, up to end."""
    if end <= start:
        raise ValueError(f"--end ({end}) must be after --start ({start})")
    out, t = [], UTCDateTime(start)
    while t < end:
        out.append(t)
        t = UTCDateTime(t.date) + 86400
    return out


def iter_sds(
    root: str | Path,
    selector: StationSelector,
    start: UTCDateTime,
    end: UTCDateTime,
    report: PrepReport | None = None,
    roots: Sequence[str] | None = None,
) -> Iterator[tuple[UTCDateTime, Stream]]:
    """(day start, stream) for one station, day by day (bounded memory).

    With ``roots``, every file of a day is checked on its resolved path before it is
    read (a symlinked folder or file inside the archive may point anywhere): one
    outside the roots raises OutsideDataRoots.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SDS root {root} is not a directory")
    client = SDSClient(str(root))
    report = report if report is not None else PrepReport()
    days = day_starts(start, end)
    for i, t0 in enumerate(days):
        t1 = min(days[i + 1] if i + 1 < len(days) else end, end)
        if roots is not None:
            # ObsPy's own file lookup for this request, so exactly the files it would read.
            for f in client._get_filenames(
                selector.network, selector.station, selector.location, selector.channel, t0, t1
            ):
                check_under_roots(f, roots)
        try:
            st = client.get_waveforms(
                selector.network, selector.station, selector.location, selector.channel, t0, t1
            )
        except Exception as exc:  # corrupt files raise from inside ObsPy
            report.skip(
                "unreadable_file",
                f"{selector} {t0.date}: SDS read failed ({type(exc).__name__}: {exc}); day skipped",
            )
            st = Stream()
        # get_waveforms returns samples up to and including t1; the next day starts there.
        st = st.slice(t0, t1 - 1e-6, nearest_sample=False) if len(st) else st
        if not len(st):
            report.skip("no_data", f"{selector} {t0.date}: no data in the SDS archive")
        yield t0, st
