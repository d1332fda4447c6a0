"""quakescan's training side: templates, networks, training, evaluation, ONNX export.

Needs torch (the ``train`` extra) except for the templates commands.
"""

#: The networks ``quakescan train`` builds (see training/pipeline.py). Defined here,
#: without torch, so that the command line can list them without importing torch.
ARCHITECTURES: tuple[str, ...] = ("convnetquake", "slow-earthquake")

__all__ = ["ARCHITECTURES"]
