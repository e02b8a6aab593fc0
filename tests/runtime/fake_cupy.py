"""A numpy-backed stand-in for CuPy that behaves like device memory, for running the GPU code paths on a CPU.

Injected through ``sys.modules["cupy"]``. It keeps the properties of CuPy that the runtime's device code
depends on, so a mistake there fails here as it would on a GPU:

* arrays are not numpy arrays: implicit conversion (``np.asarray(a)``, mixing with numpy operands in
  arithmetic) raises ``TypeError`` as CuPy does; ``.get()`` / ``cupy.asnumpy`` copy to the host;
* new arrays start at a multiple of 512 bytes, as blocks of CuPy's memory pool do (views keep their offset);
* ``a.data.ptr`` is the address of the first element, and ``cupy.ndarray(shape, dtype, memptr=...)`` wraps
  foreign memory (``UnownedMemory`` keeps its owner alive), so code that passes raw pointers to TensorRT or to
  ONNX Runtime's I/O binding really moves the bytes through those pointers;
* streams: ``with stream``, ``get_current_stream``, events, and graph capture: while a stream captures, work
  submitted to it through :func:`submit` is recorded instead of run, and ``Graph.launch`` replays it with the
  addresses it had at capture time.

Everything runs synchronously, but stream ordering is checked: every array operation, copy and library call
(``note_access``, used by the fake TensorRT and the ORT I/O-binding wrapper) is an access to memory on a stream
(the current stream, or the stream a library call or graph launch was given). Vector clocks follow CUDA's
ordering rules (work on one stream is ordered; ``wait_event`` orders a stream after an event's work;
``synchronize`` orders the host, and so everything the host enqueues afterwards). An access to memory whose last
write — or, for a write, whose reads since — is not ordered before it is a race: it is appended to
``module.races`` (the test fixtures fail on any), with the first segflow frame that caused it. The null stream is
treated as an ordinary stream (exact for the non-blocking streams segflow creates).
"""

from __future__ import annotations

import bisect
import ctypes
import importlib.machinery
import itertools
import threading
import traceback
import types
from pathlib import Path
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

try:
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:  # numpy < 2
    _byte_bounds = np.byte_bounds

_ROOT = Path(__file__).resolve().parents[2]
_PRODUCT = [_ROOT / d for d in ("runtime", "segflow", "solvers", "export", "trainer")]  # where races are caused

_NO_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
                "array explicitly.")


