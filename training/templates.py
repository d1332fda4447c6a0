"""HDF5 waveform templates: read, validate, clean, split, and cut training windows.

The templates format (HDF5): datasets ``earthquakes`` and ``noise``, each float
(N, channels, samples); ConvNetQuake's windows (Perol et al. 2018) are 10 s at
100 Hz, (N, 3, 1000).
Optional: ``tremor`` (slow-earthquake positives), an integer ``clusters``
dataset aligned with ``earthquakes`` (ConvNetQuake's k-means location classes:
noise is class 0, cluster k is class k + 1), attributes ``sampling_rate`` and
``component_order``.

quakescan's builder adds, all optional for readers: ``<class>_p_sample`` (the
onset's sample index in each window), ``<class>_source`` (the record each
window came from) and ``<class>_station`` (NET.STA, used to split by station).
Windows may be longer than the model's window ("context"): training then cuts
a window at a random offset around the onset (a real time shift) and
evaluation at fixed offsets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_SAMPLING_RATE_HZ = 100.0  # ConvNetQuake's windows (Perol et al. 2018)
DEFAULT_COMPONENT_ORDER = "ENZ"
POSITIVE_DATASETS = ("earthquakes", "tremor")


class TemplatesError(ValueError):
    """A templates file with missing or malformed datasets."""


@dataclass
class Templates:
    """Windows and labels from one templates file.

    windows: float32[n, channels, samples]; labels: int64[n] into ``class_names``;
    onset_sample: int64[n], the onset's index in the window (-1 if unknown).
    """

    windows: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    sampling_rate_hz: float
    component_order: str
    onset_sample: np.ndarray
    source: np.ndarray
    station: np.ndarray
    path: str = ""
    sha256: str = ""
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def samples(self) -> int:
        return self.windows.shape[-1]

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.class_names)}

    def subset(self, idx: np.ndarray) -> Templates:
        return Templates(
            windows=self.windows[idx],
            labels=self.labels[idx],
            class_names=self.class_names,
            sampling_rate_hz=self.sampling_rate_hz,
            component_order=self.component_order,
            onset_sample=self.onset_sample[idx],
            source=self.source[idx],
            station=self.station[idx],
            path=self.path,
            sha256=self.sha256,
        )


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_STATION_PATTERNS = [
    re.compile(r"(?<![A-Za-z0-9])([A-Z0-9]{1,2})\.([A-Z0-9]{1,5})\.\d{8}T"),  # NET.STA.YYYYMMDDT...
    re.compile(
        r"(?<![A-Za-z0-9])([A-Z0-9]{1,5})\.([A-Z0-9]{1,2})_\d{8}"
    ),  # STEAD: STA.NET_YYYYMMDD
]


def station_from_source(source: str) -> str:
    """NET.STA from a window's source name, or '' when it cannot be told."""
    m = _STATION_PATTERNS[0].search(source)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    m = _STATION_PATTERNS[1].search(source)
    if m:
        return f"{m.group(2)}.{m.group(1)}"
    return ""


def _decode(a: np.ndarray) -> np.ndarray:
    return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in a], dtype=object)


def _check_dataset(path: Path, f: h5py.File, name: str, n_channels: int | None) -> h5py.Dataset:
    if name not in f:
        raise TemplatesError(
            f"{path}: dataset {name!r} is missing (found: {', '.join(sorted(f.keys())) or 'nothing'})"
        )
    d = f[name]
    if not isinstance(d, h5py.Dataset):
        raise TemplatesError(
            f"{path}: {name!r} is a group, expected a dataset (N, channels, samples)"
        )
    if d.ndim != 3:
        raise TemplatesError(
            f"{path}: dataset {name!r} has shape {d.shape}; expected 3 dimensions (N, channels, samples)"
        )
    if d.dtype.kind not in "fiu":
        raise TemplatesError(
            f"{path}: dataset {name!r} has dtype {d.dtype}; expected float (or integer counts)"
        )
    if n_channels is not None and d.shape[1] != n_channels:
        raise TemplatesError(
            f"{path}: dataset {name!r} has shape {d.shape}; expected (N, {n_channels}, samples) "
            f"for component_order of {n_channels} channels"
        )
    if d.shape[0] == 0:
        raise TemplatesError(f"{path}: dataset {name!r} is empty (0 windows)")
    return d


