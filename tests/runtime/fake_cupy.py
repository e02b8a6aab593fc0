"""A numpy-backed stand-in for CuPy that behaves like device memory, for running the GPU code paths on a CPU.

Injected through ``sys.modules["cupy"]``. It keeps the properties of CuPy that the runtime's device code
depends on, so a mistake there fails here as it would on a GPU:

* arrays are not numpy arrays: implicit conversion (``np.asarray(a)``, mixing with numpy operands in
  arithmetic) raises ``TypeError`` as CuPy does; ``.get()`` / ``cupy.asnumpy`` copy to the host;
* ``a.data.ptr`` is the address of the first element, and ``cupy.ndarray(shape, dtype, memptr=...)`` wraps
  foreign memory (``UnownedMemory`` keeps its owner alive), so code that passes raw pointers to TensorRT or to
  ONNX Runtime's I/O binding really moves the bytes through those pointers;
* streams: ``with stream``, ``get_current_stream``, events, and graph capture: while a stream captures, work
  submitted to it through :func:`submit` is recorded instead of run, and ``Graph.launch`` replays it with the
  addresses it had at capture time.

Everything runs synchronously, so stream-ordering races are not modelled.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import itertools
import types
from typing import Any

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

# NumPy ufuncs and functions the stand-in dispatches on its arrays, as CuPy does through ``__array_ufunc__`` /
# ``__array_function__`` (CuPy runs its own function of the same name and refuses names it lacks; the stand-in
# refuses names outside these sets). tests/runtime/test_fake_cupy_fidelity.py checks them against a real CuPy.
CUPY_UFUNCS = frozenset({
    "add", "subtract", "multiply", "divide", "negative", "power", "sqrt", "square", "exp", "log", "absolute",
    "sign", "tanh", "maximum", "minimum", "less", "less_equal", "greater", "greater_equal", "equal", "not_equal",
    "logical_and", "logical_or", "logical_not", "floor_divide", "remainder", "clip"})
CUPY_FUNCTIONS = frozenset({"where", "clip", "mean", "std", "sum", "stack", "concatenate", "maximum", "minimum"})

_NO_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
                "array explicitly.")


def make_fake_cupy(gpu_name: str = "Fake GPU 9.0", compute_capability: tuple[int, int] = (9, 0)
                   ) -> types.ModuleType:
    """A fresh fake ``cupy`` module (see the module docstring); ``module.stats`` counts graph launches."""
    cp = types.ModuleType("cupy")
    cp.__spec__ = importlib.machinery.ModuleSpec("cupy", None)  # importlib.util.find_spec sees it as installed
    cp.__version__ = "0.0-fake"
    stats = {"graph_launches": 0, "captures": 0, "host_copies": 0}
    cp.stats = stats

    def unwrap(x: Any, *, strict: bool) -> Any:
        if isinstance(x, ndarray):
            return x._a
        if isinstance(x, np.ndarray) and strict and x.ndim > 0:
            raise TypeError(f"Unsupported type {type(x)}")  # CuPy refuses host arrays as operands
        if isinstance(x, (list, tuple)):
            return type(x)(unwrap(v, strict=strict) for v in x)
        return x

    def wrap(r: Any) -> Any:
        if isinstance(r, np.ndarray):
            return ndarray._from(r)
        if isinstance(r, np.generic):
            return ndarray._from(np.asarray(r))  # CuPy reductions and indexing give 0-d arrays, not scalars
        if isinstance(r, tuple):
            return tuple(wrap(v) for v in r)
        return r

    class ndarray(NDArrayOperatorsMixin):
        """Device array: a numpy buffer that refuses implicit conversion to numpy."""

        __array_priority__ = 100

        def __init__(self, shape, dtype=float, memptr=None):
            dtype = np.dtype(dtype)
            shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
            if memptr is None:
                self._a = np.empty(shape, dtype)
                return
            count = int(np.prod(shape, dtype=np.int64))
            raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(memptr.ptr)
            self._a = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
            self._owner = memptr  # keeps UnownedMemory's owner alive as long as the array

        @classmethod
        def _from(cls, a: np.ndarray) -> ndarray:
            obj = cls.__new__(cls)
            obj._a = a
            return obj

        # -- numpy protocols ---------------------------------------------------------------------------------
        def __array__(self, *args, **kwargs):
            raise TypeError(_NO_IMPLICIT)

        def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
            if ufunc.__name__ not in CUPY_UFUNCS:
                return NotImplemented  # CuPy: no cupy ufunc of that name -> TypeError from NumPy
            args = [unwrap(x, strict=True) for x in inputs]
            if out is not None:
                kwargs["out"] = tuple(unwrap(o, strict=True) for o in out)
            r = getattr(ufunc, method)(*args, **kwargs)
            return out[0] if out is not None and len(out) == 1 else wrap(r)

        def __array_function__(self, func, types_, args, kwargs):
            if func.__name__ not in CUPY_FUNCTIONS:
                return NotImplemented
            return wrap(func(*unwrap(args, strict=True), **{k: unwrap(v, strict=True) for k, v in kwargs.items()}))

        # -- attributes --------------------------------------------------------------------------------------
        shape = property(lambda self: self._a.shape)
        dtype = property(lambda self: self._a.dtype)
        ndim = property(lambda self: self._a.ndim)
        size = property(lambda self: self._a.size)
        nbytes = property(lambda self: self._a.nbytes)

        @property
        def data(self):
            return types.SimpleNamespace(ptr=int(self._a.ctypes.data))

        def get(self, stream=None, order="C", out=None, blocking=True):
            stats["host_copies"] += 1
            return np.array(self._a, order=order, copy=True)

        def __getitem__(self, key):
            return wrap(self._a[unwrap(key, strict=False)])

        def __setitem__(self, key, value):
            self._a[unwrap(key, strict=False)] = unwrap(value, strict=False)

        def __len__(self):
            return len(self._a)

        def __iter__(self):
            return (wrap(row) for row in self._a)

        def __float__(self):
            return float(self._a)

        def __bool__(self):
            return bool(self._a)

        def __repr__(self):
            return f"fake_cupy.ndarray({self._a!r})"

        def astype(self, dtype, copy=True, **kw):
            return wrap(self._a.astype(dtype, copy=copy))

        def copy(self, order="C"):
            return wrap(self._a.copy(order=order))

        def reshape(self, *shape, **kw):
            return wrap(self._a.reshape(*shape, **kw))


    for _name in ("mean", "std", "sum", "max", "min", "any", "all"):
        setattr(ndarray, _name, (lambda n: lambda self, *a, **k: wrap(getattr(self._a, n)(*unwrap(a, strict=True),
                                                                                        **k)))(_name))
    ndarray.__module__ = "cupy"
    cp.ndarray = ndarray

    # -- creation / transfer -----------------------------------------------------------------------------------
    def asarray(a, dtype=None, order=None, blocking=False):
        if isinstance(a, ndarray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        return ndarray._from(np.array(a, dtype=dtype, order=order or "K", copy=True))  # host -> device copy

    def array(a, dtype=None, copy=True, order="K", ndmin=0):
        if isinstance(a, ndarray):
            return wrap(np.array(a._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
        return ndarray._from(np.array(a, dtype=dtype, copy=True, order=order, ndmin=ndmin))

    def ascontiguousarray(a, dtype=None):
        if not isinstance(a, ndarray):
            raise TypeError(f"Unsupported type {type(a)}: ascontiguousarray takes a cupy.ndarray")
        return wrap(np.ascontiguousarray(a._a, dtype=dtype))

    def asnumpy(a, stream=None, order="C", out=None, blocking=True):
        return a.get(order=order) if isinstance(a, ndarray) else np.asarray(a, order=order)

    cp.asarray, cp.array, cp.ascontiguousarray, cp.asnumpy = asarray, array, ascontiguousarray, asnumpy
    cp.empty = lambda shape, dtype=float, order="C": wrap(np.empty(shape, dtype, order))
    cp.zeros = lambda shape, dtype=float, order="C": wrap(np.zeros(shape, dtype, order))
    cp.full = lambda shape, fill_value, dtype=None, order="C": wrap(np.full(shape, fill_value, dtype, order))
    for _name in ("empty_like", "zeros_like"):
        setattr(cp, _name, (lambda n: lambda a, *r, **k: wrap(getattr(np, n)(unwrap(a, strict=True), *r, **k)))(_name))
    for _name in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool_"):
        setattr(cp, _name, getattr(np, _name))

    class _Generator:
        def __init__(self, seed):
            self._g = np.random.default_rng(seed)

        def standard_normal(self, size=None, dtype=np.float64, out=None):
            return wrap(self._g.standard_normal(size, dtype=dtype))

    cp.random = types.SimpleNamespace(default_rng=_Generator, Generator=_Generator)

    # -- cuda: streams, events, graphs, memory, runtime ---------------------------------------------------------
    ptrs = itertools.count(0x1000, 0x10)
    streams: dict[int, Any] = {}
    current: list[Any] = []

    class Event:
        def __init__(self, *a, **k):
            self._recorded = False

        def record(self, stream=None):
            self._recorded = True

        def synchronize(self):
            pass

    class Graph:
        def __init__(self, ops):
            self._ops = list(ops)

        def launch(self, stream=None):
            stats["graph_launches"] += 1
            for op in self._ops:
                op()

    class Stream:
        def __init__(self, null=False, non_blocking=False, ptds=False):
            self.ptr = 0 if null else next(ptrs)
            self._capture: list | None = None
            streams[self.ptr] = self

        def __enter__(self):
            current.append(self)
            return self

        def __exit__(self, *exc):
            current.pop()

        def synchronize(self):
            if self._capture is not None:
                raise RuntimeError("cudaErrorStreamCaptureUnsupported: synchronize during capture")

        def record(self, event=None):
            event = event or Event()
            event.record(self)
            return event

        def wait_event(self, event):
            pass

        def begin_capture(self, mode=None):
            if self.ptr == 0:
                raise RuntimeError("cudaErrorStreamCaptureUnsupported: the null stream cannot capture")
            self._capture = []

        def is_capturing(self):
            return self._capture is not None

        def end_capture(self):
            ops, self._capture = self._capture, None
            stats["captures"] += 1
            return Graph(ops or [])

    null = Stream(null=True)

    def get_current_stream():
        return current[-1] if current else null

    def submit(stream_ptr: int, op) -> None:
        """Run ``op`` now, or record it when stream ``stream_ptr`` is capturing (used by fake libraries)."""
        stream = streams.get(int(stream_ptr))
        if stream is None:
            raise RuntimeError(f"cudaErrorInvalidResourceHandle: unknown stream {stream_ptr:#x}")
        if stream._capture is not None:
            stream._capture.append(op)
        else:
            op()

    class UnownedMemory:
        def __init__(self, ptr, size, owner, device_id=None):
            self.ptr, self.size, self.owner = int(ptr), int(size), owner

    class MemoryPointer:
        def __init__(self, mem, offset):
            self.mem, self.ptr = mem, mem.ptr + int(offset)

    class Device:
        def __init__(self, device=0):
            self.id = int(device)

        def synchronize(self):
            pass

    props = {"name": gpu_name.encode(), "major": compute_capability[0], "minor": compute_capability[1],
             "totalGlobalMem": 80 << 30}
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: 0, deviceSynchronize=lambda: None,
                                    getDeviceProperties=lambda i: dict(props))
    cp.cuda = types.SimpleNamespace(Stream=Stream, Event=Event, Device=Device, get_current_stream=get_current_stream,
                                    UnownedMemory=UnownedMemory, MemoryPointer=MemoryPointer, runtime=runtime,
                                    graph=types.SimpleNamespace(Graph=Graph), submit=submit, streams=streams)
    return cp
