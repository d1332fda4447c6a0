"""Export a trained checkpoint to one self-contained ONNX file with its ModelSpec.

The graph takes raw prepared windows float32[batch, channels, samples] and
returns class probabilities float32[batch, classes]; detrend, band-pass, peak
normalisation, the spectrogram (slow-earthquake model) and the softmax /
sigmoid are all inside. The spec goes into ``metadata_props``.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from quakescan.detector.fsio import atomic_write
from quakescan.detector.spec import SPEC_KEY, ModelSpec, Preparation
from quakescan.detector.trigger import PLATEAU_DELTA, TriggerParams

from .metrics import binary_metrics
from .pipeline import DetectorNet, EnsembleNet
from .templates import Split, read_templates
from .train import TrainConfig, make_eval_set, predict

log = logging.getLogger(__name__)
OPSET = 18
PARITY_ATOL = 1e-4


@dataclass
class ExportResult:
    path: Path
    spec: ModelSpec
    max_abs_diff: float
    n_parity_windows: int


def load_checkpoint(path: str | Path) -> tuple[DetectorNet, dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist (train first, or name best.pt/last.pt)"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "config"):
        if key not in state:
            raise ValueError(f"{path}: not a quakescan checkpoint (no {key!r} entry)")
    cfg = TrainConfig.from_dict(state["config"])
    model = DetectorNet(cfg.model)
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def load_members(
    checkpoints: str | Path | list[str | Path] | tuple[str | Path, ...],
) -> tuple[DetectorNet | EnsembleNet, dict[str, Any], list[dict[str, Any]]]:
    """One checkpoint: its model. Several: their ``EnsembleNet``, after checking that every
    member was trained on the same templates with the same held-out split (else the
    validation threshold and the test metrics would mean nothing). Returns the model,
    the first member's checkpoint and a line per member for the spec ([] for one)."""
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not paths:
        raise ValueError("no checkpoint to export")
    loaded = [load_checkpoint(p) for p in paths]
    model, state = loaded[0]
    if len(loaded) == 1:
        return model, state, []
    for p, (_, s) in zip(paths[1:], loaded[1:], strict=True):
        if s.get("templates_sha256") != state.get("templates_sha256"):
            raise ValueError(
                f"ensemble: {p} was trained on other templates than {paths[0]} "
                "(templates sha256 differ)"
            )
        if s["split"] != state["split"]:
            raise ValueError(
                f"ensemble: {p} holds out other templates than {paths[0]}; train every "
                "member with the same split_seed"
            )
    members = [
        {
            "checkpoint": str(p),
            "seed": TrainConfig.from_dict(s["config"]).seed,
            "epochs_run": s.get("epoch"),
        }
        for p, (_, s) in zip(paths, loaded, strict=True)
    ]
    return EnsembleNet([m for m, _ in loaded]).eval(), state, members


