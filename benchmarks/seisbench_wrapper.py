"""The quakescan network as a SeisBench ``WaveformModel``, for the benchmark only.

SeisBench (Woollam et al. 2022, SRL 93: 1695) is what a seismologist would
otherwise reach for: ``model.annotate(stream)`` slides a window over an ObsPy
stream, batches the windows through a PyTorch model and returns probability
traces. Wrapping our own ``DetectorNet`` in it lets the benchmark compare the
detector with SeisBench's annotate loop on the *same* network.

The wrapper is declared like SeisBench's window classifier GPD (Ross et al.
2018): ``output_type="point"`` (one prediction per window), a ``stride`` in
samples between windows, and ``pred_sample`` the sample of the window a
prediction is dated at. We use ``pred_sample=0``: annotation sample i is the
window that *starts* at ``starttime + i * stride``, the convention of
``Detector.annotate``, so the two line up window by window.

No SeisBench-side normalisation: ``annotate_batch_pre`` is left as
SeisBench's identity (GPD demeans there, PhaseNet divides by the std) and no
``filter_args`` are set, because ``DetectorNet.forward`` already holds the
model's own window preparation (linear detrend, FIR band-pass, per-channel
peak normalisation), exactly as inside the ONNX graph. SeisBench only cuts
windows and converts them to float32 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import seisbench.models as sbm
import torch
from torch import nn

CITATION = (
    "Perol, T., Gharbi, M. & Denolle, M. (2018). Convolutional neural network for "
    "earthquake detection and location. Science Advances 4: e1700578 "
    "(network as trained and exported by quakescan)."
)


class QuakescanAnnotator(sbm.WaveformModel):
    """A quakescan ``DetectorNet`` (raw windows -> class probabilities) under SeisBench's annotate.

    net: maps float32[B, channels, window_samples] raw counts to float32[B, classes].
    """

    _annotate_args = sbm.WaveformModel._annotate_args.copy()
    _annotate_args["stride"] = ("Stride in samples between window starts", 100)

    def __init__(
        self,
        net: nn.Module,
        *,
        channel_order: str,
        sampling_rate_hz: float,
        window_samples: int,
        class_names: Sequence[str],
        step_samples: int,
    ) -> None:
        if step_samples < 1:
            raise ValueError(f"step_samples ({step_samples}) must be >= 1")
        super().__init__(
            citation=CITATION,
            component_order=channel_order,
            sampling_rate=sampling_rate_hz,
            output_type="point",
            in_samples=window_samples,
            pred_sample=0,
            labels=list(class_names),
            default_args={"stride": step_samples},
            grouping="instrument",
        )
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float32[B, channels, window_samples] -> probabilities float32[B, classes]."""
        return self.net(x)

    def get_model_args(self) -> dict:
        # Not saved or loaded through SeisBench (the ONNX file is the model); say so plainly.
        raise NotImplementedError("QuakescanAnnotator is a benchmark wrapper; it is not saved")
