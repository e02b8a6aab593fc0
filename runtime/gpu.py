"""Device-resident FlowSDF sampling: state, encoder features and noise stay on the GPU for every step and sample.

The runtime's integrators (:mod:`segflow.runtime.integrators`) and FlowSDF sampler
(:func:`segflow.runtime.sampling.flowsdf_sample`) are written over an array namespace; here that namespace is
CuPy (``xp=cupy``) and the backends return device arrays (``infer(..., to_host=False)``): the TensorRT backend
or ONNX Runtime's CUDA provider with I/O binding. Tiles are normalised on the host and uploaded once; the
encoder runs once per tile; the K samples' noise is uploaded (``noise="host"``: bit-identical to the CPU
sampler's seeded noise) or drawn on the device (``noise="device"``: one CuPy generator per group of tiles,
reproducible for the same batching); tiles are blended into device canvases, and the mean SDF, spread and
foreground probability are reduced on the device. Only the final maps come back to the host.

Every function also runs with ``xp=numpy`` and CPU backends — the tests check it against the CPU sampler
through exactly these code paths, and with a numpy-backed CuPy stand-in that refuses implicit host
conversion, behind the real backend classes (``tests/runtime/test_gpu_emulated.py``).

:func:`open_segmenter` is what ``runtime segment`` and ``runtime batch`` use: a :class:`DeviceSegmenter` for
TensorRT plans and for ``.onnx`` engines on ONNX Runtime's CUDA provider when CuPy and a GPU are present,
otherwise the host :class:`~segflow.runtime.session.Segmenter`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from segflow.runtime.blend import accumulate, blend_weights
from segflow.runtime.sampling import FlowSDFSampler, SamplerStats, flowsdf_sample, tile_noise
from segflow.runtime.session import Cancelled, Segmentation, Segmenter, call_seed, check_backend
from segflow.runtime.tiling import extract_tile, plan_tiles

from segflow.card import resolve_engine
from segflow.errors import BackendError, InputError, MissingDependency, require_cupy
from segflow.normalize import apply_norm

__all__ = ["DeviceField", "DeviceFlowSDFSampler", "DeviceSegmenter", "reduce_samples", "NOISE_MODES", "to_host",
           "open_segmenter", "cupy_with_gpu"]

NOISE_MODES = ("host", "device")


def to_host(a: Any) -> NDArray:
    """A numpy copy of a numpy or CuPy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


class DeviceField:
    """``f(x, t) -> v`` over a backend, features bound, everything in namespace ``xp``.

    The output is copied out of the backend's (reusable) buffer, so multi-stage methods (Heun, RK4) can keep
    several evaluations alive at once.
    """

    def __init__(self, backend: Any, features: Any, xp: Any) -> None:
        self.backend, self.features, self.xp = backend, features, xp
        self.calls = 0

    def __call__(self, x: Any, t: float) -> Any:
        xp = self.xp
        feed = {"x": x, "t": xp.full((x.shape[0],), t, dtype=xp.float32), "features": self.features}
        self.calls += 1
        return self.backend.infer(feed, to_host=xp is np, check=False)["out"]  # an array of the caller's own


