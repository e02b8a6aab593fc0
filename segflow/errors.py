"""One exception family for everything segflow raises at its boundaries.

Pure functions raise ``ValueError``/``TypeError``; code that touches files, models or backends raises a
:class:`SegflowError` subclass whose message is one sentence naming the file and the fix. The command-line
tools catch :class:`SegflowError`, print the message and exit with status 2.
"""

from __future__ import annotations


class SegflowError(Exception):
    """Base class: an error a user can fix (bad file, bad model, missing dependency)."""


class InputError(SegflowError):
    """An input image, mask, slide or folder cannot be used."""


class ModelCardError(SegflowError):
    """A model (ONNX graph, plan or checkpoint) is missing, of the wrong kind, or its card is invalid."""


class BackendError(SegflowError):
    """An inference backend cannot be created or run (missing provider, GPU, library)."""


def check_at_least(*checks: tuple[str, float | None, float]) -> None:
    """Raise :class:`InputError` for the first ``(name, value, lowest)`` whose value is given and below lowest.

    ``name`` is the keyword (``tile_workers``); the message names the matching flag (``--tile-workers``). ``None``
    means "not given, use the default", so 0 is an error rather than a silent default.
    """
    for name, value, low in checks:
        if value is not None and value < low:
            raise InputError(f"{name} must be at least {low}, got {value}: pass --{name.replace('_', '-')} {low} or "
                             "more, or leave it out for the default.")


class SolverTimeout(SegflowError):
    """An integer program exceeded its time limit and no fallback was allowed."""


class MissingDependency(SegflowError):
    """An optional dependency is missing or broken; the message names the pip command that installs it."""


def require(module: str, extra: str, purpose: str):
    """Import an optional module lazily or raise :class:`MissingDependency` with the install command.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"cupy"``.
    extra : str
        The ``pip install`` arguments that provide it, e.g. ``'"cupy-cuda13x[ctk]"'`` (packages on PyPI, not
        segflow's extras: ``pip install segflow[...]`` would look for a segflow on PyPI, which is not ours).
    purpose : str
        What it is needed for, used in the message.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - message path tested via a fake module name
        raise MissingDependency(
            f"{purpose} needs the Python module '{module}', which is not installed: "
            f"run `pip install {extra}`."
        ) from exc


ORT_REPAIR = ('pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime` (or '
              '`pip install "onnxruntime-gpu[cuda,cudnn]"` for NVIDIA GPUs')


def require_onnxruntime():
    """``onnxruntime``, or one sentence with the repair when it is missing or broken.

    ``onnxruntime`` and ``onnxruntime-gpu`` install into one folder; uninstalling one of two installed side by
    side removes files the other needs. What is left imports as an empty namespace package (no
    ``InferenceSession``), or not at all, while pip still lists the other package.
    """
    import importlib

    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise MissingDependency(f"segflow's runtime needs onnxruntime, which cannot be imported ({exc}): run "
                                f"`{ORT_REPAIR}).") from exc
    if getattr(ort, "__file__", None) is None or not hasattr(ort, "InferenceSession"):
        where = ", ".join(getattr(ort, "__path__", [])) or "its folder"
        raise MissingDependency(f"onnxruntime's files in {where} are missing (removed with another onnxruntime "
                                f"package that shared the folder): run `{ORT_REPAIR}).")
    return ort


# CuPy for CUDA 13 with NVRTC and the CUDA libraries it loads, from PyPI (see require_cupy)
CUPY_PACKAGE = '"cupy-cuda13x[ctk]"'


def require_cupy(purpose: str):
    """CuPy, once it is known to compile kernels, or :class:`MissingDependency` naming the fix.

    CuPy compiles its elementwise and reduction kernels at run time with NVRTC, which the plain ``cupy-cuda13x``
    wheel does not bring (CuPy's docs: install the CUDA Toolkit, or ``cupy-cuda13x[ctk]``). Device queries work
    without it, so a missing NVRTC would otherwise surface only at the first array operation of a run.
    """
    cp = require("cupy", CUPY_PACKAGE, purpose)
    try:
        cp.cuda.nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - CuPy raises its loader's own error types
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MissingDependency(
            f"{purpose} needs CuPy's kernel compiler NVRTC, which CuPy cannot load ({why}): run "
            f"`pip install {CUPY_PACKAGE}` or install the CUDA 13 toolkit."
        ) from exc
    return cp
