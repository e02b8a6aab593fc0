"""TensorRT / TensorRT-RTX backend: a plan, one execution context, one CUDA stream, CuPy device buffers.

Loading (``activate``) reads the plan's build record (``NAME.plan.json``) first and refuses, in one sentence,
a plan built with another library, TensorRT version or GPU (:func:`segflow.runtime.trtlib.check_plan`); it
then asks TensorRT-RTX for the engine's validity where the library offers it, and catches a failed
deserialisation. Inference uses the name-based API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``) on the backend's own stream, ordered after the caller's current CuPy stream.

* ``infer(feed, to_host=False)`` takes numpy or CuPy inputs and returns CuPy arrays that stay on the device;
  output buffers are reused between calls of the same shape — copy what you keep.
* Inputs outside the plan's optimisation profile raise a :class:`BackendError` naming the rebuild command.
* ``cuda_graph=True`` captures ``execute_async_v3`` into a CUDA graph per input-shape signature after one
  warm-up run (inputs are copied into fixed buffers, since a graph fixes tensor addresses); if capture fails
  the backend falls back to plain launches.
* TensorRT-RTX compiles its kernels for the GPU at first use (just in time). The backend keeps them in a
  runtime cache file, ``NAME.plan.rtcache`` beside the plan, or under ``$XDG_CACHE_HOME/segflow`` (default
  ``~/.cache/segflow``) when the plan's folder is read-only: loaded when the execution context is created, saved
  when the backend closes, so later processes skip the compilation. TensorRT-RTX itself rejects a cache from
  another GPU, driver or library version (it is then rebuilt and overwritten). ``runtime_cache=False`` turns
  it off; a path chooses the file.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from segflow.runtime.backends.base import Backend, TensorMeta
from segflow.runtime.trtlib import PlanInfo, check_plan, gpu_info, import_trt, rebuild_hint

from segflow.errors import BackendError, ModelCardError, require
from segflow.imageio import atomic_path

__all__ = ["TensorRTBackend", "check_profile", "validity_error", "runtime_cache_path"]


def runtime_cache_path(plan: str | Path) -> Path:
    """Where the TensorRT-RTX runtime cache of ``plan`` lives (see the module docstring)."""
    plan = Path(plan).resolve()
    if os.access(plan.parent, os.W_OK):
        return plan.with_name(plan.name + ".rtcache")
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segflow"
    key = hashlib.sha256(str(plan).encode()).hexdigest()[:16]
    return root / f"{plan.stem}-{key}.rtcache"


def check_profile(plan: str | Path, name: str, shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]
                  ) -> None:
    """Raise :class:`BackendError` unless ``lo <= shape <= hi`` elementwise (the plan's profile for ``name``)."""
    if len(shape) == len(lo) and all(a <= s <= b for s, a, b in zip(shape, lo, hi, strict=True)):
        return
    ranges = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in zip(lo, hi, strict=True))
    fix = f"rebuild with {rebuild_hint(plan)[:-1]} --batch 1:{max(lo[0], 1)}:{shape[0]}`" \
        if len(shape) == len(lo) and shape[0] > hi[0] and tuple(shape[1:]) == tuple(hi[1:]) else \
        "feed tiles of the model's tile size or rebuild the plan for this shape"
    raise BackendError(f"input {name!r} of plan {plan} has shape {list(shape)}, outside the plan's profile "
                       f"[{ranges}]: use a smaller batch or {fix}.")


def validity_error(trt: Any, plan: str | Path, validity: Any, diagnostics: int) -> str | None:
    """One sentence for an INVALID engine-validity answer of TensorRT-RTX, else None."""
    if getattr(validity, "name", str(validity)).split(".")[-1] != "INVALID":
        return None
    reasons = []
    diag_enum = getattr(trt, "EngineInvalidityDiagnostics", None)
    for key in ("UNSUPPORTED_CC", "VERSION_MISMATCH", "OLD_CUDA_DRIVER", "OLD_CUDA_RUNTIME",
                "INSUFFICIENT_GPU_MEMORY", "MALFORMED_ENGINE", "CUDA_ERROR"):
        bit = getattr(diag_enum, key, None)
        if bit is not None and int(diagnostics) & int(bit):
            reasons.append(key.lower().replace("_", " "))
    why = ", ".join(reasons) or "no diagnostics"
    return (f"{trt.__name__} reports plan {plan} invalid on this machine ({why}): rebuild it here with "
            f"{rebuild_hint(plan)} or run the .onnx model with the CUDA provider.")


