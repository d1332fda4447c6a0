"""The networks, and only the networks. Each is a plain nn.Module built from a
small dataclass config; the config is saved in every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ConvNetQuakeConfig:
    """Perol, Gharbi & Denolle (2018), Science Advances 4: e1700578."""

    in_channels: int = 3
    window_samples: int = 1000
    n_clusters: int = 1  # event classes after noise; the paper used 6 location clusters
    conv_channels: int = 32
    n_layers: int = 8


class ConvNetQuake(nn.Module):
    """float32[B, 3, N] prepared windows -> logits float32[B, 1 + n_clusters]."""

    def __init__(self, cfg: ConvNetQuakeConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, n = cfg.in_channels, cfg.window_samples
        # Perol et al. 2018: 8 conv layers, 32 channels, kernel 3, stride 2, zero padding 1.
        for _ in range(cfg.n_layers):
            layers += [nn.Conv1d(c_in, cfg.conv_channels, 3, stride=2, padding=1), nn.ReLU()]
            c_in, n = cfg.conv_channels, (n + 1) // 2
        self.features = nn.Sequential(*layers)
        self.n_flat = cfg.conv_channels * n
        self.classifier = nn.Linear(self.n_flat, 1 + cfg.n_clusters)
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Conv1d layers run as 2-D convolutions of height 1: the same arithmetic (PyTorch
        # does this internally too), but the exported graph then gets ONNX Runtime's blocked
        # NCHWc convolution kernels on CPU, about twice as fast as its 1-D path here.
        x = x.unsqueeze(2)
        for layer in self.features:
            if isinstance(layer, nn.Conv1d):
                x = nn.functional.conv2d(
                    x,
                    layer.weight.unsqueeze(2),
                    layer.bias,
                    stride=(1, layer.stride[0]),
                    padding=(0, layer.padding[0]),
                )
            else:
                x = layer(x)
        return self.classifier(x.flatten(1))


@dataclass
class SlowEarthquakeConfig:
    """Rouet-Leduc, Hulbert, McBrearty & Johnson (2020), GRL 47: e2019GL085870.

    Layout as read from the paper: input a 1 x F x T spectrogram (129 x 95 in the
    paper; flatten size 36,608 there).
    """

    n_freq: int = 129
    n_frames: int = 95
    dropout: float = 0.05


class SlowEarthquakeCNN(nn.Module):
    """float32[B, 1, F, T] spectrogram -> probability of an event float32[B, 1] (sigmoid)."""

    def __init__(self, cfg: SlowEarthquakeConfig) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(cfg.dropout),
            nn.Conv2d(32, 64, kernel_size=8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(cfg.dropout),
            nn.Conv2d(64, 128, kernel_size=4),
            nn.Flatten(),
        )
        h, w = cfg.n_freq, cfg.n_frames
        h, w = (h - 15) // 2, (w - 15) // 2
        h, w = (h - 7) // 2, (w - 7) // 2
        h, w = h - 3, w - 3
        if h < 1 or w < 1:
            raise ValueError(f"spectrogram {cfg.n_freq} x {cfg.n_frames} is too small for this CNN")
        self.n_flat = 128 * h * w
        self.head = nn.Sequential(
            nn.Linear(self.n_flat, 10), nn.Sigmoid(), nn.Linear(10, 1), nn.Sigmoid()
        )
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
