"""FlowSDF sampling over batches of tiles: encoder once per tile, K seeded samples, fixed-step integration.

For a batch of normalised tiles the image encoder runs once; its features are repeated for the K samples of
each tile and reused by every step (:class:`BoundField` binds them into a :class:`VectorField`). Samples of
several tiles share one field call, up to ``batch`` samples per call.

Noise is drawn per (seed, tile index, sample, iteration) from its own ``numpy.random.Generator``
(:func:`tile_noise`), so a run is reproducible and independent of how tiles are batched.

Noise injection (``noise_iterations`` = T > 0, after FlowSDF's Algorithm 2): after the first integration from
t = 0 to 1, T times re-noise the current estimate to an intermediate time ``renoise_t`` along the OT path,
``x = (1 - (1 - sigma_min) * renoise_t) * z + renoise_t * x`` with fresh noise z, and integrate again from
``renoise_t`` to 1 with ``max(1, round(steps * (1 - renoise_t)))`` steps. :func:`flowsdf_nfe` counts all
evaluations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from segflow.runtime.integrators import STAGES, array_namespace, integrate, nfe, uniform_grid

__all__ = ["SamplingSettings", "BoundField", "tile_noise", "flowsdf_sample", "flowsdf_nfe", "renoise_steps",
           "batch_from_budget", "FlowSDFSampler", "SamplerStats"]

# Bytes of field-net activations per sample, as a multiple of the feature map (4 * F * tile^2): a U-Net keeps a
# few full-resolution maps of F channels plus coarser levels alive at once. Conservative for the lite preset.
ACTIVATION_FACTOR = 8


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling choices (the only things the command line may override; the model comes from its card)."""

    samples: int = 4
    steps: int = 4
    method: str = "euler"
    noise_iterations: int = 0
    renoise_t: float = 0.5
    seed: int = 0
    batch: int = 16

    def __post_init__(self) -> None:
        if self.samples < 1 or self.steps < 1 or self.batch < 1 or self.noise_iterations < 0:
            raise ValueError(f"invalid sampling settings {self}: samples, steps and batch must be >= 1")
        if not 0.0 < self.renoise_t < 1.0:
            raise ValueError(f"renoise_t must be in (0, 1), got {self.renoise_t}")
        nfe(self.method, 1)  # validates the method name

    @property
    def nfe(self) -> int:
        """Field evaluations per sample trajectory."""
        return flowsdf_nfe(self.method, self.steps, self.noise_iterations, self.renoise_t)


def renoise_steps(steps: int, renoise_t: float) -> int:
    """Steps of each re-integration from ``renoise_t`` to 1 (same step length as the first pass, at least 1)."""
    return max(1, int(round(steps * (1.0 - renoise_t))))


def flowsdf_nfe(method: str, steps: int, noise_iterations: int = 0, renoise_t: float = 0.5) -> int:
    """Honest NFE of one FlowSDF sample, noise-injection passes included.

    Examples
    --------
    >>> flowsdf_nfe("euler", 4), flowsdf_nfe("heun", 4, 2, 0.5)
    (4, 16)
    """
    return nfe(method, steps) + noise_iterations * nfe(method, renoise_steps(steps, renoise_t))


def tile_noise(seed: int, tile_index: int, sample: int, shape: tuple[int, ...], *, iteration: int = 0
               ) -> NDArray[np.float32]:
    """Standard normal noise for one (tile, sample, iteration), float32; same arguments give the same array."""
    rng = np.random.default_rng([int(seed), int(tile_index), int(sample), int(iteration)])
    return rng.standard_normal(shape, dtype=np.float32)


class BoundField:
    """A :class:`~segflow.runtime.integrators.VectorField` over a backend with the features bound.

    Parameters
    ----------
    backend : Backend
        Active backend of the field graph (inputs ``x``, ``t``, ``features``[, ``label``]).
    features : array
        (B, F, H, W) encoder features, one row per sample in the batch.
    label : array of int64, optional
        (B,) labels for conditional (SSB) fields.
    """

    def __init__(self, backend: Any, features: Any, label: Any = None) -> None:
        self.backend, self.features, self.label = backend, features, label
        self.calls = 0

    def __call__(self, x: Any, t: float) -> Any:
        xp = array_namespace(x)
        feed = {"x": x, "t": xp.full((x.shape[0],), t, dtype=xp.float32), "features": self.features}
        if self.label is not None:
            feed["label"] = self.label
        self.calls += 1
        out = self.backend.infer(feed, to_host=xp is np)["out"]
        return out


