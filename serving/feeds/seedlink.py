"""SeedLink feed: real-time waveforms from a SeedLink server, resumable per station.

Streams
-------
``streams`` lists stations, each optionally with SeedLink selectors::

    "BK.BKS"                  every data channel of the station (selector "???.D")
    "BK.BKS:HH?"              the HH channels, any location code
    "YA.UV05:00HHZ 00HHN"     several selectors, separated by spaces
    "GE_WLF:BH?.D"            NET_STA (slinktool / ObsPy style) is accepted too

NET is 1-2 and STA 1-5 letters or digits, without wildcards: positions are kept
per station. Selectors have SeedLink's form ``[!][LL]CCC[.T]`` (location, channel,
record type; ``?`` matches one character, ``!`` excludes). A single string of
comma-separated entries (``"BK.BKS:HH?,NC.KCR"``) is accepted in place of a list.

Position and resume
-------------------
Every record a SeedLink server sends carries the station's 24-bit sequence
number. The feed remembers, per station, the number of the last record it
delivered (and, per channel, the end time of the last delivered data) and asks
for the next one when it connects again (``DATA <seq+1>``), whether after a
network failure or after a restart. A record is delivered when its sequence
number comes after the station's last one (modulo 2**24) or, failing that, when
its data start after what was already delivered for its channel (a server that
restarted its numbering); anything else is a duplicate and is dropped. A clean
stop therefore delivers every record exactly once across reconnects and
restarts, as far as the server still holds the data; after a crash, the records
delivered since the last save of the state file (``save_interval_s``) come again.

State file (JSON, replaced atomically: temporary file, fsync, rename)::

    {"format": "quakescan-seedlink-state", "version": 1,
     "server": "host:port", "saved_at": "2024-05-01T12:00:00.000000Z",
     "stations": {"BK.BKS": {"seq": 243,
                             "channels": {"BK.BKS..HHZ": "2017-07-15T10:50:50.010000Z"}}}}

``seq`` is the last delivered sequence number (null: none yet) and each channel
maps to the end of its last delivered record (time of the last sample plus one
sample interval). Entries of stations not in ``streams`` are kept as they are.
Stations without a position start with the next data the server receives
(``DATA``), or from ``begin_time`` when given (``TIME``).

The protocol machinery is ObsPy's ``SeedLinkConnection`` (HELLO, the
multi-station negotiation STATION / SELECT / DATA|TIME / END, packet buffer and
miniSEED decoding). Its ``collect()`` loop is not used: it notices a closed
connection only after its network timeout, tears the connection down on its
``timeout``, rewrites its state file in place after every packet and reconnects
on its own schedule. The feed drives the socket itself instead, with short
timeouts, so that ``stop`` is honoured within a fraction of a second.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from obspy import Trace, UTCDateTime
from obspy.clients.seedlink.client.seedlinkconnection import SeedLinkConnection
from obspy.clients.seedlink.client.slnetstation import SLNetStation
from obspy.clients.seedlink.client.slstate import SLState
from obspy.clients.seedlink.seedlinkexception import SeedLinkException
from obspy.clients.seedlink.slpacket import SLPacket

from quakescan.detector.fsio import atomic_write
from quakescan.serving.feeds import Emit, Feed
from quakescan.serving.metrics import Metrics, default_metrics

log = logging.getLogger(__name__)

__all__ = ["SeedLinkFeed", "StreamSpec", "parse_server", "parse_stream"]

SEQ_MODULUS = 1 << 24  # sequence numbers are 6 hex digits and wrap
DEFAULT_PORT = 18000
DEFAULT_SELECTOR = "???.D"  # every channel, any location, data records only
STATE_FORMAT = "quakescan-seedlink-state"
STATE_VERSION = 1
POLL_S = 0.2  # socket wait slice: how fast `stop` is noticed

_NET_RE = re.compile(r"[A-Z0-9]{1,2}")
_STA_RE = re.compile(r"[A-Z0-9]{1,5}")
# [!][LL]CCC[.T] or a bare record type; at most 8 characters, ObsPy's limit.
_SELECTOR_RE = re.compile(r"!?(?:(?:[A-Z0-9?-]{2})?[A-Z0-9?]{3}(?:\.[DECOTL?])?|[DECOTL])")


@dataclass(frozen=True)
class StreamSpec:
    """One station of a SeedLink request and its selectors."""

    network: str
    station: str
    selectors: tuple[str, ...] = (DEFAULT_SELECTOR,)

    @property
    def key(self) -> str:
        """``NET.STA``: the key of the station's position in the state file."""
        return f"{self.network}.{self.station}"


