"""The GPU code paths run on the CPU: the real backend, sampler and CLI code behind a numpy-backed CuPy.

``fake_cupy`` refuses implicit conversion to numpy, as CuPy does, and moves data through raw pointers;
``fake_trt`` (``executable=True``) builds "plans" that carry the ONNX graph and executes them from the bound
device addresses on the stream it is given (CUDA-graph capture records, replay re-runs). So these tests check
what a GPU run depends on besides the GPU itself: pointer and shape plumbing of the TensorRT backend and of
ONNX Runtime's I/O binding, buffer reuse, graph capture and replay, the profile limits, and that sampling never
leaves the device between steps - against the CPU Segmenter's result from the same noise.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import tifffile
from fake_cupy import make_fake_cupy
from fake_trt import _read
from segflow.runtime import engine as eng
from segflow.runtime import trtlib
from segflow.runtime.cli import main as runtime_main
from segflow.runtime.session import Cancelled, Segmenter

from segflow.errors import BackendError, InputError, MissingDependency

ITEMSIZE = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(int64)": 8, "tensor(int32)": 4, "tensor(bool)": 1}
KW = {"samples": 3, "steps": 3, "method": "heun", "stride": 12, "batch_size": 6, "seed": 5}


@pytest.fixture
def cp(monkeypatch):
    """The CuPy stand-in as ``cupy``; the test fails if it saw a stream-ordering race."""
    mod = make_fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", mod)
    yield mod
    assert mod.races == [], "stream-ordering races:\n" + "\n".join(mod.races[:5])


@pytest.fixture
def trt(install_fake_trt, cp):
    """The executable fake TensorRT; the test fails if it saw a documented API contract broken."""
    mod = install_fake_trt(executable=True)
    yield mod
    assert mod.misuse == [], "\n".join(mod.misuse[:5])
    assert mod.logger_warnings == []  # every Builder and Runtime on the process's one logger


@pytest.fixture
def plan(blur_copy, trt):
    return eng.build_engine(blur_copy, blur_copy.with_suffix(".plan"), precision="fp32", batch=(1, 6, 12)).field


@pytest.fixture
def ort_on_cpu(monkeypatch, cp):
    """OrtCudaBackend's I/O-binding code bound to ONNX Runtime's CPU device.

    ONNX Runtime's CUDA provider runs on a stream of its own and synchronises it before ``run_with_iobinding``
    returns; the run is reported to the stand-in's stream-ordering check as such: it reads the bound inputs
    and writes its outputs on that stream, then the host waits for it.
    """
    import onnxruntime as ort
    from segflow.runtime.backends.ort_cuda import OrtCudaBackend

    monkeypatch.setattr(OrtCudaBackend, "device_type", "cpu")
    ort_stream = cp.cuda.Stream(non_blocking=True)
    bound: dict[int, list] = {}
    bind_input, run = ort.IOBinding.bind_input, ort.InferenceSession.run_with_iobinding

    def spy_bind(self, name, device_type, device_id, element_type, shape, buffer_ptr):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(element_type).itemsize
        bound.setdefault(id(self), []).append((int(buffer_ptr), nbytes))
        return bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr)

    def spy_run(self, iobinding, run_options=None):
        out = run(self, iobinding, run_options)
        writes = [(int(v.data_ptr()), int(np.prod(v.shape(), dtype=np.int64)) * ITEMSIZE[v.data_type()])
                  for v in iobinding.get_outputs()]
        cp.cuda.submit(ort_stream.ptr, lambda: cp.cuda.note_access(reads=bound.pop(id(iobinding), []),
                                                                   writes=writes, what="ONNX Runtime run"))
        ort_stream.synchronize()
        return out

    monkeypatch.setattr(ort.IOBinding, "bind_input", spy_bind)
    monkeypatch.setattr(ort.InferenceSession, "run_with_iobinding", spy_run)
    return OrtCudaBackend


def _image():
    return (np.random.default_rng(2).random((50, 61)) * 255).astype(np.uint8)


def _feed(n, rng=None):
    rng = rng or np.random.default_rng(0)
    return {"x": rng.standard_normal((n, 1, 16, 16)).astype(np.float32),
            "t": np.full((n,), 0.25, np.float32),
            "features": rng.standard_normal((n, 2, 16, 16)).astype(np.float32)}


def _reference(models_meta, feed):
    _kind, fn = models_meta.REFERENCES["blur.onnx"]
    return fn(**feed)


@pytest.fixture(scope="module")
def cpu_result(models_dir):
    with Segmenter(models_dir / "blur.onnx", backend="cpu", threads=1, **KW) as seg:
        return seg(_image())


def _spy_device_fields(monkeypatch, cp):
    from segflow.runtime.gpu import DeviceField

    seen, original = [], DeviceField.__call__

    def spy(self, x, t):
        out = original(self, x, t)
        seen.append((type(x), type(out)))
        return out

    monkeypatch.setattr(DeviceField, "__call__", spy)
    return seen


# -- the stand-in itself --------------------------------------------------------------------------------------
def test_fake_cupy_behaves_like_device_memory(cp):
    a = cp.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError):
        _ = a + np.ones((2, 3), np.float32)  # CuPy refuses host operands
    b = cp.ndarray((2, 3), np.float32, memptr=cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(a.data.ptr, 24, a), 0))
    b[0, 0] = 7  # the same memory through the pointer
    assert float(a[0, 0]) == 7 and type(a.mean()) is cp.ndarray
    np.testing.assert_array_equal(cp.asnumpy(a * 2)[1], [6, 8, 10])


def test_fake_cupy_finds_stream_ordering_races():
    """The ordering check itself: cross-stream use needs an event wait or a host synchronisation between."""
    cp = make_fake_cupy()  # not the fixture: these races are intended
    a, b = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    with a:
        x = cp.full((4,), 2.0, dtype=cp.float32)  # written on a
    with b:
        _ = x * 3  # read on b, unordered
    assert len(cp.races) == 1 and f"multiply on stream {b.ptr:#x} reads memory" in cp.races[0]

    with a:
        y = cp.full((4,), 2.0, dtype=cp.float32)
    b.wait_event(a.record())
    with b:
        _ = y * 3  # ordered by the event
    a.synchronize()
    with a:
        y[...] = 0  # write-after-read: b's read of y is not ordered before a's write
    assert len(cp.races) == 2 and "writes memory" in cp.races[1]

    with a:
        z = cp.zeros((4,), dtype=cp.float32)
    a.synchronize()  # the host waited for a, so what it enqueues next on b follows
    with b:
        _ = z + 1
    assert len(cp.races) == 2

    w = cp.zeros((4,), dtype=cp.float32)  # null stream
    ptr = (w.data.ptr, w.nbytes)
    b.begin_capture()
    cp.cuda.submit(b.ptr, lambda: cp.cuda.note_access(reads=[ptr], what="kernel"))
    graph = b.end_capture()
    assert len(cp.races) == 2  # captured, not run
    graph.launch(b)  # replays on b: reads w, written on the null stream, unordered
    assert len(cp.races) == 3 and cp.races[2].startswith(f"kernel on stream {b.ptr:#x} reads")
    b.wait_event(cp.cuda.get_current_stream().record())
    graph.launch(b)
    assert len(cp.races) == 3


# -- ONNX Runtime I/O binding ------------------------------------------------------------------------------
def test_ort_io_binding_keeps_outputs_on_the_device(ort_on_cpu, cp, models_dir, models_meta):
    feed = _feed(3)
    with ort_on_cpu(models_dir / "blur.onnx", threads=1) as b:
        dev = {k: cp.asarray(v) for k, v in feed.items()}
        out = b.infer(dev, to_host=False)["out"]
        assert type(out) is cp.ndarray and out.shape == (3, 1, 16, 16)
        first = cp.asnumpy(out)
        np.testing.assert_allclose(first, _reference(models_meta, feed), atol=1e-5)
        feed2 = _feed(5, np.random.default_rng(1))
        mixed = {"x": cp.asarray(feed2["x"]), "t": feed2["t"], "features": cp.asarray(feed2["features"])}
        out2 = b.infer(mixed, to_host=False)["out"]  # a host input is bound as a host input
        np.testing.assert_allclose(cp.asnumpy(out2), _reference(models_meta, feed2), atol=1e-5)
        np.testing.assert_array_equal(cp.asnumpy(out), first)  # ORT's buffers stay owned by the first result
        host = b.infer(dev, to_host=True)["out"]
        assert type(host) is np.ndarray
        np.testing.assert_array_equal(host, first)


def test_ort_io_binding_orders_a_contiguous_copy_before_the_run(ort_on_cpu, cp, models_dir, models_meta):
    """A strided CuPy input is copied to contiguous memory on the caller's stream; that copy must be complete
    before ONNX Runtime reads it on its own stream (the stand-in's fixture fails on the race otherwise)."""
    feed = _feed(3)
    wide = np.zeros((3, 1, 16, 32), np.float32)
    wide[..., ::2] = feed["x"]
    with ort_on_cpu(models_dir / "blur.onnx", threads=1) as b:
        strided = cp.asarray(wide)[..., ::2]
        dev = {"x": strided, "t": cp.asarray(feed["t"]), "features": cp.asarray(feed["features"])}
        out = b.infer(dev, to_host=False)["out"]
        np.testing.assert_allclose(cp.asnumpy(out), _reference(models_meta, feed), atol=1e-5)


def test_device_segmenter_on_ort_cuda_matches_cpu(ort_on_cpu, cp, models_dir, cpu_result, monkeypatch):
    from segflow.runtime.gpu import DeviceSegmenter

    seen = _spy_device_fields(monkeypatch, cp)
    with DeviceSegmenter(models_dir / "blur.onnx", xp=cp, threads=1, **KW) as seg:
        got = seg(_image())
        assert seg.backend_info["device_resident"] and seg.backend_info["name"] == "onnxruntime-cuda"
    assert seen and all(a is cp.ndarray and b is cp.ndarray for a, b in seen)
    assert cp.stats["host_copies"] == 4  # only the final maps come back: samples, mean, spread, probability
    np.testing.assert_allclose(got.mean_sdf, cpu_result.mean_sdf, atol=1e-5)
    np.testing.assert_allclose(got.std, cpu_result.std, atol=1e-5)
    np.testing.assert_array_equal(got.labels, cpu_result.labels)


# -- TensorRT backend -----------------------------------------------------------------------------------------
def test_tensorrt_backend_runs_a_plan(plan, cp, trt, models_meta):
    from segflow.runtime.backends.tensorrt import TensorRTBackend

    # the encoder plan's default profile is tuned for the tiles of a full field call: OPT 6 // the card's K=2
    assert trtlib.plan_batch(trtlib.PlanInfo.read(plan.with_name("blur.encoder.plan"))) == (1, 3, 12)
    with TensorRTBackend(plan) as b:
        assert b.max_batch == 12 and set(b.input_metadata()) == {"x", "t", "features"}
        feed = _feed(4)
        np.testing.assert_allclose(b.infer(feed)["out"], _reference(models_meta, feed), atol=1e-5)
        out = b.infer({k: cp.asarray(v) for k, v in feed.items()}, to_host=False)["out"]
        assert type(out) is cp.ndarray
        np.testing.assert_allclose(cp.asnumpy(out), _reference(models_meta, feed), atol=1e-5)
        kept = cp.asnumpy(out)
        again = b.infer({k: cp.asarray(v) for k, v in _feed(4, np.random.default_rng(3)).items()}, to_host=False)
        # the engine reuses its output buffer per shape, but the caller gets arrays of its own: the next call (from
        # any thread, on any stream) leaves the last result as it was
        assert again["out"] is not out
        np.testing.assert_array_equal(cp.asnumpy(out), kept)
        other = b.infer({k: cp.asarray(v) for k, v in _feed(2).items()}, to_host=False)["out"]
        assert other.shape == (2, 1, 16, 16) and other is not out
        # the rebuild repeats the build (its graph, precision, library, MIN and OPT) with MAX raised to the batch
        with pytest.raises(BackendError, match=r"outside the plan's profile.*`runtime build --onnx \S*blur.onnx --out "
                                               r"\S*blur.plan --precision fp32 --builder tensorrt --batch 1:6:13 "
                                               r"--encoder-batch 1:3:12`"):
            b.infer(_feed(13))
    assert trt.executions == 4


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_inputs_at_unaligned_addresses(plan, cp, trt, models_meta, cuda_graph):
    """TensorRT takes only 256-byte-aligned tensor addresses; views that start elsewhere are copied first."""
    from segflow.runtime.backends.tensorrt import TensorRTBackend

    feed = _feed(4)
    t_view = cp.asarray(np.concatenate([[9.0], feed["t"]]).astype(np.float32))[1:]  # starts 4 bytes in
    assert t_view.data.ptr % 256 == 4
    with TensorRTBackend(plan, cuda_graph=cuda_graph) as b:
        for _ in range(3):  # plain runs, or warm-up, capture and replay
            out = b.infer({"x": cp.asarray(feed["x"]), "t": t_view, "features": cp.asarray(feed["features"])},
                          to_host=False)["out"]
            np.testing.assert_allclose(cp.asnumpy(out), _reference(models_meta, feed), atol=1e-5)


def test_tensorrt_refused_address_is_an_error(plan, cp, trt, monkeypatch):
    from segflow.runtime.backends.tensorrt import TensorRTBackend

    monkeypatch.setattr(trt.IExecutionContext, "set_tensor_address", lambda self, name, ptr: False)
    with TensorRTBackend(plan) as b, pytest.raises(BackendError, match="refused the device address of tensor"):
        b.infer(_feed(2))


def test_tensorrt_cuda_graph_capture_and_replay(plan, cp, trt, models_meta):
    from segflow.runtime.backends.tensorrt import TensorRTBackend

    feeds = [_feed(4, np.random.default_rng(i)) for i in range(4)]
    with TensorRTBackend(plan, cuda_graph=True) as b:
        outs = [cp.asnumpy(b.infer({k: cp.asarray(v) for k, v in f.items()}, to_host=False)["out"])
                for f in feeds]
    assert cp.stats["captures"] == 1  # first call warms up, the second captures
    assert cp.stats["graph_launches"] == 3 and trt.executions == 4  # calls 2-4 run the graph
    for f, o in zip(feeds, outs, strict=True):  # replays read the new inputs copied into the captured buffers
        np.testing.assert_allclose(o, _reference(models_meta, f), atol=1e-5)


def test_tensorrt_cuda_graphs_for_alternating_shapes(plan, cp, trt, models_meta):
    """The sampler alternates full and remainder batches. Each shape gets its own graph and execution context,
    so no graph replays on a context whose input shapes were changed since capture (the fixture fails on it)."""
    from segflow.runtime.backends.tensorrt import TensorRTBackend

    feeds = [_feed(n, np.random.default_rng(i)) for i, n in enumerate((4, 2) * 3)]
    with TensorRTBackend(plan, cuda_graph=True) as b:
        for f in feeds:
            out = b.infer({k: cp.asarray(v) for k, v in f.items()}, to_host=False)["out"]
            np.testing.assert_allclose(cp.asnumpy(out), _reference(models_meta, f), atol=1e-5)
        assert len(b._contexts) == 2 and b._contexts[next(iter(b._contexts))] is b.context
        assert b.describe()["cuda_graph_mode"] == "capture"
        # both contexts run on one activation buffer of the engine's size, the library allocated none
        need = b.engine.device_memory_size_v2
        assert {c.memory for c in b._contexts.values()} == {(int(b._scratch.data.ptr), need)}
        assert b.describe()["shared_activation_bytes"] == need and trt.static_activation_bytes == 0
    assert cp.stats["captures"] == 2 and cp.stats["graph_launches"] == 4 and trt.executions == 6


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_buffers_are_allocated_once_for_every_batch_size(plan, cp, trt, models_meta, cuda_graph):
    """A slide run's last group per block holds a different number of tiles, so a backend sees many batch sizes:
    each tensor's device memory is one buffer, sized by the first (full) call, and every smaller size binds its
    first rows (the same address), so nothing is reallocated and, with graphs, nothing is captured twice. A
    larger call later grows the buffer (at least doubling, up to the profile's MAX) and re-captures."""
    from segflow.runtime.backends.tensorrt import TensorRTBackend

    def run(b, n, seed):
        for _ in range(2):  # graph mode: warm-up, then capture (or replay)
            f = _feed(n, np.random.default_rng(seed))
            out = b.infer({k: cp.asarray(v) for k, v in f.items()}, to_host=False)["out"]
            np.testing.assert_allclose(cp.asnumpy(out), _reference(models_meta, f), atol=1e-5)

    sizes = [8, *range(1, 8), 1, 2, 8, 5]
    with TensorRTBackend(plan, cuda_graph=cuda_graph) as b:
        for i, n in enumerate(sizes):
            run(b, n, i)
            if i == 0:
                first = {k: (v.shape, v.data.ptr) for k, v in b._rows.items()}
        assert {k: (v.shape, v.data.ptr) for k, v in b._rows.items()} == first
        assert first["out"][0][0] == 8 and set(first) == ({"out", "x", "t", "features"} if cuda_graph else {"out"})
        if cuda_graph:
            assert len(b._contexts) == len(b._graphs) == len(set(sizes))
        captures = cp.stats["captures"]
        run(b, 10, 99)  # more rows than the buffers hold: they grow to min(2 x 8, MAX 12) rows
        assert b._rows["out"].shape[0] == 12 and len(b._graphs) == int(cuda_graph)
        run(b, 3, 98)  # a size captured before the growth is captured again, on the new buffers
    assert cp.stats["captures"] == (captures + 2 if cuda_graph else 0) and captures == (len(set(sizes)) if cuda_graph
                                                                                         else 0)


def test_fake_tensorrt_activation_memory_contract(plan, cp, trt, models_meta):
    """What the shared-activation test relies on: the fake library allocates for a STATIC context, refuses to
    run a USER_MANAGED one without memory, flags memory that is too small, and every run writes its
    activations (a race or an overlap with live data would show)."""
    from segflow.runtime.backends.tensorrt import TensorRTBackend

    f = _feed(2, np.random.default_rng(0))
    with TensorRTBackend(plan) as b:  # plain mode: one STATIC context, as before
        np.testing.assert_allclose(b.infer(f)["out"], _reference(models_meta, f), atol=1e-5)
        need = b.engine.device_memory_size_v2
        assert trt.static_activation_bytes == need and b.describe()["shared_activation_bytes"] is None
        ptr, size = b.context.memory
        assert size == need and ptr % 256 == 0 and (_read(ptr, (need,), np.dtype(np.uint8)) == 0xFF).all()
        ctx = b.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        for name, arr in f.items():
            ctx.set_input_shape(name, arr.shape)
        assert ctx.execute_async_v3(b.stream.ptr) is False  # no memory given
        small = cp.empty(need - 256, dtype=cp.uint8)
        ctx.set_device_memory(int(small.data.ptr), int(small.nbytes))
        assert trt.misuse and "at least" in trt.misuse[-1]
        trt.misuse.clear()


@pytest.fixture
def rtx_plan(blur_copy, monkeypatch):
    """A plan built with a fake TensorRT-RTX (the only TensorRT here), which compiles kernels at first use, and
    an RTX-class CuPy stand-in (TensorRT-RTX supports no compute capability 9.0)."""
    from fake_trt import make_fake_trt

    cp = make_fake_cupy(gpu_name="NVIDIA RTX 6000 Ada Generation", compute_capability=(8, 9))
    monkeypatch.setitem(sys.modules, "cupy", cp)
    mod = make_fake_trt("tensorrt_rtx", executable=True)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", mod)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    plan = eng.build_engine(blur_copy, blur_copy.with_suffix(".plan"), precision="fp32", batch=(1, 6, 12),
                            builder="tensorrt_rtx").field
    yield plan, mod, cp
    assert cp.races == [], "stream-ordering races:\n" + "\n".join(cp.races[:5])
    assert mod.misuse == [], "\n".join(mod.misuse[:5])
    assert mod.logger_warnings == []


