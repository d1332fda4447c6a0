"""Evaluate a model on template windows: an exported ONNX file (through the
detector's own ONNX Runtime session, i.e. exactly what is served) or a training
run's checkpoint, on the run's held-out split or on any templates file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import binary_metrics, confusion_matrix
from .templates import Split, read_templates
from .train import EvalSet, TrainConfig, make_eval_set

SPLITS = ("test", "val", "train", "all")


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    confusion: np.ndarray
    class_names: list[str]
    n_windows: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "class_names": self.class_names,
            "metrics": self.metrics,
            "confusion_matrix": self.confusion.tolist(),
        }

    def table(self) -> str:
        m = self.metrics
        lines = [
            f"evaluation of {self.source}",
            f"  windows           {m['n_windows']} ({m['n_event']} event, {m['n_noise']} noise)",
            f"  threshold         {m['threshold']:.4f} (event probability)",
            f"  precision         {m['precision']:.4f}",
            f"  recall            {m['recall']:.4f}",
            f"  F1                {m['f1']:.4f}",
            f"  accuracy          {m['accuracy']:.4f}",
            f"  ROC-AUC           {m['roc_auc']:.4f}",
            f"  false-pos. rate   {m['false_positive_rate']:.4f}  ({m['fp']} of {m['n_noise']} noise windows)",
            "  confusion matrix at the threshold (rows true, columns predicted):",
        ]
        w = max(len(c) for c in self.class_names) + 2
        lines.append(" " * (w + 2) + "".join(f"{c:>{w}}" for c in self.class_names))
        for c, row in zip(self.class_names, self.confusion, strict=True):
            lines.append(f"  {c:<{w}}" + "".join(f"{v:>{w}}" for v in row))
        return "\n".join(lines)


def _eval_windows(
    templates: str | None, run_state: dict | None, split: str, window_samples: int, onsets: tuple
) -> tuple[EvalSet, list[str], str]:
    if run_state is not None:
        cfg = TrainConfig.from_dict(run_state["config"])
        t = read_templates(templates or cfg.templates)
        if (
            split == "all"
            or templates is not None
            and Path(templates).resolve() != Path(cfg.templates).resolve()
        ):
            idx, label = np.arange(len(t)), f"{t.path} (all windows)"
        else:
            sp = Split.from_dict(run_state["split"])
            idx, label = getattr(sp, split), f"{t.path} ({split} split, by {sp.by})"
        return make_eval_set(t, idx, cfg), t.class_names, label
    if templates is None:
        raise ValueError("evaluating an ONNX file needs --templates")
    t = read_templates(templates)
    cfg = TrainConfig(templates=str(templates), eval_onsets_s=onsets)
    cfg.model.window_samples = window_samples
    return make_eval_set(t, np.arange(len(t)), cfg), t.class_names, f"{t.path} (all windows)"


def evaluate(
    model: str | Path,
    *,
    templates: str | None = None,
    split: str = "test",
    threshold: float | None = None,
    run: str | Path | None = None,
    eval_onsets_s: tuple[float, ...] = (1.0, 2.5, 4.0),
) -> Evaluation:
    """Evaluate ``model`` (.onnx file, checkpoint .pt, or run directory).

    An ONNX file uses its spec's trigger threshold unless ``threshold`` is
    given, and the run's split when ``run`` names the run directory it came from.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    model = Path(model)
    if model.suffix == ".onnx" or (not model.exists() and model.suffix == ""):
        from quakescan.detector.model import OnnxModel

        m = OnnxModel(str(model) if model.exists() else model.name, device="cpu")
        state = None
        if run is not None:
            import torch

            state = torch.load(Path(run) / "last.pt", map_location="cpu", weights_only=False)
        ev, class_names, label = _eval_windows(
            templates, state, split, m.spec.window_samples, eval_onsets_s
        )
        if list(m.spec.class_names) != class_names:
            raise ValueError(
                f"model classes {list(m.spec.class_names)} differ from the templates' {class_names}"
            )
        probs = m.predict(ev.x)
        thr = m.spec.trigger.on if threshold is None else threshold
        source = f"{m.path} on {label}"
    else:
        from .export import load_checkpoint
        from .train import predict

        net, state = load_checkpoint(model)
        ev, class_names, label = _eval_windows(
            templates, state, split, net.cfg.window_samples, eval_onsets_s
        )
        probs = predict(net, ev.x)
        thr = 0.5 if threshold is None else threshold
        source = f"{model} on {label}"
    metrics = binary_metrics(probs, ev.y, thr)
    cm = confusion_matrix(probs, ev.y, len(class_names), thr)
    return Evaluation(metrics, cm, class_names, len(ev.y), source)


def save(ev: Evaluation, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ev.to_dict(), indent=2))
    return path
