"""``Detector``: prepare -> windows -> ONNX Runtime -> trigger -> detections.

``annotate(stream)`` returns per-class probability traces; ``detect(stream)``
returns detections; ``detect_iter(pieces)`` does the same over a sequence of
streams (day by day from an SDS archive, say) in bounded memory, carrying the
data overlap and the trigger state across pieces so the result equals a single
pass.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from obspy import Stream, Trace, UTCDateTime

from .catalog import Detection
from .model import OnnxModel
from .prepare import PrepReport, Segment, prepare_stream
from .stalta import StaLtaParams, StaLtaStation
from .trigger import StationTrigger, TriggerFactory
from .windows import grid_windows, iter_batches, step_ns

log = logging.getLogger(__name__)
METHODS = ("cnn", "stalta")


@dataclass
class StationProbabilities:
    """Per-window class probabilities of one station segment.

    k: int64[n] grid indices (window k starts at k * step_s); probs: float32[n, classes].
    """

    station: str
    channel_prefix: str
    k: np.ndarray
    probs: np.ndarray
    components: str = ""
    batch_sizes: list[int] = field(default_factory=list)  # ONNX Runtime calls that made it


@dataclass
class RunStats:
    """Counters of one run, for the CLI summary and the service metrics."""

    windows: int = 0
    segments: int = 0
    samples: int = 0
    inference_s: float = 0.0
    batches: int = 0
    stations: set = field(default_factory=set)
    report: PrepReport = field(default_factory=PrepReport)


def _merge_station(parts: list[StationProbabilities]) -> StationProbabilities:
    """One station's segment results as one, k strictly increasing (first computation kept)."""
    if len(parts) == 1:
        return parts[0]
    k = np.concatenate([p.k for p in parts])
    probs = np.concatenate([p.probs for p in parts])
    order = np.argsort(k, kind="stable")
    k, probs = k[order], probs[order]
    k, first = np.unique(k, return_index=True)
    p0 = parts[0]
    sizes = [b for p in parts for b in p.batch_sizes]
    return StationProbabilities(
        p0.station, p0.channel_prefix, k, probs[first], p0.components, batch_sizes=sizes
    )


