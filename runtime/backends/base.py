"""The backend protocol, after Polygraphy's runners: a context manager with ``infer(feed)``.

The base class owns activation, feed validation against the graph's input metadata, thread safety and
timing; a subclass implements only ``_activate``, ``_infer``, ``_deactivate`` and the two metadata methods::

    with OrtBackend("model.onnx") as b:
        out = b.infer({"x": x, "t": t, "features": f})["out"]

Thread safety: ``infer`` may be called from several threads. Backends whose native session is thread-safe
(ONNX Runtime's ``run``) set ``thread_safe = True`` and run concurrently; the others (a TensorRT execution
context) set it to False and the base class serialises their calls with a lock.

Output buffers: with ``to_host=True`` (default) outputs are host numpy arrays owned by the caller. With
``to_host=False`` a device backend may return device arrays (CuPy) and may reuse their buffers on the next
call — copy what you keep.
"""

from __future__ import annotations

import abc
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from segflow.errors import BackendError

__all__ = ["TensorMeta", "Backend", "check_feed"]


@dataclass(frozen=True)
class TensorMeta:
    """Name, dtype and shape of a graph input or output; dynamic dimensions are ``None``."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        """``name: dtype[d0, d1, ...]`` with ``?`` for dynamic dimensions."""
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {np.dtype(self.dtype).name}[{dims}]"


def check_feed(feed: dict[str, Any], meta: dict[str, TensorMeta], *, source: str = "model") -> None:
    """Raise :class:`BackendError` unless ``feed`` matches the inputs ``meta`` by name, dtype, rank and static dims."""
    missing = sorted(set(meta) - set(feed))
    extra = sorted(set(feed) - set(meta))
    if missing or extra:
        raise BackendError(
            f"{source} expects inputs {sorted(meta)} but was fed {sorted(feed)}: "
            f"the engine does not match this runtime (re-export it)."
        )
    for name, m in meta.items():
        arr = feed[name]
        dtype, shape = np.dtype(arr.dtype), tuple(arr.shape)
        if dtype != np.dtype(m.dtype):
            raise BackendError(f"{source} input {name!r} must be {np.dtype(m.dtype).name}, got {dtype.name}.")
        if len(shape) != len(m.shape) or any(d is not None and d != s for d, s in zip(m.shape, shape, strict=True)):
            raise BackendError(f"{source} input {m.describe()} cannot take shape {list(shape)}.")


class Backend(abc.ABC):
    """Base class of inference backends (see the module docstring).

    Attributes
    ----------
    name : str
        Short name (``"onnxruntime"``, ``"tensorrt"``).
    thread_safe : bool
        Whether the native session may run concurrently from several threads.
    calls : int
        Number of ``infer`` calls so far.
    seconds : float
        Total wall time spent in ``infer`` (including host transfers).
    """

    name = "backend"
    thread_safe = True

    def __init__(self, source: str = "model") -> None:
        self.source = source
        self.is_active = False
        self.calls = 0
        self.seconds = 0.0
        self._run_lock = threading.RLock()  # re-entrant: a signal handler may close the backend mid-call
        self._in_call = False  # a call is running (under the lock, so in one thread at a time)
        self._close_pending = False  # closed from inside that call: release once it returns
        self._stats_lock = threading.Lock()

    # -- subclass interface ------------------------------------------------------------------------------
    @abc.abstractmethod
    def _activate(self) -> None:
        """Create the session / engine context."""

    @abc.abstractmethod
    def _infer(self, feed: dict[str, Any], to_host: bool) -> dict[str, Any]:
        """Run one inference on a validated feed."""

    @abc.abstractmethod
    def _deactivate(self) -> None:
        """Release the session / engine context."""

    @abc.abstractmethod
    def input_metadata(self) -> dict[str, TensorMeta]:
        """Inputs of the active graph, by name."""

    @abc.abstractmethod
    def output_metadata(self) -> dict[str, TensorMeta]:
        """Outputs of the active graph, by name."""

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description (name, device/providers); subclasses add details."""
        return {"name": self.name}

    # -- public API ----------------------------------------------------------------------------------------
    def activate(self) -> Backend:
        """Create the native session; raises :class:`BackendError` if already active."""
        if self.is_active:
            raise BackendError(f"{self.name} backend for {self.source} is already active.")
        self._activate()
        self.is_active = True
        return self

    def deactivate(self) -> None:
        """Release the native session (idempotent). Waits for a call in progress on a backend that serialises its
        calls; calls that come later raise :class:`BackendError`."""
        with contextlib.nullcontext() if self.thread_safe else self._run_lock:
            if self.is_active:
                self.is_active = False
                if self._in_call:  # this very thread is inside the call (a signal handler): release after it
                    self._close_pending = True
                    return
                self._deactivate()

    close = deactivate

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def _not_open(self) -> BackendError:
        return BackendError(f"{self.name} backend for {self.source} is not open (closed, or never activated): use a "
                            f"new Segmenter, or the backend inside `with`.")

    def infer(self, feed: dict[str, Any], *, to_host: bool = True, check: bool = True) -> dict[str, Any]:
        """Run the graph on ``feed`` (name -> array) and return its outputs by name.

        Parameters
        ----------
        feed : dict
            One array per graph input.
        to_host : bool
            Return host numpy arrays (True) or, on device backends, device arrays that may be reused.
        check : bool
            Validate the feed against :meth:`input_metadata` (cheap; turn off only in measured hot loops).
        """
        if not self.is_active:
            raise self._not_open()
        if check:
            check_feed(feed, self.input_metadata(), source=str(self.source))
        t0 = time.perf_counter()
        if self.thread_safe:
            out = self._infer(feed, to_host)
        else:
            with self._run_lock:
                if not self.is_active:  # closed by another thread while this call waited for the lock
                    raise self._not_open()
                self._in_call = True
                try:
                    out = self._infer(feed, to_host)
                finally:
                    self._in_call = False
                    if self._close_pending:
                        self._close_pending = False
                        self._deactivate()
        dt = time.perf_counter() - t0
        with self._stats_lock:
            self.calls += 1
            self.seconds += dt
        return out