def _run_plan(plan, cp, models_meta, sizes=(4, 2), **kw):
    from segflow.runtime.backends.tensorrt import TensorRTBackend

    with TensorRTBackend(plan, **kw) as b:
        for n in sizes:
            feed = _feed(n)
            out = b.infer({k: cp.asarray(v) for k, v in feed.items()}, to_host=False)["out"]
            np.testing.assert_allclose(cp.asnumpy(out), _reference(models_meta, feed), atol=1e-5)
    return b


def test_rtx_runtime_cache_keeps_compiled_kernels_between_runs(rtx_plan, models_meta, monkeypatch, capsys):
    plan, rtx, cp = rtx_plan
    assert runtime_main(["info", "--engine", str(plan)]) == 0
    assert "runtime cache" in (out := capsys.readouterr().out) and "not written yet" in out
    first = _run_plan(plan, cp, models_meta)
    ada = trtlib.GpuInfo("NVIDIA RTX 6000 Ada Generation", "8.9")
    cache = plan.with_name(f"{plan.name}.sm89-{__import__('hashlib').sha256(ada.name.encode()).hexdigest()[:6]}"
                           f".rtcache")  # one file per GPU model
    assert first.runtime_cache == cache.resolve() and first.runtime_cache_state == "new" and cache.is_file()
    assert rtx.jit_compiles == 2  # two batch shapes
    assert first.describe()["runtime_cache_state"] == "new"

    assert runtime_main(["info", "--engine", str(plan), "--json"]) == 0
    cached = json.loads(capsys.readouterr().out)["graphs"]["field"]["runtime_cache"]
    assert cached == {"path": str(cache.resolve()), "bytes": cache.stat().st_size}
    written = cache.stat().st_mtime_ns
    later = make_fake_cupy(gpu_name="NVIDIA RTX 6000 Ada Generation", compute_capability=(8, 9))
    # a later process on the same GPU (no CUDA context yet): the kernels come from the cache
    monkeypatch.setitem(sys.modules, "cupy", later)
    second = _run_plan(plan, later, models_meta)
    assert second.runtime_cache_state == "loaded" and rtx.jit_compiles == 2
    assert cache.stat().st_mtime_ns == written  # nothing new compiled, so the file is not rewritten

    other = make_fake_cupy(gpu_name="NVIDIA GeForce RTX 4090", compute_capability=(8, 9))
    monkeypatch.setitem(sys.modules, "cupy", other)  # same plan on another GPU (a shared model folder)
    third = _run_plan(plan, other, models_meta)
    assert third.runtime_cache_state == "new" and rtx.jit_compiles == 4 and third.runtime_cache != cache.resolve()
    assert b"RTX 4090" in third.runtime_cache.read_bytes()  # a file of its own, saved beside the first
    assert cache.stat().st_mtime_ns == written and b"RTX 4090" not in cache.read_bytes()  # the Ada one is kept
    cache.write_bytes(third.runtime_cache.read_bytes())  # a cache TensorRT-RTX rejects (made on another GPU)
    monkeypatch.setitem(sys.modules, "cupy", later)
    assert _run_plan(plan, later, models_meta).runtime_cache_state == "rejected" and rtx.jit_compiles == 6
    assert b"RTX 4090" not in cache.read_bytes()  # rebuilt for this GPU and saved
    monkeypatch.setitem(sys.modules, "cupy", other)

    off = _run_plan(plan, other, models_meta, runtime_cache=False)
    assert off.runtime_cache is None and rtx.jit_compiles == 8
    assert other.races == []