class Detector:
    """A detector over one model file (None: the shipped default model).

    ``step_s`` and the trigger settings default to the model's spec. With
    ``method="stalta"`` ObsPy's recursive STA/LTA replaces the network but the
    preparation, detection records and outputs are the same.
    """

    def __init__(
        self,
        model: str | os.PathLike | OnnxModel | None = None,
        *,
        step_s: float | None = None,
        threshold: float | None = None,
        off_threshold: float | None = None,
        min_duration_s: float | None = None,
        merge_gap_s: float | None = None,
        method: str = "cnn",
        stalta: StaLtaParams | None = None,
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = 256,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
        self.method = method
        self.model = (
            model
            if isinstance(model, OnnxModel)
            else OnnxModel(model, device=device, threads=threads, batch_size=batch_size)
        )
        spec = self.model.spec
        self.spec = spec
        self.triggers = TriggerFactory.from_spec(
            spec,
            step_s=step_s,
            threshold=threshold,
            off_threshold=off_threshold,
            min_duration_s=min_duration_s,
            merge_gap_s=merge_gap_s,
        )
        self.step_s = self.triggers.step_s
        step_ns(self.step_s)
        self.trigger_params = self.triggers.params
        self.stalta = stalta or StaLtaParams(bandpass_hz=spec.preparation.bandpass_hz)
        self.stats = RunStats()

    # ----------------------------------------------------------------- names
    @property
    def model_name(self) -> str:
        return "stalta" if self.method == "stalta" else self.spec.name

    @property
    def model_version(self) -> str:
        return self.stalta.version if self.method == "stalta" else self.spec.version

    @property
    def provider(self) -> str:
        return self.model.provider

    # ------------------------------------------------------------ preparation
    def prepare(self, stream: Stream, report: PrepReport | None = None) -> list[Segment]:
        report = report if report is not None else self.stats.report
        segs = prepare_stream(
            stream,
            sampling_rate_hz=self.spec.sampling_rate_hz,
            channel_order=self.spec.channel_order,
            min_samples=self.spec.window_samples
            if self.method == "cnn"
            else self.stalta.min_samples(self.spec.sampling_rate_hz),
            report=report,
            min_sampling_rate_hz=self.spec.min_rate_hz,
        )
        return segs

    # --------------------------------------------------------------- inference
    def window_probabilities(
        self,
        stream: Stream,
        k_first: int | None = None,
        k_last: int | None = None,
        report: PrepReport | None = None,
        *,
        step_s: float | None = None,
    ) -> list[StationProbabilities]:
        """Probabilities of the grid windows k_first..k_last (None: unbounded) of a stream.

        The one path from waveforms to probabilities: ``detect``, the service's
        chunks and batch station-days all come through here. The stream is
        prepared as the model's spec says; window k starts at k * step_s. One
        result per station and channel prefix, k strictly increasing (where
        prepared segments overlap, each window is computed once). ``step_s``
        overrides the detector's step (a chunk carries the grid it was cut on).
        """
        if self.method != "cnn":
            raise ValueError("probabilities are produced by the CNN method only")
        by_station: dict[tuple[str, str], list[StationProbabilities]] = {}
        for seg in self.prepare(stream, report):
            sp = self.segment_probabilities(seg, k_first=k_first, k_last=k_last, step_s=step_s)
            if len(sp.k):
                by_station.setdefault(seg.key, []).append(sp)
        return [_merge_station(parts) for _key, parts in sorted(by_station.items())]

    def segment_probabilities(
        self,
        seg: Segment,
        k_first: int | None = None,
        k_last: int | None = None,
        *,
        step_s: float | None = None,
    ) -> StationProbabilities:
        """Run the model over the grid windows k_first..k_last of one prepared segment.

        k: int64[n]; probs: float32[n, classes].
        """
        w = self.spec.window_samples
        step = self.step_s if step_s is None else step_s
        k, off = grid_windows(seg.start_ns, seg.n_samples, seg.sampling_rate_hz, w, step)
        if k_first is not None or k_last is not None:
            keep = np.ones(len(k), bool)
            if k_first is not None:
                keep &= k >= k_first
            if k_last is not None:
                keep &= k <= k_last
            k, off = k[keep], off[keep]
        probs = np.empty((len(k), len(self.spec.class_names)), dtype=np.float32)
        sizes: list[int] = []
        t0 = time.perf_counter()
        for sl, batch in iter_batches(seg.data, off, w, self.model.batch_size):
            probs[sl] = self.model.run_batch(batch)
            self.stats.batches += 1
            sizes.append(len(batch))
        self.stats.inference_s += time.perf_counter() - t0
        self.stats.windows += len(k)
        self.stats.segments += 1
        self.stats.samples += seg.n_samples
        self.stats.stations.add(seg.station)
        return StationProbabilities(
            seg.station, seg.channel_prefix, k, probs, seg.components, batch_sizes=sizes
        )

    def probabilities(self, stream: Stream) -> list[StationProbabilities]:
        """Per-window probabilities for every station of a stream (all grid windows)."""
        return self.window_probabilities(stream)

    def annotate(self, stream: Stream) -> Stream:
        """Probability traces, one per station segment and class.

        Sample i of a trace is the probability of the class for the window
        that starts at ``starttime + i * step_s``. The channel code is
        ``<prefix>_<class>`` (e.g. ``HH_earthquake``); a gap starts a new trace.
        """
        out = Stream()
        for sp in self.probabilities(stream):
            breaks = np.flatnonzero(np.diff(sp.k) > 1) + 1
            for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(sp.k)], strict=True):
                net, sta, loc = sp.station.split(".")
                start = UTCDateTime(ns=int(sp.k[lo]) * step_ns(self.step_s))
                for ci, cname in enumerate(self.spec.class_names):
                    tr = Trace(sp.probs[lo:hi, ci].copy())
                    tr.stats.network, tr.stats.station, tr.stats.location = net, sta, loc
                    tr.stats.channel = f"{sp.channel_prefix}_{cname}"
                    tr.stats.starttime = start
                    tr.stats.delta = self.step_s
                    tr.stats.quakescan_class = cname
                    out.append(tr)
        return out

    # ---------------------------------------------------------------- trigger
    def new_trigger(self, station: str, channel_prefix: str) -> StationTrigger:
        return self.triggers.new(station, channel_prefix)

    def detect(self, stream: Stream) -> list[Detection]:
        """Detections over a whole stream, sorted by (start, station)."""
        return sorted(self.detect_iter([stream]))

    def detect_iter(self, pieces: Iterable[Stream]) -> Iterator[Detection]:
        """Detections over consecutive pieces of data (e.g. day files), in bounded memory.

        Each station keeps the last (window - step) of its data, prepended to
        the next piece when the two are contiguous, so no window is lost at a
        piece boundary and none is computed twice; the trigger state carries over.
        """
        runner = _StreamRunner(self)
        for st in pieces:
            yield from sorted(runner.feed(st))
        yield from sorted(runner.flush())


