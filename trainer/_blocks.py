"""Building blocks of the segflow networks: time embedding, ADM residual/attention blocks, RRDB encoder blocks.

Every block of the U-Net takes ``(h, emb)`` so a level is a plain loop; blocks that ignore the time embedding
accept and drop it. All shapes stay symbolic (no Python ints taken from tensors except through ``.shape``), so
the modules export to ONNX with dynamic batch and spatial size.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a batch of (scaled) times.

    Parameters
    ----------
    t : Tensor
        Times, shape ``[B]``.
    dim : int
        Embedding width; the first half holds cosines, the second sines (one zero column if ``dim`` is odd).
    max_period : float
        Longest period of the sinusoids.

    Returns
    -------
    Tensor
        Shape ``[B, dim]``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it (ADM's zero-initialised last layers)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm over ``channels`` with ``groups`` groups (ADM uses 32)."""
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """ADM residual block; the time embedding is added as a per-channel bias (no scale-shift).

    Parameters
    ----------
    dim, dim_out : int
        Input and output channels; a 1×1 conv maps the skip path when they differ.
    time_emb_dim : int
        Width of the time embedding.
    groups : int
        GroupNorm groups.
    dropout : float
        Dropout before the last conv.
    """

    def __init__(self, dim: int, dim_out: int, *, time_emb_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(norm(dim, groups), nn.SiLU(), nn.Conv2d(dim, dim_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out))
        self.out_layers = nn.Sequential(
            norm(dim_out, groups), nn.SiLU(), nn.Dropout(dropout),
            zero_module(nn.Conv2d(dim_out, dim_out, 3, padding=1)),
        )
        self.skip = nn.Identity() if dim == dim_out else nn.Conv2d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Self-attention over all pixels (multi-head, 1×1 convs for qkv and the zero-initialised projection)."""

    def __init__(self, dim: int, *, heads: int, groups: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention channels {dim} are not divisible by heads={heads}")
        self.heads = heads
        self.norm = norm(dim, groups)
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj_out = zero_module(nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b * self.heads, 3 * c // self.heads, h * w)
        q, k, v = qkv.chunk(3, dim=1)  # each [B*heads, C/heads, HW]
        scale = (c // self.heads) ** -0.5
        weights = torch.softmax(torch.matmul(q.transpose(1, 2), k) * scale, dim=-1)  # [B*heads, HW, HW]
        out = torch.matmul(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3×3 conv (ADM ``conv_resample=True``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 upsampling followed by a 3×3 conv."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EmbSequential(nn.ModuleList):
    """A list of blocks applied in turn, each called as ``block(h, emb)``."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self:
            h = block(h, emb)
        return h


class DenseBlock(nn.Module):
    """Residual dense block: five 3×3 convs, each seeing all earlier outputs; output scaled by 0.2 plus input."""

    def __init__(self, nf: int, growth: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(nf + i * growth, growth, 3, padding=1) for i in range(4))
        self.conv_last = nn.Conv2d(nf + 4 * growth, nf, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(F.leaky_relu(conv(torch.cat(feats, dim=1)), 0.2))
        return x + 0.2 * self.conv_last(torch.cat(feats, dim=1))


class RRDB(nn.Module):
    """Residual-in-residual dense block (three dense blocks, outer residual scaled by 0.2)."""

    def __init__(self, nf: int, growth: int):
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(nf, growth) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.blocks(x)
