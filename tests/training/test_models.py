"""The networks as the papers lay them out."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from quakescan.training.frontend import (
    PreparationConfig,
    Spectrogram,
    SpectrogramConfig,
    WindowPreparation,
    fir_bandpass,
)
from quakescan.training.lenet5 import train_on_digits
from quakescan.training.models import (
    ConvNetQuake,
    ConvNetQuakeConfig,
    SlowEarthquakeCNN,
    SlowEarthquakeConfig,
    count_parameters,
)
from quakescan.training.pipeline import DetectorNet, EnsembleNet, ModelConfig


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
    """LeNet-5 (LeCun et al. 1998) on scikit-learn's real handwritten digits, scaled to
    28 x 28: the module's own example."""
    acc = train_on_digits()
    assert acc > 0.85, f"LeNet-5 test accuracy {acc:.3f} on held-out digits (chance is 0.1)"


def test_detector_net_outputs_probabilities_for_both_architectures():
    x = torch.randn(4, 3, 1000)
    for arch in ("convnetquake", "slow-earthquake"):
        net = DetectorNet(ModelConfig(architecture=arch)).eval()
        p = net(x)
        assert p.shape == (4, 2)
        assert torch.allclose(p.sum(1), torch.ones(4), atol=1e-6)
    # An ensemble of either architecture: the mean of its members' probabilities.
    for arch in ("convnetquake", "slow-earthquake"):
        torch.manual_seed(1)
        members = [DetectorNet(ModelConfig(architecture=arch)).eval() for _ in range(2)]
        with torch.no_grad():
            want = (members[0](x) + members[1](x)) / 2
            got = EnsembleNet(members).eval()(x)
        assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="member 2 .*differs in window_samples"):
        EnsembleNet([DetectorNet(ModelConfig()), DetectorNet(ModelConfig(window_samples=1200))])
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelConfig(architecture="resnet")
    with pytest.raises(ValueError, match="exactly two classes"):
        ModelConfig(architecture="slow-earthquake", class_names=["noise", "a", "b"])


def _textbook_preparation(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Detrend, odd extension, FIR, peak normalisation: scipy/numpy in float64, step by step."""
    y = scipy.signal.detrend(x, axis=-1, type="linear")
    k = len(taps) // 2
    left = 2 * y[..., :1] - y[..., k:0:-1]
    right = 2 * y[..., -1:] - y[..., -2 : -k - 2 : -1]
    e = np.concatenate([left, y, right], axis=-1)
    f = np.apply_along_axis(lambda row: np.convolve(row, taps, mode="valid"), -1, e)
    peak = np.abs(f).max(axis=-1, keepdims=True)
    ok = (np.ptp(x, axis=-1, keepdims=True) > 0) & (peak > 0)
    return np.where(ok, f / np.where(ok, peak, 1.0), 0.0)


@pytest.mark.parametrize("samples", [1000, 777])  # 777: the last FIR block is cut
def test_window_preparation_equals_the_textbook_steps_on_real_windows(data_dir, samples):
    """The blocked FIR (dense strided convolution) is the same map as detrend + filtfilt-style
    padding + convolution with the taps, on real event and noise windows with raw-count
    offsets, including a dead channel."""
    from quakescan.training.templates import read_templates

    t = read_templates(data_dir / "templates_small.h5")
    x = np.asarray(t.windows[:40, :, :samples], dtype=np.float64)
    x[:, 1] += 5.0e3  # raw counts on an offset
    x[3, 0] = 0.0  # a dead horizontal
    x = x.astype(np.float32).astype(np.float64)  # what the model is given
    cfg = PreparationConfig(bandpass_hz=(2.0, 25.0), fir_taps=151)
    prep = WindowPreparation(cfg, 3, samples, 100.0)
    xt = torch.tensor(x, dtype=torch.float32)
    with torch.no_grad():
        fast, reference = prep(xt).numpy(), prep.reference_forward(xt).numpy()
    expected = _textbook_preparation(x, fir_bandpass(cfg, 100.0))
    assert fast.shape == x.shape
    # float32 arithmetic on a 5e3-count offset: ~2e-4 of the peak (7e-6 without the offset)
    assert np.abs(fast - expected).max() < 5e-4
    assert np.abs(reference - expected).max() < 5e-4
    assert np.abs(fast - reference).max() < 1e-5
    assert (fast[3, 0] == 0).all()


def test_checkpoints_with_the_old_preparation_tensors_still_load():
    """quakescan 0.1 saved the preparation's fixed tensors in checkpoints; they are ignored."""
    net = DetectorNet(ModelConfig())
    state = net.state_dict()
    assert not any(k.startswith("prep.") for k in state)  # derived from the config, not saved
    n = 1000
    legacy = {
        "prep.basis": torch.zeros(n, 2),
        "prep.basis_t": torch.zeros(2, n),
        "prep.fir": torch.zeros(3, 1, 151),
        "prep.left_idx": torch.arange(75),
        "prep.right_idx": torch.arange(75),
    }
    again = DetectorNet(ModelConfig())
    again.load_state_dict({**state, **legacy})  # strict: no unexpected-key error
    x = torch.randn(4, 3, n) * 100
    with torch.no_grad():
        assert torch.equal(again(x), net(x))