def read_templates(path: str | Path) -> Templates:
    """Read and validate a templates file; drop windows with NaN/inf or all-zero channels."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"templates file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise TemplatesError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        rate = float(f.attrs.get("sampling_rate", DEFAULT_SAMPLING_RATE_HZ))
        if not rate > 0:
            raise TemplatesError(f"{path}: attribute sampling_rate ({rate}) must be > 0")
        order = f.attrs.get("component_order", DEFAULT_COMPONENT_ORDER)
        order = order.decode() if isinstance(order, bytes) else str(order)
        if not order or set(order) - set("ZNE") or len(set(order)) != len(order):
            raise TemplatesError(
                f"{path}: attribute component_order {order!r} must be distinct codes from 'ZNE'"
            )
        sets = {"noise": _check_dataset(path, f, "noise", len(order))}
        sets["earthquakes"] = _check_dataset(path, f, "earthquakes", len(order))
        if "tremor" in f:
            sets["tremor"] = _check_dataset(path, f, "tremor", len(order))
        samples = {k: d.shape[2] for k, d in sets.items()}
        if len(set(samples.values())) != 1:
            raise TemplatesError(
                f"{path}: datasets have different window lengths {samples}; all must match"
            )
        clusters = None
        if "clusters" in f:
            c = f["clusters"]
            n_eq = sets["earthquakes"].shape[0]
            if c.ndim != 1 or c.shape[0] != n_eq or c.dtype.kind not in "iu":
                raise TemplatesError(
                    f"{path}: dataset 'clusters' has shape {c.shape} and dtype {c.dtype}; "
                    f"expected integer ({n_eq},), one cluster per earthquake"
                )
            clusters = c[()].astype(np.int64)
            if clusters.min() < 0:
                raise TemplatesError(f"{path}: dataset 'clusters' has negative values")
            if "tremor" in sets:
                raise TemplatesError(f"{path}: 'clusters' and 'tremor' cannot be combined")

        if clusters is not None:
            k = int(clusters.max()) + 1
            class_names = ["noise"] + [f"cluster{i}" for i in range(k)]
        else:
            class_names = ["noise", "earthquake"] + (["tremor"] if "tremor" in sets else [])

        parts, labels, onsets, sources, stations = [], [], [], [], []
        for name, d in sets.items():
            w = d[()].astype(np.float32, copy=False)
            n = len(w)
            if name == "noise":
                lab = np.zeros(n, dtype=np.int64)
            elif name == "earthquakes":
                lab = clusters + 1 if clusters is not None else np.ones(n, dtype=np.int64)
            else:
                lab = np.full(n, class_names.index("tremor"), dtype=np.int64)
            onset = np.full(n, -1, dtype=np.int64)
            key = f"{name}_p_sample"
            if key in f:
                onset = f[key][()].astype(np.int64)
                if onset.shape != (n,):
                    raise TemplatesError(
                        f"{path}: {key!r} has shape {onset.shape}; expected ({n},)"
                    )
            src = (
                _decode(f[f"{name}_source"][()])
                if f"{name}_source" in f
                else np.array([f"{path.name}:{name}:{i}" for i in range(n)], dtype=object)
            )
            if f"{name}_station" in f:
                sta = _decode(f[f"{name}_station"][()])
            else:
                sta = np.array([station_from_source(s) for s in src], dtype=object)
            parts.append(w)
            labels.append(lab)
            onsets.append(onset)
            sources.append(src)
            stations.append(sta)

    windows = np.concatenate(parts)
    labels = np.concatenate(labels)
    t = Templates(
        windows=windows,
        labels=labels,
        class_names=class_names,
        sampling_rate_hz=rate,
        component_order=order,
        onset_sample=np.concatenate(onsets),
        source=np.concatenate(sources),
        station=np.concatenate(stations),
        path=str(path),
        sha256=file_sha256(path),
    )
    return drop_bad_windows(t)


def drop_bad_windows(t: Templates) -> Templates:
    """Drop windows with NaN/inf samples or whose channels are all zero."""
    finite = np.isfinite(t.windows).all(axis=(1, 2))
    with np.errstate(invalid="ignore"):
        alive = (np.abs(np.nan_to_num(t.windows)).max(axis=2) > 0).any(axis=1)
    keep = finite & alive
    dropped = {
        "non_finite": int((~finite).sum()),
        "all_zero": int((finite & ~alive).sum()),
    }
    if (~keep).any():
        by_class = {c: int(((~keep) & (t.labels == i)).sum()) for i, c in enumerate(t.class_names)}
        log.warning(
            "%s: dropped %d windows (%d with NaN/inf, %d all-zero); by class %s",
            t.path,
            int((~keep).sum()),
            dropped["non_finite"],
            dropped["all_zero"],
            by_class,
        )
    out = t.subset(np.flatnonzero(keep))
    out.dropped = dropped
    return out


def write_templates(
    path: str | Path,
    classes: dict[str, dict[str, np.ndarray]],
    *,
    sampling_rate_hz: float,
    component_order: str,
    clusters: np.ndarray | None = None,
    attrs: dict | None = None,
) -> Path:
    """Write a templates file in the templates format plus quakescan's optional datasets.

    classes: {"earthquakes": {"windows": float32[n, c, s], "p_sample": int[n],
    "source": str[n], "station": str[n]}, "noise": {...}, ["tremor": {...}]}.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["sampling_rate"] = float(sampling_rate_hz)
        f.attrs["component_order"] = component_order
        for k, v in (attrs or {}).items():
            f.attrs[k] = v if not isinstance(v, dict | list) else json.dumps(v)
        for name, d in classes.items():
            w = np.asarray(d["windows"], dtype=np.float32)
            f.create_dataset(name, data=w, compression="gzip", compression_opts=6, shuffle=True)
            if "p_sample" in d:
                f.create_dataset(f"{name}_p_sample", data=np.asarray(d["p_sample"], dtype=np.int32))
            for key in ("source", "station"):
                if key in d:
                    f.create_dataset(
                        f"{name}_{key}", data=np.array([s.encode() for s in d[key]], dtype="S")
                    )
        if clusters is not None:
            f.create_dataset("clusters", data=np.asarray(clusters, dtype=np.int32))
    return path


