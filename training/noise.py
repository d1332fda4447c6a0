"""Noise windows: where the quiet part of a record lies, and a seeded spread-out choice in it.

Quiet means ending at least a margin before each P onset (and origin time) of the station and
starting well after it (Perol et al. 2018: noise from the quiet time between catalog events).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right

import numpy as np


def quiet_starts(
    spans: list[tuple[float, float]],
    exclusion: np.ndarray,
    *,
    window_s: float,
    margin_s: float,
    after_s: float,
    stride_s: float,
    limits: tuple[float, float] | None = None,
) -> list[float]:
    """Candidate noise window starts (epoch s) on a ``stride_s`` grid from each quiet span's start.

    A window [s, s + window_s) is quiet when it ends at least ``margin_s`` before every time in
    ``exclusion`` (sorted epoch s) and starts at least ``after_s`` after every earlier one.
    """
    out: list[float] = []
    tol = 1e-6
    for a, b in spans:
        lo, hi = a, b - window_s
        if limits is not None:
            lo, hi = max(lo, limits[0]), min(hi, limits[1])
        if hi < lo - tol:
            continue
        # Forbidden starts (t - margin - window, t + after) of the times that matter here.
        i0 = bisect_left(exclusion, lo - after_s)
        i1 = bisect_right(exclusion, hi + margin_s + window_s)
        allowed = [(lo, hi)]
        for t in exclusion[i0:i1]:
            f0, f1 = t - margin_s - window_s, t + after_s
            nxt = []
            for x, y in allowed:
                if f0 > x - tol:
                    nxt.append((x, min(y, f0)))
                if f1 < y + tol:
                    nxt.append((max(x, f1), y))
            allowed = [(x, y) for x, y in nxt if y >= x - tol]
        for x, y in allowed:
            k = int(math.floor((y - x) / stride_s + tol)) + 1
            out.extend(x + j * stride_s for j in range(k))
    return out


def spread_choice(n_candidates: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to n candidate indices spread over the list: one at random from each of n equal parts."""
    if n_candidates <= n:
        return np.arange(n_candidates)
    parts = np.array_split(np.arange(n_candidates), n)
    return np.array([p[rng.integers(len(p))] for p in parts])