def to_onnx_bytes(model: DetectorNet | EnsembleNet) -> bytes:
    """The graph with a dynamic batch axis (legacy TorchScript exporter: small, fast, stable graphs)."""
    mc = model.cfg
    x = torch.zeros(2, len(mc.channel_order), mc.window_samples)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buf,
            input_names=["windows"],
            output_names=["probabilities"],
            dynamic_axes={"windows": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return buf.getvalue()


def build_spec(
    model: DetectorNet,
    state: dict[str, Any],
    *,
    name: str,
    version: str,
    trigger: TriggerParams,
    metrics: dict[str, Any],
    description: str,
    trained_on: str,
    step_s: float,
    onset_offset_s: float,
    members: list[dict[str, Any]] | None = None,
) -> ModelSpec:
    cfg = TrainConfig.from_dict(state["config"])
    mc = cfg.model
    extra = {"ensemble_members": members} if members else {}
    return ModelSpec(
        name=name,
        version=version,
        architecture=mc.architecture,
        sampling_rate_hz=mc.sampling_rate_hz,
        window_samples=mc.window_samples,
        channel_order=mc.channel_order,
        class_names=tuple(mc.class_names),
        step_s=step_s,
        onset_offset_s=onset_offset_s,
        preparation=Preparation(
            bandpass_hz=mc.preparation.bandpass_hz,
            fir_taps=mc.preparation.fir_taps,
        ),
        trigger=trigger,
        description=description,
        trained_on=trained_on,
        training={
            "templates": Path(cfg.templates).name,
            "templates_sha256": state.get("templates_sha256", ""),
            "templates_counts": state.get("templates_counts", {}),
            "templates_dropped": state.get("templates_dropped", {}),
            "epochs_run": state.get("epoch"),
            "seed": cfg.seed,
            "split_by": state.get("split", {}).get("by"),
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "augment_onset_range_s": list(cfg.augment.onset_range_s),
            "exported": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **extra,
        },
        metrics=metrics,
    ).validate()


def threshold_for_fpr(probs: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The lowest event-probability threshold (4 decimals) that keeps the false-positive
    rate on noise windows <= target: just above the noise window ranked floor(target * n).

    probs: float[n, K] class probabilities (noise first); labels: int[n]. Rounded up to
    the 4 decimals the spec stores, so the stored threshold keeps the guarantee; 0.5
    when the target allows every noise window (or there is none).
    """
    noise = np.sort(1.0 - probs[labels == 0, 0])[::-1]
    k = int(np.floor(target * len(noise) + 1e-9))  # false positives allowed
    if k >= len(noise):
        return 0.5
    return float(np.floor(noise[k] * 1e4) / 1e4 + 1e-4)


def threshold_for_recall(probs: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The highest event-probability threshold that keeps recall on event windows >= target."""
    ev = np.sort(1.0 - probs[labels > 0, 0])
    if len(ev) == 0:
        return 0.5
    k = int(np.floor((1.0 - target) * len(ev) + 1e-9))  # misses allowed
    return float(ev[min(k, len(ev) - 1)])


def calibrate_onset_offset(model: DetectorNet, t, idx: np.ndarray, cfg: TrainConfig) -> float:
    """Where in a window the onset sits when the model is most sure: the median over events.

    Each validation event is cut with its onset at 0.3 .. 9.5 s into the window (in 0.1 s
    steps); the middle of the cuts within PLATEAU_DELTA of the highest probability is that
    event's answer. Detections report ``peak_time`` = the start of the middle window of
    their peak plateau + this offset: an onset estimate.
    """
    n, rate = cfg.model.window_samples, cfg.model.sampling_rate_hz
    offsets = np.arange(0.3, n / rate - 0.45, 0.1)
    best = []
    for i in idx:
        if t.labels[i] == 0 or t.onset_sample[i] < 0:
            continue
        starts = np.round(t.onset_sample[i] - offsets * rate).astype(int)
        ok = (starts >= 0) & (starts + n <= t.samples)
        if ok.sum() < 10:
            continue
        x = np.stack([t.windows[i, :, s : s + n] for s in starts[ok]])
        p = 1.0 - predict(model, x)[:, 0]
        # The middle of the near-peak plateau, as the trigger dates a detection.
        best.append(float(np.median(offsets[ok][p >= p.max() - PLATEAU_DELTA])))
    if not best:
        lo, hi = cfg.augment.onset_range_s
        return round((lo + hi) / 2, 2)
    return round(float(np.median(best)), 2)


def export(
    checkpoint: str | Path | list[str | Path] | tuple[str | Path, ...],
    out: str | Path,
    *,
    name: str | None = None,
    version: str = "1",
    templates: str | Path | None = None,
    target_recall: float = 0.95,
    target_fpr: float | None = None,
    threshold: float | None = None,
    off_ratio: float = 0.5,
    merge_gap_s: float = 5.0,
    description: str = "",
    trained_on: str = "",
    step_s: float = 1.0,
) -> ExportResult:
    """Export ``checkpoint`` to ``out``; check it with onnx.checker and for parity with PyTorch.

    ``checkpoint``: one checkpoint or run directory, or several (trained with the same
    split) exported as one ensemble graph (``EnsembleNet``: mean of their probabilities).

    The trigger-on threshold is ``threshold``; else, with ``target_fpr``, the lowest one
    that keeps the false-positive rate on validation noise windows <= ``target_fpr`` (the
    most recall at that false-alarm rate); else the highest one that keeps the recall on
    validation event windows >= ``target_recall`` (the fewest false alarms at that
    recall). Never below 0.5. Test-split metrics at that threshold go into the spec.
    """
    import onnxruntime as ort

    model, state, members = load_members(checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    t = read_templates(templates or cfg.templates)
    split = Split.from_dict(state["split"])
    val = make_eval_set(t, split.val, cfg)
    test = make_eval_set(t, split.test, cfg)
    val_p = predict(model, val.x)
    if threshold is not None:
        rule = "given"
    elif target_fpr is not None:
        threshold = max(0.5, threshold_for_fpr(val_p, val.y, target_fpr))
        rule = f"lowest threshold with validation false-positive rate <= {target_fpr}"
    else:
        threshold = max(0.5, threshold_for_recall(val_p, val.y, target_recall))
        rule = f"highest threshold with validation recall >= {target_recall}"
    threshold = float(min(round(threshold, 4), 0.999))
    onset_offset = calibrate_onset_offset(model, t, split.val, cfg)

    raw = to_onnx_bytes(model)
    sess = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    parity_x = np.concatenate([val.x, test.x])
    torch_p = predict(model, parity_x)
    ort_p = np.concatenate(
        [
            sess.run(None, {"windows": parity_x[i : i + 256]})[0]
            for i in range(0, len(parity_x), 256)
        ]
    )
    diff = float(np.abs(torch_p - ort_p).max()) if len(parity_x) else 0.0
    if diff > PARITY_ATOL:
        raise RuntimeError(
            f"ONNX Runtime and PyTorch disagree by {diff:.2e} (> {PARITY_ATOL}) on real windows"
        )
    test_p = ort_p[len(val.x) :]
    metrics = {
        "split": "test",
        "split_by": split.by,
        "threshold": threshold,
        "threshold_rule": rule,
        "test": binary_metrics(test_p, test.y, threshold),
        "val": binary_metrics(ort_p[: len(val.x)], val.y, threshold),
        "eval_onsets_s": list(cfg.eval_onsets_s),
    }
    spec = build_spec(
        model,
        state,
        name=name or cfg.model.architecture,
        version=version,
        trigger=TriggerParams(
            on=threshold, off=round(threshold * off_ratio, 4), merge_gap_s=merge_gap_s
        ),
        metrics=metrics,
        description=description,
        trained_on=trained_on,
        step_s=step_s,
        onset_offset_s=onset_offset,
        members=members,
    )
    m = onnx.load_from_string(raw)
    m.producer_name = "quakescan"
    m.doc_string = description or f"quakescan {spec.architecture} model"
    del m.metadata_props[:]
    p = m.metadata_props.add()
    p.key, p.value = SPEC_KEY, spec.to_json()
    onnx.checker.check_model(m, full_check=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: onnx.save(m, tmp))
    log.info(
        "exported %s (%d bytes); parity max |diff| %.2e on %d windows",
        out,
        out.stat().st_size,
        diff,
        len(parity_x),
    )
    return ExportResult(path=out, spec=spec, max_abs_diff=diff, n_parity_windows=len(parity_x))


def net_from_onnx(path: str | Path) -> tuple[DetectorNet | EnsembleNet, str]:
    """The PyTorch ``DetectorNet`` behind a quakescan ONNX file, and how its weights were matched.

    A ``ModelConfig`` from the file's spec, then every parameter from the graph's
    initializers: by name (this exporter keeps the state-dict names), else by order
    and shape. The fixed tensors of the preparation and spectrogram are rebuilt from
    the spec. Callers should check parity with the file before trusting the result.
    """
    from onnx import numpy_helper

    from .frontend import PreparationConfig
    from .pipeline import ModelConfig

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    if SPEC_KEY not in meta:
        raise ValueError(f"{path}: no {SPEC_KEY!r} metadata; not a quakescan model")
    spec = ModelSpec.from_json(meta[SPEC_KEY])
    prep = spec.preparation
    cfg = ModelConfig(
        architecture=spec.architecture,
        sampling_rate_hz=spec.sampling_rate_hz,
        window_samples=spec.window_samples,
        channel_order=spec.channel_order,
        class_names=list(spec.class_names),
        preparation=PreparationConfig(bandpass_hz=prep.bandpass_hz, fir_taps=prep.fir_taps),
    )
    n_members = len(spec.training.get("ensemble_members") or [None])
    net = (
        DetectorNet(cfg)
        if n_members == 1
        else EnsembleNet([DetectorNet(cfg) for _ in range(n_members)])
    )
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    state = net.state_dict()
    # A weight the exporter folded (ConvNetQuake's 1-D kernels become 2-D ones of height 1,
    # under a generated name) is the other input of the node that reads its bias.
    for key, value in state.items():
        if key in inits or not key.endswith(".weight"):
            continue
        bias = key[: -len("weight")] + "bias"
        node = next((n for n in proto.graph.node if bias in n.input), None)
        folded = inits.get(node.input[1]) if node is not None and len(node.input) > 1 else None
        if folded is not None and folded.size == value.numel():
            inits[key] = folded.reshape(tuple(value.shape))
    if all(k in inits and inits[k].shape == tuple(v.shape) for k, v in state.items()):
        new = {k: torch.from_numpy(inits[k].copy()).to(v.dtype) for k, v in state.items()}
        how = "by name"
    else:  # an exporter that renamed initializers: parameters in order, matched by shape
        params = [i for i in proto.graph.initializer if i.name not in state]
        new = dict(state)
        for name, p in net.named_parameters():
            j = next((j for j, i in enumerate(params) if tuple(i.dims) == tuple(p.shape)), None)
            if j is None:
                raise ValueError(
                    f"{path}: no ONNX initializer of shape {tuple(p.shape)} for {name}; "
                    "export again from the training run's checkpoint"
                )
            new[name] = torch.from_numpy(numpy_helper.to_array(params.pop(j)).copy())
        how = "by order and shape"
    net.load_state_dict(new)
    return net.eval(), how


def rebuild_onnx(src: str | Path, out: str | Path, windows: np.ndarray) -> float:
    """Write ``src``'s model to ``out`` as this version's graph; its spec is kept as it is.

    For files exported by an older quakescan: the weights and spec are the same,
    the graph is rebuilt (faster preparation and convolutions). ``windows``
    (float32[B, C, N] real windows) check that old and new graphs agree within
    ``PARITY_ATOL``; returns the largest difference.
    """
    import onnxruntime as ort

    net, _ = net_from_onnx(src)
    want = (len(net.cfg.channel_order), net.cfg.window_samples)
    if windows.ndim != 3 or tuple(windows.shape[1:]) != want or len(windows) == 0:
        raise ValueError(
            f"windows for the check have shape {tuple(windows.shape)}; {src} takes "
            f"[batch, {want[0]}, {want[1]}]"
        )
    old = onnx.load(str(src))
    new = onnx.load_from_string(to_onnx_bytes(net))
    del new.metadata_props[:]
    new.metadata_props.extend(old.metadata_props)
    onnx.checker.check_model(new)
    raw = new.SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    a, b = (
        ort.InferenceSession(m, so, providers=["CPUExecutionProvider"])
        for m in (old.SerializeToString(), raw)
    )
    x = np.ascontiguousarray(windows, dtype=np.float32)
    pa = a.run(None, {a.get_inputs()[0].name: x})[0]
    pb = b.run(None, {b.get_inputs()[0].name: x})[0]
    diff = float(np.abs(pa - pb).max())
    if diff > PARITY_ATOL:
        raise RuntimeError(f"rebuilt graph disagrees with {src} by {diff:.2e} (> {PARITY_ATOL})")
    atomic_write(out, raw)
    return diff
