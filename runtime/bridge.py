"""SSB sampling: the I2SB-style Schrödinger bridge between a mask X0 and an image-derived start X1.

Written once over an array namespace (numpy on the CPU, CuPy on the GPU) like :mod:`.integrators`; the
trainer imports the schedule from here, so training and inference share one definition.

The bridge
----------
``N = n_timesteps`` betas form a symmetric schedule: ``b = linspace(sqrt(beta_min), sqrt(beta_max / N), N)²``
with its first half mirrored onto the second (I2SB). The bridge lives on the grid ``n = 0..N``; between grid
points ``n - 1`` and ``n`` lies beta ``b_n``, and

* ``sigma_n² = b_1 + ... + b_n`` (inclusive cumulative sum from the start, ``sigma_0 = 0``),
* ``sigma_bar_n² = b_{n+1} + ... + b_N`` (inclusive cumulative sum from the end, ``sigma_bar_N = 0``).

The analytic posterior ``q(X_n | X0, X1) = N(mu0 X0 + mu1 X1, std²)`` has ``mu0 = sb²/(s² + sb²)``,
``mu1 = s²/(s² + sb²)``, ``std² = s² sb²/(s² + sb²)``, so it is exactly X0 at ``n = 0`` and X1 at ``n = N``.
(I2SB indexes the betas themselves, so its ends carry one beta of noise; placing N betas between N + 1 grid
points makes both ends exact.) The network sees ``t = n / N`` and predicts the bridge noise
``(X_n - X0) / sigma_n``; hence ``X0_hat = X_n - sigma_n * out``.

Sampling
--------
From ``X_N = X1`` down a descending sub-grid ``N = n_0 > n_1 > ... > n_S = 0`` (``steps = S`` network
evaluations, 2S with guidance), each step ``n -> m`` draws the DDPM posterior between the two bridge times,
with ``a² = sigma_n² - sigma_m²``::

    X_m = (a² / sigma_n²) X0_hat + (sigma_m² / sigma_n²) X_n + sqrt(sigma_m² a² / sigma_n²) z

with no noise on the last step (``m = 0`` gives ``X0_hat`` itself); ``ode=True`` (I2SB's OT-ODE) drops the
noise everywhere. Classifier-free guidance: ``out = (1 + w) out(label) - w out(null)`` with the null label 0.

Examples
--------
>>> sched = bridge_schedule(10, 0.3)
>>> [round(float(v), 6) for v in sched.posterior(0)], [round(float(v), 6) for v in sched.posterior(10)]
([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
>>> sampling_grid(1000, 4)
[1000, 750, 500, 250, 0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from segflow.runtime.integrators import array_namespace

__all__ = ["BridgeSchedule", "bridge_schedule", "schedule_from_bridge", "sampling_grid", "bridge_nfe",
           "default_x1_recipe", "projection_weights", "x1_mean", "x1_from_image", "guided_output",
           "sample_bridge", "NULL_LABEL", "LUMINANCE"]

NULL_LABEL = 0
DEFAULT_BETA_MIN = 1e-4


@dataclass(frozen=True)
class BridgeSchedule:
    """The bridge's variances on the grid ``n = 0..N`` (float64 numpy arrays; see the module docstring).

    Attributes
    ----------
    betas : ndarray, shape (N,)
        ``b_1..b_N``.
    sigma, sigma_bar : ndarray, shape (N + 1,)
        Square roots of the cumulative sums from the start and from the end.
    """

    betas: NDArray[np.float64]
    sigma: NDArray[np.float64]
    sigma_bar: NDArray[np.float64]

    @property
    def n_timesteps(self) -> int:
        """N, the number of betas (grid points are 0..N)."""
        return len(self.betas)

    def time(self, n: int) -> float:
        """Network time ``n / N`` of grid point ``n``."""
        return float(n) / self.n_timesteps

    def posterior(self, n: int | NDArray) -> tuple[Any, Any, Any]:
        """``(mu0, mu1, std)`` of ``q(X_n | X0, X1)`` at grid point(s) ``n``."""
        s2, sb2 = self.sigma[n] ** 2, self.sigma_bar[n] ** 2
        total = s2 + sb2
        return sb2 / total, s2 / total, np.sqrt(s2 * sb2 / total)

    def step(self, n: int, m: int) -> tuple[float, float, float]:
        """``(c_x0, c_xn, std)`` of the step ``n -> m`` (``0 <= m < n``): ``X_m = c_x0 X0 + c_xn X_n + std z``."""
        if not 0 <= m < n <= self.n_timesteps:
            raise ValueError(f"a bridge step needs 0 <= m < n <= {self.n_timesteps}, got n={n}, m={m}")
        sn2, sm2 = float(self.sigma[n]) ** 2, float(self.sigma[m]) ** 2
        a2 = sn2 - sm2
        return a2 / sn2, sm2 / sn2, float(np.sqrt(sm2 * a2 / sn2))


def bridge_schedule(n_timesteps: int = 1000, beta_max: float = 0.3, *,
                    beta_min: float = DEFAULT_BETA_MIN) -> BridgeSchedule:
    """Build the symmetric I2SB schedule with ``n_timesteps`` betas.

    Examples
    --------
    >>> s = bridge_schedule(4, 0.4, beta_min=0.01)
    >>> s.betas.round(4).tolist(), round(float(s.sigma[-1] ** 2), 4)
    ([0.01, 0.0296, 0.0296, 0.01], 0.0792)
    """
    n = int(n_timesteps)
    if n != n_timesteps or n < 1:
        raise ValueError(f"n_timesteps must be a positive integer, got {n_timesteps}")
    if not (beta_max > 0 and beta_min > 0):
        raise ValueError(f"beta_max and beta_min must be positive, got {beta_max}, {beta_min}")
    ramp = np.linspace(np.sqrt(beta_min), np.sqrt(beta_max / n), n, dtype=np.float64) ** 2
    first = ramp[: (n + 1) // 2]
    betas = np.concatenate([first, first[: n // 2][::-1]])
    cum = np.concatenate([[0.0], np.cumsum(betas)])
    sigma = np.sqrt(cum)
    sigma_bar = np.sqrt(np.maximum(cum[-1] - cum, 0.0))
    sigma_bar[-1] = 0.0
    return BridgeSchedule(betas=betas, sigma=sigma, sigma_bar=sigma_bar)


def schedule_from_bridge(bridge: dict) -> BridgeSchedule:
    """The schedule a model card's ``bridge`` dict describes (``n_timesteps``, ``beta_max``[, ``beta_min``])."""
    try:
        return bridge_schedule(int(bridge["n_timesteps"]), float(bridge["beta_max"]),
                               beta_min=float(bridge.get("beta_min", DEFAULT_BETA_MIN)))
    except KeyError as exc:
        raise ValueError(f"the model card's bridge settings lack {exc.args[0]!r}: re-export the SSB model") from exc


def sampling_grid(n_timesteps: int, steps: int) -> list[int]:
    """Descending grid points ``N = n_0 > ... > n_steps = 0``, as evenly spaced as integers allow.

    Examples
    --------
    >>> sampling_grid(10, 3)
    [10, 7, 3, 0]
    """
    if int(steps) != steps or not 1 <= steps <= n_timesteps:
        raise ValueError(f"steps must be an integer in 1..{n_timesteps} (the model's n_timesteps), got {steps}")
    grid = np.round(np.linspace(n_timesteps, 0, int(steps) + 1)).astype(int)
    return [int(v) for v in grid]


def bridge_nfe(steps: int, guidance: float = 0.0) -> int:
    """Network evaluations of one sample trajectory: ``steps``, doubled by classifier-free guidance.

    Examples
    --------
    >>> bridge_nfe(50), bridge_nfe(50, guidance=1.5)
    (50, 100)
    """
    return int(steps) * (2 if guidance else 1)


def default_x1_recipe(*, scale: float = 1.0, noise: float = 0.2) -> dict:
    """The default X1 recipe: a fixed projection of the normalised image to one channel plus Gaussian noise.

    ``X1 = scale * sum_c w_c * image[c] + noise * z`` with the image in [-1, 1] (``segflow.normalize``) and
    ``w`` = (1,) for grayscale, the Rec. 601 luminance (0.299, 0.587, 0.114) for RGB (see
    :func:`projection_weights`; a recipe may also carry its own ``weights`` list).
    """
    return {"name": "project", "scale": float(scale), "noise": float(noise)}


LUMINANCE = (0.299, 0.587, 0.114)


def projection_weights(recipe: dict, channels: int) -> list[float]:
    """The projection weights of ``recipe`` for images with ``channels`` channels."""
    if recipe.get("weights") is not None:
        w = [float(v) for v in recipe["weights"]]
    elif channels in (1, 3):
        w = [1.0] if channels == 1 else list(LUMINANCE)
    else:
        raise ValueError(f"the default X1 projection needs 1 or 3 image channels, got {channels}")
    if len(w) != channels:
        raise ValueError(f"images must be (B, {len(w)}, H, W) for this X1 recipe, got {channels} channels")
    return w


def _recipe(card_or_bridge: Any) -> dict:
    bridge = getattr(card_or_bridge, "bridge", card_or_bridge)
    recipe = bridge.get("x1") if isinstance(bridge, dict) else None
    if not recipe or recipe.get("name") != "project":
        raise ValueError(f"unknown X1 recipe {recipe!r} in the model card: expected name 'project'")
    return recipe


