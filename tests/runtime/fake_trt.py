"""A fake ``tensorrt`` module that records the builder's call sequence (injected through ``sys.modules``).

It mimics the documented Python API shape of TensorRT 10/11 (Builder, network with inputs, OnnxParser,
builder config with memory pools / profiles / timing caches, ``build_serialized_network``), and records every
call in ``module.calls`` so tests can check what segflow's builder asked for.
"""

from __future__ import annotations

import enum
import types
from pathlib import Path


def make_fake_trt(name: str = "tensorrt", *, version: str = "11.4.0.106", inputs=None, parse_ok: bool = True,
                  build_ok: bool = True, strongly_typed: bool = True) -> types.ModuleType:
    """Build a fresh fake module; ``inputs`` maps input name -> shape with -1 for dynamic dims."""
    calls: list[tuple] = []
    inputs = inputs if inputs is not None else {"x": (-1, 1, -1, -1), "t": (-1,), "features": (-1, 2, -1, -1)}

    class Logger:
        WARNING, INFO, ERROR, VERBOSE = 2, 3, 1, 4

        def __init__(self, level):
            calls.append(("Logger", level))

    flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if strongly_typed else {"EXPLICIT_BATCH": 0}
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags)
    MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "TACTIC_SHARED_MEMORY": 2})

    class Tensor:
        def __init__(self, n, s):
            self.name, self.shape = n, s

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self._inputs = [Tensor(n, s) for n, s in inputs.items()]

        @property
        def num_inputs(self):
            return len(self._inputs)

        def get_input(self, i):
            return self._inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 1

        def parse_from_file(self, path):
            calls.append(("parse_from_file", Path(path).name, Path(path).is_file()))
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Conv): unsupported attribute"

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            calls.append(("set_shape", name, tuple(mn), tuple(opt), tuple(mx)))

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+tuned"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, p):
            calls.append(("add_optimization_profile",))
            return 0

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            return True

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            return b"PLAN:" + bytes(str(network.flags), "ascii") if build_ok else None

    mod = types.ModuleType(name)
    mod.__version__ = version
    mod.calls = calls
    for obj in (Logger, NetworkDefinitionCreationFlag, MemoryPoolType, OnnxParser, Builder):
        setattr(mod, obj.__name__, obj)
    return mod
