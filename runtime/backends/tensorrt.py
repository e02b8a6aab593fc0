"""TensorRT / TensorRT-RTX backend: a plan, one execution context, one CUDA stream, CuPy device buffers.

Loading (``activate``) reads the plan's build record (``NAME.plan.json``) first and refuses, in one sentence,
a plan built with another library, TensorRT version or GPU (:func:`segflow.runtime.trtlib.check_plan`); it
then asks TensorRT-RTX for the engine's validity where the library offers it, and catches a failed
deserialisation. Inference uses the name-based API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``) on the backend's own stream, ordered after the caller's current CuPy stream.

* ``infer(feed, to_host=False)`` takes numpy or CuPy inputs and returns CuPy arrays that stay on the device,
  the caller's own (copied from the engine's buffers on the backend's stream, ordered before the caller's
  later work).
* Inputs outside the plan's optimisation profile raise a :class:`BackendError` naming the rebuild command.
* ``cuda_graph=True`` replays each input-shape signature from a CUDA graph. Inputs are copied into the fixed
  buffers below, since a graph fixes tensor addresses. With full TensorRT the backend captures
  ``execute_async_v3`` itself, on the second call of a signature (the first is the warm-up TensorRT asks for),
  and gives every captured signature an execution context of its own: a captured graph is tied to the input
  shapes its context had at capture, so contexts are never switched between shapes under a graph. The
  contexts share one activation buffer, as they never run at the same time. With TensorRT-RTX (1.2 and later)
  the library captures and replays per shape itself (``IRuntimeConfig.cuda_graph_strategy =
  WHOLE_GRAPH_CAPTURE``): application stream capture of an RTX plan needs plans built with
  ``REQUIRE_USER_ALLOCATION`` and does not mix with its just-in-time, shape-specialised kernels. If capture
  fails the backend warns and falls back to plain launches.
* Device memory is one buffer per tensor, sized by the largest batch seen (the first, full call, normally):
  a call of ``n`` samples binds its first ``n`` rows (a contiguous prefix, the same address for every size).
  Outputs always live there; in graph modes the inputs are copied there too, so every graph and every
  TensorRT-RTX replay sees the same addresses whatever the batch, and nothing grows with the number of batch
  sizes seen except one small execution context (and graph) per size in ``capture`` mode.
* TensorRT-RTX compiles its kernels for the GPU at first use (just in time). The backend keeps them in a
  runtime cache file per GPU model, ``NAME.plan.sm89-<hash>.rtcache`` beside the plan, or under
  ``$XDG_CACHE_HOME/segflow`` (default
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
from segflow.runtime.trtlib import (
    GpuInfo,
    PlanInfo,
    check_plan,
    deferred_interrupt,
    field_plan,
    gpu_info,
    import_runner,
    library_name,
    plan_batch,
    rebuild_hint,
    trt_logger,
)

from segflow.errors import BackendError, ModelCardError, require_cupy
from segflow.imageio import atomic_path

__all__ = ["TensorRTBackend", "check_profile", "validity_error", "runtime_cache_path", "preflight"]

_warned: set[str] = set()  # warnings about a plan pair, said once per process (field and encoder plans share them)


def _warn_once(message: str, stacklevel: int) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)


def runtime_cache_path(plan: str | Path, gpu: GpuInfo | None = None) -> Path:
    """Where the TensorRT-RTX runtime cache of ``plan`` for ``gpu`` (default: this machine's) lives (see the
    module docstring): one file per GPU model, ``NAME.plan.sm89-1a2b3c.rtcache``, since the compiled kernels
    hold for one GPU only and workstations with different GPUs may share a model folder."""
    plan = Path(plan).resolve()
    gpu = gpu if gpu is not None else gpu_info()
    tag = "" if gpu is None else \
        f".sm{gpu.compute_capability.replace('.', '')}-{hashlib.sha256(gpu.name.encode()).hexdigest()[:6]}"
    if os.access(plan.parent, os.W_OK):
        return plan.with_name(f"{plan.name}{tag}.rtcache")
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segflow"
    key = hashlib.sha256(str(plan).encode()).hexdigest()[:16]
    return root / f"{plan.stem}-{key}{tag}.rtcache"


def check_profile(plan: str | Path, name: str, shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...],
                  info: PlanInfo | None = None) -> None:
    """Raise :class:`BackendError` unless ``lo <= shape <= hi`` elementwise (the plan's profile for ``name``)."""
    if len(shape) == len(lo) and all(a <= s <= b for s, a, b in zip(shape, lo, hi, strict=True)):
        return
    ranges = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in zip(lo, hi, strict=True))
    if len(shape) == len(lo) and shape[0] > hi[0] and tuple(shape[1:]) == tuple(hi[1:]):
        built = (plan_batch(info) if info is not None else None) or (lo[0], lo[0], hi[0])
        batch = (built[0], min(built[1], shape[0]), shape[0])  # the same MIN and OPT, MAX raised to the batch
        fix = f"rebuild with {rebuild_hint(plan, info=info, batch=batch)}"
    else:
        fix = "feed tiles of the model's tile size or rebuild the plan for this shape"
    raise BackendError(f"input {name!r} of plan {plan} has shape {list(shape)}, outside the plan's profile "
                       f"[{ranges}]: use a smaller batch or {fix}.")


