"""A local SeedLink (protocol v3) server for tests, serving real miniSEED files.

It stands in for a remote SeedLink server (a SeisComP ``seedlink``, a ringserver):
it speaks the protocol closely enough for ObsPy's SeedLink client and for
``serving.feeds.seedlink.SeedLinkFeed``, and serves the records of real files,
re-written as 512-byte miniSEED records.

The model is a live ring buffer. The records of all files are put in one
publication order (by time since their station's first sample, so that files
of different days interleave like the stations of a live server), and each station numbers its own records
with 24-bit SeedLink sequence numbers (per station, as SeisComP does; they wrap
after ``0xFFFFFF``). Records are *published* into the ring either all at once,
at ``records_per_s``, or by hand with ``publish(n)`` while paused; a client is
sent what has been published, in order, and then waits for more. ``DATA``
without a sequence number starts at the next record to be published (real-time
data), ``DATA <seq>`` resumes at that record, ``TIME <begin>`` starts at the
first record ending after ``begin``.

Typical use::

    with SeedLinkTestServer(files, paused=True) as server:
        feed = SeedLinkFeed(server.address, ["BK.BKS"])
        ...  # start the feed in a thread
        assert server.wait_until(lambda s: s.sessions_started >= 1, timeout=5)
        server.resume()                      # publish everything
        server.drop_connections()            # simulate a network failure

The listening socket is bound (the port reserved) when the server is built, but
it only accepts connections after ``start()``: a client that connects before
that is refused, as by a server that is down.

Supported commands: HELLO, CAT (answered ERROR), STATION, SELECT (positive and
``!`` negative ``[LL]CCC[.T]`` selectors), DATA [seq [begin]], FETCH [seq
[begin]], TIME begin [end], END, INFO ID|CAPABILITIES|STATIONS|STREAMS (a
minimal XML document in SLINFO packets; other levels give an XML error), BYE.
Commands end with CR, LF or CRLF; in multi-station mode (after STATION) every
command is answered ``OK\\r\\n`` or ``ERROR\\r\\n`` and data flows after END.
"""

from __future__ import annotations

import bisect
import io
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import obspy
from obspy import UTCDateTime
from obspy.io.mseed.util import get_record_information

SEQ_MODULUS = 1 << 24  # SeedLink sequence numbers are 6 hex digits
RECORD_BYTES = 512
HELLO_LINE = "SeedLink v3.1 (quakescan test server) :: SLPROTO:3.1 CAP EXTREPLY NSWILDCARD"
ORGANISATION = "quakescan tests"
_ENCODINGS = {"i": "STEIM2", "f4": "FLOAT32", "f8": "FLOAT64"}


@dataclass(frozen=True)
class Record:
    """One 512-byte miniSEED record of the ring, with its station's sequence number."""

    network: str
    station: str
    location: str
    channel: str
    starttime: UTCDateTime
    npts: int
    sampling_rate: float
    raw: bytes
    seq: int = -1
    index: int = -1  # position in the publication order

    @property
    def endtime(self) -> UTCDateTime:
        """Time just after the last sample (start + npts / rate)."""
        if self.sampling_rate <= 0:
            return self.starttime
        return self.starttime + self.npts / self.sampling_rate

    @property
    def id(self) -> str:
        return f"{self.network}.{self.station}.{self.location}.{self.channel}"

    @property
    def packet(self) -> bytes:
        """The SeedLink data packet: ``SL`` + 6 hex digits + the record."""
        return b"SL%06X" % self.seq + self.raw


def records_from_stream(st: obspy.Stream) -> list[Record]:
    """Re-write a stream as 512-byte records (STEIM2 for integers, else FLOAT32/64)."""
    out: list[Record] = []
    for tr in st:
        kind = tr.data.dtype.kind
        key = "i" if kind in "iu" else f"f{tr.data.dtype.itemsize}"
        if key not in _ENCODINGS:
            raise ValueError(f"{tr.id}: cannot serve samples of dtype {tr.data.dtype}")
        tr = tr.copy()
        if kind in "iu":
            tr.data = tr.data.astype(np.int32)
        buf = io.BytesIO()
        tr.write(buf, format="MSEED", reclen=RECORD_BYTES, encoding=_ENCODINGS[key])
        raw = buf.getvalue()
        for pos in range(0, len(raw), RECORD_BYTES):
            block = raw[pos : pos + RECORD_BYTES]
            info = get_record_information(io.BytesIO(block))
            out.append(
                Record(
                    network=info["network"],
                    station=info["station"],
                    location=info["location"],
                    channel=info["channel"],
                    starttime=info["starttime"],
                    npts=info["npts"],
                    sampling_rate=info["samp_rate"],
                    raw=block,
                )
            )
    return out


