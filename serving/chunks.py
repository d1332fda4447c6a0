"""Chunks: a station's waveforms for a run of grid windows, as miniSEED bytes.

A chunk with sequence number ``seq`` is responsible for the windows k_first ..
k_last of its station (window k starts at k * step_s). It carries the data from
k_first * step_s to k_last * step_s + window, so consecutive chunks overlap by
window - step and no window is lost at a boundary. ``StationBuffer.cut``
(``grid.py``) makes them from a station's buffered data; this module holds the
message format and its miniSEED payload, and ``chunk_probabilities``, the
worker's side.
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import obspy
from obspy import Stream, Trace

from quakescan.detector.core import Detector
from quakescan.detector.prepare import PrepReport

MESSAGE_VERSION = 1


class BadChunk(ValueError):
    """A chunk message or payload that cannot be processed; ``reason`` is a metrics label."""

    def __init__(self, message: str, reason: str = "corrupt_chunk") -> None:
        super().__init__(message)
        self.reason = reason


def chunk_id(station: str, channel_prefix: str, k_first: int, k_last: int, step_s: float) -> str:
    key = f"{station}|{channel_prefix}|{k_first}|{k_last}|{step_s!r}"
    return hashlib.sha1(key.encode()).hexdigest()[:20]


@dataclass
class Chunk:
    station: str  # NET.STA.LOC
    channel_prefix: str
    seq: int
    k_first: int
    k_last: int
    step_s: float
    mseed: bytes
    last_sample_time: float  # Unix seconds of the newest sample in the chunk
    sent_at: float = field(default_factory=time.time)
    job: str = ""  # batch job id, "" for the live service
    final: bool = False  # the station's data ends here: the sink flushes its trigger

    @property
    def id(self) -> str:
        return chunk_id(self.station, self.channel_prefix, self.k_first, self.k_last, self.step_s)

    def to_message(self) -> dict[str, Any]:
        """A JSON- and msgpack-safe dict (the payload base64-encoded)."""
        return {
            "v": MESSAGE_VERSION,
            "id": self.id,
            "station": self.station,
            "channel_prefix": self.channel_prefix,
            "seq": self.seq,
            "k_first": self.k_first,
            "k_last": self.k_last,
            "step_s": self.step_s,
            "mseed_b64": base64.b64encode(self.mseed).decode("ascii"),
            "last_sample_time": self.last_sample_time,
            "sent_at": self.sent_at,
            "job": self.job,
            "final": self.final,
        }

    @classmethod
    def from_message(cls, msg: Any) -> Chunk:
        if not isinstance(msg, dict):
            raise BadChunk(
                f"chunk message is a {type(msg).__name__}, expected an object", "bad_message"
            )
        missing = [
            k
            for k in (
                "v",
                "station",
                "channel_prefix",
                "seq",
                "k_first",
                "k_last",
                "step_s",
                "mseed_b64",
                "last_sample_time",
            )
            if k not in msg
        ]
        if missing:
            raise BadChunk(f"chunk message lacks {', '.join(missing)}", "bad_message")
        if msg["v"] != MESSAGE_VERSION:
            raise BadChunk(
                f"chunk message version {msg['v']!r} is not {MESSAGE_VERSION}", "bad_message"
            )
        try:
            payload = base64.b64decode(msg["mseed_b64"], validate=True)
            c = cls(
                station=str(msg["station"]),
                channel_prefix=str(msg["channel_prefix"]),
                seq=int(msg["seq"]),
                k_first=int(msg["k_first"]),
                k_last=int(msg["k_last"]),
                step_s=float(msg["step_s"]),
                mseed=payload,
                last_sample_time=float(msg["last_sample_time"]),
                sent_at=float(msg.get("sent_at", 0.0)),
                job=str(msg.get("job", "")),
                final=bool(msg.get("final", False)),
            )
        except (TypeError, ValueError) as exc:
            raise BadChunk(f"chunk message has a malformed field: {exc}", "bad_message") from None
        if c.k_last < c.k_first or c.step_s <= 0:
            raise BadChunk(
                f"chunk {c.station} seq {c.seq}: bad window range {c.k_first}..{c.k_last}",
                "bad_message",
            )
        return c


# ----------------------------------------------------------------- encoding
try:  # ObsPy's miniSEED plugin called directly: obspy.read/Stream.write add ~1 ms of
    # format lookup and copying per chunk, which at a thousand stations is a core's tenth.
    from obspy.io.mseed.core import _read_mseed, _write_mseed
except ImportError:  # pragma: no cover - a future ObsPy without them: the public API
    _read_mseed = _write_mseed = None


def stream_to_mseed(st: Stream) -> bytes:
    """Lossless miniSEED: STEIM2 for integer counts, FLOAT32/FLOAT64 for floats."""
    buf = io.BytesIO()
    out = Stream()
    for tr in st:
        if np.ma.isMaskedArray(tr.data):
            raise ValueError(f"{tr.id}: split gaps before encoding")
        data = tr.data
        if data.dtype.kind in "iu":
            data = data.astype(np.int32, copy=False)
        elif data.dtype != np.float64:
            data = data.astype(np.float32, copy=False)
        out.append(Trace(np.ascontiguousarray(data), header=tr.stats.copy()))
    encoding = None
    if all(tr.data.dtype == np.int32 for tr in out):
        encoding = "STEIM2"
    if _write_mseed is not None:
        _write_mseed(out, buf, encoding=encoding, reclen=4096)
    else:  # pragma: no cover
        out.write(buf, format="MSEED", encoding=encoding, reclen=4096)
    return buf.getvalue()


def mseed_to_stream(data: bytes) -> Stream:
    try:
        if _read_mseed is not None:
            st = _read_mseed(io.BytesIO(data))
        else:  # pragma: no cover
            st = obspy.read(io.BytesIO(data), format="MSEED")
    except Exception as exc:  # ObsPy raises several types for corrupt records
        raise BadChunk(
            f"chunk payload is not readable miniSEED ({type(exc).__name__}: {exc})"
        ) from None
    if not len(st):
        raise BadChunk("chunk payload holds no data")
    return st


# ------------------------------------------------------------------- worker
@dataclass
class ChunkResult:
    """Per-window probabilities of one chunk: k int64[n], probs float32[n, classes]."""

    chunk: Chunk
    k: np.ndarray
    probs: np.ndarray
    model: str
    model_version: str
    class_names: tuple[str, ...]
    inference_s: float
    batches: list[int]
    report: PrepReport

    def to_message(self, worker: str = "") -> dict[str, Any]:
        c = self.chunk
        return {
            "v": MESSAGE_VERSION,
            "status": "ok",
            "chunk_id": c.id,
            "station": c.station,
            "channel_prefix": c.channel_prefix,
            "seq": c.seq,
            "k_first": c.k_first,
            "k_last": c.k_last,
            "step_s": c.step_s,
            "k": self.k.tolist(),
            "probs": self.probs.astype(float).tolist(),
            "class_names": list(self.class_names),
            "model": self.model,
            "model_version": self.model_version,
            "last_sample_time": c.last_sample_time,
            "sent_at": c.sent_at,
            "done_at": time.time(),
            "worker": worker,
            "job": c.job,
            "final": c.final,
        }


def failure_message(
    msg: dict[str, Any], reason: str, error: str, worker: str = ""
) -> dict[str, Any]:
    """What a worker publishes for a chunk it could not process, so the sink moves on."""
    return {
        "v": MESSAGE_VERSION,
        "status": "failed",
        "reason": reason,
        "error": error[:500],
        "chunk_id": str(msg.get("id", "")),
        "station": str(msg.get("station", "")),
        "channel_prefix": str(msg.get("channel_prefix", "")),
        "seq": int(msg["seq"]) if isinstance(msg.get("seq"), int) else -1,
        "k_first": msg.get("k_first"),
        "k_last": msg.get("k_last"),
        "last_sample_time": msg.get("last_sample_time"),
        "done_at": time.time(),
        "worker": worker,
        "job": str(msg.get("job", "")),
        "final": bool(msg.get("final", False)),
    }


def chunk_probabilities(det: Detector, chunk: Chunk) -> ChunkResult:
    """Run the detector's model over the windows k_first..k_last of a chunk."""
    spec = det.spec
    st = mseed_to_stream(chunk.mseed)
    net, sta, loc = (chunk.station.split(".") + ["", "", ""])[:3]
    st = Stream(
        [
            tr
            for tr in st
            if (tr.stats.network, tr.stats.station, tr.stats.location) == (net, sta, loc)
            and tr.stats.channel.startswith(chunk.channel_prefix)
        ]
    )
    if not len(st):
        raise BadChunk(
            f"chunk {chunk.id}: no traces of {chunk.station}.{chunk.channel_prefix}?",
            "corrupt_chunk",
        )
    report = PrepReport()
    before = det.stats.inference_s
    # The chunk's step defines its grid (the feeder's setting), whatever the worker's is.
    found = det.window_probabilities(st, chunk.k_first, chunk.k_last, report, step_s=chunk.step_s)
    elapsed = det.stats.inference_s - before
    if found:
        (sp,) = found  # the traces were selected to one station and channel prefix
        k, p, batches = sp.k, sp.probs, sp.batch_sizes
    else:
        k = np.empty(0, np.int64)
        p = np.empty((0, len(spec.class_names)), np.float32)
        batches = []
    return ChunkResult(
        chunk, k, p, spec.name, spec.version, spec.class_names, elapsed, batches, report
    )


__all__ = [
    "BadChunk",
    "Chunk",
    "ChunkResult",
    "chunk_probabilities",
    "failure_message",
    "mseed_to_stream",
    "stream_to_mseed",
]
