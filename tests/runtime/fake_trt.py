"""A fake ``tensorrt`` module that records the builder's call sequence (injected through ``sys.modules``).

It mimics the documented Python API shape of TensorRT 10/11 (Builder, network with inputs, OnnxParser,
builder config with memory pools / profiles / timing caches, ``build_serialized_network``), and records every
call in ``module.calls`` so tests can check what segflow's builder asked for.

With ``executable=True`` it also runs what it builds: the parser reads the ONNX graph's inputs, the "plan" is
the profile plus the ONNX bytes, and ``Runtime.deserialize_cuda_engine`` gives an engine whose execution
context follows TensorRT's name-based API (``set_input_shape``, ``set_tensor_address``, ``get_tensor_shape``,
``execute_async_v3``). Execution reads the inputs from the bound device addresses, runs the graph with ONNX
Runtime on the CPU and writes the outputs to the bound addresses, submitted on the given stream of the fake
CuPy (``tests/runtime/fake_cupy.py``), so CUDA-graph capture records it and replays it with the addresses of
capture time; each run reports the memory it reads and writes to the fake CuPy's stream-ordering check.
``module.executions`` counts the graph runs. A captured graph is tied to the input shapes its execution context
had at capture (NVIDIA: re-capture when they change); a replay after that context's shapes changed is recorded in
``module.misuse``, which the tests require to stay empty. Activation memory follows
``ExecutionContextAllocationStrategy``: a STATIC context gets its own (``module.static_activation_bytes``), a
USER_MANAGED one runs only after ``set_device_memory`` (too small or unaligned is misuse), and every run
overwrites all of it with 0xFF bytes and reports the write to the stream-ordering check. Named
``tensorrt_rtx``, it also models TensorRT-RTX's just-in-time kernels: a run with a new input-shape signature
compiles (``module.jit_compiles``) unless the execution context's runtime cache
(``ICudaEngine.create_runtime_config``) holds it; the cache serialises with the GPU's name and refuses a blob
from another GPU, as the real one validates its environment. Its CUDA graphs follow
RTX 1.2+: application stream capture fails (``is_stream_capturable`` is False for plans built without
``REQUIRE_USER_ALLOCATION``, which segflow does not set), and ``IRuntimeConfig.cuda_graph_strategy =
WHOLE_GRAPH_CAPTURE`` makes the context capture and replay internally per shape signature and tensor addresses
(``module.native_captures`` / ``native_replays``; that changed addresses force a new capture is this model's
conservative assumption).
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import os
import signal
import sys
import types
from pathlib import Path

import numpy as np

PLAN_MAGIC = b"FAKEPLAN\n"
RTCACHE_MAGIC = b"FAKERTCACHE\n"


def onnx_inputs(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Graph inputs of an ONNX file, name -> shape with -1 for dynamic dimensions."""
    import onnx

    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    return {v.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
            for v in model.graph.input if v.name not in inits}