def test_a_version_compatible_plan_runs_on_the_lean_runtime_alone(blur_copy, cp, trt, models_meta, monkeypatch,
                                                                  tmp_path, capsys):
    """Built with full TensorRT and --version-compatible, the plans run where only the 44 MB lean runtime is
    installed (its import name is tensorrt_lean_bindings); segflow allows the plan's embedded host code, which
    TensorRT requires for such plans. A plan built without the flag is refused there with the rebuild."""
    from fake_trt import make_fake_trt
    from segflow.runtime import gpu

    res = eng.build_engine(blur_copy, tmp_path / "vc" / "b.plan", precision="fp32", batch=(1, 6, 12),
                           version_compatible=True, hardware_compatibility="ampere+")
    assert trt.build_flags[-1] >= {trt.BuilderFlag.VERSION_COMPATIBLE}
    info = trtlib.PlanInfo.read(res.field)
    assert info.version_compatible and info.hardware_compatibility == "ampere+"
    plain = eng.build_engine(blur_copy, tmp_path / "plain" / "b.plan", precision="fp32", batch=(1, 6, 12)).field
    capsys.readouterr()
    assert runtime_main(["info", "--engine", str(res.field)]) == 0
    assert ", runs on Ampere and later GPUs (compute 8.0+), version-compatible (TensorRT 11.4.0.106 and later " \
           "versions of that major release or the next, or the lean runtime 11.4.0.106)" in capsys.readouterr().out
    lean = make_fake_trt("tensorrt_lean_bindings", version="11.4.0.106", executable=True)  # one per version
    older = make_fake_trt("tensorrt", version="11.3.0.1", executable=True)
    monkeypatch.setitem(sys.modules, "tensorrt", older)  # too old for the plan: the lean runtime beside it runs it
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean_bindings", lean)
    assert trtlib.library_name(trtlib.import_runner(info)) == "tensorrt_lean"
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean_bindings", lean)
    assert not hasattr(lean, "Builder")
    b = _run_plan(res.field, cp, models_meta)
    assert b.describe()["library"] == "tensorrt_lean" and b.describe()["built_with"] == "tensorrt 11.4.0.106"
    assert lean.loads_refused == []
    with gpu.open_segmenter(res.field, threads=1, **KW) as seg:
        assert seg(_image()).n_instances >= 0
    with pytest.raises(BackendError, match=r"b.plan is not version-compatible, and the TensorRT lean runtime "
                                           r"installed here runs only such plans: rebuild it with `runtime build .*"
                                           r"--version-compatible`"):
        gpu.open_segmenter(plain, threads=1, **KW)
    monkeypatch.setitem(sys.modules, "tensorrt_lean_bindings", None)
    with pytest.raises(MissingDependency, match=r"needs TensorRT or its lean runtime, neither is installed: run "
                                                r"`pip install tensorrt-lean-cu13-bindings tensorrt-lean-cu13-libs`"):
        gpu.open_segmenter(res.field, threads=1, **KW)