def build_ring(
    sources: Iterable[str | Path | obspy.Stream], first_seq: int = 1
) -> tuple[list[Record], dict[tuple[str, str], list[Record]]]:
    """Records of all sources in publication order, and per (net, sta) with sequence numbers."""
    records: list[Record] = []
    for src in sources:
        st = src if isinstance(src, obspy.Stream) else obspy.read(str(src))
        records.extend(records_from_stream(st))
    # Publication order: time since the station's first sample, so that files recorded on
    # different days interleave as the stations of a live server do.
    t0: dict[tuple[str, str], UTCDateTime] = {}
    for rec in records:
        key = (rec.network, rec.station)
        t0[key] = min(t0.get(key, rec.starttime), rec.starttime)
    records.sort(
        key=lambda r: (
            r.starttime - t0[(r.network, r.station)],
            r.network,
            r.station,
            r.location,
            r.channel,
        )
    )
    next_seq: dict[tuple[str, str], int] = {}
    ordered: list[Record] = []
    by_station: dict[tuple[str, str], list[Record]] = {}
    for i, rec in enumerate(records):
        key = (rec.network, rec.station)
        seq = next_seq.get(key, first_seq % SEQ_MODULUS)
        next_seq[key] = (seq + 1) % SEQ_MODULUS
        rec = replace(rec, seq=seq, index=i)
        ordered.append(rec)
        by_station.setdefault(key, []).append(rec)
    return ordered, by_station


@dataclass(frozen=True)
class DataRequest:
    """An action command a client sent for one station (for assertions in tests)."""

    connection: int  # 1 for the first connection the server accepted, 2 for the next, ...
    network: str
    station: str
    command: str  # DATA, FETCH or TIME
    seq: int | None  # the sequence number asked for (DATA/FETCH), masked to 24 bits
    begin: UTCDateTime | None


@dataclass
class _Selector:
    negative: bool
    location: str | None  # None: any
    channel: str | None
    rectype: str | None

    @classmethod
    def parse(cls, text: str) -> _Selector | None:
        negative = text.startswith("!")
        body = text[1:] if negative else text
        rectype = None
        if "." in body:
            body, rectype = body.split(".", 1)
            if len(rectype) != 1:
                return None
        elif len(body) == 1:  # a bare record type, e.g. "D"
            body, rectype = "", body
        if len(body) == 5:
            loc, cha = body[:2], body[2:]
        elif len(body) == 3:
            loc, cha = None, body
        elif body == "":
            loc, cha = None, None
        else:
            return None
        return cls(negative, loc, cha, rectype)

    def matches(self, rec: Record) -> bool:
        if self.location is not None:
            loc = "  " if self.location == "--" else self.location
            if not _glob(loc, rec.location.ljust(2)):
                return False
        if self.channel is not None and not _glob(self.channel, rec.channel):
            return False
        return self.rectype is None or self.rectype in ("?", "D")


def _glob(pattern: str, value: str) -> bool:
    return len(pattern) == len(value) and all(
        p in ("?", v) for p, v in zip(pattern, value, strict=True)
    )


@dataclass
class _Subscription:
    key: tuple[str, str]
    selectors: list[_Selector] = field(default_factory=list)
    cursor: int | None = None  # index into the station's records of the next one to send
    until: UTCDateTime | None = None  # TIME end

    def wants(self, rec: Record) -> bool:
        if self.until is not None and rec.starttime >= self.until:
            return False
        pos = [s for s in self.selectors if not s.negative]
        neg = [s for s in self.selectors if s.negative]
        if pos and not any(s.matches(rec) for s in pos):
            return False
        return not any(s.matches(rec) for s in neg)