class DeviceFlowSDFSampler(FlowSDFSampler):
    """:class:`~segflow.runtime.sampling.FlowSDFSampler` whose arrays live in ``xp`` (CuPy on the GPU).

    Parameters
    ----------
    field_backend, encoder_backend : Backend
        Active backends returning ``xp`` arrays with ``to_host=False``.
    settings : SamplingSettings
    sigma_min : float
    xp : module
        ``cupy`` (default when importable) or ``numpy``.
    noise : {"host", "device"}
        Where the noise is drawn (see the module docstring).
    """

    def __init__(self, field_backend: Any, encoder_backend: Any, settings: Any, *, sigma_min: float,
                 xp: Any = None, noise: str = "host") -> None:
        super().__init__(field_backend, encoder_backend, settings, sigma_min=sigma_min)
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
        self.xp = xp if xp is not None else require_cupy("device-resident sampling")
        self.noise = noise

    def _noise(self, rng: Any, seed: int, indices: list[int], chunk: list[tuple[int, int]], size: int, it: int
               ) -> Any:
        xp = self.xp
        if rng is None:
            return xp.asarray(np.stack([tile_noise(seed, indices[i], k, (1, size, size), iteration=it)
                                        for i, k in chunk]))
        return rng.standard_normal((len(chunk), 1, size, size), dtype=xp.float32)

    def _device_rng(self, seed: int, indices: list[int]) -> Any:
        """One device generator per call of :meth:`sample_device`, seeded by the seed and the group's tiles.

        Drawn in a fixed order (batch by batch, the start noise and then each renoising), so the same seed, tiles
        and batch size give the same noise. One per call rather than per batch and iteration: setting up
        cuRAND's states is much dearer than drawing from them (its performance notes advise keeping states).
        """
        state = int(np.random.SeedSequence([int(seed), *map(int, indices)]).generate_state(1, np.uint64)[0])
        return self.xp.random.default_rng(state)

    def sample_device(self, images: NDArray[np.float32], indices: list[int], stats: SamplerStats | None = None,
                      *, seed: int | None = None) -> Any:
        """Samples (n, K, T, T) in ``xp`` for normalised tiles ``images`` (n, C, T, T) with plan ``indices``.

        Thread-safe: the backends return arrays of the caller's own (see ``TensorRTBackend``)."""
        xp, s = self.xp, self.settings
        seed = s.seed if seed is None else int(seed)
        stats = stats if stats is not None else SamplerStats()
        t0 = time.perf_counter()
        feats = self.encoder.infer({"image": xp.asarray(np.ascontiguousarray(images))}, to_host=xp is np)
        feats = feats["features"]
        stats.encoder_s += time.perf_counter() - t0
        stats.encoder_tiles += len(images)
        n, size = images.shape[0], images.shape[-1]
        pairs = [(i, k) for i in range(n) for k in range(s.samples)]
        out = xp.empty((n, s.samples, size, size), dtype=xp.float32)
        rng = self._device_rng(seed, indices) if self.noise == "device" else None
        for lo in range(0, len(pairs), s.batch):
            chunk = pairs[lo:lo + s.batch]
            rows, ks = xp.asarray([i for i, _ in chunk]), xp.asarray([k for _, k in chunk])
            f = DeviceField(self.field, xp.ascontiguousarray(feats[rows]), xp)
            t0 = time.perf_counter()
            x1 = flowsdf_sample(f, self._noise(rng, seed, indices, chunk, size, 0), steps=s.steps,
                                method=s.method, noise_iterations=s.noise_iterations, renoise_t=s.renoise_t,
                                sigma_min=self.sigma_min,
                                renoise=lambda it, chunk=chunk: self._noise(rng, seed, indices, chunk, size, it))
            out[rows, ks] = x1[:, 0]
            stats.field_s += time.perf_counter() - t0
            stats.field_calls += f.calls
            stats.sample_evals += f.calls * len(chunk)
        return out

    def sample(self, images: NDArray[np.float32], indices: list[int], stats: SamplerStats | None = None, *,
               seed: int | None = None) -> NDArray[np.float32]:
        """Host copy of :meth:`sample_device` (drop-in for the CPU sampler)."""
        return to_host(self.sample_device(images, indices, stats, seed=seed))


def reduce_samples(sample_sdfs: Any, threshold: float, xp: Any = np) -> tuple[Any, Any, Any]:
    """Mean SDF, population std and foreground probability over the K axis of (K, H, W) samples, float32.

    Examples
    --------
    >>> m, s, p = reduce_samples(np.array([[[0.5]], [[-0.5]]], np.float32), 0.0)
    >>> float(m[0, 0]), float(s[0, 0]), float(p[0, 0])
    (0.0, 0.5, 0.5)
    """
    mean = sample_sdfs.mean(axis=0, dtype=xp.float64).astype(xp.float32)
    std = sample_sdfs.std(axis=0, dtype=xp.float64).astype(xp.float32)
    prob = (sample_sdfs <= threshold).mean(axis=0, dtype=xp.float64).astype(xp.float32)
    return mean, std, prob