def flowsdf_sample(f: Callable[[Any, float], Any], x0: Any, *, steps: int, method: str = "euler",
                   noise_iterations: int = 0, renoise_t: float = 0.5, sigma_min: float = 1e-4,
                   renoise: Callable[[int], Any] | None = None) -> Any:
    """Integrate the FlowSDF ODE from noise ``x0`` (t = 0) to the SDF estimate (t = 1), with noise injection.

    Parameters
    ----------
    f : VectorField
        Velocity field with conditioning bound.
    x0 : array
        Initial noise, any shape the field accepts.
    steps, method : int, str
        Fixed-step grid and rule of the first pass (see :mod:`segflow.runtime.integrators`).
    noise_iterations : int
        T re-noise/re-integrate passes (Algorithm 2); 0 = the plain ODE sampler.
    renoise_t : float
        Time in (0, 1) the estimate is re-noised to.
    sigma_min : float
        The card's sigma_min (OT path ``x_t = (1 - (1 - sigma_min) t) x0 + t x1``).
    renoise : callable
        ``renoise(i)`` returns fresh noise like ``x0`` for pass ``i`` = 1..T (required when T > 0).
    """
    x = integrate(f, x0, uniform_grid(steps), method=method)
    if noise_iterations:
        if renoise is None:
            raise ValueError("noise_iterations > 0 needs a renoise(i) noise source")
        grid = uniform_grid(renoise_steps(steps, renoise_t), t0=renoise_t, t1=1.0)
        keep = 1.0 - (1.0 - sigma_min) * renoise_t
        for i in range(1, noise_iterations + 1):
            x = keep * renoise(i) + renoise_t * x
            x = integrate(f, x, grid, method=method)
    return x