class SeedLinkTestServer:
    """A SeedLink v3 server on ``host``:``port`` (0: a free port) serving ``sources``.

    sources: miniSEED file paths or ObsPy Streams. ``records_per_s`` None publishes
    every record at once (at ``start()`` or ``resume()``), else at that rate;
    ``paused`` starts with nothing published. ``first_seq`` is every station's
    first sequence number (use e.g. ``0xFFFFF0`` to test the 24-bit wrap).
    ``replay_on_resume`` makes the server misbehave: ``DATA <seq>`` replays the
    station's whole ring, so a client must drop the duplicates itself.
    """

    def __init__(
        self,
        sources: Iterable[str | Path | obspy.Stream],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        records_per_s: float | None = None,
        paused: bool = False,
        first_seq: int = 1,
        replay_on_resume: bool = False,
    ) -> None:
        if records_per_s is not None and records_per_s <= 0:
            raise ValueError(f"records_per_s must be positive or None, got {records_per_s}")
        self.records, self._by_station = build_ring(sources, first_seq)
        self._indices = {k: [r.index for r in recs] for k, recs in self._by_station.items()}
        self.records_per_s = records_per_s
        self.replay_on_resume = replay_on_resume
        self._cond = threading.Condition()
        self._paused = paused
        self._published = 0
        self._stopping = False
        self._started = False
        self._silent = False
        self._sessions: dict[int, socket.socket] = {}
        self._threads: list[threading.Thread] = []
        self._next_conn = 0
        # counters and logs, for assertions
        self.connections_total = 0
        self.sessions_started = 0
        self.records_sent_total = 0
        self.info_requests_total = 0
        self.commands: list[str] = []
        self.data_requests: list[DataRequest] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self.host, self.port = self._listener.getsockname()[:2]

    # ------------------------------------------------------------------ API
    @property
    def address(self) -> str:
        """``host:port``, as SeedLink clients take it."""
        return f"{self.host}:{self.port}"

    @property
    def stations(self) -> list[tuple[str, str]]:
        """(network, station) pairs served."""
        return sorted(self._by_station)

    def station_records(self, network: str, station: str) -> list[Record]:
        """The station's records in sequence order."""
        return list(self._by_station[(network, station)])

    @property
    def published(self) -> int:
        """How many records (of all stations, in publication order) are in the ring."""
        return self._published

    @property
    def active_connections(self) -> int:
        with self._cond:
            return len(self._sessions)

    def start(self) -> SeedLinkTestServer:
        """Start accepting connections (and publishing, unless paused)."""
        with self._cond:
            if self._started:
                raise RuntimeError("server already started")
            self._started = True
            if not self._paused and self.records_per_s is None:
                self._published = len(self.records)
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self._spawn(self._accept_loop, "seedlink-test-accept")
        if self.records_per_s is not None:
            self._spawn(self._publish_loop, "seedlink-test-publish")
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket; join the threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.drop_connections()
        for t in list(self._threads):
            t.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> SeedLinkTestServer:
        return self.start() if not self._started else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pause(self) -> None:
        """Stop publishing new records (clients keep what was published)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        """Publish again: everything at once, or at ``records_per_s``."""
        with self._cond:
            self._paused = False
            if self.records_per_s is None and self._started:
                self._published = len(self.records)
            self._cond.notify_all()

    def publish(self, n: int | None = None) -> int:
        """Publish the next ``n`` records (all when None), paused or not; returns the total."""
        with self._cond:
            left = len(self.records) - self._published
            self._published += left if n is None else min(n, left)
            self._cond.notify_all()
            return self._published

    def set_silent(self, silent: bool) -> None:
        """A hung link: connections stay open but nothing is sent (no data, no INFO)."""
        with self._cond:
            self._silent = silent
            self._cond.notify_all()

    def drop_connections(self) -> int:
        """Cut every client connection (as a network failure would); returns how many."""
        with self._cond:
            socks = list(self._sessions.values())
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(socks)

    def wait_until(self, predicate: Callable[[SeedLinkTestServer], bool], timeout: float) -> bool:
        """Wait until ``predicate(server)`` holds (checked on every server event)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def requests_of_connection(self, connection: int) -> dict[tuple[str, str], DataRequest]:
        """The action command per (net, sta) that connection number ``connection`` sent."""
        return {(r.network, r.station): r for r in self.data_requests if r.connection == connection}

    # ------------------------------------------------------------ internals
    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self._next_conn += 1
                conn_id = self._next_conn
                self.connections_total += 1
                self._sessions[conn_id] = sock
                self._cond.notify_all()
            self._spawn(self._serve, f"seedlink-test-client-{conn_id}", conn_id, sock)

    def _publish_loop(self) -> None:
        period = 1.0 / self.records_per_s
        next_t = time.monotonic()
        while True:
            with self._cond:
                if self._stopping:
                    return
                if self._paused or self._published >= len(self.records):
                    self._cond.wait(0.05)
                    next_t = time.monotonic()
                    continue
                now = time.monotonic()
                if now < next_t:
                    self._cond.wait(next_t - now)
                    continue
                self._published += 1
                next_t += period
                self._cond.notify_all()

    def _published_count(self, key: tuple[str, str]) -> int:
        return bisect.bisect_left(self._indices[key], self._published)

    def _serve(self, conn_id: int, sock: socket.socket) -> None:
        sock.settimeout(5.0)
        client = _ClientSession(self, sock, conn_id)
        try:
            client.run()
        except OSError:
            pass  # the client went away or the connection was dropped
        finally:
            with self._cond:
                self._sessions.pop(conn_id, None)
                self._cond.notify_all()
            try:
                sock.close()
            except OSError:
                pass

    def _info_xml(self, level: str) -> str:
        head = (
            f'<?xml version="1.0"?>\n<seedlink software="{HELLO_LINE.split(" ::")[0]}" '
            f'organization="{ORGANISATION}" started="2024/01/01 00:00:00.0000"'
        )
        if level in ("ID", "CAPABILITIES"):
            body = ""
            if level == "CAPABILITIES":
                body = "".join(
                    f'<capability name="{c}"/>'
                    for c in (
                        "dialup",
                        "multistation",
                        "window-extraction",
                        "info:id",
                        "info:capabilities",
                        "info:stations",
                        "info:streams",
                    )
                )
            return f"{head}>{body}</seedlink>"
        if level in ("STATIONS", "STREAMS"):
            parts = []
            for net, sta in self.stations:
                recs = self._by_station[(net, sta)]
                n = self._published_count((net, sta))
                begin = f"{recs[0].seq:06X}" if n else "000000"
                end = f"{recs[n - 1].seq:06X}" if n else "000000"
                streams = ""
                if level == "STREAMS":
                    chans = sorted({(r.location, r.channel) for r in recs})
                    streams = "".join(
                        f'<stream location="{loc}" seedname="{cha}" type="D"/>'
                        for loc, cha in chans
                    )
                parts.append(
                    f'<station name="{sta}" network="{net}" description="{net} {sta}" '
                    f'begin_seq="{begin}" end_seq="{end}">{streams}</station>'
                )
            return f"{head}>{''.join(parts)}</seedlink>"
        return f"{head}><error>level {level} not supported</error></seedlink>"

    def _info_packets(self, level: str) -> list[bytes]:
        """An INFO answer as SLINFO packets: ASCII miniSEED records, ``*`` on all but the last."""
        text = self._info_xml(level).encode("ascii")
        tr = obspy.Trace(np.frombuffer(text, dtype="S1").copy())
        tr.stats.network, tr.stats.station, tr.stats.channel = "XX", "INFO", "LOG"
        buf = io.BytesIO()
        tr.write(buf, format="MSEED", reclen=RECORD_BYTES, encoding="ASCII")
        raw = buf.getvalue()
        recs = [raw[i : i + RECORD_BYTES] for i in range(0, len(raw), RECORD_BYTES)]
        return [(b"SLINFO *" if i < len(recs) - 1 else b"SLINFO  ") + r for i, r in enumerate(recs)]