class DeviceSegmenter(Segmenter):
    """A :class:`~segflow.runtime.session.Segmenter` that samples, blends and reduces on the GPU.

    ``.plan`` engines run on :class:`~segflow.runtime.backends.tensorrt.TensorRTBackend`, ``.onnx`` engines on
    :class:`~segflow.runtime.backends.ort_cuda.OrtCudaBackend` (``xp=numpy`` uses the CPU ONNX Runtime backend,
    for tests). SSB engines keep the host sampler. Keyword arguments are the Segmenter's, plus ``noise``,
    ``cuda_graph`` and ``xp``.
    """

    def __init__(self, engine: str | Path, *, noise: str = "host", cuda_graph: bool = False, xp: Any = None,
                 **kwargs: Any) -> None:
        if noise not in NOISE_MODES:
            raise InputError(f"noise {noise!r} is unknown: choose one of {', '.join(NOISE_MODES)}.")
        self.xp = xp if xp is not None else require_cupy("device-resident sampling")
        self._cuda_graph, self.noise = cuda_graph, noise
        super().__init__(engine, **kwargs)
        if self.card.kind == "flowsdf":
            self.sampler = DeviceFlowSDFSampler(self._field, self._encoder, self.settings, xp=self.xp, noise=noise,
                                                sigma_min=self.card.sigma_min)

    @property
    def device_resident(self) -> bool:
        """Whether sampling keeps its state on the device (FlowSDF engines; SSB engines use the host sampler)."""
        return isinstance(self.sampler, DeviceFlowSDFSampler)

    @property
    def backend_info(self) -> dict:
        """The Segmenter's backend description plus where sampling runs."""
        return {**super().backend_info, "device_resident": self.device_resident, "array_module": self.xp.__name__,
                "noise": self.noise if self.device_resident else "host"}

    def _cpu_expected(self, backend: str) -> bool:
        """Never split the threads into tile workers: the device loop runs one group of tiles at a time."""
        return False

    def _open_backends(self, backend: str, threads: int | None) -> tuple[Any, Any]:
        from segflow.runtime.backends.onnxrt import OrtBackend

        if self.paths.format == "plan":
            from segflow.runtime.backends.tensorrt import TensorRTBackend

            make = lambda p: TensorRTBackend(p, cuda_graph=self._cuda_graph)  # noqa: E731
        elif self.xp is np:
            make = lambda p: OrtBackend(p, device="cpu", threads=threads)  # noqa: E731
        else:
            from segflow.runtime.backends.ort_cuda import OrtCudaBackend

            make = lambda p: OrtCudaBackend(p, threads=threads)  # noqa: E731
        opened = []
        try:
            for path in (self.paths.field, self.paths.encoder):
                opened.append(make(path).activate())
        except BaseException:
            for b in opened:
                b.deactivate()
            raise
        return opened[0], opened[1]

    def __call__(self, image: NDArray, *, seed: int | None = None, name: str = "image", progress: Any = None,
                 cancel: Any = None) -> Segmentation:
        """Segment one image; same result fields as :meth:`Segmenter.__call__`."""
        if not isinstance(self.sampler, DeviceFlowSDFSampler):
            return super().__call__(image, seed=seed, name=name, progress=progress, cancel=cancel)
        xp, t_start = self.xp, time.perf_counter()
        seed = self.settings.seed if seed is None else call_seed(seed)
        img, stats = self.prepare(image, name=name)
        plan = plan_tiles(img.shape, self.card.tile, self.stride)
        t_norm = time.perf_counter() - t_start
        acc = xp.zeros((self.settings.samples, *img.shape[:2]), dtype=xp.float64)
        wsum = xp.zeros(img.shape[:2], dtype=xp.float64)
        weights = xp.asarray(blend_weights(self.card.tile, self.blend))
        sstats, group = SamplerStats(), self.sampler.tiles_per_group()
        t_loop = time.perf_counter()
        for lo in range(0, len(plan), group):
            if cancel is not None and cancel():
                raise Cancelled("segmentation was cancelled by the caller; nothing was kept.")
            chunk = plan[lo:lo + group]
            tiles = np.stack([np.moveaxis(apply_norm(extract_tile(img, t), stats), -1, 0) for t in chunk])
            samples = self.sampler.sample_device(tiles, [t.index for t in chunk], sstats, seed=seed)
            for tile, values in zip(chunk, samples, strict=True):
                accumulate(acc, wsum, tile, values, weights)
            if progress is not None:
                progress(lo + len(chunk), len(plan))
        if xp is not np:  # the last group's device work counts as sampling, not as blending
            xp.cuda.get_current_stream().synchronize()
        t0 = time.perf_counter()
        t_sampling = t0 - t_loop  # tiles cut and normalised on the host, the samples and their (on-device) blend
        sample_dev = (acc / wsum).astype(xp.float32)
        maps = [to_host(a) for a in (sample_dev, *reduce_samples(sample_dev, self.card.threshold, xp))]
        t_reduce = time.perf_counter() - t0
        result = self._finish_maps(*maps, seed=seed)
        timings = {"normalise_s": t_norm, "sampling_s": t_sampling, "encoder_s": sstats.encoder_s,
                   "field_s": sstats.field_s, "blend_s": t_reduce, **result.pop("timings"), "tiles": len(plan),
                   "encoder_tiles": sstats.encoder_tiles, "field_calls": sstats.field_calls,
                   "sample_evaluations": sstats.sample_evals, "total_s": time.perf_counter() - t_start}
        return Segmentation(sample_sdfs=maps[0], timings=timings, **result)


