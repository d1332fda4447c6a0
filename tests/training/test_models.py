"""The networks as the papers and the seed lay them out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.frontend import PreparationConfig, Spectrogram, SpectrogramConfig, WindowPreparation
from training.models import (
    ConvNetQuake,
    ConvNetQuakeConfig,
    LeNet5,
    LeNet5Config,
    SlowEarthquakeCNN,
    SlowEarthquakeConfig,
    count_parameters,
)
from training.pipeline import DetectorNet, ModelConfig


def test_convnetquake_matches_the_paper():
    m = ConvNetQuake(ConvNetQuakeConfig(n_clusters=6))
    convs = [x for x in m.features if isinstance(x, torch.nn.Conv1d)]
    assert len(convs) == 8
    assert all(c.out_channels == 32 and c.kernel_size == (3,) and c.stride == (2,) for c in convs)
    # Perol et al. 2018 report about 23k parameters for 6 clusters: 1000 -> 4 samples x 32 channels.
    assert m.n_flat == 128
    assert 22_000 < count_parameters(m) < 24_000
    out = m(torch.zeros(5, 3, 1000))
    assert out.shape == (5, 7)


def test_slow_earthquake_cnn_flatten_size_follows_input():
    m = SlowEarthquakeCNN(SlowEarthquakeConfig(n_freq=129, n_frames=95))
    assert m.n_flat == 36_608  # the paper's Dense input for a 129 x 95 spectrogram
    p = m(torch.randn(2, 1, 129, 95))
    assert p.shape == (2, 1) and ((p > 0) & (p < 1)).all()
    small = SlowEarthquakeCNN(SlowEarthquakeConfig(n_freq=129, n_frames=60))
    assert small.n_flat != m.n_flat
    with pytest.raises(ValueError, match="too small"):
        SlowEarthquakeCNN(SlowEarthquakeConfig(n_freq=20, n_frames=20))


def test_spectrogram_front_end_shape_and_vertical_only_equivalence():
    spec = Spectrogram(SpectrogramConfig(), 1000)
    assert spec.n_freq == 129
    x = torch.randn(2, 3, 1000)
    s = spec(x)
    assert s.shape == (2, 1, 129, spec.n_frames)
    # Power is averaged over live channels only: zero horizontals do not dilute it.
    z = torch.zeros_like(x)
    z[:, 2] = x[:, 2]
    only_z = torch.zeros_like(x[:, :1]).repeat(1, 3, 1)
    only_z[:, 0] = x[:, 2]
    assert torch.allclose(spec(z), spec(only_z), atol=1e-5)


def test_window_preparation_removes_trend_filters_and_normalises():
    prep = WindowPreparation(
        PreparationConfig(bandpass_hz=(2.0, 25.0), fir_taps=151), 3, 1000, 100.0
    )
    t = torch.arange(1000, dtype=torch.float32) / 100
    signal = torch.sin(2 * np.pi * 8 * t)  # in band
    drift = 5e4 + 300 * t  # offset and long-period drift in raw counts
    x = torch.stack([signal * 10 + drift, torch.zeros(1000), torch.full((1000,), 7.0)])[None]
    y = prep(x)[0]
    assert torch.isclose(y[0].abs().max(), torch.tensor(1.0))
    # The 8 Hz tone survives the band-pass; offset and drift do not.
    core = y[0, 200:800]
    assert torch.corrcoef(torch.stack([core, signal[200:800]]))[0, 1] > 0.99
    # Dead channels (all zero, or constant) stay exactly zero: no amplified rounding noise.
    assert (y[1] == 0).all() and (y[2] == 0).all()


def test_lenet5_learns_digits():
    """The seed's LeNet-5 on scikit-learn's real handwritten digits, scaled to 28 x 28."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    tr, te = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    m = LeNet5(LeNet5Config())
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    for _ in range(8):
        for i in range(0, len(tr), 50):
            b = tr[i : i + 50]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x[b]), y[b]).backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        acc = (m(x[te]).argmax(1) == y[te]).float().mean().item()
    assert acc > 0.85, f"LeNet-5 test accuracy {acc:.3f} on held-out digits (chance is 0.1)"


def test_detector_net_outputs_probabilities_for_both_architectures():
    x = torch.randn(4, 3, 1000)
    for arch in ("convnetquake", "slow-earthquake"):
        net = DetectorNet(ModelConfig(architecture=arch)).eval()
        p = net(x)
        assert p.shape == (4, 2)
        assert torch.allclose(p.sum(1), torch.ones(4), atol=1e-6)
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelConfig(architecture="resnet")
    with pytest.raises(ValueError, match="exactly two classes"):
        ModelConfig(architecture="slow-earthquake", class_names=["noise", "a", "b"])
