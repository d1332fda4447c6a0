"""quakescan's runtime core: ONNX models with their spec, stream preparation,
windows on the absolute time grid, trigger, detections and catalogs.

Needs numpy, scipy, obspy and onnxruntime; never torch, Celery or Redis.
"""

from .catalog import Detection, read_catalog, write_catalog
from .core import Detector, StationProbabilities
from .model import OnnxModel
from .spec import ModelSpec, SpecError

__all__ = [
    "Detection",
    "Detector",
    "ModelSpec",
    "OnnxModel",
    "SpecError",
    "StationProbabilities",
    "read_catalog",
    "write_catalog",
]
