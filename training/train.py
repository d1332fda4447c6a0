"""The training loop: templates in, checkpoints, history and a learning curve out.

Reads top to bottom: config -> data and split -> model -> epochs (train,
validate, checkpoint, early stop) -> figure. Every epoch draws its shuffling,
crops, augmentation and dropout from seeds derived from (seed, epoch), so a run
resumed from a checkpoint ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from quakescan.detector.fsio import atomic_write

from .augment import AugmentConfig, augment_batch
from .metrics import binary_metrics
from .pipeline import DetectorNet, ModelConfig
from .templates import (
    Split,
    Templates,
    eval_crop_starts,
    random_crop_starts,
    read_templates,
    split_templates,
)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    templates: str = ""
    out: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # or "constant"; cosine decays to 5% of lr at the last epoch
    weight_decay: float = 0.0
    # Exponential moving average of the weights (0 = off): validation, checkpoints and
    # export use the averaged weights, which vary less from seed to seed on small sets.
    ema_decay: float = 0.0
    seed: int = 0
    # Seed of the train / validation / test split (None: the same as ``seed``), so that
    # runs with different training seeds can share one split and be compared.
    split_seed: int | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_by: str = "auto"
    patience: int = 8  # epochs without a better validation loss before stopping
    balance: bool = True  # class-weighted loss
    repeats: int = 1  # random crops per template per epoch
    eval_onsets_s: tuple[float, ...] = (1.0, 2.5, 4.0)
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d.get("model", {}))
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        d["eval_onsets_s"] = tuple(d.get("eval_onsets_s", (1.0, 2.5, 4.0)))
        return cls(**d)


@dataclass
class EvalSet:
    """Deterministic evaluation windows: x float32[n, c, N], y int64[n], template index."""

    x: np.ndarray
    y: np.ndarray
    template: np.ndarray


def make_eval_set(t: Templates, idx: np.ndarray, cfg: TrainConfig) -> EvalSet:
    sub = t.subset(idx)
    pairs = eval_crop_starts(sub, cfg.model.window_samples, cfg.eval_onsets_s)
    n = cfg.model.window_samples
    x = np.stack([sub.windows[i, :, c : c + n] for i, c in pairs]) if pairs else np.empty((0,))
    y = np.array([sub.labels[i] for i, _ in pairs], dtype=np.int64)
    return EvalSet(x=x, y=y, template=np.array([idx[i] for i, _ in pairs], dtype=np.int64))


def check_compatible(t: Templates, mc: ModelConfig) -> None:
    if t.samples < mc.window_samples:
        raise ValueError(
            f"{t.path}: templates hold {t.samples}-sample windows, shorter than the model's "
            f"window_samples ({mc.window_samples})"
        )
    if abs(t.sampling_rate_hz - mc.sampling_rate_hz) > 1e-6:
        raise ValueError(
            f"{t.path}: templates are sampled at {t.sampling_rate_hz} Hz, the model expects "
            f"{mc.sampling_rate_hz} Hz"
        )
    if t.component_order != mc.channel_order:
        raise ValueError(
            f"{t.path}: templates' component_order is {t.component_order!r}, the model's "
            f"channel_order is {mc.channel_order!r}"
        )


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of an epoch: a pure function of the epoch, so a resumed run matches."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule != "cosine":
        raise ValueError(f"lr_schedule {cfg.lr_schedule!r}: expected 'cosine' or 'constant'")
    frac = epoch / max(cfg.epochs - 1, 1)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac)))


@torch.no_grad()
def predict(model: DetectorNet, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities float32[n, K] for raw windows float32[n, c, N]."""
    model.eval()
    out = [
        model(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.empty((0, len(model.cfg.class_names)), np.float32)


def evaluate_loss(
    model: DetectorNet, ev: EvalSet, batch_size: int = 256
) -> tuple[float, np.ndarray]:
    model.eval()
    losses, probs = [], []
    with torch.no_grad():
        for i in range(0, len(ev.y), batch_size):
            xb = torch.from_numpy(ev.x[i : i + batch_size])
            yb = torch.from_numpy(ev.y[i : i + batch_size])
            loss, p = model.loss(xb, yb, None)
            losses.append(float(loss) * len(yb))
            probs.append(p.numpy())
    return sum(losses) / max(len(ev.y), 1), np.concatenate(probs)


def _save(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def train(
    cfg: TrainConfig, *, resume: bool = False, progress: bool = True, stop_after: int | None = None
) -> dict[str, Any]:
    """Train and return the history; writes checkpoints, history.json and learning_curve.png.

    ``stop_after`` ends this call after that epoch, as an interruption would
    (the run can then be resumed).
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)

    t = read_templates(cfg.templates)
    if cfg.model.class_names != t.class_names:
        if cfg.model.architecture == "slow-earthquake" and len(t.class_names) > 2:
            raise ValueError(
                f"{t.path}: the slow-earthquake CNN is binary; templates have classes {t.class_names}"
            )
        cfg.model.class_names = list(t.class_names)
    check_compatible(t, cfg.model)

    state = None
    last = out / "last.pt"
    if resume:
        if not last.exists():
            raise FileNotFoundError(f"--resume: no checkpoint {last} to resume from")
        state = torch.load(last, map_location="cpu", weights_only=False)
        saved = TrainConfig.from_dict(state["config"])
        saved.epochs = cfg.epochs  # a resumed run may be asked to go further
        cfg = saved
        if state["templates_sha256"] != t.sha256:
            raise ValueError(
                f"--resume: {cfg.templates} changed since the checkpoint was written "
                f"(sha256 {t.sha256[:12]} != {state['templates_sha256'][:12]})"
            )
        split = Split.from_dict(state["split"])
    else:
        split = split_templates(
            t,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=cfg.seed if cfg.split_seed is None else cfg.split_seed,
            by=cfg.split_by,
        )
    (out / "split.json").write_text(json.dumps(split.to_dict()))
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    torch.manual_seed(cfg.seed)
    model = DetectorNet(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"ema_decay {cfg.ema_decay}: expected 0 (off) or a value in (0, 1)")
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay)
        )
        if cfg.ema_decay > 0
        else None
    )
    history: list[dict[str, Any]] = []
    best_val, bad_epochs, start_epoch = float("inf"), 0, 0
    if state is not None:
        if ema is not None:
            model.load_state_dict(state["raw_model"])
            ema.module.load_state_dict(state["model"])
            ema.n_averaged.fill_(state["ema_n_averaged"])
        else:
            model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history = state["history"]
        best_val, bad_epochs, start_epoch = (
            state["best_val_loss"],
            state["bad_epochs"],
            state["epoch"],
        )

    train_t = t.subset(split.train)
    val = make_eval_set(t, split.val, cfg)
    n_cls = len(cfg.model.class_names)
    counts = np.bincount(train_t.labels, minlength=n_cls).astype(np.float64)
    if (counts == 0).any():
        missing = [c for c, k in zip(cfg.model.class_names, counts, strict=True) if k == 0]
        raise ValueError(f"the training split has no windows of class(es) {missing}")
    weights = (
        torch.tensor(counts.sum() / (n_cls * counts), dtype=torch.float32) if cfg.balance else None
    )
    noise_idx = np.flatnonzero(train_t.labels == 0)
    vertical = cfg.model.channel_order.index("Z") if "Z" in cfg.model.channel_order else 0
    n_win = cfg.model.window_samples
    shift = train_t.samples == n_win  # no context: shift within the window instead

    log.info(
        "training %s on %s: %d train / %d val / %d test templates (split by %s), classes %s",
        cfg.model.architecture,
        t.path,
        len(split.train),
        len(split.val),
        len(split.test),
        split.by,
        train_t.counts(),
    )
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        if bad_epochs >= cfg.patience:
            stopped_early = True
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, epoch)
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        model.train()
        order = np.tile(np.arange(len(train_t)), cfg.repeats)
        order = order[rng.permutation(len(order))]
        crops = random_crop_starts(train_t, order, n_win, cfg.augment.onset_range_s, rng)
        t0 = time.time()
        run_loss, run_correct, seen = 0.0, 0, 0
        batches = range(0, len(order), cfg.batch_size)
        bar = tqdm(
            batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False
        )
        for b in bar:
            ids, cs = order[b : b + cfg.batch_size], crops[b : b + cfg.batch_size]
            x = np.stack(
                [train_t.windows[i, :, c : c + n_win] for i, c in zip(ids, cs, strict=True)]
            )
            y = train_t.labels[ids]
            pool_ids = rng.choice(noise_idx, size=min(len(ids), len(noise_idx)))
            pool_cs = random_crop_starts(train_t, pool_ids, n_win, cfg.augment.onset_range_s, rng)
            pool = np.stack(
                [
                    train_t.windows[i, :, c : c + n_win]
                    for i, c in zip(pool_ids, pool_cs, strict=True)
                ]
            )
            x = augment_batch(
                x,
                y,
                pool,
                cfg.augment,
                rng,
                sampling_rate_hz=cfg.model.sampling_rate_hz,
                vertical_index=vertical,
                shift=shift,
            )
            xb, yb = torch.from_numpy(x), torch.from_numpy(y)
            opt.zero_grad()
            loss, p = model.loss(xb, yb, weights)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            run_loss += float(loss.detach()) * len(y)
            run_correct += int((p.argmax(1) == yb).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{run_loss / seen:.4f}")
        eval_model = model if ema is None else ema.module
        val_loss, val_p = evaluate_loss(eval_model, val)
        vm = binary_metrics(val_p, val.y)
        rec = {
            "epoch": epoch + 1,
            "train_loss": run_loss / seen,
            "train_accuracy": run_correct / seen,
            "val_loss": val_loss,
            "val_accuracy": vm["accuracy"],
            "val_precision": vm["precision"],
            "val_recall": vm["recall"],
            "val_f1": vm["f1"],
            "val_fpr": vm["false_positive_rate"],
            "seconds": time.time() - t0,
        }
        history.append(rec)
        improved = val_loss < best_val
        if improved:
            best_val, bad_epochs = val_loss, 0
        else:
            bad_epochs += 1
        ck = {
            "model": eval_model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": epoch + 1,
            "config": cfg.to_dict(),
            "split": split.to_dict(),
            "history": history,
            "best_val_loss": best_val,
            "bad_epochs": bad_epochs,
            "templates_sha256": t.sha256,
            "templates_counts": t.counts(),
            "templates_dropped": t.dropped,
        }
        if ema is not None:  # "model" holds the averaged weights, the ones exported
            ck["raw_model"] = model.state_dict()
            ck["ema_n_averaged"] = int(ema.n_averaged)
        _save(last, ck)
        if improved:
            _save(out / "best.pt", ck)
        (out / "history.json").write_text(json.dumps(history, indent=2))
        msg = (
            f"epoch {epoch + 1:3d}  loss {rec['train_loss']:.4f}  acc {rec['train_accuracy']:.3f}  "
            f"val_loss {val_loss:.4f}  val_acc {vm['accuracy']:.3f}  val_recall {vm['recall']:.3f}  "
            f"val_fpr {vm['false_positive_rate']:.3f}{'  *' if improved else ''}"
        )
        if progress:
            tqdm.write(msg)
        log.info(msg)
    if stopped_early:
        log.info("early stop: validation loss did not improve for %d epochs", cfg.patience)
    plot_learning_curve(history, out / "learning_curve.png")
    return {"history": history, "split": split, "out": str(out), "stopped_early": stopped_early}


def plot_learning_curve(history: list[dict[str, Any]], path: Path) -> Path | None:
    """The learning curve: loss and accuracy against epoch on twin axes."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.set_xlabel("Epoch")
    ax1.set_ylabel("Loss", color="tab:red")
    ax1.plot(ep, [h["train_loss"] for h in history], color="tab:red", label="train loss")
    ax1.plot(
        ep, [h["val_loss"] for h in history], color="tab:red", ls="--", label="validation loss"
    )
    ax1.tick_params(axis="y", labelcolor="tab:red")
    ax2 = ax1.twinx()
    ax2.set_ylabel("Accuracy", color="tab:blue")
    ax2.plot(ep, [h["train_accuracy"] for h in history], color="tab:blue", label="train accuracy")
    ax2.plot(
        ep,
        [h["val_accuracy"] for h in history],
        color="tab:blue",
        ls="--",
        label="validation accuracy",
    )
    ax2.tick_params(axis="y", labelcolor="tab:blue")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
