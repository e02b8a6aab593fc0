"""The Python API: a :class:`Segmenter` session (load once, call per image) returning a :class:`Segmentation`.

Example
-------
>>> from segflow.runtime.session import Segmenter            # doctest: +SKIP
>>> with Segmenter("models/flowsdf-small-monuseg.onnx", samples=4, steps=4) as seg:  # doctest: +SKIP
...     result = seg(image)                                   # (H, W[, C]) uint8/uint16/float array
...     result.labels, result.mean_sdf, result.std, result.prob
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from segflow.runtime import instances as _instances
from segflow.runtime.backends import onnxrt, open_backend
from segflow.runtime.backends.onnxrt import available_providers, physical_cores
from segflow.runtime.blend import BLENDS, Blender
from segflow.runtime.sampling import BridgeSampler, FlowSDFSampler, SamplerStats, SamplingSettings, batch_from_budget
from segflow.runtime.tiling import Tile, extract_tile, plan_tiles

from segflow.card import ModelCard, load_card, resolve_engine
from segflow.errors import InputError, ModelCardError, SegflowError, check_at_least
from segflow.normalize import apply_norm, channels_and_stats, dtype_scale

__all__ = ["Segmenter", "Segmentation", "Cancelled", "iter_tiles", "SAMPLERS"]

SAMPLERS = {"flowsdf": FlowSDFSampler, "ssb": BridgeSampler}
FIELD_INPUTS = {"flowsdf": {"x", "t", "features"}, "ssb": {"x", "t", "features", "label"}}
# Pixels per field call on a CPU execution provider when no --batch-size is given. Batching does not add
# parallelism on a CPU (ONNX Runtime already spreads each convolution over the cores), and calls whose
# activations outgrow the caches ran 10-25x slower per pixel on the development VM (64² tiles: 8 per call
# about 1 s/Mpx, 64 per call 25 s/Mpx; benchmarks/results/bench_runtime.md).
CPU_CALL_PIXELS = 8 * 64 * 64
_LOW_PRECISION_WARNED: set[str] = set()  # fp16/bf16 graphs already warned about on the CPU provider


class Cancelled(SegflowError):
    """The caller's ``cancel`` callback asked to stop; nothing was returned or written."""


@dataclass(frozen=True)
class Segmentation:
    """Everything one image's segmentation produced (maps are (H, W) float32 unless stated).

    Attributes
    ----------
    labels : ndarray of uint16/uint32
        Instance labels (0 = background).
    mean_sdf, std, prob : ndarray
        Mean of the K sampled SDFs, their per-pixel population standard deviation, and the fraction of samples
        with ``sdf <= card.threshold`` (foreground probability).
    mask : ndarray of bool
        ``mean_sdf <= card.threshold``.
    sample_sdfs : ndarray, shape (K, H, W)
        The K blended samples.
    samples, steps, nfe, noise_iterations, seed : int
        K, steps per pass, field evaluations per sample trajectory (all passes), T, seed.
    method, blend, instance_method : str
    stride : int
    timings : dict
        Seconds per stage (normalise, sampling, encoder, field, blend, instances, confidence, total) and call
        counts. ``sampling_s`` is the wall time of the encoder and field work; ``encoder_s`` and ``field_s`` add
        up every tile worker's calls, so with several workers they exceed it.
    backend : dict
        Backend description (name, providers, threads per call, tile workers).
    card : ModelCard
    instances : tuple of dict
        One row per instance: id, area, centroid, bbox, mean_sdf, mean_std and, when available, confidence.
    """

    labels: NDArray
    mean_sdf: NDArray[np.float32]
    std: NDArray[np.float32]
    prob: NDArray[np.float32]
    mask: NDArray[np.bool_]
    sample_sdfs: NDArray[np.float32]
    samples: int
    steps: int
    method: str
    nfe: int
    noise_iterations: int
    seed: int
    stride: int
    blend: str
    instance_method: str
    timings: dict
    backend: dict
    card: ModelCard
    instances: tuple = field(default_factory=tuple)

    @property
    def n_instances(self) -> int:
        """Number of instances in ``labels``."""
        return len(self.instances)


