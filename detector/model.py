"""The model file: an ONNX Runtime session plus the ModelSpec it carries.

One session per process. CUDA when usable (inputs and outputs bound on the
device with IO binding), CPU otherwise; the provider in use is reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .spec import SPEC_KEY, ModelSpec, SpecError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "convnetquake"
_SHIPPED = {
    "convnetquake": "convnetquake.onnx",
    "slow-earthquake": "slow_earthquake.onnx",
}


def shipped_models() -> dict[str, Path]:
    """Names and paths of the models that ship inside the package."""
    base = resources.files("quakescan.detector") / "models"
    return {name: Path(str(base / fname)) for name, fname in _SHIPPED.items()}


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """A shipped model name (``convnetquake``), a path, or None for the default."""
    if model is None:
        model = DEFAULT_MODEL
    shipped = shipped_models()
    if isinstance(model, str) and model in shipped:
        path = shipped[model]
        if not path.exists():
            raise FileNotFoundError(
                f"shipped model {model!r} is missing from the package ({path}); reinstall quakescan"
            )
        return path
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(
            f"model {str(model)!r} is neither a file nor a shipped model ({', '.join(shipped)})"
        )
    return path


def gpu_present() -> bool:
    """An NVIDIA driver is loaded on this host (a CUDA provider could run)."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def _cuda_usable() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers() and gpu_present()


class OnnxModel:
    """An ONNX Runtime session over a quakescan model file.

    ``predict(windows)`` takes float32[batch, channels, samples] and returns
    float32[batch, classes].
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = 256,
    ) -> None:
        self.path = resolve_model_path(model)
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device {device!r} must be 'auto', 'cpu' or 'cuda'")
        if batch_size < 1:
            raise ValueError(f"batch_size ({batch_size}) must be >= 1")
        self.batch_size = batch_size
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads ({threads}) must be >= 1")
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        want_cuda = device == "cuda" or (device == "auto" and _cuda_usable())
        providers = ["CPUExecutionProvider"]
        if want_cuda:
            providers.insert(0, "CUDAExecutionProvider")
        try:
            # A CUDA provider that cannot load (no driver, no cuDNN) is reported
            # below as a fallback, not as ONNX Runtime's own error spew.
            ort.set_default_logger_severity(4)
            self.session = ort.InferenceSession(
                str(self.path), sess_options=so, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise SpecError(f"{self.path}: ONNX Runtime cannot load this file: {exc}") from None
        finally:
            ort.set_default_logger_severity(2)
        self.provider = self.session.get_providers()[0]
        if want_cuda and self.provider != "CUDAExecutionProvider":
            msg = (
                f"CUDA execution provider not usable on this host; running {self.path.name} on CPU"
            )
            if device == "cuda":
                raise RuntimeError(msg)
            log.warning(msg)
        self.spec = self._read_and_check_spec()
        self._io = self.session.io_binding() if self.provider == "CUDAExecutionProvider" else None
        log.info(
            "loaded model %s %s from %s on %s",
            self.spec.name,
            self.spec.version,
            self.path,
            self.provider,
        )

    # ------------------------------------------------------------------ checks
    def _read_and_check_spec(self) -> ModelSpec:
        meta = self.session.get_modelmeta().custom_metadata_map
        if SPEC_KEY not in meta:
            raise SpecError(
                f"{self.path}: ONNX file has no {SPEC_KEY!r} metadata, so it is not a "
                "quakescan model (export it with `quakescan export`)"
            )
        try:
            spec = ModelSpec.from_json(meta[SPEC_KEY])
        except SpecError as exc:
            raise SpecError(f"{self.path}: {exc}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if spec.input_name not in inputs:
            raise SpecError(
                f"{self.path}: spec names input {spec.input_name!r}, graph has {sorted(inputs)}"
            )
        if spec.output_name not in outputs:
            raise SpecError(
                f"{self.path}: spec names output {spec.output_name!r}, graph has {sorted(outputs)}"
            )
        shape = inputs[spec.input_name].shape
        if len(shape) != 3 or shape[1:] != [spec.n_channels, spec.window_samples]:
            raise SpecError(
                f"{self.path}: input shape {shape} does not match the spec "
                f"[batch, {spec.n_channels}, {spec.window_samples}]"
            )
        if isinstance(shape[0], int):
            raise SpecError(f"{self.path}: the batch axis must be dynamic, found {shape[0]}")
        out_shape = outputs[spec.output_name].shape
        if len(out_shape) != 2 or out_shape[1] != len(spec.class_names):
            raise SpecError(
                f"{self.path}: output shape {out_shape} does not match the spec's "
                f"{len(spec.class_names)} classes {list(spec.class_names)}"
            )
        return spec

    # ---------------------------------------------------------------- inference
    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass. batch: float32[n, channels, samples] -> float32[n, classes]."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._io is None:
            return self.session.run([self.spec.output_name], {self.spec.input_name: batch})[0]
        io = self._io
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        # One host-to-device copy in, outputs kept on the device until the end.
        x = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
        io.bind_ortvalue_input(self.spec.input_name, x)
        io.bind_output(self.spec.output_name, "cuda", 0)
        self.session.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0]

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Class probabilities for any number of windows, in batches of ``batch_size``.

        windows: float32[n, channels, samples] -> float32[n, classes]
        """
        n = len(windows)
        out = np.empty((n, len(self.spec.class_names)), dtype=np.float32)
        for i in range(0, n, self.batch_size):
            out[i : i + self.batch_size] = self.run_batch(windows[i : i + self.batch_size])
        return out

    def iter_predict(self, batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for b in batches:
            yield self.run_batch(b)

    def info(self) -> dict[str, str]:
        """What Prometheus' model-info metric and the CLI print."""
        return {
            "model": self.spec.name,
            "version": self.spec.version,
            "provider": self.provider,
            "path": str(self.path),
        }