def x1_mean(images: Any, recipe: dict, xp: Any = None) -> Any:
    """Noise-free part of X1 for normalised images (B, C, H, W): returns (B, 1, H, W) float32."""
    xp = xp if xp is not None else array_namespace(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    w = projection_weights(recipe, images.shape[1])
    proj = sum(wc * images[:, c:c + 1] for c, wc in enumerate(w))
    return (float(recipe.get("scale", 1.0)) * proj).astype(xp.float32)


def x1_from_image(images: Any, card_or_bridge: Any, *, rng: np.random.Generator, xp: Any = None) -> Any:
    """Bridge start X1 (B, 1, H, W) from normalised tiles, as in training (noise drawn from ``rng``).

    ``card_or_bridge`` is a :class:`~segflow.card.ModelCard` or its ``bridge`` dict.
    """
    xp = xp if xp is not None else array_namespace(images)
    recipe = _recipe(card_or_bridge)
    x1 = x1_mean(images, recipe, xp)
    noise = float(recipe.get("noise", 0.0))
    if noise:
        x1 = x1 + xp.asarray(noise * rng.standard_normal(x1.shape, dtype=np.float32))
    return x1


def _labels(label: int | Sequence[int] | Any, batch: int, xp: Any) -> Any:
    arr = xp.asarray(label, dtype=xp.int64)
    if arr.ndim == 0:
        arr = xp.full((batch,), int(label), dtype=xp.int64)
    if arr.shape != (batch,):
        raise ValueError(f"label must be an int or one label per row ({batch}), got shape {tuple(arr.shape)}")
    return arr


def guided_output(field_fn: Any, x: Any, t: float, label: Any, guidance: float) -> Any:
    """Field output at ``(x, t)`` conditioned on ``label``, with classifier-free guidance weight ``guidance``.

    ``field_fn(x, t)`` reads its conditioning label from its ``label`` attribute (a
    :class:`~segflow.runtime.sampling.BoundField` does); ``label=None`` leaves it untouched (label-free
    fields). One evaluation without guidance, two with: ``(1 + w) out(label) - w out(null)``.
    """
    if label is not None:
        field_fn.label = label
    out = field_fn(x, t)
    if not guidance:
        return out
    if label is None:
        raise ValueError("classifier-free guidance needs a label (0 = the null label)")
    field_fn.label = label * 0 + NULL_LABEL
    out_null = field_fn(x, t)
    field_fn.label = label
    return (1.0 + guidance) * out - guidance * out_null


def sample_bridge(field_fn: Any, x1: Any, *, steps: int, bridge: dict | BridgeSchedule,
                  ode: bool = False, guidance: float = 0.0, label: int | Sequence[int] | None = 0,
                  rng: np.random.Generator | None = None, xp: Any = None, clip: bool = True,
                  callback: Callable[[int, int, Any, Any], None] | None = None) -> Any:
    """Sample X0 (-1 inside, +1 outside) from the bridge start ``x1`` in ``steps`` network evaluations.

    Parameters
    ----------
    field_fn : callable
        ``field_fn(x, t) -> out`` (the bridge noise), with image features bound and a writable ``label``
        attribute (see :func:`guided_output`).
    x1 : array, shape (B, 1, H, W)
        Bridge start (:func:`x1_from_image`); not modified.
    steps : int
        Sub-grid steps (1..N); the default of the model card is 50, as in the SSB paper.
    bridge : dict or BridgeSchedule
        The card's ``bridge`` dict (or a schedule).
    ode : bool
        Deterministic OT-ODE (no noise) instead of the ancestral sampler.
    guidance : float
        Classifier-free guidance weight omega (0 = plain conditional sampling).
    label : int, sequence of int or None
        Annotator label 1..eta to condition on, 0 = unconditional, or one label per row.
    rng : numpy Generator
        Noise source of the ancestral sampler (required unless ``ode`` or ``steps == 1``).
    clip : bool
        Clip each X0 estimate to [-1, 1] (the range of masks).
    callback : callable, optional
        ``callback(n, m, x_m, x0_hat)`` after each step ``n -> m``.

    Returns
    -------
    array
        X0 estimate shaped like ``x1``; threshold it at 0 for masks.
    """
    xp = xp if xp is not None else array_namespace(x1)
    sched = bridge if isinstance(bridge, BridgeSchedule) else schedule_from_bridge(bridge)
    grid = sampling_grid(sched.n_timesteps, steps)
    if not ode and rng is None and len(grid) > 2:
        raise ValueError("the ancestral bridge sampler needs rng (or pass ode=True)")
    labels = None if label is None else _labels(label, x1.shape[0], xp)
    x = x1
    for n, m in zip(grid[:-1], grid[1:], strict=True):
        out = guided_output(field_fn, x, sched.time(n), labels, guidance)
        x0_hat = x - float(sched.sigma[n]) * out
        if clip:
            x0_hat = xp.clip(x0_hat, -1.0, 1.0)
        c_x0, c_xn, std = sched.step(n, m)
        x = c_x0 * x0_hat + c_xn * x
        if m > 0 and not ode:
            x = x + std * xp.asarray(rng.standard_normal(x.shape, dtype=np.float32))
        x = x.astype(xp.float32)
        if callback is not None:
            callback(n, m, x, x0_hat)
    return x