class _StreamRunner:
    """Per-station carry-over between pieces: a data tail and a trigger (or STA/LTA state)."""

    def __init__(self, det: Detector) -> None:
        self.det = det
        self.tails: dict[tuple[str, str], Segment] = {}
        self.triggers: dict[tuple[str, str], StationTrigger] = {}
        self.stalta: dict[tuple[str, str], StaLtaStation] = {}
        self.run_samples: dict[
            tuple[str, str], tuple[int, int]
        ] = {}  # (start_ns, samples) of a run

    def _close_run(self, key: tuple[str, str]) -> None:
        """A contiguous run ended: if it was too short for one window, say so."""
        run = self.run_samples.pop(key, None)
        need = self.det.spec.window_samples
        if run is not None and run[1] < need and self.det.method == "cnn":
            self.det.stats.report.skip(
                "short_segment",
                f"{key[0]}.{key[1]}: {run[1]} samples from {UTCDateTime(ns=run[0])} are shorter "
                f"than one window ({need} samples); skipped",
            )

    def _join(self, seg: Segment) -> Segment:
        tail = self.tails.get(seg.key)
        if tail is None or tail.data.shape[0] != seg.data.shape[0]:
            return seg
        dt_ns = 1e9 / seg.sampling_rate_hz
        expected = tail.start_ns + round(tail.n_samples * dt_ns)
        if abs(seg.start_ns - expected) <= dt_ns / 2 and tail.components == seg.components:
            data = np.concatenate([tail.data, seg.data], axis=1)
            return Segment(
                seg.station,
                seg.channel_prefix,
                tail.start_ns,
                seg.sampling_rate_hz,
                data,
                seg.components,
            )
        return seg

    def _keep_tail(self, seg: Segment, n: int) -> None:
        n = min(n, seg.n_samples)
        dt_ns = 1e9 / seg.sampling_rate_hz
        self.tails[seg.key] = Segment(
            seg.station,
            seg.channel_prefix,
            seg.start_ns + round((seg.n_samples - n) * dt_ns),
            seg.sampling_rate_hz,
            seg.data[:, seg.n_samples - n :].copy(),
            seg.components,
        )

    def feed(self, st: Stream) -> list[Detection]:
        det = self.det
        report = PrepReport()
        # Prepare with no minimum length: a short piece may complete a window with the tail.
        segs = prepare_stream(
            st,
            sampling_rate_hz=det.spec.sampling_rate_hz,
            channel_order=det.spec.channel_order,
            min_samples=1,
            report=report,
            min_sampling_rate_hz=det.spec.min_rate_hz,
        )
        det.stats.report.merge(report)
        out: list[Detection] = []
        for seg in sorted(segs, key=lambda s: (s.key, s.start_ns)):
            new_samples = seg.n_samples
            joined = self._join(seg)
            if joined is seg:
                self._close_run(seg.key)
                self.run_samples[seg.key] = (seg.start_ns, 0)
            start_ns, n = self.run_samples.get(seg.key, (seg.start_ns, 0))
            self.run_samples[seg.key] = (start_ns, n + new_samples)
            seg = joined
            if det.method == "cnn":
                trig = self.triggers.get(seg.key)
                if trig is None:
                    trig = self.triggers[seg.key] = det.new_trigger(seg.station, seg.channel_prefix)
                k_first = None if trig.last_k is None else trig.last_k + 1
                sp = det.segment_probabilities(seg, k_first=k_first)
                out += trig.feed(sp.k, sp.probs)
                self._keep_tail(seg, det.spec.window_samples - 1)
            else:
                sl = self.stalta.get(seg.key)
                if sl is None:
                    sl = self.stalta[seg.key] = StaLtaStation(
                        seg.station,
                        seg.channel_prefix,
                        det.stalta,
                        det.spec.sampling_rate_hz,
                        det.spec.channel_order,
                    )
                out += sl.feed(seg)
                det.stats.segments += 1
                det.stats.samples += seg.n_samples
                det.stats.stations.add(seg.station)
        return out

    def flush(self) -> list[Detection]:
        out: list[Detection] = []
        for key in list(self.run_samples):
            self._close_run(key)
        for trig in self.triggers.values():
            out += trig.flush()
        for sl in self.stalta.values():
            out += sl.flush()
        return out
