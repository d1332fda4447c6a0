"""Window-level classification metrics (numpy only)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U); NaN when a class is absent."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(
    probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Event (any class but noise) against noise, at an event-probability threshold.

    probs: float[n, K] class probabilities (noise first); labels: int[n].
    """
    score = 1.0 - probs[:, 0]
    pred = score >= threshold
    pos = labels > 0
    tp = int((pred & pos).sum())
    fp = int((pred & ~pos).sum())
    fn = int((~pred & pos).sum())
    tn = int((~pred & ~pos).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(labels)
    return {
        "threshold": float(threshold),
        "n_windows": n,
        "n_event": int(pos.sum()),
        "n_noise": int((~pos).sum()),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_positive_rate": fp / (fp + tn) if fp + tn else 0.0,
        "roc_auc": roc_auc(score, pos),
    }


def confusion_matrix(
    probs: np.ndarray, labels: np.ndarray, n_classes: int, threshold: float = 0.5
) -> np.ndarray:
    """int[K, K]: rows are true classes, columns predicted, as the trigger decides: an event
    when 1 - p(noise) >= threshold, labelled with the most probable event class."""
    pred = np.where(1.0 - probs[:, 0] >= threshold, 1 + probs[:, 1:].argmax(1), 0)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm
