"""The CuPy stand-in (fake_cupy.py) offers nothing real CuPy lacks, so the emulated GPU tests cannot pass on API
that would fail on a GPU.

Every public name of the stand-in (module, ``cupy.cuda``, its runtime and graph modules, ``cupy.random``, and
the ndarray, stream, event, graph, device, generator and memory-pointer objects) must exist in real CuPy, and
so must every NumPy ufunc / function name the stand-in dispatches. Real CuPy imports without a GPU
(``pip install cupy-cuda13x``), so this check runs on any machine that has it; without it only the checker's
own test runs.
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest
from fake_cupy import CUPY_FUNCTIONS, CUPY_UFUNCS, make_fake_cupy

# Set on instances in CuPy's __init__, so not visible on the class: CuPy documents ``Stream.ptr`` ("raw stream
# handle"); its _BaseStream.__init__(self, ptr, device_id) stores it.
INSTANCE_ONLY = {"cupy.cuda.Stream.ptr"}
# The stand-in's own test hooks, not CuPy API.
TEST_ONLY = {"cupy.stats", "cupy.races", "cupy.context_current", "cupy.cuda.submit", "cupy.cuda.streams",
             "cupy.cuda.note_access"}


def fake_surface(cp) -> dict[str, set[str]]:
    """Public names of the stand-in, keyed by the dotted path of their owner in real CuPy."""
    def public(obj):
        return {n for n in dir(obj) if not n.startswith("_")}

    arr = cp.zeros(2)
    stream = cp.cuda.Stream(non_blocking=True)
    stream.begin_capture()
    graph = stream.end_capture()
    return {
        "cupy": {n for n in vars(cp) if not n.startswith("_")},
        "cupy.cuda": set(vars(cp.cuda)),
        "cupy.cuda.runtime": set(vars(cp.cuda.runtime)),
        "cupy.cuda.graph": set(vars(cp.cuda.graph)),
        "cupy.random": set(vars(cp.random)),
        "cupy.ndarray": public(arr),
        "cupy.cuda.MemoryPointer": public(arr.data),
        "cupy.cuda.Stream": public(stream),
        "cupy.cuda.Event": public(cp.cuda.Event()),
        "cupy.cuda.graph.Graph": public(graph),
        "cupy.cuda.Device": public(cp.cuda.Device(0)),
        "cupy.random.Generator": public(cp.random.default_rng(0)),
    }


def _resolve(real, dotted: str):
    obj = real
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def missing_in(real) -> list[str]:
    """Names the stand-in offers that ``real`` (a CuPy module) lacks."""
    out = []
    for owner, names in fake_surface(make_fake_cupy()).items():
        target = _resolve(real, owner)
        for name in sorted(names):
            full = f"{owner}.{name}"
            if full in TEST_ONLY or full in INSTANCE_ONLY:
                continue
            if target is None or not hasattr(target, name):
                out.append(full)
    out += [f"ufunc {n}" for n in sorted(CUPY_UFUNCS) if not hasattr(real, n)]
    out += [f"function {n}" for n in sorted(CUPY_FUNCTIONS) if not hasattr(real, n)]
    return out


def test_checker_reports_what_a_cupy_lacks():
    """A second stand-in with names removed: the checker reports exactly those beyond the baseline (the
    stand-in checked against itself lacks its instance attributes on the class and the NumPy names)."""
    baseline = set(missing_in(make_fake_cupy()))
    assert "cupy.cuda.Stream.begin_capture" not in baseline and "ufunc add" in baseline
    other = make_fake_cupy()
    del other.cuda.Stream.begin_capture  # a method on a class
    del other.asnumpy  # a module function
    del other.cuda.runtime.getDeviceProperties  # a function in a submodule
    assert set(missing_in(other)) - baseline == {"cupy.asnumpy", "cupy.cuda.Stream.begin_capture",
                                                 "cupy.cuda.runtime.getDeviceProperties"}


def test_stand_in_dispatches_only_listed_numpy_names():
    import numpy as np

    cp = make_fake_cupy()
    a = cp.full((3,), 2.0, dtype=cp.float32)
    assert float((np.where(a > 1, a, 0) * 2).sum()) == 12.0  # listed: where, greater, multiply
    with pytest.raises(TypeError):
        np.sin(a)  # not listed (CuPy has sin; the stand-in is stricter, never looser)
    with pytest.raises(TypeError):
        np.median(a)


@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="real CuPy not installed "
                    "(pip install cupy-cuda13x; imports without a GPU)")
def test_real_cupy_has_everything_the_stand_in_offers():
    real = importlib.import_module("cupy")
    if getattr(real, "__version__", "").endswith("-fake"):
        pytest.skip("cupy is the stand-in here")
    assert missing_in(real) == []
