"""FlowSDF: conditional flow matching on truncated SDFs (or on ±1 masks, the binary ablation).

The probability path is the conditional optimal-transport path of Lipman et al. with noise at ``t = 0`` and
data at ``t = 1`` (the convention of facebookresearch/flow_matching)::

    x_t = (1 - (1 - sigma_min) t) x0 + t x1,    dx_t/dt = x1 - (1 - sigma_min) x0,

with ``x0 ~ N(0, I)`` and ``x1`` the SDF of the mask in [-1, 1]. The network ``v(x_t, t, image)`` regresses
``dx_t`` (mean squared error, ``t ~ U(0, 1)``); sampling integrates ``dx/dt = v(x, t, image)`` from noise at
``t = 0`` to ``t = 1`` with the runtime's fixed-step integrators, the image encoder run once per batch.

Example
-------
>>> import torch
>>> ps = CondOTPath(sigma_min=0.0).sample(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.tensor([0.25]))
>>> ps.x_t.flatten().tolist(), ps.dx_t.flatten().tolist()
([0.25, 0.25, 0.25, 0.25], [1.0, 1.0, 1.0, 1.0])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from segflow.runtime.integrators import integrate, uniform_grid
from torch.nn import functional as F

__all__ = ["PathSample", "CondOTPath", "FlowObjective"]


@dataclass(frozen=True)
class PathSample:
    """A point on the probability path and its target velocity.

    Attributes
    ----------
    x_t : Tensor, shape (B, ...)
        The state at time ``t``.
    dx_t : Tensor, shape (B, ...)
        The conditional velocity ``d x_t / dt`` (the regression target).
    t : Tensor, shape (B,)
        The times.
    """

    x_t: torch.Tensor
    dx_t: torch.Tensor
    t: torch.Tensor


class CondOTPath:
    """The conditional optimal-transport path with ``sigma_min`` (noise ``x0`` at t = 0, data ``x1`` at t = 1)."""

    def __init__(self, sigma_min: float = 1e-4) -> None:
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min = float(sigma_min)

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> PathSample:
        """Return ``x_t`` and ``dx_t`` for noise ``x0``, data ``x1`` and per-sample times ``t[B]``."""
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        if t.dim() != 1 or t.shape[0] != x0.shape[0]:
            raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
        tb = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        x_t = (1.0 - (1.0 - self.sigma_min) * tb) * x0 + tb * x1
        dx_t = x1 - (1.0 - self.sigma_min) * x0
        return PathSample(x_t=x_t, dx_t=dx_t, t=t)


class FlowObjective:
    """The FlowSDF training objective and its validation sampler (``kind = "flowsdf"``).

    Parameters
    ----------
    sigma_min : float
        Path parameter (the card's ``sigma_min``).
    target : {"sdf", "binary"}
        What ``batch["target"]`` holds; only recorded in the card (the data pipeline builds the target).

    Notes
    -----
    A batch is a dict with ``"image"`` float [B, C, H, W] in [-1, 1] and ``"target"`` float [B, 1, H, W] in
    [-1, 1] (SDF, or -1 inside / +1 outside for the binary ablation); other keys are ignored. Noise and times
    come from torch's global generator, so seeding (and restoring its state on resume) makes runs repeatable.
    """

    name = "flowsdf"

    def __init__(self, *, sigma_min: float = 1e-4, target: str = "sdf") -> None:
        if target not in ("sdf", "binary"):
            raise ValueError(f"target must be 'sdf' or 'binary', got {target!r}")
        self.path = CondOTPath(sigma_min)
        self.target = target

    @classmethod
    def from_config(cls, cfg: Any) -> FlowObjective:
        """Build from a :class:`segflow.trainer.config.TrainConfig` (uses ``sigma_min`` and ``target``)."""
        return cls(sigma_min=cfg.sigma_min, target=cfg.target)

    def net_overrides(self, *, n_labels: int = 0) -> dict[str, Any]:
        """Network settings this objective needs: no label input (annotator labels ``n_labels`` are unused)."""
        return {"num_labels": 0}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared error between ``model(x_t, t, image)`` and the path velocity."""
        x1 = batch["target"]
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype)
        ps = self.path.sample(x0, x1, t)
        return F.mse_loss(model(ps.x_t, ps.t, batch["image"]), ps.dx_t)

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, image: torch.Tensor, *, steps: int = 4, method: str = "euler",
               generator: torch.Generator | None = None, **_: Any) -> torch.Tensor:
        """Integrate from noise to a state in about [-1, 1] (mask = state <= threshold).

        The encoder runs once; the field is bound to its features and handed to
        :func:`segflow.runtime.integrators.integrate` (the same code the runtime runs, here on torch tensors).
        ``steps`` Euler steps cost ``steps`` field evaluations.
        """
        features = model.encoder(image)
        b, _, h, w = image.shape
        x0 = torch.randn((b, 1, h, w), generator=generator, device=image.device, dtype=image.dtype)

        def field(x: torch.Tensor, t: float) -> torch.Tensor:
            return model.field(x, torch.full((b,), t, device=x.device, dtype=x.dtype), features)

        return integrate(field, x0, uniform_grid(steps), method=method)

    def card_fields(self) -> dict[str, Any]:
        """Model-card fields owned by this objective."""
        return {"kind": "flowsdf", "target": self.target, "sigma_min": self.path.sigma_min, "bridge": {}}
