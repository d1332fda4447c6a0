"""Station feeds: where the feeder's waveforms come from.

A feed is anything with ``run(emit, stop)``: it calls ``emit(trace)`` with each
new piece of data (an ObsPy Trace, any length, in time order per channel) until
``stop`` is set, and remembers its position so a restart resumes where it
stopped. Feeds: SeedLink (``seedlink.py``), an SDS archive follower, a folder
watcher and file replay (``files.py``).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable

from obspy import Trace

Emit = Callable[[Trace], None]


class Feed(abc.ABC):
    """A source of waveform data for the feeder."""

    name: str = "feed"

    @abc.abstractmethod
    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Call ``emit`` for each new trace until ``stop`` is set (or the source ends)."""