def parse_stream(spec: str) -> StreamSpec:
    """Parse ``NET.STA[:SELECTOR ...]`` (or ``NET_STA[...]``); ValueError names what is wrong."""
    if not isinstance(spec, str):
        raise ValueError(f"stream {spec!r} must be a string 'NET.STA[:SELECTORS]'")
    name, sep, sel_text = spec.strip().partition(":")
    parts = re.split(r"[._]", name.strip())
    if len(parts) != 2:
        raise ValueError(
            f"stream {spec!r} is not 'NET.STA[:SELECTORS]' (e.g. 'BK.BKS' or 'BK.BKS:HH?')"
        )
    net, sta = (p.strip().upper() for p in parts)
    if not _NET_RE.fullmatch(net):
        raise ValueError(f"stream {spec!r}: network code {net!r} must be 1-2 letters or digits")
    if not _STA_RE.fullmatch(sta):
        raise ValueError(f"stream {spec!r}: station code {sta!r} must be 1-5 letters or digits")
    selectors_ = tuple(sel_text.upper().split())
    if sep and not selectors_:
        raise ValueError(f"stream {spec!r}: no selector after ':' (e.g. 'HH?' or '00BH?.D')")
    for sel in selectors_:
        if not _SELECTOR_RE.fullmatch(sel):
            raise ValueError(
                f"stream {spec!r}: {sel!r} is not a SeedLink selector [!][LL]CCC[.T] "
                "(e.g. 'HH?', '00BH?.D', '!LOG')"
            )
    return StreamSpec(net, sta, selectors_ or (DEFAULT_SELECTOR,))


def parse_server(server: str) -> tuple[str, int]:
    """``host[:port]`` (optionally ``seedlink://``; IPv6 as ``[addr]:port``) -> (host, port)."""
    if not isinstance(server, str) or not server.strip():
        raise ValueError(
            f"server {server!r} must be 'host:port', e.g. 'geofon.gfz-potsdam.de:18000'"
        )
    text = server.strip()
    if text.lower().startswith("seedlink://"):
        text = text[len("seedlink://") :]
    text = text.rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise ValueError(f"server {server!r} must be '[ipv6]:port'")
    elif text.count(":") > 1:
        raise ValueError(f"server {server!r}: write an IPv6 address as '[addr]:port'")
    else:
        host, _, port_text = text.partition(":")
        port_text = port_text or None
    if not host:
        raise ValueError(f"server {server!r} has no host name")
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"server {server!r}: port {port_text!r} must be a number in 1-65535")
    return host, int(port_text)


def _seq_after(seq: int, last: int) -> bool:
    """True when ``seq`` comes after ``last`` in 24-bit wrapping order."""
    return 0 < (seq - last) % SEQ_MODULUS < SEQ_MODULUS // 2


@dataclass
class _StationPosition:
    seq: int | None = None  # last delivered sequence number
    channel_ends: dict[str, UTCDateTime] = field(default_factory=dict)


class _EmitFailed(Exception):
    """``emit`` raised: carried past the connection-error handling, re-raised by ``run``."""


class _Stopped(BaseException):
    """``stop`` was set inside a connection. A BaseException on purpose: ObsPy's
    multi-station negotiation catches and logs every Exception per station."""


