"""SSB: a Schrödinger bridge from an image-derived start X1 to the mask X0, trained I2SB-style (PyTorch).

The schedule, the posterior and the sampler are those of :mod:`segflow.runtime.bridge` (one definition for
training and inference); this module adds the torch side:

* **X0** is the annotator's mask as ``-1`` inside / ``+1`` outside (``batch["mask"]``), like the SDF's sign.
* **X1** ("controlled degradation" of the image into the mask's space) is a fixed projection of the normalised
  image to one channel plus Gaussian noise, ``X1 = scale * sum_c w_c image_c + noise * z`` with ``w`` = (1,)
  for grayscale and the Rec. 601 luminance for RGB. The network also sees the full image through the encoder
  fusion (``h = conv_in(x) + encoder(image)``), so colour is not lost; the projection only sets where the
  bridge starts. The noise makes X1 a sample, so even the OT-ODE sampler gives diverse masks.
* **Training**: ``n ~ U{1..N}``, ``X_n = mu0 X0 + mu1 X1 + std eps`` (analytic posterior), the net predicts
  the bridge noise ``(X_n - X0) / sigma_n`` at ``t = n / N``; the loss is that MSE plus ``gamma`` times a
  soft-Dice loss of ``X0_hat = X_n - sigma_n out`` (foreground probability ``clip((1 - X0_hat) / 2, 0, 1)``).
* **Classifier-free guidance** over annotator labels ``l = 1..eta`` (the batch's ``label``; 0 = no
  annotator): with probability ``p_uncond`` a label is replaced by the null label 0, so one network learns the
  conditional and unconditional fields. The network's label table has ``eta + 1`` rows.

Settings come from the training config's ``[objective]`` table (:class:`BridgeConfig`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from segflow.runtime.bridge import (
    NULL_LABEL,
    BridgeSchedule,
    bridge_schedule,
    default_x1_recipe,
    projection_weights,
    sample_bridge,
    x1_from_image,
)

from segflow.config import apply_overrides

__all__ = ["BridgeConfig", "BridgePath", "BridgeSample", "BridgeObjective", "x1_from_image_torch", "soft_dice_loss",
           "TorchField"]


@dataclass(frozen=True)
class BridgeConfig:
    """SSB settings (the ``[objective]`` table of a training config).

    Attributes
    ----------
    n_timesteps : int
        N, the number of betas; the network sees ``t = n / N``.
    beta_max : float
        Schedule scale (I2SB: betas up to ``beta_max / N``); larger = noisier bridge.
    beta_min : float
        First beta.
    gamma : float
        Weight of the soft-Dice term.
    p_uncond : float
        Probability of dropping the annotator label to the null label (classifier-free guidance).
    x1_scale, x1_noise : float
        X1 recipe: ``scale * projection(image) + noise * z``.
    sample_steps : int
        Default sampling steps written to the model card (the SSB paper uses 50).
    """

    n_timesteps: int = 1000
    beta_max: float = 1.0
    beta_min: float = 1e-4
    gamma: float = 0.1
    p_uncond: float = 0.1
    x1_scale: float = 1.0
    x1_noise: float = 0.2
    sample_steps: int = 50

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_uncond <= 1.0 or self.gamma < 0 or self.x1_noise < 0:
            raise ValueError(f"invalid SSB settings {self}: need 0 <= p_uncond <= 1, gamma >= 0, x1_noise >= 0")
        if not 1 <= self.sample_steps <= self.n_timesteps:
            raise ValueError(f"sample_steps={self.sample_steps} must be in 1..n_timesteps={self.n_timesteps}")

    def x1_recipe(self) -> dict:
        """The X1 recipe for the model card."""
        return default_x1_recipe(scale=self.x1_scale, noise=self.x1_noise)


@dataclass(frozen=True)
class BridgeSample:
    """A point of the bridge for training: state, regression target, network time, sigma_n."""

    x_t: torch.Tensor
    target: torch.Tensor
    t: torch.Tensor
    sigma: torch.Tensor


class BridgePath:
    """The analytic bridge posterior ``q(X_n | X0, X1)`` as torch tensors (schedule from the runtime)."""

    def __init__(self, schedule: BridgeSchedule) -> None:
        self.schedule = schedule
        self.n_timesteps = schedule.n_timesteps
        mu0, mu1, std = schedule.posterior(np.arange(self.n_timesteps + 1))
        self._table = torch.from_numpy(np.stack([mu0, mu1, std, schedule.sigma]).astype(np.float32))

    def coefficients(self, n: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(mu0, mu1, std, sigma)`` at integer grid points ``n`` [B], each shaped [B, 1, 1, 1]."""
        table = self._table.to(n.device)[:, n.long()]
        return tuple(row.view(-1, 1, 1, 1) for row in table)

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, n: torch.Tensor,
               noise: torch.Tensor | None = None) -> BridgeSample:
        """``X_n`` for grid points ``n`` in 1..N, the target ``(X_n - X0) / sigma_n`` and ``t = n / N``."""
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        if int(n.min()) < 1 or int(n.max()) > self.n_timesteps:
            raise ValueError(f"training grid points must be in 1..{self.n_timesteps} (sigma_0 = 0)")
        mu0, mu1, std, sigma = (c.to(x0.dtype) for c in self.coefficients(n))
        eps = torch.randn_like(x0) if noise is None else noise
        x_t = mu0 * x0 + mu1 * x1 + std * eps
        return BridgeSample(x_t=x_t, target=(x_t - x0) / sigma, t=n.to(x0.dtype) / self.n_timesteps, sigma=sigma)


