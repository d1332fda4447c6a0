"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, Proc. IEEE 86: 2278-2324): the
classic CNN, on 28 x 28 images of handwritten digits, kept as a reference.

Example: ``python -m quakescan.training.lenet5`` trains it on scikit-learn's digits
(a few seconds on a CPU) and prints the held-out accuracy (0.86; chance 0.1).

It is not a ``quakescan train`` architecture: laid along time on the 3 x 1000
waveform windows of a templates file (same layers, kernel 5, pooling 2, sigmoid),
it stayed at chance (validation loss ln 2, ROC-AUC 0.53; see docs/design-notes.md,
"Code health: small items"). ConvNetQuake is the waveform network that learns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LeNet5Config:
    """LeCun et al. (1998): sigmoid activations, average pooling, 28 x 28 input."""

    n_classes: int = 10


class LeNet5(nn.Module):
    """float32[B, 1, 28, 28] -> logits float32[B, n_classes]."""

    def __init__(self, cfg: LeNet5Config) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5, padding=2),
            nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.Sigmoid(),
            nn.Linear(120, 84),
            nn.Sigmoid(),
            nn.Linear(84, cfg.n_classes),
        )
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.view(-1, 1, 28, 28))


def train_on_digits(epochs: int = 8, seed: int = 0) -> float:
    """Train ``LeNet5`` on scikit-learn's 8 x 8 digits scaled to 28 x 28 (1,400 for
    training); returns the accuracy on the 397 held-out digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    x = nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    tr, te = perm[:1400], perm[1400:]
    torch.manual_seed(seed)
    m = LeNet5(LeNet5Config())
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    for _ in range(epochs):
        for i in range(0, len(tr), 50):
            b = tr[i : i + 50]
            opt.zero_grad()
            nn.functional.cross_entropy(m(x[b]), y[b]).backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        return (m(x[te]).argmax(1) == y[te]).float().mean().item()


if __name__ == "__main__":
    print(f"LeNet-5 accuracy on held-out digits: {train_on_digits():.3f} (chance 0.1)")