class SeedLinkFeed(Feed):
    """Records from a SeedLink server as ObsPy Traces, one per record, resumable per station.

    server: ``host:port``. streams: ``NET.STA[:SELECTORS]`` entries (see the module doc).
    state_file: where positions are kept across restarts (None: in memory only).
    begin_time: for stations without a position, request data from this time
    (SeedLink TIME) instead of from the next record the server receives.
    backoff_initial_s, backoff_max_s: reconnection delay, doubled after each
    failed attempt up to the cap (minus up to 20 % jitter), reset once a
    connection delivers data. timeout_s: connect and command-answer timeout, and
    the silence after which a link is taken as dead. keepalive_s: send
    ``INFO ID`` after this much silence so a healthy quiet link is not (0: off).
    save_interval_s: how often the state file is rewritten while data flows (it
    is also written on every disconnect and when ``run`` returns).
    metrics: counts ``quakescan_feed_reconnects_total{feed=name}`` (None: the
    process-wide default metrics).
    """

    def __init__(
        self,
        server: str,
        streams: Iterable[str] | str,
        *,
        state_file: str | Path | None = None,
        begin_time: UTCDateTime | str | None = None,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        timeout_s: float = 60.0,
        keepalive_s: float = 20.0,
        save_interval_s: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.host, self.port = parse_server(server)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.server = f"{host}:{self.port}"
        self.name = f"seedlink:{self.server}"
        entries = streams.split(",") if isinstance(streams, str) else list(streams)
        self.streams = [parse_stream(s) for s in entries]
        if not self.streams:
            raise ValueError("streams is empty: give at least one 'NET.STA[:SELECTORS]'")
        seen: dict[str, str] = {}
        for raw, spec in zip(entries, self.streams, strict=True):
            if spec.key in seen:
                raise ValueError(
                    f"station {spec.key} is listed twice ({seen[spec.key]!r} and {raw!r}); "
                    "put all its selectors in one entry, e.g. 'BK.BKS:HH? HN?'"
                )
            seen[spec.key] = raw
        _check_positive("backoff_initial_s", backoff_initial_s)
        _check_positive("timeout_s", timeout_s)
        if backoff_max_s < backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({backoff_max_s}) is smaller than backoff_initial_s "
                f"({backoff_initial_s})"
            )
        for label, value in (("keepalive_s", keepalive_s), ("save_interval_s", save_interval_s)):
            if value < 0:
                raise ValueError(f"{label} must be >= 0, got {value}")
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.timeout_s = float(timeout_s)
        self.keepalive_s = float(keepalive_s)
        self.save_interval_s = float(save_interval_s)
        self.begin_time = None if begin_time is None else UTCDateTime(begin_time)
        self.state_file = None if state_file is None else Path(state_file)
        self.metrics = metrics if metrics is not None else default_metrics()
        self.duplicates_dropped = 0
        self._positions = {s.key: _StationPosition() for s in self.streams}
        self._other_stations: dict[str, object] = {}  # state of stations not requested
        self._dirty = False
        self._last_save = time.monotonic()
        self._warned: set[tuple[str, str]] = set()
        self._load_state()

    # ------------------------------------------------------------------ API
    def positions(self) -> dict[str, int | None]:
        """``NET.STA`` -> sequence number of the last record delivered (None: none yet)."""
        return {key: pos.seq for key, pos in self._positions.items()}

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Emit each record's Trace until ``stop`` is set, reconnecting after failures.

        An exception from ``emit`` ends ``run`` (after saving the state file): the
        record it failed on is not counted as delivered and comes again next time.
        """
        delay = self.backoff_initial_s
        failures = 0
        try:
            while not stop.is_set():
                link = _Link(self, stop)
                try:
                    link.open()
                    if failures:
                        log.info(
                            "%s: connected again after %d failed attempt(s)", self.name, failures
                        )
                        failures = 0
                    self._stream(link, emit, stop)
                    return  # _stream returns only once stop is set
                except _Stopped:
                    return
                except _EmitFailed as exc:
                    raise exc.__cause__ from None
                except (SeedLinkException, OSError) as exc:
                    reason = _describe(exc, connected=link.streaming)
                finally:
                    link.close(polite=stop.is_set())
                    self._save_state()
                if stop.is_set():
                    return
                failures += 1
                if link.packets:
                    delay = self.backoff_initial_s  # that connection was healthy
                wait = delay * (1.0 - 0.2 * random.random())
                self.metrics.feed_reconnects_total.labels(feed=self.name).inc()
                log.warning(
                    "%s: %s; reconnecting in %.2f s, resuming each station after its last "
                    "delivered sequence number",
                    self.name,
                    reason,
                    wait,
                )
                stop.wait(wait)
                delay = min(delay * 2.0, self.backoff_max_s)
        finally:
            self._save_state(force=True)

    # ------------------------------------------------------------ streaming
    def _stream(self, link: _Link, emit: Emit, stop: threading.Event) -> None:
        """Read packets until ``stop``; raises OSError / SeedLinkException when the link fails."""
        sock = link.socket
        buf = link.state
        last_rx = last_keepalive = time.monotonic()
        while not stop.is_set():
            while buf.packet_available() and not stop.is_set():
                packet = buf.get_packet()
                buf.increment_send_pointer()
                link.packets += 1
                self._on_packet(packet, emit)
            buf.pack_data_buffer()
            if stop.is_set():
                return
            _check_control(buf)
            self._maybe_save()
            now = time.monotonic()
            try:
                data = sock.recv(buf.bytes_remaining())
            except TimeoutError:
                if now - last_rx > self.timeout_s:
                    raise TimeoutError(f"nothing received for {self.timeout_s:g} s") from None
                if self.keepalive_s and now - max(last_rx, last_keepalive) >= self.keepalive_s:
                    sock.sendall(b"INFO ID\r")
                    last_keepalive = now
                continue
            if not data:
                raise ConnectionError("the server closed the connection")
            buf.append_bytes(data)
            last_rx = time.monotonic()

    def _on_packet(self, packet: SLPacket, emit: Emit) -> None:
        head = bytes(packet.slhead)
        if head[:6].upper() == SLPacket.INFOSIGNATURE:
            return  # the answer to a keep-alive INFO request
        seq = packet.get_sequence_number()
        if seq < 0:
            raise SeedLinkException(f"bad packet header {head!r}: lost step with the server")
        try:
            record = packet.get_trace()
        except Exception as exc:  # one corrupt record must not cost the link
            log.warning(
                "%s: undecodable miniSEED record (seq %06X) skipped: %s", self.name, seq, exc
            )
            return
        stats = record.stats
        key = f"{stats.network}.{stats.station}"
        pos = self._positions.get(key)
        if pos is None:
            self._warn_once(
                key, "unrequested", "%s: records of unrequested station %s ignored", self.name, key
            )
            return
        if not self._is_new(pos, seq, record, key):
            self.duplicates_dropped += 1
            log.debug("%s: duplicate record %s seq %06X dropped", self.name, record.id, seq)
            return
        if record.data.dtype.kind in "iuf" and stats.npts > 0 and stats.sampling_rate > 0:
            trace = Trace(
                data=record.data,
                header={
                    "network": stats.network,
                    "station": stats.station,
                    "location": stats.location,
                    "channel": stats.channel,
                    "starttime": stats.starttime,
                    "sampling_rate": stats.sampling_rate,
                },
            )
            try:
                emit(trace)
            except Exception as exc:  # not delivered: the position stays before this record
                raise _EmitFailed from exc
            pos.channel_ends[trace.id] = trace.stats.endtime + trace.stats.delta
        # log / non-data records only move the position
        pos.seq = seq
        self._dirty = True

    def _is_new(self, pos: _StationPosition, seq: int, record: Trace, key: str) -> bool:
        """New if its sequence number follows the station's last, or its data follow the channel's."""
        stats = record.stats
        end = pos.channel_ends.get(record.id)
        half = 0.5 / stats.sampling_rate if stats.sampling_rate > 0 else 0.0
        if pos.seq is None or _seq_after(seq, pos.seq):
            if end is not None and stats.starttime < end - half:
                self._warn_once(
                    record.id,
                    "overlap",
                    "%s: %s seq %06X starts at %s, before the end of data already delivered (%s)",
                    self.name,
                    record.id,
                    seq,
                    stats.starttime,
                    end,
                )
            return True
        if end is None or stats.starttime >= end - half:
            self._warn_once(
                key,
                "seq-reset",
                "%s: sequence numbers of %s went back (%06X after %06X) but the data are new: "
                "the server restarted its numbering? Delivering.",
                self.name,
                key,
                seq,
                pos.seq,
            )
            return True
        return False

    def _warn_once(self, subject: str, kind: str, msg: str, *args: object) -> None:
        if (subject, kind) not in self._warned:
            self._warned.add((subject, kind))
            log.warning(msg, *args)

    # ---------------------------------------------------------------- state
    def _load_state(self) -> None:
        path = self.state_file
        if path is None or not path.exists():
            return
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"state file {path} cannot be read as JSON ({exc}); fix or remove it "
                "(without it every station starts again from the next available data)"
            ) from exc
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise ValueError(f"state file {path} is not a {STATE_FORMAT} file")
        if doc.get("version") != STATE_VERSION:
            raise ValueError(
                f"state file {path} has version {doc.get('version')!r}, expected {STATE_VERSION}"
            )
        stations = doc.get("stations")
        if not isinstance(stations, dict):
            raise ValueError(f"state file {path}: 'stations' must be an object")
        if doc.get("server") != self.server:
            log.warning(
                "%s: state file %s was written for server %s; resuming with its positions "
                "(data already delivered are still recognised by their times)",
                self.name,
                path,
                doc.get("server"),
            )
        for key, entry in stations.items():
            if key not in self._positions:
                self._other_stations[key] = entry
                continue
            try:
                seq = entry["seq"]
                if seq is not None and not (isinstance(seq, int) and 0 <= seq < SEQ_MODULUS):
                    raise ValueError(f"seq {seq!r} is not a 24-bit sequence number")
                ends = {cid: UTCDateTime(t) for cid, t in entry.get("channels", {}).items()}
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"state file {path}: bad entry for station {key}: {exc}") from exc
            self._positions[key] = _StationPosition(seq, ends)
        log.info("%s: resuming from %s: %s", self.name, path, self.positions())

    def _maybe_save(self) -> None:
        if self._dirty and time.monotonic() - self._last_save >= self.save_interval_s:
            self._save_state()

    def _save_state(self, force: bool = False) -> None:
        if self.state_file is None or not (self._dirty or force):
            return
        stations: dict[str, object] = dict(self._other_stations)
        for key, pos in self._positions.items():
            stations[key] = {
                "seq": pos.seq,
                "channels": {cid: str(t) for cid, t in sorted(pos.channel_ends.items())},
            }
        doc = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "server": self.server,
            "saved_at": str(UTCDateTime()),
            "stations": stations,
        }
        try:
            _write_json_atomic(self.state_file, doc)
        except OSError as exc:
            log.warning(
                "%s: cannot write state file %s (%s); a restart would fetch again what came "
                "since the last save",
                self.name,
                self.state_file,
                exc,
            )
            return
        self._dirty = False
        self._last_save = time.monotonic()


class _Link(SeedLinkConnection):
    """ObsPy's SeedLinkConnection with stop-aware, time-bounded socket I/O."""

    def __init__(self, feed: SeedLinkFeed, stop: threading.Event) -> None:
        super().__init__(timeout=feed.timeout_s)
        # Not set_sl_address(): it renames ObsPy's module logger and mangles "seedlink://".
        self.sladdr = feed.server
        self.netto = feed.timeout_s
        self.begin_time = feed.begin_time
        self.resume = True
        # ObsPy appends the start of the last packet to DATA only with a log call that
        # has a surplus argument (a logging error at INFO level): positions by seq only.
        self.lastpkttime = False
        self.feed = feed
        self.stop = stop
        self.accepted: set[str] = set()
        self.packets = 0  # packets received on this connection
        self.streaming = False  # negotiation done, data transfer started
        for spec in feed.streams:
            seq = feed._positions[spec.key].seq
            self.add_stream(
                spec.network,
                spec.station,
                " ".join(spec.selectors),
                -1 if seq is None else seq,
                None,
            )

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise _Stopped

    def open(self) -> None:
        """Connect, say HELLO, negotiate every station and start the data transfer (END)."""
        self.connect()
        self.config_link()
        self._check_stop()
        missing = [s.key for s in self.feed.streams if s.key not in self.accepted]
        if missing:
            log.warning(
                "%s: the server did not accept %s (unknown station or rejected selectors); "
                "streaming the others",
                self.feed.name,
                ", ".join(missing),
            )
        self.state = SLState()
        self.streaming = True
        log.info("%s: streaming %d station(s)", self.feed.name, len(self.accepted))

    def connect(self) -> None:
        """Open the TCP connection (stop-aware, within timeout_s) and say HELLO."""
        feed = self.feed
        deadline = time.monotonic() + feed.timeout_s
        last_error: OSError | None = None
        infos = socket.getaddrinfo(feed.host, feed.port, type=socket.SOCK_STREAM)
        for family, type_, proto, _, addr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                _connect_interruptibly(sock, addr, deadline, self.stop, feed.timeout_s)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            except BaseException:
                sock.close()
                raise
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.settimeout(POLL_S)
            self.socket = sock
            break
        else:
            raise last_error or OSError(f"no address for {feed.host}")
        try:
            self.say_hello()
        except BaseException:
            self.disconnect()
            raise

    def receive_data(self, maxbytes: int, code: object) -> bytes:
        """A command's answer (ObsPy's send_data calls this): raise on EOF, stop or timeout."""
        deadline = time.monotonic() + self.feed.timeout_s
        while True:
            self._check_stop()
            try:
                data = self.socket.recv(maxbytes)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"no answer from the server within {self.feed.timeout_s:g} s"
                    ) from None
                continue
            if not data:
                raise ConnectionError("the server closed the connection")
            return data

    def negotiate_station(self, curstream: SLNetStation) -> None:
        super().negotiate_station(curstream)
        self.accepted.add(f"{curstream.net}.{curstream.station}")

    def close(self, polite: bool) -> None:
        """Say BYE when leaving on purpose, then close the socket."""
        if self.socket is not None and polite:
            with contextlib.suppress(OSError):
                self.socket.send(b"BYE\r")
        self.disconnect()