def x1_from_image_torch(image: torch.Tensor, recipe: dict, *, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
    """X1 [B, 1, H, W] from normalised images [B, C, H, W], as :func:`segflow.runtime.bridge.x1_from_image`."""
    w = projection_weights(recipe, image.shape[1])
    proj = sum(wc * image[:, c:c + 1] for c, wc in enumerate(w)) * float(recipe.get("scale", 1.0))
    noise = float(recipe.get("noise", 0.0))
    if noise:
        proj = proj + noise * torch.randn(proj.shape, generator=generator, device=image.device, dtype=image.dtype)
    return proj


def soft_dice_loss(x0_hat: torch.Tensor, fg: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - soft Dice`` between the foreground probability of ``x0_hat`` (-1 inside) and the mask ``fg``."""
    p = ((1.0 - x0_hat) / 2.0).clamp(0.0, 1.0).flatten(1)
    g = fg.flatten(1)
    dice = (2.0 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)
    return 1.0 - dice.mean()


class TorchField:
    """Bind a :class:`~segflow.trainer.nets.SegModel`'s field and cached features into the runtime protocol.

    ``f(x, t) -> out`` on numpy arrays, conditioned on the numpy ``label`` attribute (set by the sampler), so
    validation runs exactly the runtime's :func:`~segflow.runtime.bridge.sample_bridge`.
    """

    def __init__(self, model: torch.nn.Module, features: torch.Tensor) -> None:
        self.model, self.features, self.label, self.calls = model, features, None, 0

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        dev = self.features.device
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
        tt = torch.full((xt.shape[0],), float(t), device=dev)
        lab = None if self.label is None else torch.from_numpy(np.asarray(self.label, np.int64)).to(dev)
        self.calls += 1
        return self.model.field(xt, tt, self.features, lab).float().cpu().numpy()


class BridgeObjective:
    """The SSB training objective and its sampler (``kind = "ssb"``), for :mod:`segflow.trainer.train`.

    A batch is a dict with ``"image"`` [B, C, H, W] in [-1, 1], ``"mask"`` [B, 1, H, W] (1 = foreground) and
    ``"label"`` [B] int64 (annotator + 1, 0 = none). Noise, times and label dropout use torch's global
    generator, so seeding makes runs repeatable.
    """

    name = "ssb"

    def __init__(self, cfg: BridgeConfig | None = None) -> None:
        self.cfg = cfg or BridgeConfig()
        self.path = BridgePath(bridge_schedule(self.cfg.n_timesteps, self.cfg.beta_max, beta_min=self.cfg.beta_min))
        self.recipe = self.cfg.x1_recipe()
        self.n_labels: int | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> BridgeObjective:
        """Build from a :class:`~segflow.trainer.config.TrainConfig` (its ``objective`` table)."""
        return cls(apply_overrides(BridgeConfig(), dict(getattr(cfg, "objective", {}) or {}),
                                   source="config [objective] table"))

    def net_overrides(self, *, n_labels: int = 0) -> dict[str, Any]:
        """One state channel and a label table of ``n_labels`` annotators plus the null label."""
        self.n_labels = int(n_labels)
        return {"num_labels": int(n_labels) + 1, "state_channels": 1}

    def _note_labels(self, model: torch.nn.Module) -> None:
        if self.n_labels is None:
            self.n_labels = max(int(model.field.cfg.num_labels) - 1, 0)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bridge-noise MSE plus ``gamma`` times the soft-Dice loss of the implied X0 estimate."""
        self._note_labels(model)
        fg, image = batch["mask"].float(), batch["image"]
        x0 = 1.0 - 2.0 * fg
        x1 = x1_from_image_torch(image, self.recipe)
        n = torch.randint(1, self.path.n_timesteps + 1, (x0.shape[0],), device=x0.device)
        bs = self.path.sample(x0, x1, n)
        label = batch["label"].long()
        drop = torch.rand(label.shape, device=label.device) < self.cfg.p_uncond
        label = torch.where(drop, torch.full_like(label, NULL_LABEL), label)
        out = model(bs.x_t, bs.t, image, label)
        loss = torch.mean((out - bs.target) ** 2)
        if self.cfg.gamma:
            loss = loss + self.cfg.gamma * soft_dice_loss(bs.x_t - bs.sigma * out, fg)
        return loss

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, image: torch.Tensor, *, steps: int | None = None,
               generator: torch.Generator | None = None, label: torch.Tensor | int | None = None,
               guidance: float = 0.0, ode: bool = False, **_: Any) -> torch.Tensor:
        """Sample X0 [B, 1, H, W] (-1 inside) with the runtime's bridge sampler; the encoder runs once.

        ``label`` is a tensor [B] or an int (default 0 = unconditional); ``steps`` defaults to the card's.
        """
        self._note_labels(model)
        steps = int(steps or self.cfg.sample_steps)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        rng = np.random.default_rng(seed)
        f = TorchField(model, model.encoder(image))
        x1 = x1_from_image(image.float().cpu().numpy(), {"x1": self.recipe}, rng=rng)
        lab = 0 if label is None else (label.cpu().numpy() if torch.is_tensor(label) else int(label))
        x0 = sample_bridge(f, x1, steps=min(steps, self.path.n_timesteps), bridge=self.path.schedule, ode=ode,
                           guidance=guidance, label=lab, rng=rng)
        return torch.from_numpy(x0).to(image.device, image.dtype)

    def card_fields(self) -> dict[str, Any]:
        """Model-card fields owned by SSB: kind, the ±1 target, the bridge dict and 50-step sampling."""
        c = self.cfg
        bridge = {"beta_max": c.beta_max, "beta_min": c.beta_min, "n_timesteps": c.n_timesteps,
                  "n_labels": int(self.n_labels or 0), "x1": self.recipe, "gamma": c.gamma, "p_uncond": c.p_uncond,
                  "null_label": NULL_LABEL}
        return {"kind": "ssb", "target": "binary", "bridge": bridge,
                "sampling": {"steps": c.sample_steps, "method": "euler", "samples": 4}}

    def settings(self) -> dict[str, Any]:
        """The objective's settings as a plain dict (for logs)."""
        return dataclasses.asdict(self.cfg)
