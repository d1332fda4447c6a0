"""ModelSpec: what a quakescan ONNX model declares about itself.

The ONNX file is the whole model (raw prepared windows in, class probabilities
out); its ``metadata_props`` carry one JSON document under the key
``quakescan.spec``. The detector reads it on load and refuses a file whose spec
is missing or wrong, naming the problem. Nothing about a model is hard-coded
elsewhere in ``detector/``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .trigger import TriggerParams

SPEC_KEY = "quakescan.spec"
FORMAT_VERSION = 1
# Component codes a model may ask for, in the order it wants them.
KNOWN_COMPONENTS = set("ZNE")


class SpecError(ValueError):
    """A model file whose spec is missing or invalid."""


@dataclass(frozen=True)
class Preparation:
    """How the stream and each window are prepared.

    ``stream`` steps run in ``detector.prepare`` on continuous data (merge, gap
    split, channel mapping, resampling). ``window`` steps are inside the ONNX
    graph, per window, so training and serving compute the same numbers:
    linear detrend, a zero-phase FIR band-pass with odd-extension padding, and
    per-channel peak normalisation.
    """

    bandpass_hz: tuple[float, float] | None = (2.0, 25.0)
    fir_taps: int = 101
    detrend: str = "linear"
    normalisation: str = "peak-per-channel"
    where: str = "graph"

    def validate(self) -> None:
        if self.bandpass_hz is not None:
            lo, hi = self.bandpass_hz
            if not 0 < lo < hi:
                raise SpecError(
                    f"preparation.bandpass_hz {self.bandpass_hz} must be 0 < low < high"
                )
        if self.where != "graph":
            raise SpecError(
                f"preparation.where is {self.where!r}; this detector supports 'graph' "
                "(window preparation inside the ONNX model) only"
            )


@dataclass(frozen=True)
class ModelSpec:
    """The contract between a model file and the detector.

    ``channel_order`` is the order of the input's channel axis, by component
    (e.g. ``"ENZ"``); ``class_names[0]`` is always ``"noise"``.
    """

    name: str
    version: str
    architecture: str
    sampling_rate_hz: float
    window_samples: int
    channel_order: str
    class_names: tuple[str, ...]
    input_name: str = "windows"
    output_name: str = "probabilities"
    step_s: float = 1.0
    # Typical position of the event onset inside a positive window, seconds from
    # the window start: the detector's onset estimate for a triggered window.
    onset_offset_s: float = 0.0
    # The lowest input rate the model can serve (None: derived, see min_rate_hz). Data
    # sampled below it cannot hold the model's band and is refused, never upsampled.
    min_sampling_rate_hz: float | None = None
    preparation: Preparation = field(default_factory=Preparation)
    trigger: TriggerParams = field(default_factory=TriggerParams)
    description: str = ""
    trained_on: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    # ------------------------------------------------------------------ derived
    @property
    def window_s(self) -> float:
        return self.window_samples / self.sampling_rate_hz

    @property
    def min_rate_hz(self) -> float:
        """The lowest input sampling rate served: ``min_sampling_rate_hz``, else twice the
        band-pass's upper corner (the band must lie below the input's Nyquist frequency),
        else half the model's rate."""
        if self.min_sampling_rate_hz is not None:
            return float(self.min_sampling_rate_hz)
        if self.preparation.bandpass_hz is not None:
            return 2.0 * float(self.preparation.bandpass_hz[1])
        return self.sampling_rate_hz / 2.0

    @property
    def n_channels(self) -> int:
        return len(self.channel_order)

    @property
    def event_classes(self) -> tuple[str, ...]:
        return self.class_names[1:]

    # --------------------------------------------------------------- validation
    def validate(self) -> ModelSpec:
        if self.format_version != FORMAT_VERSION:
            raise SpecError(
                f"spec format_version {self.format_version} is not supported "
                f"(this detector reads version {FORMAT_VERSION})"
            )
        for name in ("name", "version", "architecture"):
            if not getattr(self, name):
                raise SpecError(f"spec field {name!r} is empty")
        if not self.sampling_rate_hz > 0:
            raise SpecError(f"sampling_rate_hz ({self.sampling_rate_hz}) must be > 0")
        if not self.window_samples > 0:
            raise SpecError(f"window_samples ({self.window_samples}) must be > 0")
        order = self.channel_order
        if not order or set(order) - KNOWN_COMPONENTS or len(set(order)) != len(order):
            raise SpecError(
                f"channel_order {order!r} must be distinct component codes from 'ZNE' (e.g. 'ENZ')"
            )
        if len(self.class_names) < 2 or self.class_names[0] != "noise":
            raise SpecError(
                f"class_names {list(self.class_names)} must start with 'noise' and name "
                "at least one event class"
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise SpecError(f"class_names {list(self.class_names)} has duplicates")
        if not self.step_s > 0:
            raise SpecError(f"step_s ({self.step_s}) must be > 0")
        if not 0 <= self.onset_offset_s <= self.window_s:
            raise SpecError(
                f"onset_offset_s ({self.onset_offset_s}) must lie inside the window (0..{self.window_s} s)"
            )
        if self.min_sampling_rate_hz is not None and not (
            0 < self.min_sampling_rate_hz <= self.sampling_rate_hz
        ):
            raise SpecError(
                f"min_sampling_rate_hz ({self.min_sampling_rate_hz}) must lie in "
                f"(0, sampling_rate_hz={self.sampling_rate_hz}]"
            )
        self.preparation.validate()
        return self

    # -------------------------------------------------------------- (de)serial
    def to_json(self) -> str:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        if not isinstance(d, dict):
            raise SpecError(f"spec must be a JSON object, found {type(d).__name__}")
        required = [
            "format_version",
            "name",
            "version",
            "architecture",
            "sampling_rate_hz",
            "window_samples",
            "channel_order",
            "class_names",
        ]
        missing = [k for k in required if k not in d]
        if missing:
            raise SpecError(f"spec is missing required field(s): {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"spec has unknown field(s): {', '.join(unknown)}")
        d = dict(d)
        try:
            prep = dict(d.pop("preparation", {}) or {})
            if prep.get("bandpass_hz") is not None:
                prep["bandpass_hz"] = tuple(float(x) for x in prep["bandpass_hz"])
            trig = dict(d.pop("trigger", {}) or {})
            spec = cls(
                **{
                    **d,
                    "sampling_rate_hz": float(d["sampling_rate_hz"]),
                    "window_samples": int(d["window_samples"]),
                    "class_names": tuple(str(c) for c in d["class_names"]),
                },
                preparation=Preparation(**prep),
                trigger=TriggerParams(**trig),
            )
        except TypeError as exc:  # wrong nested field names
            raise SpecError(f"spec is malformed: {exc}") from None
        except ValueError as exc:  # out-of-range trigger settings
            raise SpecError(
                f"spec trigger settings {trig} are invalid (trigger.on, trigger.off, "
                f"trigger.min_duration_s, trigger.merge_gap_s): {exc}"
            ) from None
        return spec.validate()

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec under {SPEC_KEY!r} is not valid JSON: {exc}") from None
        return cls.from_dict(d)