class TensorRTBackend(Backend):
    """Run one TensorRT / TensorRT-RTX plan on the GPU (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The ``.plan`` file (its build record ``.plan.json`` beside it).
    cuda_graph : bool
        Capture each input-shape signature into a CUDA graph after a warm-up run.
    runtime_cache : bool or str or Path
        TensorRT-RTX runtime cache: True (default) for :func:`runtime_cache_path`, a path, or False for none.
    """

    name = "tensorrt"
    thread_safe = False  # one execution context; the base class serialises calls

    def __init__(self, path: str | Path, *, cuda_graph: bool = False, runtime_cache: bool | str | Path = True,
                 **_ignored: Any) -> None:
        super().__init__(source=str(path))
        self.path = Path(path)
        self.cuda_graph = cuda_graph
        self._cache_choice = runtime_cache
        self.runtime_cache: Path | None = None  # the file, once a TensorRT-RTX plan is active
        self.runtime_cache_state: str | None = None  # "loaded", "new" or "rejected"
        self._rt_cache: Any = None
        self._rt_loaded = b""  # the cache file's bytes as loaded, so an unchanged cache is not rewritten
        self.info: PlanInfo | None = None
        self.trt: Any = None
        self.cp: Any = None
        self.engine = self.context = self.stream = None
        self._inputs: dict[str, TensorMeta] = {}
        self._outputs: dict[str, TensorMeta] = {}
        self._profile: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._out_buffers: dict[str, Any] = {}
        self._graphs: dict[tuple, tuple[Any, dict[str, Any]]] = {}
        self._warm: set[tuple] = set()
        self._keep: list[Any] = []

    # -- activation ------------------------------------------------------------------------------------------
    def _activate(self) -> None:
        if not self.path.is_file():
            raise ModelCardError(f"plan {self.path} does not exist: build it with `runtime build`.")
        self.info = PlanInfo.read(self.path)
        trt = import_trt(self.info.library)
        for w in check_plan(self.path, self.info, self.info.library, str(trt.__version__), gpu_info()):
            warnings.warn(w, RuntimeWarning, stacklevel=3)
        self.cp = require("cupy", "segflow[gpu]", "running TensorRT plans")
        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        data = self.path.read_bytes()
        if hasattr(runtime, "get_engine_validity"):
            try:
                validity, diag = runtime.get_engine_validity(data[: int(getattr(runtime, "engine_header_size", 64))])
            except Exception:  # noqa: BLE001 - advisory only; deserialisation below is the real check
                validity, diag = None, 0
            msg = validity_error(trt, self.path, validity, diag) if validity is not None else None
            if msg:
                raise BackendError(msg)
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendError(f"{self.info.library} could not load plan {self.path} (corrupt file, or built for "
                               f"another GPU or TensorRT version; see the log above): rebuild it here with "
                               f"{rebuild_hint(self.path)}.")
        config = self._runtime_config(engine)
        self.engine = engine
        self.context = engine.create_execution_context(runtime_config=config) if config is not None else \
            engine.create_execution_context()
        self.stream = self.cp.cuda.Stream(non_blocking=True)
        self._read_io()

    def _runtime_config(self, engine: Any) -> Any:
        """TensorRT-RTX: a runtime configuration whose runtime cache holds the JIT-compiled kernels, loaded from
        the cache file when it exists (module docstring); None for full TensorRT or with the cache off."""
        if self.info.library != "tensorrt_rtx" or self._cache_choice is False \
                or not hasattr(engine, "create_runtime_config"):
            return None
        path = runtime_cache_path(self.path) if self._cache_choice is True else Path(self._cache_choice)
        config = engine.create_runtime_config()
        cache = config.create_runtime_cache()
        state, self._rt_loaded = "new", b""
        if path.is_file():
            try:
                blob = path.read_bytes()
                state = "loaded" if cache.deserialize(blob) else "rejected"
                self._rt_loaded = blob if state == "loaded" else b""
            except Exception:  # noqa: BLE001 - an unreadable cache only costs the compilation
                state = "rejected"
        config.set_runtime_cache(cache)
        self.runtime_cache, self.runtime_cache_state, self._rt_cache = path, state, cache
        return config

    def _save_runtime_cache(self) -> None:
        path = self.runtime_cache
        try:
            data = bytes(self._rt_cache.serialize())
            if data == self._rt_loaded:
                return  # nothing compiled this run
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        except Exception as exc:  # noqa: BLE001 - never fail a finished run over the cache
            warnings.warn(f"could not save the TensorRT-RTX runtime cache {path} ({exc}); the next run compiles "
                          f"the kernels again.", RuntimeWarning, stacklevel=3)

    def _read_io(self) -> None:
        trt, engine = self.trt, self.engine
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shape = tuple(None if d < 0 else int(d) for d in engine.get_tensor_shape(name))
            meta = TensorMeta(name, dtype, shape)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs[name] = meta
                lo, _opt, hi = engine.get_tensor_profile_shape(name, 0) if None in shape else (shape, shape, shape)
                self._profile[name] = (tuple(int(d) for d in lo), tuple(int(d) for d in hi))
            else:
                self._outputs[name] = meta

    def _deactivate(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()
        if self._rt_cache is not None:
            self._save_runtime_cache()
            self._rt_cache = None
        self._graphs.clear()
        self._out_buffers.clear()
        self._keep = []
        self.context = self.engine = self.stream = None

    # -- inference -------------------------------------------------------------------------------------------
    @property
    def max_batch(self) -> int:
        """Largest batch (dim 0) every input's profile accepts."""
        return min((hi[0] for _lo, hi in self._profile.values() if hi), default=1)

    def _device_inputs(self, feed: dict[str, Any]) -> dict[str, Any]:
        cp = self.cp
        out = {}
        with self.stream:
            for name, arr in feed.items():
                meta = self._inputs[name]
                lo, hi = self._profile[name]
                check_profile(self.path, name, tuple(arr.shape), lo, hi)
                out[name] = cp.ascontiguousarray(cp.asarray(arr, dtype=meta.dtype))
        return out

    def _bind(self, inputs: dict[str, Any]) -> dict[str, Any]:
        cp, ctx = self.cp, self.context
        for name, arr in inputs.items():
            if not ctx.set_input_shape(name, tuple(arr.shape)):
                raise BackendError(f"plan {self.path} rejected input {name!r} of shape {list(arr.shape)}: "
                                   f"rebuild it for this shape with {rebuild_hint(self.path)}.")
            ctx.set_tensor_address(name, int(arr.data.ptr))
        outs = {}
        for name, meta in self._outputs.items():
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            buf = self._out_buffers.get(name)
            if buf is None or buf.shape != shape:
                with self.stream:
                    buf = cp.empty(shape, dtype=meta.dtype)
                self._out_buffers[name] = buf
            ctx.set_tensor_address(name, int(buf.data.ptr))
            outs[name] = buf
        return outs

    def _launch(self, inputs: dict[str, Any]) -> dict[str, Any]:
        key = tuple((n, tuple(a.shape)) for n, a in sorted(inputs.items()))
        if self.cuda_graph and key in self._graphs:
            graph, static = self._graphs[key]
            with self.stream:  # copies into the captured addresses, ordered before the launch on this stream
                for name, arr in inputs.items():
                    static["in"][name][...] = arr
            graph.launch(self.stream)
            return static["out"]
        outs = self._bind(inputs)
        if not self.context.execute_async_v3(self.stream.ptr):
            raise BackendError(f"{self.info.library} failed to run plan {self.path} (see the log above).")
        if self.cuda_graph:
            self._maybe_capture(key, inputs, outs)
        return outs

    def _maybe_capture(self, key: tuple, inputs: dict[str, Any], outs: dict[str, Any]) -> None:
        if key not in self._warm:  # first run of this shape is the warm-up, not captured
            self._warm.add(key)
            return
        cp, ctx = self.cp, self.context
        with self.stream:
            static_in = {n: a.copy() for n, a in inputs.items()}
            static_out = {n: cp.empty_like(b) for n, b in outs.items()}  # graph-owned, never reallocated
        for n, a in (*static_in.items(), *static_out.items()):
            ctx.set_tensor_address(n, int(a.data.ptr))
        try:
            self.stream.begin_capture()
            ctx.execute_async_v3(self.stream.ptr)
            graph = self.stream.end_capture()
        except Exception as exc:  # noqa: BLE001 - capture is an optimisation; keep running without it
            if self.stream.is_capturing():
                self.stream.end_capture()
            warnings.warn(f"CUDA graph capture failed for {self.path} ({exc}); running without graphs.",
                          RuntimeWarning, stacklevel=4)
            self.cuda_graph = False
            return
        self._graphs[key] = (graph, {"in": static_in, "out": static_out})

    def _infer(self, feed: dict[str, Any], to_host: bool) -> dict[str, Any]:
        cp = self.cp
        caller = cp.cuda.get_current_stream()
        self.stream.wait_event(caller.record())  # inputs written on the caller's stream come first
        inputs = self._device_inputs(feed)
        outs = self._launch(inputs)
        self._keep = list(inputs.values())  # alive until the next call (the stream may still read them)
        if to_host:
            host = {n: cp.asnumpy(b, stream=self.stream) for n, b in outs.items()}
            self.stream.synchronize()
            return host
        caller.wait_event(self.stream.record())  # the caller's later work sees the outputs
        return dict(outs)

    # -- metadata --------------------------------------------------------------------------------------------
    def input_metadata(self) -> dict[str, TensorMeta]:
        return dict(self._inputs)

    def output_metadata(self) -> dict[str, TensorMeta]:
        return dict(self._outputs)

    def describe(self) -> dict[str, Any]:
        info = self.info
        return {"name": self.name, "library": info.library if info else None,
                "version": info.trt_version if info else None, "precision": info.precision if info else None,
                "gpu": info.gpu_name if info else None, "cuda_graph": self.cuda_graph,
                "max_batch": self.max_batch if self._profile else None,
                "runtime_cache": str(self.runtime_cache) if self.runtime_cache else None,
                "runtime_cache_state": self.runtime_cache_state}