def _connect_interruptibly(
    sock: socket.socket, addr: object, deadline: float, stop: threading.Event, timeout_s: float
) -> None:
    sock.setblocking(False)
    err = sock.connect_ex(addr)
    if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
        raise OSError(err, os.strerror(err))
    if err:
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_WRITE)
            while not sel.select(POLL_S):
                if stop.is_set():
                    raise _Stopped
                if time.monotonic() > deadline:
                    raise TimeoutError(f"connect timed out after {timeout_s:g} s")
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    sock.setblocking(True)


def _check_control(buf: SLState) -> None:
    """Raise when the server sent ERROR or END where a packet should start."""
    with contextlib.suppress(SeedLinkException):  # too few bytes to tell yet
        if buf.is_error():
            raise ConnectionError("the server answered ERROR during the data transfer")
    with contextlib.suppress(SeedLinkException):
        if buf.is_end():
            raise ConnectionError("the server ended the data transfer (END)")


def _describe(exc: BaseException, connected: bool) -> str:
    what = "connection lost" if connected else "cannot connect"
    if isinstance(exc, SeedLinkException):
        return f"{what}: SeedLink error: {getattr(exc, 'value', exc)}"
    return f"{what}: {str(exc) or type(exc).__name__}"


def _check_positive(label: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{label} must be > 0, got {value}")


def _write_json_atomic(path: Path, doc: object) -> None:
    """Write JSON to ``path`` atomically (see quakescan.detector.fsio.atomic_write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
