"""Sliding windows on the absolute time grid.

Window k starts at k * step seconds from the epoch (k an integer), on the
nearest sample. Two workers that see overlapping chunks of the same station
compute the same windows, so results merge and de-duplicate by (station, k).
Windows are strided views of the segment; only a batch is ever copied, into
the buffer that goes to ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import as_strided


def step_ns(step_s: float) -> int:
    ns = round(step_s * 1e9)
    if ns <= 0:
        raise ValueError(f"step_s ({step_s}) must be > 0")
    return ns


def grid_windows(
    start_ns: int, n_samples: int, sampling_rate_hz: float, window_samples: int, step_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Grid windows that fit in a segment.

    Returns (k: int64[m], offset: int64[m]): window k starts at sample
    ``offset`` of the segment, the sample nearest to time ``k * step``.
    """
    if n_samples < window_samples:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    s_ns = step_ns(step_s)
    dt_ns = 1e9 / sampling_rate_hz
    last_start_ns = start_ns + (n_samples - window_samples) * dt_ns
    k0 = -(
        -(start_ns - dt_ns / 2) // s_ns
    )  # ceil: first grid time within half a sample of the data
    k1 = (last_start_ns + dt_ns / 2) // s_ns
    k = np.arange(int(k0) - 1, int(k1) + 2, dtype=np.int64)
    off = np.rint((k * s_ns - start_ns) / dt_ns).astype(np.int64)
    ok = (off >= 0) & (off + window_samples <= n_samples)
    return k[ok], off[ok]


def window_view(data: np.ndarray, window_samples: int) -> np.ndarray:
    """Read-only strided view float32[n - W + 1, channels, W] of data float32[channels, n]."""
    c, n = data.shape
    if not data.flags.c_contiguous:
        data = np.ascontiguousarray(data)
    s_c, s_n = data.strides
    return as_strided(
        data,
        shape=(n - window_samples + 1, c, window_samples),
        strides=(s_n, s_c, s_n),
        writeable=False,
    )


def iter_batches(
    data: np.ndarray, offsets: np.ndarray, window_samples: int, batch_size: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """(slice into offsets, float32[b, channels, W] contiguous batch) for each batch.

    The batch buffer is reused between iterations: consume it before the next one.
    """
    if len(offsets) == 0:
        return
    view = window_view(data, window_samples)
    buf = np.empty(
        (min(batch_size, max(len(offsets), 1)), data.shape[0], window_samples), np.float32
    )
    for i in range(0, len(offsets), batch_size):
        idx = offsets[i : i + batch_size]
        out = buf[: len(idx)]
        # Fancy indexing gathers just these windows (np.take would copy the whole view).
        out[...] = view[idx]
        yield slice(i, i + len(idx)), out
