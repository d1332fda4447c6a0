"""The feeder's two holding places: the spool on disk (chunks the broker could not
take yet) and the inbox in memory (traces from the feed threads to the feeder loop)."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from obspy import Trace

from quakescan.detector.fsio import atomic_write


# ------------------------------------------------------------------- spool
class Spool:
    """Chunk messages kept on local disk until the broker takes them (oldest first)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._n = len(self.files())

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("chunk-*.json"))

    def put(self, msg: dict[str, Any]) -> Path:
        name = (
            f"chunk-{time.time_ns():020d}-{msg['station']}-{msg['channel_prefix']}"
            f"-{msg['seq']:012d}.json"
        )
        atomic_write(self.dir / name, json.dumps(msg))
        self._n += 1
        return self.dir / name

    def __len__(self) -> int:
        return self._n

    def drain(self, send: Callable[[dict[str, Any]], None], limit: int = 1000) -> int:
        """Send spooled chunks in order; stops at the first failure. Returns how many went."""
        sent = 0
        for p in self.files()[:limit]:
            msg = json.loads(p.read_text())
            send(msg)  # raises SendError: keep the file
            p.unlink()
            self._n -= 1
            sent += 1
        return sent


# ------------------------------------------------------------------- inbox
class Inbox:
    """Traces from the feed threads to the feeder loop.

    A deque (append and popleft are atomic) polled by the loop every 5 ms, rather
    than a queue.Queue: at a thousand stations (3,000 traces a second, arriving in
    a burst) the Queue's lock, taken by both threads for every trace, was contended
    on most gets (about 70 us each in a profile). Bounded: a feed waits while it is full.
    """

    POLL_S = 0.005

    def __init__(self, maxsize: int = 100_000) -> None:
        self.q: deque[Trace | None] = deque()
        self.maxsize = maxsize

    def put(self, item: Trace | None) -> None:
        while len(self.q) >= self.maxsize:
            time.sleep(0.01)
        self.q.append(item)

    def wait(self, timeout: float) -> bool:
        """True as soon as something is in the inbox; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.q:
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.POLL_S)
        return True

    def drain(self) -> Iterator[Trace | None]:
        """Yield what is in the inbox now (what arrives meanwhile waits for the next pass)."""
        q = self.q
        for _ in range(len(q)):
            yield q.popleft()

    def qsize(self) -> int:
        return len(self.q)

    def empty(self) -> bool:
        return not self.q