class _ThreadStack(threading.local):
    """A stack kept per thread (CuPy's current stream is thread-local)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def append(self, x: Any) -> None:
        self.items.append(x)

    def pop(self) -> Any:
        return self.items.pop()

    def __bool__(self) -> bool:
        return bool(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


ALIGN = 512  # CuPy's memory pool hands out blocks rounded to 512 bytes, carved from cudaMalloc'd memory


def _aligned(a: np.ndarray) -> np.ndarray:
    """``a`` itself if its memory starts at a multiple of :data:`ALIGN`, else an aligned contiguous copy."""
    if a.size == 0 or a.ctypes.data % ALIGN == 0:
        return a
    order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
    buf = np.empty(a.nbytes + ALIGN, np.uint8)
    start = (-buf.ctypes.data) % ALIGN
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape, order=order)
    out[...] = a
    return out


def make_fake_cupy(gpu_name: str = "Fake GPU 9.0", compute_capability: tuple[int, int] = (9, 0)
                   ) -> types.ModuleType:
    """A fresh fake ``cupy`` module (see the module docstring); ``module.stats`` counts graph launches."""
    cp = types.ModuleType("cupy")
    cp.__spec__ = importlib.machinery.ModuleSpec("cupy", None)  # importlib.util.find_spec sees it as installed
    cp.__version__ = "0.0-fake"
    stats = {"graph_launches": 0, "captures": 0, "host_copies": 0, "generators": 0}
    cp.stats = stats
    races: list[str] = []
    cp.races = races

    # -- stream ordering: vector clocks per stream and for the host; last write / reads per memory range ----------
    host: dict[int, int] = {}  # how far the host has waited on each stream
    starts: list[int] = []  # sorted starts of the tracked ranges
    ranges: dict[int, list] = {}  # start -> [end, last write (stream, tick) or None, reads since [(stream, tick)]]
    executing = _ThreadStack()  # the stream a library call or graph launch runs on (per thread, as in CuPy)
    bookkeeping = threading.RLock()  # threads share the clocks and ranges
    # CUDA's primary context is made current by the first call that needs one (an allocation, a stream), not by
    # device queries (count, properties); libraries that need a current context check cp.context_current()
    context = [False]
    cp.context_current = lambda: context[0]

    def merge(into: dict[int, int], other: dict[int, int]) -> None:
        with bookkeeping:
            for k, v in list(other.items()):
                if v > into.get(k, 0):
                    into[k] = v

    def tick(stream) -> tuple[int, int]:
        """Enqueue one operation on ``stream``: it follows everything the host has waited for."""
        with bookkeeping:
            merge(stream._vc, host)
            stream._vc[stream.ptr] = stream._vc.get(stream.ptr, 0) + 1
            return stream.ptr, stream._vc[stream.ptr]

    def bounds(x) -> tuple[int, int] | None:
        if isinstance(x, tuple):
            return (x[0], x[0] + x[1]) if x[1] > 0 else None
        a = x._a
        return _byte_bounds(a) if a.size else None

    def entry(lo: int, hi: int) -> list:
        i = bisect.bisect_right(starts, lo) - 1
        if i >= 0 and ranges[starts[i]][0] >= hi:
            return ranges[starts[i]]
        return fresh(lo, hi)

    def fresh(lo: int, hi: int) -> list:
        """A new allocation at [lo, hi): whatever was tracked there before is gone."""
        context[0] = True
        i, j = bisect.bisect_left(starts, lo), bisect.bisect_left(starts, hi)
        for start in starts[i:j]:
            del ranges[start]
        del starts[i:j]
        bisect.insort(starts, lo)
        ranges[lo] = [hi, None, []]
        return ranges[lo]

    def culprit() -> str:
        frames = [f for f in traceback.extract_stack()[:-3]
                  if any(Path(f.filename).resolve().is_relative_to(d) for d in _PRODUCT)]
        return f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""

    def access(reads=(), writes=(), *, stream=None, what="") -> None:
        with bookkeeping:
            _access(reads, writes, stream=stream, what=what)

    def _access(reads=(), writes=(), *, stream=None, what="") -> None:
        stream = stream or (executing[-1] if executing else get_current_stream())
        stamp = tick(stream)
        vc = stream._vc
        for kind, items in (("reads", reads), ("writes", writes)):
            for x in items:
                b = bounds(x)
                if b is None:
                    continue
                e = entry(*b)
                earlier = ([e[1]] if e[1] else []) + (e[2] if kind == "writes" else [])
                for s_, t_ in earlier:
                    if vc.get(s_, 0) < t_:
                        races.append(f"{what or 'an operation'} on stream {stamp[0]:#x} {kind} memory at {b[0]:#x} "
                                     f"that stream {s_:#x} accessed without an event wait or synchronize between"
                                     f"{culprit()}")
                        break
                if kind == "reads":
                    e[2].append(stamp)
                else:
                    e[1], e[2] = stamp, []

    def host_waits(stream) -> None:
        merge(host, stream._vc)

    def made(r: np.ndarray, *sources) -> bool:
        """Whether ``r`` is new memory (not one of ``sources`` or a view of them)."""
        return r.size > 0 and not any(isinstance(x, np.ndarray) and np.may_share_memory(r, x) for x in sources)

    def result(r: Any, reads=(), sources=(), what="") -> Any:
        """Wrap an operation's numpy result: reads ``reads``; a new array is a fresh allocation it writes."""
        out = wrap(r)
        new = [o for o in (out if isinstance(out, tuple) else (out,))
               if isinstance(o, ndarray) and made(o._a, *sources)]
        if new or reads:
            for o in new:
                o._a = _aligned(o._a)
                fresh(*bounds(o))
            access(reads=[x for x in reads if isinstance(x, ndarray)], writes=new, what=what)
        return out

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
                self._a = _aligned(np.empty(shape, dtype))
                if self._a.size:
                    fresh(*_byte_bounds(self._a))
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
            if out is not None:
                access(reads=[x for x in inputs if isinstance(x, ndarray)], writes=list(out), what=ufunc.__name__)
                return out[0] if len(out) == 1 else out
            return result(r, reads=inputs, sources=[x._a for x in inputs if isinstance(x, ndarray)],
                          what=ufunc.__name__)

        def __array_function__(self, func, types_, args, kwargs):
            if func.__name__ not in CUPY_FUNCTIONS:
                return NotImplemented
            flat = [v for a in (*args, *kwargs.values()) for v in (a if isinstance(a, (list, tuple)) else (a,))]
            r = func(*unwrap(args, strict=True), **{k: unwrap(v, strict=True) for k, v in kwargs.items()})
            return result(r, reads=flat, sources=[v._a for v in flat if isinstance(v, ndarray)], what=func.__name__)

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
            stream = stream or get_current_stream()
            access(reads=[self], stream=stream, what="copy to the host")
            host_waits(stream)  # a blocking copy: the host waits for the stream
            return np.array(self._a, order=order, copy=True)

        def __getitem__(self, key):
            return result(self._a[unwrap(key, strict=False)], reads=[self], sources=[self._a], what="indexing")

        def __setitem__(self, key, value):
            key = unwrap(key, strict=False)
            self._a[key] = unwrap(value, strict=False)
            region = self._a[key]  # a view for basic indexing; otherwise count the whole array as written
            view = isinstance(region, np.ndarray) and region.size and np.may_share_memory(region, self._a)
            lo, hi = _byte_bounds(region if view else self._a)
            access(reads=[value] if isinstance(value, ndarray) else [], writes=[(lo, hi - lo)], what="assignment")

        def __len__(self):
            return len(self._a)

        def __iter__(self):
            return (wrap(row) for row in self._a)

        def __float__(self):
            self._to_host()
            return float(self._a)

        def __bool__(self):
            self._to_host()
            return bool(self._a)

        def _to_host(self):
            stream = get_current_stream()
            access(reads=[self], stream=stream, what="scalar read")
            host_waits(stream)

        def __repr__(self):
            return f"fake_cupy.ndarray({self._a!r})"

        def astype(self, dtype, copy=True, **kw):
            return result(self._a.astype(dtype, copy=copy), reads=[self], sources=[self._a], what="astype")

        def copy(self, order="C"):
            return result(self._a.copy(order=order), reads=[self], what="copy")

        def reshape(self, *shape, **kw):
            return result(self._a.reshape(*shape, **kw), reads=[self], sources=[self._a], what="reshape")


    for _name in ("mean", "std", "sum", "max", "min", "any", "all"):
        setattr(ndarray, _name, (lambda n: lambda self, *a, **k: result(
            getattr(self._a, n)(*unwrap(a, strict=True), **k), reads=[self], what=n))(_name))
    ndarray.__module__ = "cupy"
    cp.ndarray = ndarray

    # -- creation / transfer -----------------------------------------------------------------------------------
    def asarray(a, dtype=None, order=None, blocking=False):
        if isinstance(a, ndarray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        return result(np.array(a, dtype=dtype, order=order or "K", copy=True), what="copy to the device")

    def array(a, dtype=None, copy=True, order="K", ndmin=0):
        if isinstance(a, ndarray):
            return result(np.array(a._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin), reads=[a],
                          sources=[a._a], what="array")
        return result(np.array(a, dtype=dtype, copy=True, order=order, ndmin=ndmin), what="copy to the device")

    def ascontiguousarray(a, dtype=None):
        if not isinstance(a, ndarray):
            raise TypeError(f"Unsupported type {type(a)}: ascontiguousarray takes a cupy.ndarray")
        r = np.ascontiguousarray(a._a, dtype=dtype)
        return a if r is a._a else result(r, reads=[a], sources=[a._a], what="ascontiguousarray")

    def asnumpy(a, stream=None, order="C", out=None, blocking=True):
        return a.get(stream=stream, order=order) if isinstance(a, ndarray) else np.asarray(a, order=order)

    cp.asarray, cp.array, cp.ascontiguousarray, cp.asnumpy = asarray, array, ascontiguousarray, asnumpy
    def allocated(r: np.ndarray) -> ndarray:
        """New uninitialised memory: tracked fresh, no access."""
        out = wrap(_aligned(r))
        if r.size:
            fresh(*bounds(out))
        return out

    cp.empty = lambda shape, dtype=float, order="C": allocated(np.empty(shape, dtype, order))
    cp.empty_like = lambda a, dtype=None: allocated(np.empty_like(unwrap(a, strict=True), dtype=dtype))
    cp.zeros = lambda shape, dtype=float, order="C": result(np.zeros(shape, dtype, order), what="zeros")
    cp.zeros_like = lambda a, dtype=None: result(np.zeros_like(unwrap(a, strict=True), dtype=dtype), what="zeros")
    cp.full = lambda shape, fill_value, dtype=None, order="C": result(np.full(shape, fill_value, dtype, order),
                                                                     what="full")
    for _name in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool_"):
        setattr(cp, _name, getattr(np, _name))

    class _Generator:
        def __init__(self, seed):
            stats["generators"] += 1  # each sets up cuRAND states on a real GPU
            self._g = np.random.default_rng(seed)

        def standard_normal(self, size=None, dtype=np.float64, out=None):
            return result(self._g.standard_normal(size, dtype=dtype), what="standard_normal")

    cp.random = types.SimpleNamespace(default_rng=_Generator, Generator=_Generator)

    # -- cuda: streams, events, graphs, memory, runtime ---------------------------------------------------------
    ptrs = itertools.count(0x1000, 0x10)
    streams: dict[int, Any] = {}
    current = _ThreadStack()  # the current-stream stack: CuPy's current stream is per thread

    class Event:
        def __init__(self, *a, **k):
            self._vc: dict[int, int] = {}

        def record(self, stream=None):
            stream = stream or get_current_stream()
            tick(stream)
            self._vc = dict(stream._vc)  # the work enqueued on the stream so far

        def synchronize(self):
            merge(host, self._vc)

    class Graph:
        def __init__(self, ops):
            self._ops = list(ops)

        def launch(self, stream=None):
            stats["graph_launches"] += 1
            executing.append(stream or get_current_stream())
            try:
                for op in self._ops:
                    op()
            finally:
                executing.pop()

    class Stream:
        def __init__(self, null=False, non_blocking=False, ptds=False):
            self.ptr = 0 if null else next(ptrs)
            context[0] = context[0] or not null
            self._capture: list | None = None
            self._vc: dict[int, int] = {}
            streams[self.ptr] = self

        def __enter__(self):
            current.append(self)
            return self

        def __exit__(self, *exc):
            current.pop()

        def synchronize(self):
            if self._capture is not None:
                raise RuntimeError("cudaErrorStreamCaptureUnsupported: synchronize during capture")
            host_waits(self)

        def record(self, event=None):
            event = event or Event()
            event.record(self)
            return event

        def wait_event(self, event):
            tick(self)
            merge(self._vc, event._vc)

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
            return
        executing.append(stream)
        try:
            op()
        finally:
            executing.pop()

    def note_access(reads=(), writes=(), what="a library call") -> None:
        """Fake libraries report the device memory an operation reads and writes, as ``(pointer, nbytes)``; it
        runs on the stream it was submitted to (or the graph's launch stream), else the current stream."""
        access(reads=list(reads), writes=list(writes), what=what)

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
            for st in streams.values():
                host_waits(st)

    props = {"name": gpu_name.encode(), "major": compute_capability[0], "minor": compute_capability[1],
             "totalGlobalMem": 80 << 30}
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: 0,
                                    deviceSynchronize=lambda: Device().synchronize(),
                                    getDeviceProperties=lambda i: dict(props))
    nvrtc = types.SimpleNamespace(getVersion=lambda: (13, 0))  # the kernel compiler loads
    cp.cuda = types.SimpleNamespace(Stream=Stream, Event=Event, Device=Device, get_current_stream=get_current_stream,
                                    nvrtc=nvrtc,
                                    UnownedMemory=UnownedMemory, MemoryPointer=MemoryPointer, runtime=runtime,
                                    graph=types.SimpleNamespace(Graph=Graph), submit=submit, streams=streams,
                                    note_access=note_access)
    return cp
