"""Window preparation and spectrogram as torch modules: the part of the model
that must match training bit for bit, exported inside the ONNX graph.

Per window and per channel: linear detrend, zero-phase FIR band-pass (odd
extension at both edges, like scipy's filtfilt padding), peak normalisation
(guarded against dead channels). Because this runs inside the graph on each
window, a continuous stream cut into chunks anywhere gives the same numbers as
the training windows: there is no stream-level filter state to match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.signal
import torch
from torch import nn


@dataclass
class PreparationConfig:
    bandpass_hz: tuple[float, float] | None = (2.0, 25.0)
    fir_taps: int = 151

    def __post_init__(self) -> None:
        if self.bandpass_hz is not None:
            self.bandpass_hz = (float(self.bandpass_hz[0]), float(self.bandpass_hz[1]))
        if self.fir_taps % 2 != 1:
            raise ValueError(f"fir_taps ({self.fir_taps}) must be odd (a zero-phase FIR)")


def fir_bandpass(cfg: PreparationConfig, sampling_rate_hz: float) -> np.ndarray:
    """Linear-phase band-pass FIR taps (Hamming window), float64[taps]."""
    lo, hi = cfg.bandpass_hz
    nyq = sampling_rate_hz / 2
    if not 0 < lo < hi < nyq:
        raise ValueError(
            f"bandpass_hz {cfg.bandpass_hz} must satisfy 0 < low < high < Nyquist ({nyq} Hz)"
        )
    return scipy.signal.firwin(cfg.fir_taps, [lo, hi], pass_zero="bandpass", fs=sampling_rate_hz)


class WindowPreparation(nn.Module):
    """float32[B, C, N] raw windows -> float32[B, C, N] prepared windows."""

    def __init__(
        self, cfg: PreparationConfig, n_channels: int, window_samples: int, sampling_rate_hz: float
    ) -> None:
        super().__init__()
        n = window_samples
        t = np.arange(n, dtype=np.float64)
        # Orthonormal basis of {1, t}: x - (x @ U) @ U.T is the least-squares linear detrend.
        basis = np.stack([np.ones(n), t - t.mean()], axis=1)
        basis /= np.linalg.norm(basis, axis=0, keepdims=True)
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.float32))
        self.register_buffer("basis_t", torch.tensor(basis.T.copy(), dtype=torch.float32))
        self.filtered = cfg.bandpass_hz is not None
        if self.filtered:
            taps = fir_bandpass(cfg, sampling_rate_hz)
            k = len(taps) // 2
            if k >= n:
                raise ValueError(f"fir_taps ({len(taps)}) must be shorter than the window ({n})")
            self.pad = k
            w = torch.tensor(taps[::-1].copy(), dtype=torch.float32)  # conv1d correlates
            self.register_buffer("fir", w.view(1, 1, -1).repeat(n_channels, 1, 1))
            self.register_buffer("left_idx", torch.arange(k, 0, -1))
            self.register_buffer("right_idx", torch.arange(n - 2, n - 2 - k, -1))
        self.n_channels = n_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A channel that never changes (dead, or zero-filled because missing) stays exactly zero.
        live = (x.amax(dim=-1, keepdim=True) - x.amin(dim=-1, keepdim=True)) > 0
        x = x - torch.matmul(torch.matmul(x, self.basis), self.basis_t)
        if self.filtered:
            left = 2 * x[..., :1] - torch.index_select(x, -1, self.left_idx)
            right = 2 * x[..., -1:] - torch.index_select(x, -1, self.right_idx)
            x = torch.cat([left, x, right], dim=-1)
            x = nn.functional.conv1d(x, self.fir, groups=self.n_channels)
        peak = x.abs().amax(dim=-1, keepdim=True)
        ok = live & (peak > 0)
        x = x / torch.where(ok, peak, torch.ones_like(peak))
        return torch.where(ok, x, torch.zeros_like(x))


@dataclass
class SpectrogramConfig:
    """Short-time power spectrum; 256-sample FFT gives the paper's 129 frequency rows."""

    n_fft: int = 256
    hop: int = 8
    # Power below 1/1000 of the window's mean power (30 dB) is clamped before the log: those
    # bins are numerical noise (out of the band-pass), and a log of them differs between
    # PyTorch and ONNX Runtime by far more than the 1e-4 parity the export demands.
    log_floor_rel: float = 1e-3


class Spectrogram(nn.Module):
    """float32[B, C, N] prepared windows -> float32[B, 1, F, T] normalised log power.

    The STFT is a strided conv1d with fixed Hann-windowed cosine and sine
    kernels (exports to plain ONNX Conv); power is averaged over the live
    channels, so a vertical-only station gives the same kind of image.
    """

    def __init__(self, cfg: SpectrogramConfig, window_samples: int) -> None:
        super().__init__()
        if cfg.n_fft > window_samples:
            raise ValueError(f"n_fft ({cfg.n_fft}) is longer than the window ({window_samples})")
        n = cfg.n_fft
        f = np.arange(n // 2 + 1)
        t = np.arange(n)
        win = scipy.signal.get_window("hann", n)
        arg = 2 * np.pi * np.outer(f, t) / n
        kernels = np.concatenate([win * np.cos(arg), -win * np.sin(arg)])[:, None, :]
        self.register_buffer("kernels", torch.tensor(kernels, dtype=torch.float32))
        self.n_freq = n // 2 + 1
        self.n_frames = (window_samples - n) // cfg.hop + 1
        self.hop = cfg.hop
        self.log_floor_rel = cfg.log_floor_rel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        z = nn.functional.conv1d(x.reshape(b * c, 1, n), self.kernels, stride=self.hop)
        re, im = z[:, : self.n_freq], z[:, self.n_freq :]
        power = (re * re + im * im).reshape(b, c, self.n_freq, -1)
        live = (x.abs().amax(dim=-1) > 0).to(x.dtype).reshape(b, c, 1, 1)
        n_live = live.sum(dim=1, keepdim=True).clamp(min=1.0)
        power = (power * live).sum(dim=1, keepdim=True) / n_live
        floor = self.log_floor_rel * power.mean(dim=(-2, -1), keepdim=True) + 1e-12
        s = torch.log10(power + floor)
        mean = s.mean(dim=(-2, -1), keepdim=True)
        std = s.std(dim=(-2, -1), keepdim=True)
        return (s - mean) / (std + 1e-6)