def batch_from_budget(tile: int, feature_channels: int, method: str, budget_bytes: float, *,
                      max_batch: int = 64) -> int:
    """Samples per field call that fit ``budget_bytes``.

    Per sample: the repeated features (4·F·tile²), the field's activations (ACTIVATION_FACTOR times that) and
    the integrator's state, output and stage buffers (4·tile²·(2 + stages)).

    Examples
    --------
    >>> batch_from_budget(128, 32, "euler", 1 << 30)
    56
    """
    per_sample = 4 * tile * tile * (feature_channels * (1 + ACTIVATION_FACTOR) + 2 + STAGES[method])
    return int(max(1, min(max_batch, budget_bytes // per_sample)))


@dataclass
class SamplerStats:
    """Wall time spent in the encoder and in the field calls, and how often each ran."""

    encoder_s: float = 0.0
    field_s: float = 0.0
    encoder_tiles: int = 0
    field_calls: int = 0
    sample_evals: int = 0
    extra: dict = field(default_factory=dict)

    def merge(self, other: SamplerStats) -> None:
        """Add ``other``'s times and counts (tile workers keep their own stats; the caller merges them)."""
        self.encoder_s += other.encoder_s
        self.field_s += other.field_s
        self.encoder_tiles += other.encoder_tiles
        self.field_calls += other.field_calls
        self.sample_evals += other.sample_evals


class FlowSDFSampler:
    """Draw K samples for batches of normalised tiles with an encoder and a field backend.

    Parameters
    ----------
    field_backend, encoder_backend : Backend
        Active backends of the field and encoder graphs.
    settings : SamplingSettings
        Samples, steps, method, noise injection, seed, batch.
    sigma_min : float
        From the model card.
    """

    kind = "flowsdf"

    def __init__(self, field_backend: Any, encoder_backend: Any, settings: SamplingSettings, *,
                 sigma_min: float) -> None:
        self.field, self.encoder, self.settings, self.sigma_min = field_backend, encoder_backend, settings, sigma_min

    def tiles_per_group(self) -> int:
        """Tiles whose samples are drawn together (all K samples of a tile share one encoder pass)."""
        return max(1, self.settings.batch // self.settings.samples)

    def encode(self, images: NDArray[np.float32], stats: SamplerStats) -> NDArray[np.float32]:
        """Encoder features of (n, C, T, T) normalised tiles."""
        t0 = time.perf_counter()
        feats = self.encoder.infer({"image": np.ascontiguousarray(images)})["features"]
        stats.encoder_s += time.perf_counter() - t0
        stats.encoder_tiles += len(images)
        return feats

    def sample(self, images: NDArray[np.float32], indices: list[int], stats: SamplerStats | None = None, *,
               seed: int | None = None) -> NDArray[np.float32]:
        """Samples (n, K, T, T) for tiles ``images`` (n, C, T, T) with plan indices ``indices``."""
        s = self.settings
        seed = s.seed if seed is None else int(seed)
        stats = stats if stats is not None else SamplerStats()
        feats = self.encode(images, stats)
        n, size = images.shape[0], images.shape[-1]
        pairs = [(i, k) for i in range(n) for k in range(s.samples)]
        out = np.empty((n, s.samples, size, size), np.float32)
        for lo in range(0, len(pairs), s.batch):
            chunk = pairs[lo:lo + s.batch]
            rows = [i for i, _ in chunk]
            f = BoundField(self.field, np.ascontiguousarray(feats[rows]))

            def noise(it: int, chunk=chunk) -> NDArray[np.float32]:
                return np.stack([tile_noise(seed, indices[i], k, (1, size, size), iteration=it) for i, k in chunk])

            t0 = time.perf_counter()
            x1 = flowsdf_sample(f, noise(0), steps=s.steps, method=s.method, noise_iterations=s.noise_iterations,
                                renoise_t=s.renoise_t, sigma_min=self.sigma_min, renoise=noise)
            stats.field_s += time.perf_counter() - t0
            stats.field_calls += f.calls
            stats.sample_evals += f.calls * len(chunk)
            for (i, k), plane in zip(chunk, x1[:, 0], strict=True):
                out[i, k] = plane
        return out


class BridgeSampler(FlowSDFSampler):
    """K samples of an SSB engine: the same batching, with ``segflow.runtime.bridge`` doing the integration.

    The bridge module (SSB issue) provides ``x1_from_image(images, card, *, rng, xp)`` — the bridge start X1
    built from the normalised tiles as in training — and ``sample_bridge(field_fn, x1, *, steps, ode,
    guidance, label, rng, xp, bridge)``, which returns X0 (-1 inside, +1 outside, like the SDF). ``field_fn``
    is a :class:`BoundField` whose ``label`` is set by ``sample_bridge`` (``field_fn.label = ...``).
    """

    kind = "ssb"

    def __init__(self, field_backend: Any, encoder_backend: Any, settings: SamplingSettings, *, card: Any,
                 guidance: float = 0.0, label: int = 0, ode: bool = False) -> None:
        super().__init__(field_backend, encoder_backend, settings, sigma_min=card.sigma_min)
        from segflow.runtime import bridge  # the SSB helper's module; imported only for SSB engines

        self.bridge, self.card, self.guidance, self.label, self.ode = bridge, card, guidance, label, ode

    @property
    def nfe(self) -> int:
        """Field evaluations per sample (two per step with guidance)."""
        return self.bridge.bridge_nfe(self.settings.steps, self.guidance)

    def sample(self, images: NDArray[np.float32], indices: list[int], stats: SamplerStats | None = None, *,
               seed: int | None = None) -> NDArray[np.float32]:
        s = self.settings
        seed = s.seed if seed is None else int(seed)
        stats = stats if stats is not None else SamplerStats()
        feats = self.encode(images, stats)
        n, size = images.shape[0], images.shape[-1]
        pairs = [(i, k) for i in range(n) for k in range(s.samples)]
        out = np.empty((n, s.samples, size, size), np.float32)
        for lo in range(0, len(pairs), s.batch):
            chunk = pairs[lo:lo + s.batch]
            rows = [i for i, _ in chunk]
            rng = np.random.default_rng([seed, *[indices[i] * s.samples + k for i, k in chunk]])
            f = BoundField(self.field, np.ascontiguousarray(feats[rows]))
            t0 = time.perf_counter()
            x1 = self.bridge.x1_from_image(np.ascontiguousarray(images[rows]), self.card, rng=rng, xp=np)
            x0 = self.bridge.sample_bridge(f, x1, steps=s.steps, bridge=self.card.bridge, ode=self.ode,
                                           guidance=self.guidance, label=self.label, rng=rng, xp=np)
            stats.field_s += time.perf_counter() - t0
            stats.field_calls += f.calls
            stats.sample_evals += f.calls * len(chunk)
            for (i, k), plane in zip(chunk, np.asarray(x0)[:, 0], strict=True):
                out[i, k] = plane
        return out