def test_portability_flags_are_for_full_tensorrt_plans(blur_copy, tmp_path, monkeypatch, capsys):
    from fake_trt import make_fake_trt

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", make_fake_trt("tensorrt_rtx", version="1.7.1.116"))
    for flags in (["--version-compatible"], ["--hardware-compatibility", "ampere+"]):
        assert runtime_main(["build", "--onnx", str(blur_copy), "--out", str(tmp_path / "r.plan"), *flags]) == 2
        err = capsys.readouterr().err
        assert f"{flags[0]} is for full TensorRT plans; TensorRT-RTX plans run on the GPUs of their " \
               "--compute-capability targets" in err and len(err.strip().splitlines()) == 1
        assert runtime_main(["build", "--onnx", str(blur_copy), "--out", str(tmp_path / "r.onnx"), *flags]) == 2
        assert "applies to TensorRT plans, not to an .onnx --out" in capsys.readouterr().err
    assert not list(tmp_path.glob("r.*"))


def test_segment_says_when_tensorrt_rtx_compiles_at_first_use(rtx_plan, tmp_path, capsys):
    plan, _rtx, _cp = rtx_plan
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, _image())
    argv = ["segment", "--engine", str(plan), str(img), "--samples", "2", "--steps", "1", "--stride", "12"]
    assert runtime_main([*argv, "--out", str(tmp_path / "a"), "--progress"]) == 0
    err = capsys.readouterr().err
    assert "runtime segment: TensorRT-RTX compiles the plans' kernels for this GPU at first use, so this run takes " \
           f"longer; later runs load them from {plan.resolve()}.sm89-" in err
    assert runtime_main([*argv, "--out", str(tmp_path / "b"), "--progress"]) == 0  # now cached: no note
    assert "first use" not in capsys.readouterr().err


