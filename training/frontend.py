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


def fir_block_size(taps: int) -> tuple[int, int]:
    """(P, D) for the blocked FIR of ``WindowPreparation``: P outputs per block, D blocks of input.

    Each block of P output samples reads P * D input samples, D = ceil((P - 1 + taps) / P),
    so P * D multiply-adds per sample (``taps`` at best). P is a multiple of 8 (ONNX
    Runtime's NCHWc channel block) from 16 up, the one with the least work: 16 for the
    default 151 taps (176 per sample; P = 8 does less work but ran slower, measured).
    """
    return min(
        ((p, -(-(p - 1 + taps) // p)) for p in range(16, 65, 8)), key=lambda pd: pd[0] * pd[1]
    )


class WindowPreparation(nn.Module):
    """float32[B, C, N] raw windows -> float32[B, C, N] prepared windows.

    1. Linear detrend: ``x - (x @ U) @ U.T`` with U an orthonormal basis of {1, t}.
    2. Odd extension by ``taps // 2`` samples at both ends (as scipy's filtfilt pads).
    3. Zero-phase FIR band-pass, computed in blocks: one strided convolution
       with P output channels, kernel P * D, stride P gives P consecutive
       filtered samples per block, which a permutation puts back in time order.
       Mathematically it is the ``conv1d`` of the extended window with the
       taps (``reference_forward`` keeps that form; the tests hold the two
       together), but it runs as a dense convolution instead of a depthwise
       one: ONNX Runtime and PyTorch run the depthwise form slowly on CPU (it
       was 40 % of the whole model's time).
    4. Peak normalisation per channel; a dead channel (constant, or zero-filled
       because missing) becomes exactly zero.

    The convolutions are written as 2-D with height 1 (here and in
    ``training.models.ConvNetQuake``): the same arithmetic, but ONNX Runtime's
    CPU provider runs 2-D convolutions in its blocked NCHWc layout, which is
    about twice as fast for these shapes.
    """

    # Fixed tensors that checkpoints of quakescan <= 0.1 saved; rebuilt from the config now.
    _LEGACY_BUFFERS = ("basis", "basis_t", "fir", "left_idx", "right_idx")

    def __init__(
        self, cfg: PreparationConfig, n_channels: int, window_samples: int, sampling_rate_hz: float
    ) -> None:
        super().__init__()
        n = window_samples
        t = np.arange(n, dtype=np.float64)
        basis = np.stack([np.ones(n), t - t.mean()], axis=1)
        basis /= np.linalg.norm(basis, axis=0, keepdims=True)
        self._buffer("detrend_u", basis)
        self._buffer("detrend_ut", basis.T)
        self.n_channels, self.n = n_channels, n
        self.filtered = cfg.bandpass_hz is not None
        if not self.filtered:
            return
        taps = fir_bandpass(cfg, sampling_rate_hz)
        k = len(taps) // 2
        if k >= n:
            raise ValueError(f"fir_taps ({len(taps)}) must be shorter than the window ({n})")
        self.k = k
        self.block, self.span = fir_block_size(len(taps))  # the last block is cut to n
        self.n_blocks = -(-n // self.block)
        self.padded = self.block * (self.n_blocks + self.span - 1)
        # Output channel r of block m is filtered sample m * P + r: taps shifted by r.
        kernels = np.zeros((self.block, 1, 1, self.block * self.span))
        for r in range(self.block):
            kernels[r, 0, 0, r : r + len(taps)] = taps[::-1]  # convolutions correlate
        self._buffer("fir_blocks", kernels)
        self._buffer("taps_reversed", taps[::-1].copy())  # for reference_forward

    def _buffer(self, name: str, value: np.ndarray) -> None:
        # Derived from the config, so not saved in checkpoints.
        tensor = torch.tensor(np.ascontiguousarray(value), dtype=torch.float32)
        self.register_buffer(name, tensor, persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        for name in self._LEGACY_BUFFERS:
            state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _extend(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.k, x.shape[-1]
        left = 2 * x[..., :1] - torch.flip(x[..., 1 : k + 1], [-1])
        right = 2 * x[..., -1:] - torch.flip(x[..., n - 1 - k : n - 1], [-1])
        return torch.cat([left, x, right], dim=-1)

    def _detrend(self, x: torch.Tensor) -> torch.Tensor:
        return x - torch.matmul(torch.matmul(x, self.detrend_u), self.detrend_ut)

    def _normalise(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        live = (raw.amax(dim=-1, keepdim=True) - raw.amin(dim=-1, keepdim=True)) > 0
        peak = x.abs().amax(dim=-1, keepdim=True)
        ok = live & (peak > 0)
        scale = torch.where(ok, 1.0 / torch.where(ok, peak, torch.ones_like(peak)), 0.0)
        return x * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        y = self._detrend(x)
        if self.filtered:
            e = self._extend(y).reshape(b * c, 1, 1, -1)
            e = nn.functional.pad(e, (0, self.padded - e.shape[-1]))
            z = nn.functional.conv2d(e, self.fir_blocks, stride=(1, self.block))  # [bc, P, 1, M]
            # NCHW -> NHWC: ONNX Runtime folds this permutation into its NCHWc output reorder.
            y = z.permute(0, 2, 3, 1).reshape(b, c, -1)
            if self.block * self.n_blocks != n:
                y = y[..., :n]
        return self._normalise(x, y)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same map in textbook form (depthwise ``conv1d`` with the taps); for tests."""
        y = self._detrend(x)
        if self.filtered:
            c = x.shape[1]
            w = self.taps_reversed.view(1, 1, -1).repeat(c, 1, 1)
            y = nn.functional.conv1d(self._extend(y), w, groups=c)
        return self._normalise(x, y)


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
        # 2-D of height 1: ONNX Runtime's NCHWc kernels (see WindowPreparation).
        z = nn.functional.conv2d(
            x.reshape(b * c, 1, 1, n), self.kernels.unsqueeze(2), stride=(1, self.hop)
        ).squeeze(2)
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
