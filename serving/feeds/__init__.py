"""Station feeds: where the feeder's waveforms come from.

A feed is anything with ``run(emit, stop)``: it calls ``emit(trace)`` with each
new piece of data (an ObsPy Trace, any length, in time order per channel) until
``stop`` is set, and remembers its position so a restart resumes where it
stopped. Feeds: SeedLink (``seedlink.py``), an SDS archive follower, a folder
watcher and file replay (``files.py``). ``build_feeds`` makes them from the
configuration's ``[[feeds]]`` tables.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from obspy import Trace

if TYPE_CHECKING:
    from ..config import ServiceConfig

Emit = Callable[[Trace], None]


class Feed(abc.ABC):
    """A source of waveform data for the feeder."""

    name: str = "feed"

    @abc.abstractmethod
    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Call ``emit`` for each new trace until ``stop`` is set (or the source ends)."""


def build_feeds(cfg: ServiceConfig) -> list[Feed]:
    """Feeds from the TOML [[feeds]] tables; a missing or unknown option is a ConfigError."""
    from obspy import UTCDateTime

    from ..config import ConfigError
    from .files import FolderFeed, ReplayFeed, SDSFollowFeed

    feeds: list[Feed] = []
    for f in cfg.feeds:
        o = dict(f.options)
        try:
            if f.type == "replay":
                feeds.append(
                    ReplayFeed(
                        o.pop("paths"),
                        speed=float(o.pop("speed", 0.0)),
                        packet_s=float(o.pop("packet_s", 1.0)),
                        shift_to_now=bool(o.pop("shift_to_now", False)),
                        loop=bool(o.pop("loop", False)),
                    )
                )
            elif f.type == "folder":
                feeds.append(
                    FolderFeed(
                        o.pop("path"),
                        pattern=o.pop("pattern", "*"),
                        poll_s=float(o.pop("poll_s", 1.0)),
                    )
                )
            elif f.type == "sds":
                start = o.pop("start", None)
                feeds.append(
                    SDSFollowFeed(
                        o.pop("root"),
                        list(o.pop("stations")),
                        poll_s=float(o.pop("poll_s", 2.0)),
                        state_file=o.pop("state_file", None)
                        or Path(cfg.spool_dir) / "sds_state.json",
                        start=UTCDateTime(start) if start else None,
                    )
                )
            elif f.type == "seedlink":
                from .seedlink import SeedLinkFeed

                feeds.append(
                    SeedLinkFeed(
                        o.pop("server"),
                        list(o.pop("streams")),
                        state_file=o.pop("state_file", None)
                        or Path(cfg.spool_dir) / "seedlink_state.json",
                    )
                )
        except KeyError as exc:
            raise ConfigError(f"[[feeds]] type {f.type!r} needs {exc.args[0]!r}") from None
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"[[feeds]] type {f.type!r}: {exc}") from None
        if o:
            raise ConfigError(
                f"[[feeds]] type {f.type!r}: unknown option(s) {', '.join(sorted(o))}"
            )
    return feeds