def test_rtx_runtime_cache_location_and_save_failure(rtx_plan, models_meta, monkeypatch, tmp_path):
    from segflow.runtime.backends import tensorrt as trt_backend

    plan, _rtx, cp = rtx_plan
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(trt_backend.os, "access", lambda path, mode: False)  # the plan's folder is read-only
    where = trt_backend.runtime_cache_path(plan)
    assert where.parent == tmp_path / "xdg" / "segflow" and where.name.startswith("blur-")
    assert trt_backend.runtime_cache_path(plan) == where  # stable per plan
    b = _run_plan(plan, cp, models_meta)
    assert b.runtime_cache == where and where.is_file()

    blocked = tmp_path / "cache-is-a-folder"
    blocked.mkdir()
    with pytest.warns(RuntimeWarning, match="could not save the TensorRT-RTX runtime cache .*compiles the kernels"):
        _run_plan(plan, cp, models_meta, runtime_cache=blocked)  # the run itself completes


@pytest.mark.parametrize("runtime_cache", [True, False])
def test_rtx_cuda_graphs_are_the_librarys_own(rtx_plan, models_meta, runtime_cache):
    """TensorRT-RTX captures and replays per shape itself: segflow does no stream capture, and the fixed input
    buffers per shape keep the tensor addresses the library captured with (new inputs every call)."""
    plan, rtx, cp = rtx_plan
    b = _run_plan(plan, cp, models_meta, sizes=(4, 2) * 3, cuda_graph=True, runtime_cache=runtime_cache)
    assert b.describe()["cuda_graph_mode"] == "tensorrt_rtx" and b.cuda_graph
    assert cp.stats["captures"] == 0 and cp.stats["graph_launches"] == 0
    assert rtx.native_captures == 2 and rtx.native_replays == 4
    assert (b.runtime_cache is not None) is runtime_cache


def test_rtx_without_graph_strategy_falls_back_when_capture_is_refused(rtx_plan, models_meta):
    """A TensorRT-RTX before 1.2 has no CudaGraphStrategy, so segflow tries stream capture; an RTX plan refuses
    to run under capture, and the backend warns and keeps running without graphs, with correct outputs."""
    plan, rtx, cp = rtx_plan
    del rtx.CudaGraphStrategy
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed .*refused to run under stream capture"):
        b = _run_plan(plan, cp, models_meta, sizes=(4, 4, 4), cuda_graph=True)
    assert not b.cuda_graph and b.describe()["cuda_graph_mode"] is None
    assert cp.stats["graph_launches"] == 0 and rtx.native_captures == 0


def test_full_tensorrt_has_no_runtime_cache(plan, cp, models_meta):
    b = _run_plan(plan, cp, models_meta)
    assert b.runtime_cache is None and not list(plan.parent.glob("*.rtcache"))


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_device_segmenter_on_a_plan_matches_cpu(plan, cp, trt, cpu_result, monkeypatch, cuda_graph):
    from segflow.runtime.gpu import DeviceSegmenter

    seen = _spy_device_fields(monkeypatch, cp)
    with DeviceSegmenter(plan, xp=cp, cuda_graph=cuda_graph, **KW) as seg:
        got = seg(_image())
        info = seg.backend_info
    assert info["name"] == "tensorrt" and info["device_resident"] and info["cuda_graph"] is cuda_graph
    assert seen and all(a is cp.ndarray and b is cp.ndarray for a, b in seen)
    assert cp.stats["host_copies"] == 4  # only the final maps come back
    assert (cp.stats["graph_launches"] > 0) is cuda_graph
    np.testing.assert_allclose(got.mean_sdf, cpu_result.mean_sdf, atol=1e-5)
    np.testing.assert_allclose(got.std, cpu_result.std, atol=1e-5)
    np.testing.assert_array_equal(got.labels, cpu_result.labels)
    assert got.timings["sample_evaluations"] == cpu_result.timings["sample_evaluations"]
    assert set(got.timings) == set(cpu_result.timings)  # the same documented fields (sampling_s was missing)


def test_device_noise_on_a_plan_stays_on_the_device_and_repeats(plan, cp, trt, cpu_result, monkeypatch):
    """noise="device" draws with CuPy's generator API: still only the final maps come back, the same seed gives
    the same result, and the noise differs from the host noise (so the maps do too). One generator is set up
    per group of tiles, not per batch and renoising."""
    from segflow.runtime.gpu import DeviceFlowSDFSampler, DeviceSegmenter

    seen = _spy_device_fields(monkeypatch, cp)
    groups, original = [], DeviceFlowSDFSampler.sample_device
    monkeypatch.setattr(DeviceFlowSDFSampler, "sample_device",
                        lambda self, *a, **k: groups.append(1) or original(self, *a, **k))
    draws, make = [], cp.random.default_rng

    def counting_rng(seed):
        g = make(seed)
        draw = g.standard_normal
        g.standard_normal = lambda *a, **k: draws.append(1) or draw(*a, **k)
        return g

    monkeypatch.setattr(cp.random, "default_rng", counting_rng)
    runs = []
    for _ in range(2):
        with DeviceSegmenter(plan, xp=cp, noise="device", noise_iterations=1, **KW) as seg:
            runs.append(seg(_image()))
            assert seg.backend_info["noise"] == "device"
    assert seen and all(a is cp.ndarray and b is cp.ndarray for a, b in seen)
    assert cp.stats["host_copies"] == 8  # four final maps per run
    assert cp.stats["generators"] == len(groups) >= 2 and len(draws) == 2 * len(groups)  # start + renoise
    np.testing.assert_array_equal(runs[0].mean_sdf, runs[1].mean_sdf)
    assert np.abs(runs[0].mean_sdf - cpu_result.mean_sdf).max() > 1e-5  # the blur field damps noise; 3.5e-4 here


def test_device_segmenter_cancel_between_groups(plan, cp, trt):
    from segflow.runtime.gpu import DeviceSegmenter

    calls = []
    with DeviceSegmenter(plan, xp=cp, **{**KW, "batch_size": 3}) as seg, pytest.raises(Cancelled):
        seg(_image(), cancel=lambda: calls.append(1) or len(calls) > 2)
    assert len(calls) == 3