def _read(ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    raw = (ctypes.c_char * (n * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype, count=n).reshape(shape).copy()


def _write(ptr: int, value: np.ndarray) -> None:
    value = np.ascontiguousarray(value)
    ctypes.memmove(ptr, value.ctypes.data, value.nbytes)


def _runtime_api(mod: types.ModuleType) -> None:
    """Add DataType, TensorIOMode, nptype and Runtime (executing FAKEPLAN plans) to a fake module."""
    lean = mod.__name__.startswith("tensorrt_lean")
    mod.loads_refused = []  # why deserialize_cuda_engine returned None
    import onnxruntime as ort

    DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "INT64": 8})
    TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    to_np = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
             DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.INT64: np.int64}
    from_ort = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int64)": DataType.INT64,
                "tensor(int32)": DataType.INT32, "tensor(bool)": DataType.BOOL}
    mod.executions = 0
    mod.jit_compiles = 0  # kernels compiled at run time (TensorRT-RTX), one per new input-shape signature
    mod.misuse: list[str] = []  # documented API contracts broken (module docstring)
    mod.native_captures = mod.native_replays = 0  # TensorRT-RTX's own CUDA graphs
    rtx = mod.__name__ == "tensorrt_rtx"
    CudaGraphStrategy = enum.IntEnum("CudaGraphStrategy", {"DISABLED": 0, "WHOLE_GRAPH_CAPTURE": 1})
    Allocation = enum.IntEnum("ExecutionContextAllocationStrategy",
                              {"STATIC": 0, "ON_PROFILE_CHANGE": 1, "USER_MANAGED": 2})
    mod.static_activation_bytes = 0  # activation memory the library allocated for STATIC contexts

    class RuntimeCache:
        """TensorRT-RTX's runtime cache: compiled kernels by shape signature, valid only for the same GPU."""

        def __init__(self):
            self.kernels: set[str] = set()

        def _gpu(self):
            return sys.modules["cupy"].cuda.runtime.getDeviceProperties(0)["name"].decode()

        def serialize(self):
            return RTCACHE_MAGIC + json.dumps({"gpu": self._gpu(), "kernels": sorted(self.kernels)}).encode()

        def deserialize(self, blob):
            blob = bytes(blob)
            if not sys.modules["cupy"].context_current():
                mod.misuse.append("IRuntimeCache.deserialize without a current CUDA context (the library rejects "
                                  "the cache: it validates it against the context)")
                return False
            if not blob.startswith(RTCACHE_MAGIC):
                return False
            head = json.loads(blob[len(RTCACHE_MAGIC):])
            if head["gpu"] != self._gpu():
                return False  # validated against the current environment; rejected, cache unchanged
            self.kernels |= set(head["kernels"])
            return True

    class RuntimeConfig:
        def __init__(self):
            self.cache = None
            self.cuda_graph_strategy = CudaGraphStrategy.DISABLED

        def create_runtime_cache(self):
            return RuntimeCache()

        def set_runtime_cache(self, cache):
            self.cache = cache
            return True

        def get_runtime_cache(self):
            return self.cache

    class Context:
        def __init__(self, engine, runtime_config=None, strategy=Allocation.STATIC):
            self.engine, self.shapes, self.addresses = engine, {}, {}
            self.memory = None  # (pointer, size) of the activation memory; USER_MANAGED: set_device_memory
            if strategy == Allocation.STATIC:
                self._own = sys.modules["cupy"].empty(engine.device_memory_size_v2, dtype=np.uint8)
                self.memory = (int(self._own.data.ptr), engine.device_memory_size_v2)
                mod.static_activation_bytes += engine.device_memory_size_v2
            self.cache = runtime_config.cache if runtime_config is not None else None
            self.native_graphs = runtime_config is not None \
                and runtime_config.cuda_graph_strategy == CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self.captured: set[str] = set()  # TensorRT-RTX's own graphs: shape signature + tensor addresses

        if rtx:  # TensorRT-RTX 1.2+; capturable only for plans built with REQUIRE_USER_ALLOCATION
            def is_stream_capturable(self, stream_handle):
                return False

        def set_input_shape(self, name, shape):
            lo, _opt, hi = self.engine.get_tensor_profile_shape(name, 0)
            if len(shape) != len(lo) or not all(a <= s <= b for s, a, b in zip(shape, lo, hi, strict=True)):
                return False
            self.shapes[name] = tuple(int(s) for s in shape)
            return True

        def set_device_memory(self, memory, size):
            need = self.engine.device_memory_size_v2
            if int(memory) % 256 or int(size) < need:  # "256-byte aligned", "at least device_memory_size_v2"
                mod.misuse.append(f"set_device_memory({int(memory):#x}, {int(size)}): needs 256-byte alignment "
                                  f"and at least {need} bytes")
            self.memory = (int(memory), int(size))

        def set_tensor_address(self, name, ptr):
            if int(ptr) % 256:  # TensorRT: "The pointer must have at least 256-byte alignment."
                return False
            self.addresses[name] = int(ptr)
            return True

        def get_tensor_shape(self, name):
            eng = self.engine
            if name in eng.inputs:
                return self.shapes.get(name, eng.get_tensor_shape(name))
            zeros = {n: np.zeros(self.shapes[n], eng.np_dtype(n)) for n in eng.inputs}  # run once to learn the shape
            return tuple(eng.session.run([name], zeros)[0].shape)

        def execute_async_v3(self, stream_handle):
            if set(self.shapes) != set(self.engine.inputs) or self.memory is None:
                return False
            addresses, shapes, eng, scratch = dict(self.addresses), dict(self.shapes), self.engine, self.memory[0]
            if sys.modules["cupy"].cuda.streams[int(stream_handle)].is_capturing() \
                    and rtx and not self.is_stream_capturable(stream_handle):
                return False
            if rtx:
                signature = json.dumps(sorted(shapes.items()))
                if self.cache is None or signature not in self.cache.kernels:
                    mod.jit_compiles += 1
                    if self.cache is not None:
                        self.cache.kernels.add(signature)
                if self.native_graphs:
                    graph = signature + json.dumps(sorted(addresses.items()))
                    if graph in self.captured:
                        mod.native_replays += 1
                    else:
                        mod.native_captures += 1
                        self.captured.add(graph)

            def op():
                if self.shapes != shapes:  # only a graph replay runs after the context has moved on
                    mod.misuse.append(f"CUDA graph replayed after its execution context's input shapes changed "
                                      f"(captured with {shapes}, context now {self.shapes})")
                feed = {n: _read(addresses[n], shapes[n], eng.np_dtype(n)) for n in eng.inputs}
                outs = [v.astype(eng.np_dtype(n), copy=False)
                        for n, v in zip(eng.outputs, eng.session.run(eng.outputs, feed), strict=True)]
                sys.modules["cupy"].cuda.note_access(  # stream ordering is checked by the fake CuPy
                    reads=[(addresses[n], v.nbytes) for n, v in feed.items()],
                    writes=[(addresses[n], v.nbytes) for n, v in zip(eng.outputs, outs, strict=True)]
                    + [(scratch, eng.device_memory_size_v2)],  # the activations
                    what="TensorRT execute_async_v3")
                ctypes.memset(scratch, 0xFF, eng.device_memory_size_v2)  # clobbers whatever else lives there
                for name, value in zip(eng.outputs, outs, strict=True):
                    _write(addresses[name], value)
                mod.executions += 1

            sys.modules["cupy"].cuda.submit(stream_handle, op)
            return True

    class Engine:
        def __init__(self, profiles, onnx_bytes):
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            self.session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
            self.profiles = profiles
            self.meta = {a.name: a for a in (*self.session.get_inputs(), *self.session.get_outputs())}
            self.inputs = [a.name for a in self.session.get_inputs()]
            self.outputs = [a.name for a in self.session.get_outputs()]
            self.names = self.inputs + self.outputs
            # activation memory: twice the inputs at the profile's largest shapes, rounded up to 256 bytes
            n = sum(int(np.prod(self.profiles[i][2])) * self.np_dtype(i).itemsize for i in self.inputs)
            self._memory_size = -(-2 * n // 256) * 256

        def np_dtype(self, name):
            return np.dtype(to_np[self.get_tensor_dtype(name)])

        device_memory_size_v2 = property(lambda self: self._memory_size)  # on the class, as the real one

        num_io_tensors = property(lambda self: len(self.names))

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_dtype(self, name):
            return from_ort[self.meta[name].type]

        def get_tensor_shape(self, name):
            return tuple(d if isinstance(d, int) else -1 for d in self.meta[name].shape)

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

        def get_tensor_profile_shape(self, name, profile):
            return tuple(tuple(s) for s in self.profiles[name])

        def create_execution_context(self, strategy=Allocation.STATIC, runtime_config=None):
            return Context(self, runtime_config, Allocation(strategy))

        if rtx:
            def create_runtime_config(self):
                return RuntimeConfig()

    class Runtime:
        engine_host_code_allowed = False  # a version-compatible plan's embedded lean runtime is host code

        def __init__(self, logger):
            mod.register_logger(logger, "createInferRuntime")

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            if not data.startswith(PLAN_MAGIC):
                return None
            header, onnx_bytes = data[len(PLAN_MAGIC):].split(b"\n", 1)
            header = json.loads(header)
            vc = header.get("version_compatible", False)
            if vc and not self.engine_host_code_allowed:  # TensorRT logs an error and returns null
                mod.loads_refused.append("host code not allowed")
                return None
            if lean and not vc:  # the lean runtime runs version-compatible plans only
                mod.loads_refused.append("not version-compatible")
                return None
            return Engine(header["profiles"], onnx_bytes)

    mod.DataType, mod.TensorIOMode, mod.Runtime = DataType, TensorIOMode, Runtime
    mod.ExecutionContextAllocationStrategy = Allocation
    mod.ICudaEngine, mod.IExecutionContext = Engine, Context
    if rtx:
        mod.IRuntimeConfig, mod.IRuntimeCache, mod.CudaGraphStrategy = RuntimeConfig, RuntimeCache, CudaGraphStrategy
    mod.nptype = lambda dt: to_np[DataType(int(dt))]


def make_fake_trt(name: str = "tensorrt", *, version: str = "11.4.0.106", inputs=None, parse_ok: bool = True,
                  build_ok: bool = True, strongly_typed: bool = True, executable: bool = False,
                  outputs: int = 1, interrupt_build: bool = False) -> types.ModuleType:
    """Build a fresh fake module; ``inputs`` maps input name -> shape with -1 for dynamic dims (with
    ``executable``, the parsed graph's own inputs); ``executable`` adds the runtime (module docstring);
    ``outputs``: the parsed network's output count (TensorRT's parser takes any bytes as an empty graph);
    ``interrupt_build``: a Ctrl-C (SIGINT to this process) arrives during the build, while TensorRT calls the
    logger, whose exceptions the real bindings catch and print ("Exception caught in log()") before going on."""
    calls: list[tuple] = []
    inputs = inputs if inputs is not None else {"x": (-1, 1, -1, -1), "t": (-1,), "features": (-1, 2, -1, -1)}

    class Logger:
        WARNING, INFO, ERROR, VERBOSE = 2, 3, 1, 4
        min_severity = WARNING

        def __init__(self, level):
            calls.append(("Logger", level))
            self.min_severity = level

    class ILogger:
        """Base class of custom loggers: subclasses call ``ILogger.__init__`` and define ``log``."""
        Severity = enum.IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3,
                                             "VERBOSE": 4})

        def __init__(self):
            calls.append(("ILogger",))

        def log(self, severity, msg):  # pure virtual in TensorRT
            raise NotImplementedError

    registered: list[Logger] = []

    def register_logger(logger, what):
        """TensorRT keeps the first logger it is given; a different one is ignored with a logged warning."""
        if not registered:
            registered.append(logger)
        elif logger is not registered[0]:
            mod.logger_warnings.append(f"The logger passed into {what} differs from one already registered")

    BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "TF32": 7, "VERSION_COMPATIBLE": 13})
    HardwareCompatibilityLevel = enum.IntEnum("HardwareCompatibilityLevel",
                                              {"NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2})

    flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if strongly_typed else {"EXPLICIT_BATCH": 0}
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags)
    MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "TACTIC_SHARED_MEMORY": 2})

    class Tensor:
        name, shape = "", ()

        def __init__(self, n, s):
            self.name, self.shape = n, s

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.source = None
            self._inputs = [Tensor(n, s) for n, s in inputs.items()]

        @property
        def num_inputs(self):
            return len(self._inputs)

        @property
        def num_outputs(self):
            return outputs

        def get_input(self, i):
            return self._inputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0 if parse_ok else 1

        def parse_from_file(self, path):
            calls.append(("parse_from_file", Path(path).name, Path(path).is_file()))
            if executable and parse_ok:
                self.network.source = Path(path)
                self.network._inputs = [Tensor(n, s) for n, s in onnx_inputs(path).items()]
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Conv): unsupported attribute"

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            calls.append(("set_shape", name, tuple(mn), tuple(opt), tuple(mx)))
            self.shapes[name] = [list(mn), list(opt), list(mx)]

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+tuned"

    class Config:
        profile = None
        hardware_compatibility_level = HardwareCompatibilityLevel.NONE

        def __init__(self):
            self.flags = {BuilderFlag.TF32}  # TF32 is on by default in TensorRT and TensorRT-RTX

        def get_flag(self, flag):
            return flag in self.flags

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag))
            self.flags.discard(BuilderFlag(int(flag)))

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, p):
            calls.append(("add_optimization_profile",))
            self.profile = p
            return 0

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            return True

        def set_flag(self, flag):
            calls.append(("set_flag", flag))
            self.flags.add(BuilderFlag(int(flag)))

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))
            register_logger(logger, "createInferBuilder")
            self.logger = registered[0]

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            mod.build_flags.append(set(config.flags))
            if interrupt_build:
                try:  # the signal is handled at the next Python step: inside log(), under real TensorRT
                    os.kill(os.getpid(), signal.SIGINT)
                    self.logger.log(ILogger.Severity.VERBOSE, "tactic timing")  # filtered, but still called
                except BaseException as exc:  # noqa: BLE001 - what the bindings do with an exception in log()
                    print(f"[ERROR] Exception caught in log(): {type(exc).__name__}", file=sys.stderr)
            if not build_ok:  # the library says why through its logger, as TensorRT does
                if hasattr(self.logger, "log"):
                    self.logger.log(ILogger.Severity.ERROR, "IBuilder::buildSerializedNetwork: Error Code 4")
                return None
            if executable:
                profiles = config.profile.shapes if config.profile is not None else {}
                header = {"profiles": profiles, "version_compatible": BuilderFlag.VERSION_COMPATIBLE in config.flags,
                          "hardware": HardwareCompatibilityLevel(int(config.hardware_compatibility_level)).name}
                return PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network.source.read_bytes()
            return b"PLAN:" + bytes(str(network.flags), "ascii")

    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # importlib.util.find_spec sees it as installed
    mod.__version__ = version
    mod.calls = calls
    mod.logger_warnings: list[str] = []  # a Builder or Runtime given a logger other than the registered one
    mod.build_flags: list[set] = []  # the builder flags each build_serialized_network ran with
    mod.register_logger = register_logger
    for obj in (Logger, ILogger, NetworkDefinitionCreationFlag, MemoryPoolType, OnnxParser, Builder, BuilderFlag,
                HardwareCompatibilityLevel):
        setattr(mod, obj.__name__, obj)
    # the interface classes under TensorRT's own names (scripts/check_trt_api.py looks them up there)
    mod.INetworkDefinition, mod.ITensor, mod.IBuilderConfig = Network, Tensor, Config
    mod.IOptimizationProfile, mod.ITimingCache = Profile, TimingCache
    if executable:
        _runtime_api(mod)
    if name.startswith("tensorrt_lean"):  # the lean runtime deserialises and runs; it builds and parses nothing
        for attr in ("Builder", "OnnxParser", "NetworkDefinitionCreationFlag"):
            delattr(mod, attr)
    return mod