class _ClientSession:
    """The conversation with one client: handshake, then data transfer."""

    def __init__(self, server: SeedLinkTestServer, sock: socket.socket, conn_id: int) -> None:
        self.server = server
        self.sock = sock
        self.conn_id = conn_id
        self.buf = b""
        self.subs: dict[tuple[str, str], _Subscription] = {}
        self.current: _Subscription | None = None
        self.multistation = False
        self.dialup = False
        self.streaming = False
        self.pending_actions: list[tuple[str, list[str]]] = []

    # ---------------------------------------------------------- plumbing
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_commands(self, wait_s: float) -> list[str] | None:
        """Complete command lines received within ``wait_s``; None when the peer closed."""
        ready, _, _ = select.select([self.sock], [], [], wait_s)
        if ready:
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buf += chunk
        lines = []
        while True:
            cut = [i for i in (self.buf.find(b"\r"), self.buf.find(b"\n")) if i >= 0]
            if not cut:
                break
            i = min(cut)
            line, self.buf = self.buf[:i], self.buf[i + 1 :]
            if line.strip():
                lines.append(line.decode("ascii", errors="replace").strip())
        return lines

    def ok(self) -> None:
        if self.multistation:
            self.send(b"OK\r\n")

    def error(self) -> None:
        self.send(b"ERROR\r\n")

    # ----------------------------------------------------------- protocol
    def run(self) -> None:
        srv = self.server
        while not srv._stopping:
            # while streaming, stream_some() does the waiting (on the ring's condition)
            lines = self.read_commands(0.0 if self.streaming else 0.1)
            if lines is None:
                return
            for line in lines:
                with srv._cond:
                    srv.commands.append(line)
                    srv._cond.notify_all()
                if not self.handle(line):
                    return
            if self.streaming and not self.stream_some():
                return

    def handle(self, line: str) -> bool:
        """Handle one command; False to close the connection."""
        words = line.split()
        cmd, args = words[0].upper(), words[1:]
        srv = self.server
        if cmd == "BYE":
            return False
        if cmd == "INFO":
            level = args[0].upper() if args else ""
            with srv._cond:
                srv.info_requests_total += 1
                silent = srv._silent
            if not silent:
                for pkt in srv._info_packets(level):
                    self.send(pkt)
            return True
        if self.streaming:
            return True  # other commands are ignored during data transfer
        if cmd == "HELLO":
            self.send(f"{HELLO_LINE}\r\n{ORGANISATION}\r\n".encode("ascii"))
        elif cmd == "CAT":
            self.error()
        elif cmd == "STATION":
            self.multistation = True
            if not args:
                self.error()
                return True
            sta = args[0].upper()
            net = args[1].upper() if len(args) > 1 else None
            keys = [k for k in srv._by_station if k[1] == sta and (net is None or k[0] == net)]
            if len(keys) != 1:
                self.current = None
                self.error()
            else:
                self.current = self.subs.setdefault(keys[0], _Subscription(keys[0]))
                self.ok()
        elif cmd == "SELECT":
            target = self.current if self.multistation else None
            if not args:
                for sub in [target] if target else self.subs.values():
                    sub.selectors.clear()
                self.ok()
                return True
            sel = _Selector.parse(args[0].upper())
            if sel is None or (self.multistation and target is None):
                self.error()
                return True
            if target is None:  # uni-station mode: applies to every station
                for key in srv._by_station:
                    self.subs.setdefault(key, _Subscription(key)).selectors.append(sel)
            else:
                target.selectors.append(sel)
            self.ok()
        elif cmd in ("DATA", "FETCH", "TIME"):
            if self.multistation and self.current is None:
                self.error()
                return True
            try:
                request = self.parse_action(cmd, args)
            except ValueError:
                self.error()
                return True
            self.dialup = self.dialup or cmd == "FETCH"
            if self.multistation:
                self.pending_actions.append((cmd, args))
                self.apply_action(self.current, *request)
                self.ok()
            else:  # uni-station: every station, data flows at once
                for key in srv._by_station:
                    self.apply_action(self.subs.setdefault(key, _Subscription(key)), *request)
                self.begin_streaming()
        elif cmd == "END":
            if not self.multistation or not any(s.cursor is not None for s in self.subs.values()):
                self.error()
            else:
                self.begin_streaming()
        else:
            self.error()
        return True

    @staticmethod
    def parse_action(
        cmd: str, args: list[str]
    ) -> tuple[str, int | None, UTCDateTime | None, UTCDateTime | None]:
        if cmd == "TIME":
            if not args:
                raise ValueError("TIME needs a begin time")
            begin = _parse_sl_time(args[0])
            end = _parse_sl_time(args[1]) if len(args) > 1 else None
            return cmd, None, begin, end
        seq = int(args[0], 16) % SEQ_MODULUS if args else None
        begin = _parse_sl_time(args[1]) if len(args) > 1 else None
        return cmd, seq, begin, None

    def apply_action(
        self,
        sub: _Subscription,
        cmd: str,
        seq: int | None,
        begin: UTCDateTime | None,
        end: UTCDateTime | None,
    ) -> None:
        srv = self.server
        recs = srv._by_station[sub.key]
        with srv._cond:
            n_pub = srv._published_count(sub.key)
            if cmd == "TIME":
                sub.cursor = next((i for i, r in enumerate(recs) if r.endtime > begin), len(recs))
                sub.until = end
            elif seq is not None and srv.replay_on_resume:
                sub.cursor = 0
            elif seq is not None:
                pos = next((i for i, r in enumerate(recs[: n_pub + 1]) if r.seq == seq), None)
                if pos is None and begin is not None:
                    pos = next((i for i, r in enumerate(recs) if r.endtime > begin), len(recs))
                # a sequence number no longer (or not yet) in the ring: real-time data
                sub.cursor = n_pub if pos is None else pos
            else:
                sub.cursor = n_pub
            srv.data_requests.append(DataRequest(self.conn_id, *sub.key, cmd, seq, begin))
            srv._cond.notify_all()

    def begin_streaming(self) -> None:
        srv = self.server
        with srv._cond:
            srv.sessions_started += 1
            srv._cond.notify_all()
        self.subs = {k: s for k, s in self.subs.items() if s.cursor is not None}
        self.streaming = True

    def next_record(self) -> tuple[_Subscription, Record] | None:
        """The earliest published record (publication order) any subscription still wants."""
        srv = self.server
        best: tuple[_Subscription, Record] | None = None
        for sub in self.subs.values():
            recs = srv._by_station[sub.key]
            n_pub = srv._published_count(sub.key)
            while sub.cursor < n_pub and not sub.wants(recs[sub.cursor]):
                sub.cursor += 1
            if sub.cursor < n_pub:
                rec = recs[sub.cursor]
                if best is None or rec.index < best[1].index:
                    best = (sub, rec)
        return best

    def stream_some(self) -> bool:
        """Send what is published (up to a batch); False when a FETCH/TIME window is done."""
        srv = self.server
        for _ in range(64):
            with srv._cond:
                if srv._silent:
                    srv._cond.wait(0.05)
                    return True
                nxt = self.next_record()
                if nxt is None:
                    if self.finished():
                        break
                    srv._cond.wait(0.05)
                    return True
            sub, rec = nxt
            self.send(rec.packet)
            sub.cursor += 1
            with srv._cond:
                srv.records_sent_total += 1
                srv._cond.notify_all()
        else:
            return True
        self.send(b"END")
        return False

    def finished(self) -> bool:
        """FETCH: the ring is drained; TIME with an end: the window is complete."""
        srv = self.server
        if self.dialup:
            return True
        windows = [s for s in self.subs.values() if s.until is not None]
        if not windows or len(windows) != len(self.subs):
            return False
        return all(
            srv._published_count(s.key) == len(srv._by_station[s.key])
            or srv._by_station[s.key][srv._published_count(s.key)].starttime >= s.until
            for s in windows
        )


def _parse_sl_time(text: str) -> UTCDateTime:
    """SeedLink time ``YYYY,MM,DD,hh,mm,ss`` (as ObsPy's ``format_seedlink`` writes it)."""
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 6:
        raise ValueError(f"bad SeedLink time {text!r}")
    return UTCDateTime(*parts)
