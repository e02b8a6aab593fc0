"""segflow: generative segmentation (FlowSDF, SSB) for microscopy and medical images.

The distribution maps its top-level folders into this package so that the import names cannot collide with
unrelated PyPI projects called ``runtime``, ``trainer``, ``export`` or ``solvers``:

=====================  ==================
folder                 import name
=====================  ==================
``trainer/``           ``segflow.trainer`` (PyTorch, optional ``train`` extra)
``export/``            ``segflow.export`` (PyTorch + ONNX)
``runtime/``           ``segflow.runtime`` (numpy + onnxruntime, never torch)
``solvers/``           ``segflow.solvers`` (numpy + PuLP/HiGHS, never torch)
=====================  ==================

This top-level package holds the small torch-free pieces every stage shares: the model card, the SDF maths,
image normalisation and I/O, and the exception family.
"""

from __future__ import annotations

__version__ = "0.1.0"

from segflow.errors import (  # noqa: E402
    BackendError,
    InputError,
    MissingDependency,
    ModelCardError,
    SegflowError,
    SolverTimeout,
)

__all__ = [
    "__version__",
    "SegflowError",
    "InputError",
    "MissingDependency",
    "ModelCardError",
    "BackendError",
    "SolverTimeout",
]