def preflight(plan: str | Path) -> tuple[PlanInfo, Any, list[str]]:
    """What can be checked of ``plan`` before any CUDA work: the file and its build record, the library that built
    it, and this machine's GPU (:func:`~segflow.runtime.trtlib.check_plan`). Returns the record, the library module
    and warnings; raises one sentence otherwise. Cheap, so callers run it before installing anything else."""
    plan = Path(plan)
    if not plan.is_file():
        raise ModelCardError(f"plan {plan} does not exist: build it with `runtime build`.")
    info = PlanInfo.read(plan)
    trt = import_runner(info)
    return info, trt, check_plan(plan, info, library_name(trt), str(trt.__version__), gpu_info())


def validity_error(trt: Any, plan: str | Path, validity: Any, diagnostics: int, info: PlanInfo | None = None
                   ) -> str | None:
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
            f"{rebuild_hint(plan, info=info)} or run the .onnx model with the CUDA provider.")


class TensorRTBackend(Backend):
    """Run one TensorRT / TensorRT-RTX plan on the GPU (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The ``.plan`` file (its build record ``.plan.json`` beside it).
    cuda_graph : bool
        Replay each input-shape signature from a CUDA graph (see the module docstring).
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
        self._opt: dict[str, tuple[int, ...]] = {}  # the profile's OPT shape per input (kernels are tuned for it)
        self._rows: dict[str, Any] = {}  # tensor name -> device buffer of the profile's largest batch (docstring)
        self.graph_mode: str | None = None  # "capture" (segflow captures) or "tensorrt_rtx" (the library does)
        self._graphs: dict[tuple, tuple[Any, dict[str, Any]]] = {}  # signature -> (graph, its output buffers)
        self._contexts: dict[tuple, Any] = {}  # signature -> its own execution context ("capture" mode)
        self._config: Any = None  # TensorRT-RTX runtime configuration
        self._scratch: Any = None  # activation memory shared by the contexts ("capture" mode)
        self._keep: list[Any] = []
        self._logger: Any = None  # the process's TensorRT logger

    # -- activation ------------------------------------------------------------------------------------------
    def _activate(self) -> None:
        self.info, trt, notes = preflight(self.path)
        for w in notes:
            _warn_once(w, stacklevel=3)
        self.cp = require_cupy("running TensorRT plans")
        self.trt = trt
        if self.cuda_graph:
            native = self.info.library == "tensorrt_rtx" and hasattr(trt, "CudaGraphStrategy")
            self.graph_mode = "tensorrt_rtx" if native else "capture"
        # a current CUDA context before TensorRT-RTX reads the runtime cache (its IRuntimeCache.deserialize
        # validates the cache against the context, and rejects it without one): creating the stream makes one
        try:
            self.stream = self.cp.cuda.Stream(non_blocking=True)
        except Exception as exc:  # noqa: BLE001 - CUDA's own errors (driver too old, device busy or lost)
            raise BackendError(f"CUDA could not start for plan {self.path} ({exc}): check the NVIDIA driver with "
                               f"`nvidia-smi` (CUDA 13 needs driver 580 or newer).") from exc
        self._logger = trt_logger(trt)
        runtime = trt.Runtime(self._logger)
        if self.info.version_compatible:  # the plan carries its lean runtime (host code): ours, built by runtime build
            runtime.engine_host_code_allowed = True
        data = self.path.read_bytes()
        if hasattr(runtime, "get_engine_validity"):
            try:
                validity, diag = runtime.get_engine_validity(data[: int(getattr(runtime, "engine_header_size", 64))])
            except Exception:  # noqa: BLE001 - advisory only; deserialisation below is the real check
                validity, diag = None, 0
            msg = validity_error(trt, self.path, validity, diag, self.info) if validity is not None else None
            if msg:
                raise BackendError(msg)
        with deferred_interrupt():
            engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendError(f"{self.info.library} could not load plan {self.path} (corrupt file, or built for "
                               f"another GPU or TensorRT version; see the log above): rebuild it here with "
                               f"{rebuild_hint(self.path, info=self.info)}.")
        self._config = self._runtime_config(engine)
        self.engine = engine
        self.context = self._new_context()
        self._read_io()

    def _new_context(self) -> Any:
        """An execution context: with TensorRT-RTX's runtime configuration when there is one. In ``capture``
        mode every context runs on one activation buffer (``USER_MANAGED``), allocated once at the engine's
        maximum, instead of one each: NVIDIA lets contexts share it when they never run at the same time, and
        all of this backend's run in order on its one stream (graph replays included)."""
        engine = self.engine
        if self._config is not None:
            return engine.create_execution_context(runtime_config=self._config)
        if self.graph_mode != "capture":
            return engine.create_execution_context()
        if self._scratch is None:
            with self.stream:
                self._scratch = self.cp.empty(max(int(engine.device_memory_size_v2), 1), dtype=self.cp.uint8)
        ctx = engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        ctx.set_device_memory(int(self._scratch.data.ptr), int(self._scratch.nbytes))
        return ctx

    def _runtime_config(self, engine: Any) -> Any:
        """TensorRT-RTX: a runtime configuration whose runtime cache holds the JIT-compiled kernels, loaded from
        the cache file when it exists, and which asks for the library's own CUDA graphs under ``cuda_graph``
        (module docstring); None for full TensorRT, or with the cache and graphs off."""
        native = self.graph_mode == "tensorrt_rtx"
        if self.info.library != "tensorrt_rtx" or not hasattr(engine, "create_runtime_config") \
                or (self._cache_choice is False and not native):
            return None
        config = engine.create_runtime_config()
        if native:
            config.cuda_graph_strategy = self.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        if self._cache_choice is False:
            return config
        path = runtime_cache_path(self.path) if self._cache_choice is True else Path(self._cache_choice)
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
                lo, opt, hi = engine.get_tensor_profile_shape(name, 0) if None in shape else (shape, shape, shape)
                self._profile[name] = (tuple(int(d) for d in lo), tuple(int(d) for d in hi))
                self._opt[name] = tuple(int(d) for d in opt)
            else:
                self._outputs[name] = meta

    def _deactivate(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()
        if self._rt_cache is not None:
            self._save_runtime_cache()
        self._graphs.clear()
        self._contexts.clear()
        self._rows.clear()
        self._keep = []
        # the contexts and the runtime configuration go before the runtime cache they were given
        self.context = self.engine = self.stream = self._config = self._scratch = None
        self._rt_cache = None

    # -- inference -------------------------------------------------------------------------------------------
    @property
    def max_batch(self) -> int:
        """Largest batch (dim 0) every input's profile accepts."""
        return min((hi[0] for _lo, hi in self._profile.values() if hi), default=1)

    @property
    def opt_batch(self) -> int | None:
        """The batch (dim 0) full TensorRT tuned the plan's kernels for (the build's ``--batch`` OPT); None for
        TensorRT-RTX, which compiles its kernels per shape at first use."""
        if self.info is not None and self.info.library == "tensorrt_rtx":
            return None
        return min((o[0] for o in self._opt.values() if o), default=None)

    @property
    def min_batch(self) -> int:
        """Smallest batch (dim 0) every input's profile accepts."""
        return max((lo[0] for lo, _hi in self._profile.values() if lo), default=1)

    def _device_inputs(self, feed: dict[str, Any]) -> dict[str, Any]:
        cp = self.cp
        out = {}
        with self.stream:
            for name, arr in feed.items():
                meta = self._inputs[name]
                lo, hi = self._profile[name]
                check_profile(self.path, name, tuple(arr.shape), lo, hi, self.info)
                a = cp.ascontiguousarray(cp.asarray(arr, dtype=meta.dtype))
                if self.graph_mode is None and int(a.data.ptr) % 256:  # graph modes copy into aligned buffers
                    a = a.copy()  # TensorRT needs 256-byte-aligned tensor addresses
                out[name] = a
        return out

    def _address(self, ctx: Any, name: str, arr: Any) -> None:
        if not ctx.set_tensor_address(name, int(arr.data.ptr)):
            raise BackendError(f"{self.info.library} refused the device address of tensor {name!r} for plan "
                               f"{self.path} (see the log above).")

    def _rows_of(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """The first ``shape[0]`` rows of tensor ``name``'s buffer. It is allocated at the first call's batch
        (normally a full one, the largest) and grows, at least doubling up to the profile's largest batch, when
        a call needs more rows (or other trailing dimensions); graphs bound to the old buffer are then dropped
        and captured again."""
        buf = self._rows.get(name)
        fits = buf is not None and buf.dtype == dtype and (buf.shape == shape if not shape else
                                                           buf.shape[1:] == shape[1:] and buf.shape[0] >= shape[0])
        if buf is not None and not fits:
            self.stream.synchronize()  # the old buffer is freed: nothing queued may still use it
            self._graphs.clear()  # they were captured on it
        with self.stream:  # (a view: no device work, but the CuPy stand-in counts indexing as a read)
            if not fits:
                rows = () if not shape else \
                    (max(shape[0], min(2 * buf.shape[0], self.max_batch)) if buf is not None and buf.shape
                     and buf.shape[1:] == shape[1:] else shape[0],)
                buf = self._rows[name] = self.cp.empty((*rows, *shape[1:]), dtype=dtype)
            return buf[: shape[0]] if shape else buf

    def _bind(self, ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        for name, arr in inputs.items():
            if not ctx.set_input_shape(name, tuple(arr.shape)):
                raise BackendError(f"plan {self.path} rejected input {name!r} of shape {list(arr.shape)}: "
                                   f"rebuild it for this shape with {rebuild_hint(self.path, info=self.info)}.")
            self._address(ctx, name, arr)
        outs = {}
        for name, meta in self._outputs.items():
            outs[name] = self._rows_of(name, tuple(int(d) for d in ctx.get_tensor_shape(name)), meta.dtype)
            self._address(ctx, name, outs[name])
        return outs

    def _run(self, ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        outs = self._bind(ctx, inputs)
        if not ctx.execute_async_v3(self.stream.ptr):
            raise BackendError(f"{self.info.library} failed to run plan {self.path} (see the log above).")
        return outs

    def _launch(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self.graph_mode is None:
            return self._run(self.context, inputs)
        key = tuple((n, tuple(a.shape)) for n, a in sorted(inputs.items()))
        static = {n: self._rows_of(n, tuple(a.shape), a.dtype) for n, a in inputs.items()}
        with self.stream:  # fixed addresses, as a graph needs; ordered before the run on the stream
            for name, arr in inputs.items():
                static[name][...] = arr
        if self.graph_mode == "tensorrt_rtx":  # the library captures and replays each shape itself
            return self._run(self.context, static)
        if key in self._graphs:
            graph, outs = self._graphs[key]
            graph.launch(self.stream)
            return outs
        ctx = self._contexts.get(key)
        if ctx is None:  # first call of this signature: the warm-up run, on the context it will be captured on
            ctx = self.context if not self._contexts else self._new_context()
            self._contexts[key] = ctx
            return self._run(ctx, static)
        captured = self._capture(ctx, static)
        if captured is None:
            return self._run(self.context, static)
        self._graphs[key] = captured
        graph, outs = captured
        graph.launch(self.stream)
        return outs

    def _capture(self, ctx: Any, static: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        """Capture one ``execute_async_v3`` of ``ctx`` on the fixed buffers; None (plain launches from now on)
        if the capture fails. All graphs share the buffers: they run in order on the one stream, and each call's
        outputs are copied (on that stream) before the next call writes them."""
        outs = self._bind(ctx, static)
        self.stream.synchronize()  # the warm-up run has finished before capture begins
        try:
            self.stream.begin_capture()
            ok = ctx.execute_async_v3(self.stream.ptr)
            graph = self.stream.end_capture()
            if not ok:
                raise BackendError("execute_async_v3 refused to run under stream capture")
        except Exception as exc:  # noqa: BLE001 - capture is an optimisation; keep running without it
            if self.stream.is_capturing():
                self.stream.end_capture()
            _warn_once(f"CUDA graph capture failed for {field_plan(self.path)} and its encoder plan ({exc}); running "
                       f"without graphs.", stacklevel=5)
            self.cuda_graph, self.graph_mode = False, None
            self._contexts.clear()
            self._graphs.clear()
            return None
        return graph, outs

    def _infer(self, feed: dict[str, Any], to_host: bool) -> dict[str, Any]:
        cp = self.cp
        caller = cp.cuda.get_current_stream()
        self.stream.wait_event(caller.record())  # inputs written on the caller's stream come first
        inputs = self._device_inputs(feed)
        with deferred_interrupt():  # TensorRT may log during a call (see trtlib.deferred_interrupt)
            outs = self._launch(inputs)
        self._keep = list(inputs.values())  # alive until the next call (the stream may still read them)
        if to_host:
            host = {n: cp.asnumpy(b, stream=self.stream) for n, b in outs.items()}
            self.stream.synchronize()
            return host
        with self.stream:  # the engine's buffers are reused by the next call (from any thread, on any stream):
            fresh = {n: b.copy() for n, b in outs.items()}  # the caller gets arrays of its own
        caller.wait_event(self.stream.record())  # the caller's later work sees the outputs
        return fresh

    # -- metadata --------------------------------------------------------------------------------------------
    def input_metadata(self) -> dict[str, TensorMeta]:
        return dict(self._inputs)

    def output_metadata(self) -> dict[str, TensorMeta]:
        return dict(self._outputs)

    def describe(self) -> dict[str, Any]:
        info = self.info
        running = self.trt is not None and getattr(self.trt, "__version__", None) is not None
        return {"name": self.name, "library": library_name(self.trt) if running else info.library if info else None,
                "version": str(self.trt.__version__) if running else info.trt_version if info else None,
                "built_with": f"{info.library} {info.trt_version}" if info else None,
                "precision": info.precision if info else None,
                "gpu": info.gpu_name if info else None, "cuda_graph": self.cuda_graph,
                "cuda_graph_mode": self.graph_mode, "max_batch": self.max_batch if self._profile else None,
                "runtime_cache": str(self.runtime_cache) if self.runtime_cache else None,
                "runtime_cache_state": self.runtime_cache_state,
                "shared_activation_bytes": int(self._scratch.nbytes) if self._scratch is not None else None}