def iter_tiles(image: NDArray, plan: list[Tile]) -> Iterator[tuple[Tile, NDArray]]:
    """Yield ``(tile, window)`` for an in-memory (H, W, C) image (windows reflect-padded to the tile size)."""
    for tile in plan:
        yield tile, extract_tile(image, tile)


BACKENDS = ("auto", "cpu", "cuda", "tensorrt")


def check_backend(backend: str) -> None:
    """One sentence for a backend name that is not one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise InputError(f"backend {backend!r} is unknown: choose auto, cpu, cuda or tensorrt.")


def call_seed(seed: int) -> int:
    """A per-call noise seed, checked: an integer of 0 or more (numpy's seeding refuses negative ones)."""
    value = int(seed)
    if value < 0:
        raise InputError(f"seed {seed} must be 0 or more: pass --seed 0 or another non-negative integer.")
    return value


def _check_dtype(image: NDArray, name: str) -> None:
    if image.dtype == bool or image.dtype.kind not in "uif":
        raise InputError(f"{name} has unsupported dtype {image.dtype}: use 8-bit, 16-bit or float images.")
    dtype_scale(image.dtype)
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise InputError(f"{name} contains NaN or infinite values: fix or mask them before segmenting.")


class Segmenter:
    """Load an engine once; segment images with ``segmenter(image)``.

    Everything the model needs (kind, tile, channels, normalisation, threshold, sigma_min) comes from its model
    card; the keyword arguments override sampling choices only.

    Parameters
    ----------
    engine : str or Path
        ``--engine`` path (see :mod:`segflow.card` for how the encoder graph and card are found).
    backend : {"auto", "cpu", "cuda", "tensorrt"}
        ``auto`` = by file type (ONNX Runtime for .onnx, CUDA provider when present; TensorRT for .plan).
    samples, steps, method, stride : optional
        K, steps per pass, ``euler``/``heun``/``rk4``, tile stride (defaults: the card's ``sampling``; stride
        = 3/4 of the tile). ``method`` is FlowSDF's integrator: an SSB engine refuses it and samples with the
        bridge's own sampler; the ``method`` attribute (and each result's) names the one used, ``bridge-ancestral``
        or ``bridge-ode`` for SSB.
    seed : int
        Noise seed; the same seed gives the same result whatever the batch size.
    noise_iterations, renoise_t : int, float
        FlowSDF noise injection (see :mod:`segflow.runtime.sampling`).
    blend : str
        Overlap blending (:data:`segflow.runtime.blend.BLENDS`).
    instances : {"hemd", "watershed", "threshold"}, optional
        Instance method (default: ``hemd`` when the solvers provide it, else ``watershed``).
    threads : int, optional
        CPU threads the Segmenter may use (default: physical cores).
    tile_workers : int, optional
        On a CPU execution provider, groups of tiles sampled at once, each call with ``threads // tile_workers``
        ONNX Runtime threads (default: ``threads``, one thread per group: on a 64² model a one-thread call
        wastes no time waiting for its partner thread, and a stalled core holds up one group, not all; see
        ``benchmarks/results/bench_runtime.md``). ``1`` = one group at a time with every thread in each call.
        GPU backends always run one group at a time.
    batch_size : int, optional
        Samples per field call (default: from ``memory_budget_mb``, see ``batch_from_budget``; on a CPU
        execution provider also at most ``CPU_CALL_PIXELS`` pixels per call).
    guidance, label, ode : SSB engines only (classifier-free guidance weight, annotator label, OT-ODE).

    Thread safety
    -------------
    A Segmenter may be called from several threads at once: after construction it holds no mutable state
    besides its backends, and every call keeps its buffers local. ONNX Runtime sessions run concurrently
    (their ``run`` is thread-safe); backends that are not thread-safe (TensorRT contexts) are serialised by a
    lock in :class:`~segflow.runtime.backends.base.Backend`. Concurrent calls share the CPU threads, so they
    improve throughput only when one call cannot use all cores.
    """

    def __init__(self, engine: str | Path, *, backend: str = "auto", samples: int | None = None,
                 steps: int | None = None, method: str | None = None, stride: int | None = None, seed: int = 0,
                 noise_iterations: int = 0, renoise_t: float = 0.5, blend: str = "gaussian",
                 instances: str | None = None, threads: int | None = None, tile_workers: int | None = None,
                 batch_size: int | None = None, memory_budget_mb: float = 1024, guidance: float = 0.0,
                 label: int = 0, ode: bool = False) -> None:
        self.paths = resolve_engine(engine)
        self.card = load_card(self.paths)
        if blend not in BLENDS:
            raise InputError(f"blend {blend!r} is unknown: choose one of {sorted(BLENDS)}.")
        self.blend = blend
        self.instance_method = _instances.check_method(instances)
        check_at_least(("samples", samples, 1), ("steps", steps, 1), ("stride", stride, 1),
                       ("batch_size", batch_size, 1), ("threads", threads, 1), ("tile_workers", tile_workers, 1),
                       ("seed", seed, 0))
        tile = self.card.tile
        self.stride = int(stride if stride is not None else self.card.sampling.get("stride") or tile * 3 // 4)
        if not 1 <= self.stride <= tile:
            raise InputError(f"stride {self.stride} must be between 1 and the model's tile size {tile}.")
        if not memory_budget_mb > 0:
            raise InputError(f"memory_budget_mb must be positive, got {memory_budget_mb}: pass --memory-budget in MB "
                             "(default 1024).")
        if self.card.kind == "ssb":
            n = int(self.card.bridge.get("n_labels", 0))
            if not 0 <= int(label) <= n:
                raise InputError(f"label {label} is not one of {self.paths.field}'s annotators: use --label 0 "
                                 f"(unconditional) to {n}.")
            if not guidance >= 0:
                raise InputError(f"guidance {guidance} must be 0 or more: pass --guidance 0 (none) or a positive "
                                 "weight.")
        elif guidance or label or ode:
            raise InputError(f"--guidance, --label and --ode apply to SSB engines; {self.paths.field} is a "
                             f"{self.card.kind} engine: drop them.")
        defaults = self.card.sampling
        if self.card.kind == "ssb" and method:
            raise InputError(f"--method {method} applies to FlowSDF engines; {self.paths.field} is an SSB engine, "
                             "which samples with the bridge's ancestral sampler (or --ode): drop --method.")
        method = method or defaults.get("method", "euler")
        batch = batch_size if batch_size is not None else batch_from_budget(
            tile, self.card.feature_channels, method, memory_budget_mb * 2**20)
        try:
            self.settings = SamplingSettings(
                samples=int(samples if samples is not None else defaults.get("samples", 4)),
                steps=int(steps if steps is not None else defaults.get("steps", 4)),
                method=method, noise_iterations=int(noise_iterations), renoise_t=float(renoise_t),
                seed=int(seed), batch=int(batch))
        except ValueError as exc:
            raise InputError(f"invalid sampling options for {self.paths.field}: {exc}.") from exc
        total = int(threads) if threads else physical_cores()
        cpu_workers = min(int(tile_workers), total) if tile_workers else total
        workers = cpu_workers if self._cpu_expected(backend) else 1
        self._field, self._encoder = self._open_backends(backend, max(1, total // workers))
        if workers == 1 < cpu_workers and backend == "auto" and self._cpu_expected("cpu") and self._on_cpu() \
                and onnxrt.cuda_failure() is not None:
            # the CUDA provider did not start (ONNX Runtime fell back to the CPU, and said why): split the
            # threads into tile workers as a CPU run does; the reopened sessions do not try CUDA again
            self.close()
            workers = cpu_workers
            self._field, self._encoder = self._open_backends("cpu", max(1, total // workers))
        self.tile_workers = workers if self._on_cpu() else 1
        self._check_graphs()
        self._warn_low_precision_on_cpu()
        if batch_size is None and self._on_cpu():
            self.settings = replace(self.settings, batch=min(self.settings.batch, max(1, CPU_CALL_PIXELS // tile**2)))
        self.settings = self._cap_batch(self.settings, explicit=batch_size is not None)
        if self.card.kind == "ssb":
            self.sampler = BridgeSampler(self._field, self._encoder, self.settings, card=self.card,
                                         guidance=guidance, label=label, ode=ode)
            self.nfe = self.sampler.nfe
            self.method = "bridge-ode" if ode else "bridge-ancestral"
        else:
            self.sampler = FlowSDFSampler(self._field, self._encoder, self.settings,
                                          sigma_min=self.card.sigma_min)
            self.nfe = self.settings.nfe
            self.method = self.settings.method

    # -- set-up ------------------------------------------------------------------------------------------------
    def _cap_batch(self, settings: SamplingSettings, *, explicit: bool) -> SamplingSettings:
        """Fit the batch to engines with a fixed largest batch (TensorRT optimisation profiles).

        A field call takes up to ``batch`` samples and an encoder call ``max(1, batch // K)`` tiles, so the
        batch is capped at the field's largest batch and at K x the encoder's. K samples of one tile never need
        one call together, but an encoder that cannot take even one tile per call is refused. Without an explicit
        batch, a plan's calls hold its profile's OPT batch, the one its kernels were tuned for (TensorRT picks
        kernels for OPT; other batches in the range run, often slower), when the memory budget allows it.
        """
        field_max = getattr(self._field, "max_batch", None)
        enc_max = getattr(self._encoder, "max_batch", None)
        if field_max is None and enc_max is None:
            return settings
        if max(getattr(self._field, "min_batch", 1), getattr(self._encoder, "min_batch", 1)) > 1:
            self.close()  # an image's last field call can hold one sample, and its last encoder call one tile
            raise InputError(f"engine {self.paths.field} was built for batches of at least "
                             f"{max(self._field.min_batch, self._encoder.min_batch)}, but an image's last call can "
                             f"hold a single sample: rebuild it with MIN 1, "
                             f"{self._rebuild_hint(field_max or 1, settings.samples)}.")
        cap = min(field_max or settings.batch, (enc_max or settings.batch) * settings.samples)
        if cap < 1:
            self.close()
            raise InputError(f"engine {self.paths.field} accepts no batch of one: rebuild it with "
                             f"{self._rebuild_hint(1, settings.samples)}.")
        opt = getattr(self._field, "opt_batch", None)
        if not explicit and opt is not None and opt < min(settings.batch, cap):
            return replace(settings, batch=opt)  # the batch the plan's kernels were tuned for (build --batch OPT)
        if settings.batch <= cap:
            return settings
        if explicit:
            self.close()
            why = f"{cap}" if field_max is not None and cap == field_max else \
                f"{cap} = the {enc_max} tiles per call of its encoder plan {self.paths.encoder} x K={settings.samples}"
            raise InputError(f"--batch-size {settings.batch} exceeds the largest batch engine {self.paths.field} "
                             f"was built for ({why}): lower it or rebuild with "
                             f"{self._rebuild_hint(settings.batch, settings.samples)}.")
        return replace(settings, batch=cap)

    def _rebuild_hint(self, largest: int, samples: int) -> str:
        """The ``runtime build`` command for plans whose field calls take up to ``largest`` samples and whose
        encoder calls take the ``largest // samples`` tiles those hold (ranges already wide enough are kept)."""
        from segflow.runtime.trtlib import plan_batch, rebuild_hint

        def widened(backend: Any, need: int) -> tuple[int, int, int] | None:
            info = getattr(backend, "info", None)
            built = plan_batch(info) if info is not None else None
            top = getattr(backend, "max_batch", None)
            if built is None:
                return (1, min(16, need), need) if top is None or top < need else None
            return (1, max(1, min(built[1], need)), max(built[2], need))

        field = widened(self._field, largest) or (1, min(16, largest), largest)
        enc_max = getattr(self._encoder, "max_batch", None)
        need = max(1, largest // samples)
        encoder = widened(self._encoder, need) if enc_max is not None and enc_max < need else None
        info = getattr(self._field, "info", None)
        if info is None or plan_batch(info) is None:
            flags = f" --batch {':'.join(map(str, field))}"
            if encoder is not None and encoder != field:
                flags += f" --encoder-batch {':'.join(map(str, encoder))}"
            return f"`runtime build --onnx NAME.onnx --out {self.paths.field}{flags}`"
        return rebuild_hint(self.paths.field, info=info, batch=field, partner_batch=encoder)

    def _warn_low_precision_on_cpu(self) -> None:
        """ONNX Runtime's CPU provider has no fp16 kernels: an fp16 graph (``runtime build --out X.onnx``) runs
        there through casts, slower than the fp32 model it came from. Said once per model and process."""
        from segflow.runtime.autocast import PRECISION_KEY

        meta = getattr(self._field, "metadata", None)
        precision = meta().get(PRECISION_KEY) if callable(meta) and self._on_cpu() else None
        key = str(self.paths.field)
        if precision in ("fp16", "bf16") and key not in _LOW_PRECISION_WARNED:
            _LOW_PRECISION_WARNED.add(key)
            article = "an" if precision == "fp16" else "a"
            warnings.warn(f"{self.paths.field} is {article} {precision} graph, and ONNX Runtime's CPU provider has no "
                          f"{precision} kernels: it runs slower there than the fp32 model it was converted from; "
                          f"use the fp32 model on a CPU (keep the {precision} one for the CUDA provider).",
                          RuntimeWarning, stacklevel=3)

    def _cpu_expected(self, backend: str) -> bool:
        """Whether the graphs will run on ONNX Runtime's CPU provider (decides the thread split before opening)."""
        if self.paths.format == "plan" or backend in ("tensorrt", "cuda"):
            return False
        return backend == "cpu" or "CUDAExecutionProvider" not in available_providers() or onnxrt.cuda_failure() \
            is not None  # auto: the CUDA provider did not start earlier in this process, and is not tried again

    def _on_cpu(self) -> bool:
        providers = getattr(self._field, "providers", None)
        return bool(providers) and providers[0] == "CPUExecutionProvider"

    def _open_backends(self, backend: str, threads: int | None) -> tuple[Any, Any]:
        check_backend(backend)
        if self.paths.format == "plan" or backend == "tensorrt":
            kind, opts = "tensorrt", {}
        else:
            kind, opts = "onnxrt", {"device": "auto" if backend == "auto" else backend, "threads": threads}
        opened = []
        try:
            for path in (self.paths.field, self.paths.encoder):
                opened.append(open_backend(path, kind, **opts).activate())
        except BaseException:
            for b in opened:
                b.deactivate()
            raise
        return opened[0], opened[1]

    def _check_graphs(self) -> None:
        card, kind = self.card, self.card.kind
        fin, ein = self._field.input_metadata(), self._encoder.input_metadata()
        if set(fin) != FIELD_INPUTS[kind]:
            self.close()
            raise ModelCardError(
                f"engine {self.paths.field} has inputs {sorted(fin)} but its card says kind {kind!r} "
                f"(expects {sorted(FIELD_INPUTS[kind])}): re-export the model with `trainer export`.")
        if set(ein) != {"image"}:
            self.close()
            raise ModelCardError(f"encoder {self.paths.encoder} has inputs {sorted(ein)}, expected ['image']: "
                                 f"pass the matching encoder graph.")
        checks = [(ein["image"].shape, 1, card.in_channels, "image channels"),
                  (fin["features"].shape, 1, card.feature_channels, "feature channels")]
        for shape, axis, want, what in checks:
            if len(shape) != 4 or (shape[axis] is not None and shape[axis] != want):
                self.close()
                raise ModelCardError(f"engine {self.paths.field}: the graphs' {what} {shape} disagree with the "
                                     f"card ({want}): re-export the model.")

    @property
    def backend_info(self) -> dict:
        """Backend description for reports (name, providers, threads per call, tile workers)."""
        return {**self._field.describe(), "tile_workers": self.tile_workers}

    def close(self) -> None:
        """Release the backends (the Segmenter cannot be used afterwards)."""
        self._field.deactivate()
        self._encoder.deactivate()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- streaming -----------------------------------------------------------------------------------------------
    def prepare(self, image: NDArray, *, name: str = "image") -> tuple[NDArray, tuple[float, float]]:
        """Check an image and return it as (H, W, C) per the card, with its normalisation statistics."""
        raw = np.asarray(image)
        _check_dtype(raw, name)
        if raw.ndim >= 2 and 0 in raw.shape[:2]:
            raise InputError(f"{name} is empty ({raw.shape[0]} x {raw.shape[1]} pixels): pass an image with pixels.")
        return channels_and_stats(raw, self.card.in_channels, self.card.normalisation, name=name)

    def predict_tiles(self, tiles: Iterable[tuple[Tile, NDArray]], *, stats: tuple[float, float],
                      seed: int | None = None, progress: Callable[[int], None] | None = None,
                      cancel: Callable[[], bool] | None = None,
                      sampler_stats: SamplerStats | None = None) -> Iterator[tuple[Tile, NDArray[np.float32]]]:
        """Sample tiles as they stream in; yield ``(tile, samples)`` with samples (K, size, size) float32.

        Parameters
        ----------
        tiles : iterable of (Tile, ndarray)
            Raw (size, size, C) windows (channels per the card, e.g. via :meth:`prepare`), with their tiles;
            the tile ``index`` seeds the noise, so the same tile gives the same samples in any run.
        stats : (offset, scale)
            Normalisation statistics of the whole image or slide (``segflow.normalize.norm_stats``).
        seed : int, optional
            Noise seed (default: the Segmenter's).
        progress : callable, optional
            ``progress(n)`` after each group of n tiles.
        cancel : callable, optional
            Polled between groups; returning True raises :class:`Cancelled`.
        """
        seed = None if seed is None else call_seed(seed)
        stats_acc = sampler_stats if sampler_stats is not None else SamplerStats()
        group = self.sampler.tiles_per_group()

        def run(chunk: list[tuple[Tile, NDArray]]) -> tuple[NDArray[np.float32], SamplerStats]:
            local = SamplerStats()
            images = np.stack([np.moveaxis(apply_norm(win, stats), -1, 0) for _, win in chunk])
            return self.sampler.sample(images, [t.index for t, _ in chunk], local, seed=seed), local

        def chunks() -> Iterator[list[tuple[Tile, NDArray]]]:
            it = iter(tiles)
            while True:
                if cancel is not None and cancel():
                    raise Cancelled("segmentation was cancelled by the caller; nothing was kept.")
                chunk = [pair for _, pair in zip(range(group), it, strict=False)]
                if not chunk:
                    return
                yield chunk

        def finish(chunk: list[tuple[Tile, NDArray]], samples: NDArray[np.float32], local: SamplerStats):
            stats_acc.merge(local)
            if progress is not None:
                progress(len(chunk))
            return zip((t for t, _ in chunk), samples, strict=True)

        if self.tile_workers == 1:
            for chunk in chunks():
                yield from finish(chunk, *run(chunk))
            return
        # Several groups in flight, yielded in order; at most 2 x workers groups are held at once.
        with ThreadPoolExecutor(self.tile_workers, thread_name_prefix="segflow-tiles") as pool:
            pending: deque = deque()
            try:
                for chunk in chunks():
                    pending.append((chunk, pool.submit(run, chunk)))
                    while len(pending) >= 2 * self.tile_workers or (pending and pending[0][1].done()):
                        done_chunk, fut = pending.popleft()
                        yield from finish(done_chunk, *fut.result())
                while pending:
                    done_chunk, fut = pending.popleft()
                    yield from finish(done_chunk, *fut.result())
            finally:
                for _, fut in pending:
                    fut.cancel()

    def segment_slide(self, reader: Any, out_dir: str | Path, **options: Any) -> Any:
        """Segment a whole slide (a region reader) block by block in bounded memory, writing OME-TIFF pyramids,
        GeoJSON and a summary into ``out_dir``; see :func:`segflow.runtime.wsi.segment_slide` for the options
        (``name``, ``options``, ``progress``, ``cancel``)."""
        from segflow.runtime.wsi import segment_slide

        return segment_slide(self, reader, out_dir, **options)

    # -- whole image ---------------------------------------------------------------------------------------------
    def __call__(self, image: NDArray, *, seed: int | None = None, name: str = "image",
                 progress: Callable[[int, int], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> Segmentation:
        """Segment one (H, W) or (H, W, C) image; ``progress(done, total)`` counts tiles."""
        t_start = time.perf_counter()
        seed = self.settings.seed if seed is None else call_seed(seed)
        img, stats = self.prepare(image, name=name)
        plan = plan_tiles(img.shape, self.card.tile, self.stride)
        t_norm = time.perf_counter() - t_start
        blender, sstats, done = Blender(img.shape[:2], self.settings.samples, mode=self.blend), SamplerStats(), [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], len(plan))

        t_blend, t_loop = 0.0, time.perf_counter()
        for tile, samples in self.predict_tiles(iter_tiles(img, plan), stats=stats, seed=seed, progress=tick,
                                                cancel=cancel, sampler_stats=sstats):
            t0 = time.perf_counter()
            blender.add(tile, samples)
            t_blend += time.perf_counter() - t0
        t_sampling = time.perf_counter() - t_loop - t_blend
        t0 = time.perf_counter()
        sample_sdfs = blender.result()
        t_blend += time.perf_counter() - t0
        result = self._finish(sample_sdfs, seed)
        timings = {"normalise_s": t_norm, "sampling_s": t_sampling, "encoder_s": sstats.encoder_s,
                   "field_s": sstats.field_s, "blend_s": t_blend, **result.pop("timings"), "tiles": len(plan),
                   "encoder_tiles": sstats.encoder_tiles, "field_calls": sstats.field_calls,
                   "sample_evaluations": sstats.sample_evals}
        timings["total_s"] = time.perf_counter() - t_start
        return Segmentation(sample_sdfs=sample_sdfs, timings=timings, **result)

    def _finish(self, sample_sdfs: NDArray[np.float32], seed: int) -> dict[str, Any]:
        thr = self.card.threshold
        mean = sample_sdfs.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = sample_sdfs.std(axis=0, dtype=np.float64).astype(np.float32)
        prob = (sample_sdfs <= thr).mean(axis=0, dtype=np.float64).astype(np.float32)
        return self._finish_maps(sample_sdfs, mean, std, prob, seed=seed)

    def _finish_maps(self, sample_sdfs: NDArray, mean: NDArray, std: NDArray, prob: NDArray, *, seed: int
                     ) -> dict[str, Any]:
        """Instances, the instance table and the result fields from the reduced maps (shared with the GPU path)."""
        thr = self.card.threshold
        t0 = time.perf_counter()
        labels = _instances.instances_from_sdf(mean, method=self.instance_method, threshold=thr)
        t_inst = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = _instances.instance_table(labels, mean, std, sample_sdfs, threshold=thr)
        t_conf = time.perf_counter() - t0
        s = self.settings
        return {"labels": labels, "mean_sdf": mean, "std": std, "prob": prob, "mask": mean <= thr,
                "samples": s.samples, "steps": s.steps, "method": self.method, "nfe": self.nfe,
                "noise_iterations": s.noise_iterations, "seed": seed, "stride": self.stride, "blend": self.blend,
                "instance_method": self.instance_method, "backend": self.backend_info, "card": self.card,
                "instances": tuple(rows), "timings": {"instances_s": t_inst, "instance_table_s": t_conf}}

