"""Location classes: k-means clusters of event locations (Perol et al. 2018's classes)."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

_KM_PER_DEG = 111.195  # mean Earth radius 6371 km


def kmeans_clusters(coords: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Location classes: int64[n] in 0..k'-1 for coords float[n, 3] (lat deg, lon deg, depth km).

    k-means (scipy ``kmeans2``, k-means++ start, seeded) on distinct locations converted to local
    kilometres (east, north, depth), so degrees and depth weigh alike. Classes are renumbered by
    size (largest first); k' < k only if k-means leaves a cluster empty.
    """
    from scipy.cluster.vq import kmeans2

    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 3 or not np.isfinite(coords).all():
        raise ValueError(
            "clusters need every event's latitude, longitude and depth; "
            f"{int((~np.isfinite(coords)).any(axis=1).sum())} of {len(coords)} event windows lack "
            "a location (give a catalog with origins: QuakeML, an origins CSV, or picks with "
            "latitude/longitude columns)"
        )
    uniq, inverse = np.unique(np.round(coords, 6), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if k > len(uniq):
        raise ValueError(
            f"clusters ({k}) exceeds the number of distinct event locations ({len(uniq)})"
        )
    lat0 = np.radians(uniq[:, 0].mean())
    xyz = np.column_stack(
        [
            (uniq[:, 1] - uniq[:, 1].mean()) * _KM_PER_DEG * np.cos(lat0),
            (uniq[:, 0] - uniq[:, 0].mean()) * _KM_PER_DEG,
            uniq[:, 2],
        ]
    )
    _, lab = kmeans2(xyz, k, minit="++", seed=np.random.default_rng(seed))
    sizes = np.bincount(lab, minlength=k)
    order = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    renumber = np.full(k, -1, dtype=np.int64)
    renumber[order] = np.arange(len(order))
    if len(order) < k:
        log.warning(
            "k-means left %d of %d clusters empty; %d classes", k - len(order), k, len(order)
        )
    return renumber[lab][inverse]