# -- choosing the segmenter and the command line --------------------------------------------------------------
def test_open_segmenter_picks_the_device_path(plan, blur_copy, cp, trt, monkeypatch):
    from segflow.runtime import gpu

    with gpu.open_segmenter(plan, **KW) as seg:
        assert type(seg) is gpu.DeviceSegmenter and seg.device_resident
    with gpu.open_segmenter(blur_copy, threads=1, **KW) as seg:  # no CUDA provider in this onnxruntime
        assert type(seg) is Segmenter
    with pytest.raises(InputError, match="applies to TensorRT plans"):
        gpu.open_segmenter(blur_copy, cuda_graph=True)
    with pytest.raises(InputError, match="runs on the tensorrt backend only"):
        gpu.open_segmenter(plan, backend="cpu")
    with pytest.raises(InputError, match="needs a TensorRT plan.*runtime build"):
        gpu.open_segmenter(blur_copy, backend="tensorrt")
    monkeypatch.setattr("segflow.runtime.backends.onnxrt.available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr("segflow.runtime.backends.ort_cuda.OrtCudaBackend.device_type", "cpu")
    with gpu.open_segmenter(blur_copy, threads=1, **KW) as seg:  # CUDA provider + a GPU seen by CuPy
        assert type(seg) is gpu.DeviceSegmenter and seg.backend_info["name"] == "onnxruntime-cuda"


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_open_segmenter_falls_back_to_the_cpu_once_when_cuda_cannot_start(blur_copy, cp, monkeypatch):
    """onnxruntime lists the CUDA provider and CuPy sees a GPU, but the provider fails to start: ``auto`` runs
    the host Segmenter on the CPU without starting the CUDA provider a second time; ``cuda`` reports it."""
    from segflow.runtime import gpu
    from segflow.runtime.backends import onnxrt

    asked = []
    real = onnxrt.providers_for
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxrt, "providers_for", lambda device: asked.append(device) or real(device))
    monkeypatch.setattr(onnxrt, "_no_driver", lambda: True)
    with pytest.warns(RuntimeWarning, match=r"^the CUDA execution provider could not start \(no NVIDIA driver: "
                                            r"libcuda.so.1 cannot be loaded\), so segflow runs on the CPU"):
        with gpu.open_segmenter(blur_copy, threads=1, **KW) as seg:  # this onnxruntime cannot start CUDA
            assert type(seg) is Segmenter and seg.backend_info["providers"] == ["CPUExecutionProvider"]
    assert asked == ["cuda", "cpu", "cpu"]  # one failed CUDA start, then the field and encoder on the CPU
    assert onnxrt.cuda_failure() is not None  # and later auto sessions in this process go straight to the CPU
    asked.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with gpu.open_segmenter(blur_copy, threads=1, **KW) as seg:
            assert type(seg) is Segmenter
    assert asked == ["auto", "auto"] and real("auto") == ["CPUExecutionProvider"]  # no second CUDA attempt
    with pytest.raises(BackendError, match="could not start"):
        gpu.open_segmenter(blur_copy, backend="cuda", threads=1, **KW)


def test_a_batch_size_beyond_the_plans_profile_names_the_rebuild(plan, cp, trt):
    from segflow.runtime import gpu

    with pytest.raises(InputError, match=r"--batch-size 13 exceeds the largest batch engine .*\(12\): lower it or "
                                         r"rebuild with `runtime build --onnx \S*blur.onnx --out \S*blur.plan "
                                         r"--precision fp32 --builder tensorrt --batch 1:6:13 --encoder-batch 1:3:12`"):
        gpu.open_segmenter(plan, threads=1, **{**KW, "batch_size": 13})


def test_a_plans_default_batch_is_its_profiles_opt(plan, cp, trt, monkeypatch):
    """TensorRT tunes a plan's kernels for the profile's OPT batch (the build's --batch 1:6:12 here): without
    --batch-size the calls hold OPT samples, not the memory budget's (larger) batch; an explicit one is kept."""
    from segflow.runtime import gpu
    from segflow.runtime import session as session_mod

    auto = {k: v for k, v in KW.items() if k != "batch_size"}
    with gpu.open_segmenter(plan, threads=1, **auto) as seg:
        assert seg.settings.batch == 6
    monkeypatch.setattr(session_mod, "batch_from_budget", lambda *a, **k: 4)
    with gpu.open_segmenter(plan, threads=1, **auto) as seg:
        assert seg.settings.batch == 4  # a memory budget below OPT still rules
    with gpu.open_segmenter(plan, threads=1, **{**KW, "batch_size": 12}) as seg:
        assert seg.settings.batch == 12


def test_a_batch_size_the_encoder_plan_limits_names_the_encoder_and_widens_its_range(blur_copy, cp, trt):
    """A field plan that takes 6 samples but an encoder plan that takes 3 tiles: at K=1 a batch of 6 needs 6
    tiles per encoder call, so the hint must widen --encoder-batch (repeating the same ranges fixed nothing)."""
    from segflow.runtime import gpu

    plan = eng.build_engine(blur_copy, blur_copy.with_suffix(".plan"), precision="fp32", batch=(1, 4, 6),
                            encoder_batch=(1, 2, 3)).field
    with pytest.raises(InputError, match=r"--batch-size 6 exceeds the largest batch engine \S*blur.plan was built "
                                         r"for \(3 = the 3 tiles per call of its encoder plan \S*blur.encoder.plan x "
                                         r"K=1\): lower it or rebuild with `runtime build --onnx "
                                         r"\S*blur.onnx --out \S*blur.plan --precision fp32 --builder tensorrt "
                                         r"--batch 1:4:6 --encoder-batch 1:2:6`\.$"):
        gpu.open_segmenter(plan, threads=1, **{**KW, "samples": 1, "batch_size": 6})
    with gpu.open_segmenter(plan, threads=1, **{**KW, "samples": 2, "batch_size": 6}) as seg:
        assert seg.settings.batch == 6  # 3 tiles x K=2 per encoder call: within both plans


@pytest.mark.parametrize("own_streams", [False, True])
def test_one_device_segmenter_called_from_several_threads_gives_the_sequential_results(plan, cp, trt, own_streams):
    """The Segmenter's documented thread safety holds on a plan: the backend reuses its output buffers per
    shape, so a call and the copies it takes of them must not interleave with another thread's call."""
    import threading

    from segflow.runtime import gpu

    images = [(np.random.default_rng(i).random((40 + 3 * i, 50)) * 255).astype(np.uint8) for i in range(5)]
    with gpu.open_segmenter(plan, threads=1, **KW) as seg:
        want = [seg(im, seed=i).mean_sdf for i, im in enumerate(images)]
        got, errors = [None] * len(images), []

        def work(i):
            try:
                if own_streams:  # a caller with a CUDA stream of its own (the current stream is per thread)
                    with cp.cuda.Stream(non_blocking=True):
                        got[i] = seg(images[i], seed=i).mean_sdf
                else:
                    got[i] = seg(images[i], seed=i).mean_sdf
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert errors == [] and not any(t.is_alive() for t in threads)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_close_from_another_thread_waits_for_the_call_in_progress(plan, cp, trt):
    """An embedding application closes a Segmenter while a worker thread is mid-call: the engine call in
    progress finishes, and the worker's next call gets one sentence, not a crash inside TensorRT."""
    import threading
    import time

    from segflow.runtime import gpu

    seg = gpu.open_segmenter(plan, threads=1, **KW)
    seen, calls = [], [0]

    def work():
        try:
            while True:
                seg(_image())
                calls[0] += 1
        except BaseException as exc:  # noqa: BLE001 - what the worker sees is the point
            seen.append(exc)

    t = threading.Thread(target=work)
    t.start()
    deadline = time.monotonic() + 60
    while calls[0] < 1 and time.monotonic() < deadline:  # mid-way through its second image
        time.sleep(0.01)
    seg.close()
    t.join(60)
    assert not t.is_alive() and len(seen) == 1
    assert isinstance(seen[0], BackendError) and "is not open (closed, or never activated)" in str(seen[0])


