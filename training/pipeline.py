"""A whole detection model: window preparation -> [spectrogram] -> network -> probabilities.

This is the module that is trained and the module that is exported, so the
ONNX graph holds exactly what training saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from . import ARCHITECTURES
from .frontend import PreparationConfig, Spectrogram, SpectrogramConfig, WindowPreparation
from .models import ConvNetQuake, ConvNetQuakeConfig, SlowEarthquakeCNN, SlowEarthquakeConfig


@dataclass
class ModelConfig:
    architecture: str = "convnetquake"
    sampling_rate_hz: float = 100.0
    window_samples: int = 1000
    channel_order: str = "ENZ"
    class_names: list[str] = field(default_factory=lambda: ["noise", "earthquake"])
    preparation: PreparationConfig = field(default_factory=PreparationConfig)
    spectrogram: SpectrogramConfig = field(default_factory=SpectrogramConfig)
    dropout: float = 0.05  # slow-earthquake CNN only

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}"
            )
        if isinstance(self.preparation, dict):
            self.preparation = PreparationConfig(**self.preparation)
        if isinstance(self.spectrogram, dict):
            self.spectrogram = SpectrogramConfig(**self.spectrogram)
        if self.architecture == "slow-earthquake" and len(self.class_names) != 2:
            raise ValueError(
                "the slow-earthquake CNN has one sigmoid output: exactly two classes "
                f"(noise + one event class), got {self.class_names}"
            )

    @property
    def binary_sigmoid(self) -> bool:
        return self.architecture == "slow-earthquake"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        prep = d.get("preparation")
        if isinstance(prep, dict) and prep.get("bandpass_hz") is not None:
            d["preparation"] = {**prep, "bandpass_hz": tuple(prep["bandpass_hz"])}
        try:
            return cls(**d)
        except TypeError as exc:  # a field this version does not know (an older checkpoint?)
            raise ValueError(f"model config does not match this quakescan version: {exc}") from None


class DetectorNet(nn.Module):
    """Raw windows float32[B, C, N] -> class probabilities float32[B, K] (``forward``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, n = len(cfg.channel_order), cfg.window_samples
        self.prep = WindowPreparation(cfg.preparation, c, n, cfg.sampling_rate_hz)
        if cfg.architecture == "convnetquake":
            self.spectrogram = None
            self.net = ConvNetQuake(
                ConvNetQuakeConfig(
                    in_channels=c, window_samples=n, n_clusters=len(cfg.class_names) - 1
                )
            )
        else:
            self.spectrogram = Spectrogram(cfg.spectrogram, n)
            self.net = SlowEarthquakeCNN(
                SlowEarthquakeConfig(
                    n_freq=self.spectrogram.n_freq,
                    n_frames=self.spectrogram.n_frames,
                    dropout=cfg.dropout,
                )
            )

    def raw_output(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, K] for softmax models; the event probability [B, 1] for the sigmoid one."""
        x = self.prep(x)
        if self.spectrogram is not None:
            x = self.spectrogram(x)
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.raw_output(x)
        if self.cfg.binary_sigmoid:
            return torch.cat([1 - out, out], dim=1)
        return torch.softmax(out, dim=1)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, probabilities) for windows x and integer labels y."""
        out = self.raw_output(x)
        if self.cfg.binary_sigmoid:
            p = out[:, 0].clamp(1e-7, 1 - 1e-7)
            target = (y > 0).to(p.dtype)
            w = None if class_weights is None else class_weights[y]
            loss = nn.functional.binary_cross_entropy(p, target, weight=w)
            return loss, torch.stack([1 - p, p], dim=1)
        loss = nn.functional.cross_entropy(out, y, weight=class_weights)
        return loss, torch.softmax(out, dim=1)


class EnsembleNet(nn.Module):
    """Several trained ``DetectorNet``s of one configuration as one model: the window
    preparation once, then each member's network, then the mean of their probabilities.

    Members trained with different seeds disagree on the windows none of them has
    learned well; averaging cuts that variance, which dominates on small template sets.
    """

    def __init__(self, members: list[DetectorNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0].cfg
        for i, m in enumerate(members[1:], start=2):
            if m.cfg.to_dict() != first.to_dict():
                diff = sorted(k for k, v in m.cfg.to_dict().items() if first.to_dict().get(k) != v)
                raise ValueError(
                    f"ensemble member {i} has another model configuration than member 1 "
                    f"(differs in {', '.join(diff)})"
                )
        self.cfg = first
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.members[0]
        x = first.prep(x)  # the same fixed preparation in every member
        if first.spectrogram is not None:
            x = first.spectrogram(x)
        probs = []
        for m in self.members:
            out = m.net(x)
            probs.append(
                torch.cat([1 - out, out], 1) if self.cfg.binary_sigmoid else out.softmax(1)
            )
        return torch.stack(probs).mean(0)