def cupy_with_gpu() -> Any:
    """CuPy when it is installed, sees a GPU and can compile kernels, else None.

    A CuPy that sees a GPU but cannot load its kernel compiler (NVRTC) warns with the install command: sampling
    then stays on the host rather than failing at the first array operation.
    """
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() <= 0:
            return None
    except Exception:  # noqa: BLE001 - not installed, no driver, no device
        return None
    try:
        return require_cupy("device-resident sampling")
    except MissingDependency as exc:
        warnings.warn(f"{exc} Until then sampling runs on the host.", RuntimeWarning, stacklevel=2)
        return None


def open_segmenter(engine: str | Path, *, backend: str = "auto", cuda_graph: bool = False, noise: str = "host",
                   **kwargs: Any) -> Segmenter:
    """The Segmenter for ``engine`` on ``backend``: device-resident where the engine runs on a GPU.

    * ``.plan`` engines (or ``backend="tensorrt"``): :class:`DeviceSegmenter` on TensorRT (needs CuPy);
    * ``.onnx`` engines with ``backend`` ``"cuda"`` or ``"auto"``, when this onnxruntime has the CUDA provider
      and CuPy sees a GPU: :class:`DeviceSegmenter` on ONNX Runtime CUDA with I/O binding (``"auto"`` falls
      back to the host Segmenter on the CPU if the provider cannot start; ``"cuda"`` without CuPy runs the host sampler
      on the CUDA provider);
    * otherwise the host :class:`~segflow.runtime.session.Segmenter`.

    ``cuda_graph`` (TensorRT plans only) captures each engine call signature into a CUDA graph; ``noise`` is
    the :class:`DeviceFlowSDFSampler` noise mode. Other keyword arguments are the Segmenter's.
    """
    from segflow.runtime.backends.onnxrt import CudaProviderError, available_providers, cuda_failure, fall_back_to_cpu

    check_backend(backend)
    paths = resolve_engine(engine)
    if backend == "tensorrt" and paths.format != "plan":
        raise InputError(f"--backend tensorrt needs a TensorRT plan but {paths.field} is not one: build it with "
                         f"`runtime build --onnx {paths.field} --out {paths.field.stem}.plan`.")
    if paths.format == "plan":
        if backend in ("cpu", "cuda"):
            raise InputError(f"{paths.field} is a TensorRT plan, which runs on the tensorrt backend only: drop "
                             f"--backend {backend} or pass the .onnx model.")
        from segflow.runtime.backends.tensorrt import preflight

        for plan in (paths.field, paths.encoder):  # no GPU, the wrong library or GPU: say so before asking for CuPy
            preflight(plan)
        return DeviceSegmenter(engine, cuda_graph=cuda_graph, noise=noise, backend="tensorrt", **kwargs)
    if cuda_graph:
        raise InputError(f"--cuda-graph applies to TensorRT plans, and {paths.field} is an ONNX graph: drop it, "
                         "or build a plan with `runtime build`.")
    if (backend == "cuda" or backend == "auto" and cuda_failure() is None) \
            and "CUDAExecutionProvider" in available_providers():  # auto: not again after it failed to start
        xp = cupy_with_gpu()
        if xp is not None:
            try:
                return DeviceSegmenter(engine, xp=xp, noise=noise, backend="cuda", **kwargs)
            except BackendError as exc:
                if backend == "cuda":
                    raise
                # the CUDA provider just failed to start: say why, once, and run on the CPU
                why, fix = (exc.why, exc.fix) if isinstance(exc, CudaProviderError) else (str(exc).rstrip("."), None)
                fall_back_to_cpu(why, fix)
                return Segmenter(engine, backend="cpu", **kwargs)
    return Segmenter(engine, backend=backend, **kwargs)