def test_a_plan_whose_batch_min_is_above_one_is_refused_when_opened(plan, cp, trt, monkeypatch):
    """A plan built with MIN > 1 (elsewhere, or by an older segflow) would fail mid-run on some images: an
    image's last field call can hold one sample. It is refused when opened, with the rebuild command."""
    from segflow.runtime import gpu
    from segflow.runtime.backends.tensorrt import TensorRTBackend

    monkeypatch.setattr(TensorRTBackend, "min_batch", property(lambda self: 4 if self.path == plan else 1))
    with pytest.raises(InputError, match=r"built for batches of at least 4, but an image's last call can hold a "
                                         r"single sample: rebuild it with MIN 1, `runtime build .*--batch 1:6:"):
        gpu.open_segmenter(plan, threads=1, **KW)


def test_embedding_mistakes_are_one_sentence(plan, blur_copy, cp, trt):
    """An unknown backend, an empty image and a negative seed raise segflow's InputError, not numpy's errors."""
    from segflow.runtime import gpu

    for engine in (plan, blur_copy):
        with pytest.raises(InputError, match=r"backend 'gpu' is unknown: choose auto, cpu, cuda or tensorrt\.$"):
            gpu.open_segmenter(engine, backend="gpu", threads=1, **KW)
    with pytest.raises(InputError, match=r"seed must be at least 0, got -1"):
        gpu.open_segmenter(plan, threads=1, **{**KW, "seed": -1})
    with gpu.open_segmenter(plan, threads=1, **KW) as seg:
        for empty in (np.zeros((0, 0), np.uint8), np.zeros((0, 40), np.uint8)):
            with pytest.raises(InputError, match=r"image is empty \(0 x \d+ pixels\)"):
                seg(empty)
        with pytest.raises(InputError, match=r"seed -3 must be 0 or more"):
            seg(_image(), seed=-3)
        assert seg(_image()).mean_sdf.shape == (50, 61)  # still usable after the refusals


def test_segment_cli_on_a_plan_matches_cpu(plan, blur_copy, cp, trt, tmp_path, capsys):
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, _image())
    flags = ["--samples", "3", "--steps", "3", "--method", "heun", "--stride", "12", "--seed", "5", "-q"]
    assert runtime_main(["segment", "--engine", str(blur_copy), str(img), "--out", str(tmp_path / "cpu"),
                         "--backend", "cpu", *flags]) == 0
    assert runtime_main(["segment", "--engine", str(plan), str(img), "--out", str(tmp_path / "gpu"),
                         "--cuda-graph", *flags[:-1]]) == 0
    assert "tensorrt, device-resident" in capsys.readouterr().out
    for name in ("img_sdf.tif", "img_std.tif"):
        np.testing.assert_allclose(tifffile.imread(tmp_path / "gpu" / name), tifffile.imread(tmp_path / "cpu" / name),
                                   atol=1e-5)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "gpu" / "img_labels.tif"),
                                  tifffile.imread(tmp_path / "cpu" / "img_labels.tif"))
    backend = json.loads((tmp_path / "gpu" / "img.json").read_text())["backend"]
    assert backend["name"] == "tensorrt" and backend["device_resident"] and backend["cuda_graph"]
    assert cp.stats["graph_launches"] > 0


def test_a_plan_pair_from_another_gpu_model_warns_once(plan, cp, trt, monkeypatch):
    """Field and encoder plans were built on the same GPU: the same-compute-capability note is said once for the
    pair (it was said once per plan), and again for no later Segmenter on the same plans."""
    from segflow.runtime import gpu
    from segflow.runtime.backends import tensorrt as trt_backend

    built = trtlib.PlanInfo.read(plan)
    other = trtlib.GpuInfo(built.gpu_name + " (another model)", built.compute_capability)
    for mod in (trtlib, trt_backend):
        monkeypatch.setattr(mod, "gpu_info", lambda: other)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            with gpu.open_segmenter(plan, threads=1, **KW):
                pass
    said = [str(w.message) for w in seen]
    assert said == [f"plan {plan} and its encoder plan were built on {built.gpu_name} and run on {other.name} "
                    f"(same compute capability {other.compute_capability}); rebuild them here for best speed."]


