"""Exponential moving average of model weights (the weights that are validated, exported and shipped)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Keep ``shadow = decay_n * shadow + (1 - decay_n) * weights`` after every optimiser step.

    ``decay_n = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average follows the weights
    closely in the first steps (a short run is not validated with its random initialisation) and reaches
    ``decay`` after about ``10 / (1 - decay)`` steps. Buffers (none in the segflow nets) are copied.

    Parameters
    ----------
    model : nn.Module
        The trained model; the shadow starts as a deep copy of it.
    decay : float
        Target decay (0.999 for MoNuSeg, 0.9999 for GlaS in the reference training).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current parameters into the shadow copy."""
        d = self.current_decay()
        for s, p in zip(self.shadow.parameters(), model.parameters(), strict=True):
            s.lerp_(p.detach(), 1.0 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            s.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict:
        """The shadow weights: a state dict of the model (checkpoint ``"ema"`` entry, what export loads)."""
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict, *, updates: int) -> None:
        """Restore the shadow weights and the number of updates done so far (the checkpoint's step)."""
        self.shadow.load_state_dict(state)
        self.updates = int(updates)