# ---------------------------------------------------------------------- splits
@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    by: str
    seed: int

    def to_dict(self) -> dict:
        return {
            "by": self.by,
            "seed": self.seed,
            "train": self.train.tolist(),
            "val": self.val.tolist(),
            "test": self.test.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        return cls(
            train=np.asarray(d["train"], dtype=np.int64),
            val=np.asarray(d["val"], dtype=np.int64),
            test=np.asarray(d["test"], dtype=np.int64),
            by=d["by"],
            seed=int(d["seed"]),
        )


def split_templates(
    t: Templates,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    by: str = "auto",
) -> Split:
    """A seeded, stratified train/validation/test split.

    ``by="station"`` keeps every window of a station in one split, so held-out
    metrics are on stations the model never saw (``auto`` does this when the
    stations are known); ``by="window"`` splits windows independently.
    Groups are assigned largest first to the split furthest below its target,
    per class, which keeps the class proportions close to the targets.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in (0, 1) "
            "and sum to less than 1"
        )
    if by == "auto":
        known = np.array([bool(s) for s in t.station])
        by = "station" if known.all() and len(set(t.station)) >= 6 else "window"
    if by not in ("station", "window"):
        raise ValueError(f"split by {by!r}: expected 'station', 'window' or 'auto'")
    rng = np.random.default_rng(seed)
    groups = t.station if by == "station" else np.arange(len(t)).astype(str)
    names, inverse = np.unique(groups.astype(str), return_inverse=True)
    n_cls = len(t.class_names)
    counts = np.zeros((len(names), n_cls))
    np.add.at(counts, (inverse, t.labels), 1)
    order = rng.permutation(len(names))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    targets = np.array([1 - val_fraction - test_fraction, val_fraction, test_fraction])
    totals = counts.sum(0)
    filled = np.zeros((3, n_cls))
    assign = np.empty(len(names), dtype=np.int64)
    for g in order:
        # How far each split would be from its per-class target after taking g.
        frac = (filled + counts[g]) / np.maximum(totals, 1)
        deficit = (frac - targets[:, None]) @ (counts[g] / max(counts[g].sum(), 1))
        s = int(np.argmin(deficit))
        assign[g] = s
        filled[s] += counts[g]
    idx = [np.sort(np.flatnonzero(assign[inverse] == s)) for s in range(3)]
    return Split(train=idx[0], val=idx[1], test=idx[2], by=by, seed=seed)


# -------------------------------------------------------------- window cutting
def eval_crop_starts(
    t: Templates, window_samples: int, onsets_s: tuple[float, ...]
) -> list[tuple[int, int]]:
    """Deterministic (template index, crop start) pairs for evaluation.

    Event windows with a known onset are cut with the onset at each of
    ``onsets_s``; noise windows at the start, middle and end of the template.
    """
    s = t.samples
    if s < window_samples:
        raise TemplatesError(
            f"templates windows ({s} samples) are shorter than the model window ({window_samples})"
        )
    out: list[tuple[int, int]] = []
    span = s - window_samples
    rate = t.sampling_rate_hz
    for i in range(len(t)):
        if span == 0:
            out.append((i, 0))
            continue
        if t.labels[i] > 0 and t.onset_sample[i] >= 0:
            starts = {int(np.clip(t.onset_sample[i] - round(o * rate), 0, span)) for o in onsets_s}
        else:
            starts = {0, span // 2, span}
        out.extend((i, c) for c in sorted(starts))
    return out


def random_crop_starts(
    t: Templates,
    idx: np.ndarray,
    window_samples: int,
    onset_range_s: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Random crop starts: events put their onset inside ``onset_range_s`` of the window."""
    span = t.samples - window_samples
    if span == 0:
        return np.zeros(len(idx), dtype=np.int64)
    rate = t.sampling_rate_hz
    starts = rng.integers(0, span + 1, size=len(idx))
    onset = t.onset_sample[idx]
    ev = (t.labels[idx] > 0) & (onset >= 0)
    if ev.any():
        lo = round(onset_range_s[0] * rate)
        hi = round(onset_range_s[1] * rate)
        off = rng.integers(lo, hi + 1, size=int(ev.sum()))
        starts[ev] = np.clip(onset[ev] - off, 0, span)
    return starts