@pytest.mark.parametrize("gpu", [trtlib.GpuInfo("Fake GPU 9.0", "9.0"), None])
def test_segment_cli_plan_without_cupy_is_one_sentence(plan, tmp_path, monkeypatch, capsys, gpu):
    from segflow.runtime.backends import tensorrt as trt_backend

    monkeypatch.setitem(sys.modules, "cupy", None)
    for mod in (trtlib, trt_backend):  # a GPU nvidia-smi sees, or none at all
        monkeypatch.setattr(mod, "gpu_info", lambda: gpu)
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, _image())
    assert runtime_main(["segment", "--engine", str(plan), str(img), "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    if gpu is None:  # the missing GPU is the problem to name, not CuPy (checked before CuPy is asked for)
        assert "blur.plan needs an NVIDIA GPU, but none is visible" in err and "cupy" not in err
    else:
        assert "cupy" in err and 'pip install "cupy-cuda13x[ctk]"' in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_slide_on_a_plan_streams_like_the_cpu(cp, trt, tmp_path):
    pytest.importorskip("zarr", reason="slide reading needs the wsi extra: pip install -e '.[wsi]'")
    from segflow.runtime.gpu import DeviceSegmenter
    from segflow.runtime.ometiff import read_level
    from segflow.runtime.slide import open_slide
    from segflow.runtime.wsi import SlideOptions
    from slide_helpers import make_engine, write_pyramid

    from segflow.synthetic import synthetic_nuclei

    engine = make_engine(tmp_path)
    plan = eng.build_engine(engine, tmp_path / "slide.plan", precision="fp32", batch=(1, 8, 16)).field
    image, _ = synthetic_nuclei((136, 168), n=30, radius=(5, 9), seed=3)
    with Segmenter(engine, samples=2, steps=2, threads=1) as seg:
        whole = seg(image)
    with DeviceSegmenter(plan, xp=cp, samples=2, steps=2) as seg, \
            open_slide(write_pyramid(tmp_path / "s.ome.tif", image)) as reader:
        res = seg.segment_slide(reader, tmp_path / "out", options=SlideOptions(block=40, margin=8, tissue=False))
    assert whole.n_instances > 5 and res.n_instances == whole.n_instances
    np.testing.assert_allclose(read_level(res.outputs["mean_sdf"]), whole.mean_sdf, atol=1e-5)
    np.testing.assert_allclose(read_level(res.outputs["std"]), whole.std, atol=1e-5)
    assert trt.executions > 0


def test_fp16_plan_agrees_with_cpu_within_fp16_accuracy(blur_copy, cp, trt):
    from segflow.runtime.gpu import DeviceSegmenter

    # Euler: the test field is the exact OT velocity (f - a x) / (1 - a t), whose denominator is 0 in fp16 at
    # t = 1, where Heun's last stage evaluates it; a trained network has no such pole.
    kw = {**KW, "method": "euler"}
    res = eng.build_engine(blur_copy, blur_copy.with_name("half.plan"), precision="fp16", batch=(1, 6, 12))
    assert res.field_info.precision == "fp16"
    with Segmenter(blur_copy, backend="cpu", threads=1, **kw) as seg:
        cpu = seg(_image())
    with DeviceSegmenter(res.field, xp=cp, **kw) as seg:
        got = seg(_image())
    err = np.abs(got.mean_sdf - cpu.mean_sdf).max()
    assert 0 < err < 2e-2  # the plan really ran in half precision, and within its accuracy
    assert np.mean(got.mask != cpu.mask) < 1e-2


def test_the_gpu_test_file_passes_emulated(ort_on_cpu, cp, trt, models_dir, tmp_path):
    """tests/runtime/test_trt_gpu.py (skipped without a GPU) run here against the stand-ins, so the first lent
    GPU does not fail on the tests' own mistakes (its fp16 case once evaluated a pole of the test field)."""
    import test_trt_gpu as g

    with Segmenter(models_dir / "blur.onnx", backend="cpu", threads=1, **g.KW) as seg:
        cpu = seg(g._image())
    g.test_ort_cuda_device_resident_run_matches_cpu(models_dir, cpu)
    for precision, atol in (("fp32", 1e-3), ("fp16", 2e-2)):
        (tmp_path / precision).mkdir()
        g.test_tensorrt_engine_build_and_run_matches_cpu(models_dir, tmp_path / precision, cpu, precision, atol)
    assert trt.executions > 0 and cp.stats["graph_launches"] > 0


def test_shipped_model_device_resident_matches_cpu(ort_on_cpu, cp):
    """The shipped default model and example image through the device path (ORT I/O binding, CuPy stand-in,
    stream-ordering check): the same maps as the CPU Segmenter, and only the four final maps come back."""
    from pathlib import Path

    from segflow.runtime.gpu import DeviceSegmenter

    from segflow.imageio import read_image

    root = Path(__file__).resolve().parents[2]
    engine, img = root / "models" / "flowsdf-small-monuseg.onnx", read_image(root / "examples" / "monuseg_val_crop.png")
    with Segmenter(engine, backend="cpu") as seg:
        cpu = seg(img)
    with DeviceSegmenter(engine, xp=cp) as seg:
        dev = seg(img)
        assert seg.backend_info["device_resident"]
    assert cp.stats["host_copies"] == 4
    np.testing.assert_allclose(dev.mean_sdf, cpu.mean_sdf, atol=1e-5)
    np.testing.assert_array_equal(dev.labels, cpu.labels)
    assert dev.labels.max() == cpu.labels.max() > 30  # the example's ~46 nuclei


def test_shipped_model_as_a_plan_with_cuda_graphs_matches_cpu(cp, trt, tmp_path):
    """`runtime build` of the shipped model (fake TensorRT, fp32) and `runtime segment --cuda-graph` on it: the
    default batch fits the plan's profile, graphs replay, and the labels equal the CPU run's."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for name in ("flowsdf-small-monuseg.onnx", "flowsdf-small-monuseg.encoder.onnx", "flowsdf-small-monuseg.card.json"):
        shutil.copy(root / "models" / name, tmp_path / name)
    example = root / "examples" / "monuseg_val_crop.png"
    assert runtime_main(["build", "--onnx", str(tmp_path / "flowsdf-small-monuseg.onnx"), "--out",
                         str(tmp_path / "f.plan"), "--precision", "fp32"]) == 0
    assert runtime_main(["segment", "--engine", str(tmp_path / "flowsdf-small-monuseg.onnx"), str(example),
                         "--out", str(tmp_path / "cpu"), "--backend", "cpu", "-q"]) == 0
    assert runtime_main(["segment", "--engine", str(tmp_path / "f.plan"), str(example), "--out",
                         str(tmp_path / "gpu"), "--cuda-graph", "-q"]) == 0
    cpu, gpu = (tifffile.imread(tmp_path / d / "monuseg_val_crop_labels.tif") for d in ("cpu", "gpu"))
    np.testing.assert_array_equal(gpu, cpu)
    assert cpu.max() > 30 and cp.stats["graph_launches"] > 0
    assert json.loads((tmp_path / "gpu" / "monuseg_val_crop.json").read_text())["backend"]["device_resident"]


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
@pytest.mark.filterwarnings("ignore:the CUDA execution provider could not start")  # CUDA listed, no GPU here
def test_cupy_that_cannot_compile_kernels(blur_copy, plan, monkeypatch):
    """CuPy sees the GPU but cannot load NVRTC (plain cupy-cuda13x, no CUDA toolkit): a TensorRT plan stops
    before any work with the install command; ``auto`` on an .onnx model warns and samples on the host."""
    from types import SimpleNamespace

    from segflow.runtime import gpu
    from segflow.runtime.backends import onnxrt

    from segflow.errors import MissingDependency, require_cupy

    broken = make_fake_cupy()

    def no_nvrtc():
        raise RuntimeError('Failure finding "libnvrtc.so.13 or libnvrtc.so.12": No such file\nmore detail')

    broken.cuda.nvrtc = SimpleNamespace(getVersion=no_nvrtc)
    monkeypatch.setitem(sys.modules, "cupy", broken)
    fix = r"\(Failure finding \"libnvrtc.so.13 or libnvrtc.so.12\": No such file\): run `pip install " \
          r"\"cupy-cuda13x\[ctk\]\"` or install the CUDA 13 toolkit\."
    with pytest.raises(MissingDependency, match=r"^device-resident sampling needs CuPy's kernel compiler NVRTC, which "
                                                r"CuPy cannot load " + fix + "$"):
        with gpu.open_segmenter(plan, threads=1, **KW):
            pass
    with pytest.raises(MissingDependency, match="NVRTC"):
        require_cupy("x")
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr("segflow.runtime.backends.ort_cuda.OrtCudaBackend.device_type", "cpu")
    with pytest.warns(RuntimeWarning, match=fix[:-2] + r"\. Until then sampling runs on the host\.$"):
        assert gpu.cupy_with_gpu() is None
    with pytest.warns(RuntimeWarning, match="NVRTC"):
        with gpu.open_segmenter(blur_copy, threads=1, **KW) as seg:
            assert type(seg) is Segmenter
