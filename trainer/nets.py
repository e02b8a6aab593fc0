"""Networks: a time-conditioned ADM-style U-Net vector field and a separate RRDB image encoder (SegDiff fusion).

The encoder maps the image to ``base`` feature channels once per image; the field adds those features to its
first conv's output (``h = conv_in(x) + features``) and never sees the image otherwise, so at inference the
encoder runs once per tile and its features are reused for every step and sample.

Presets
-------
``paper``
    The reference FlowSDF network: base 128, multipliers (1, 1, 2, 2, 4, 4), 3 residual blocks per level,
    attention at 16× and 8× downsampling plus the middle, 1 head, GroupNorm(32), SiLU, time added as a bias,
    zero-initialised last convs; encoder of 12 RRDB blocks (nf 64, growth 32) then a conv to 128 channels.
    160.6 M parameters — a GPU preset.
``lite``
    A CPU preset of about 1.6 M parameters (see docs/export.md for its speed on 2 cores).

Example
-------
>>> cfg = NetConfig.from_name("lite", in_channels=1)
>>> model = SegModel(cfg)
>>> x, img = torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 64, 64)
>>> tuple(model(x, torch.rand(2), img).shape)
(2, 1, 64, 64)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from segflow.trainer._blocks import (
    RRDB,
    AttentionBlock,
    Downsample,
    EmbSequential,
    ResBlock,
    Upsample,
    norm,
    timestep_embedding,
    zero_module,
)
from torch import nn
from torch.nn import functional as F

from segflow.errors import ModelCardError

__all__ = ["NetConfig", "PRESETS", "ImageEncoder", "VectorFieldUNet", "SegModel", "count_parameters"]


@dataclass(frozen=True)
class NetConfig:
    """Sizes of the encoder and vector-field networks (every field can be overridden).

    Attributes
    ----------
    name : str
        Preset it came from (``"lite"``, ``"paper"``) or ``"custom"``; informational.
    in_channels : int
        Image channels (1 or 3).
    state_channels : int
        Channels of the state ``x`` and of the output (1 for an SDF or a mask).
    base : int
        Base width of the U-Net = channels of the encoder features (``feature_channels`` of the card).
    channel_mults : tuple of int
        Width multiplier per level; there are ``len - 1`` downsamplings.
    num_res_blocks : int
        Residual blocks per level on the way down (one more on the way up).
    attention_ds : tuple of int
        Downsampling factors (1, 2, 4, ...) at which attention blocks follow the residual blocks.
    attention_middle : bool
        Attention between the two middle residual blocks.
    heads : int
        Attention heads.
    groups : int
        GroupNorm groups; must divide every width.
    dropout : float
        Dropout inside residual blocks.
    time_scale : float
        The field embeds ``t * time_scale`` (t in [0, 1]); the reference code embeds t itself (scale 1).
    encoder_blocks, encoder_nf, encoder_growth : int
        RRDB blocks, width and growth channels of the image encoder.
    num_labels : int
        Size of the label table (0 = no label input). Label 0 is the null label used for classifier-free
        guidance, so ``num_labels = annotators + 1``.
    """

    name: str = "custom"
    in_channels: int = 3
    state_channels: int = 1
    base: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 1
    attention_ds: tuple[int, ...] = (8,)
    attention_middle: bool = True
    heads: int = 1
    groups: int = 8
    dropout: float = 0.0
    time_scale: float = 1000.0
    encoder_blocks: int = 1
    encoder_nf: int = 32
    encoder_growth: int = 16
    num_labels: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "attention_ds", tuple(int(d) for d in self.attention_ds))
        if self.in_channels not in (1, 3):
            raise ModelCardError(f"network in_channels={self.in_channels} is unsupported: use 1 or 3.")
        if not self.channel_mults or min(self.channel_mults) < 1 or self.base < 1:
            raise ModelCardError(f"network widths base={self.base}, mults={self.channel_mults} must be positive.")
        widths = {self.base * m for m in self.channel_mults}
        bad = sorted(w for w in widths if w % self.groups)
        if bad:
            raise ModelCardError(f"network widths {bad} are not divisible by groups={self.groups}: change groups.")
        if self.num_labels < 0 or self.num_res_blocks < 1 or self.encoder_blocks < 0:
            raise ModelCardError("network num_labels, num_res_blocks and encoder_blocks must be >= 0, >= 1, >= 0.")

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (``2 ** downsamplings``)."""
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def time_emb_dim(self) -> int:
        """Width of the time embedding (4 × base, as in ADM)."""
        return 4 * self.base

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (tuples become lists), for checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "network config") -> NetConfig:
        """Rebuild from :meth:`to_dict` output, rejecting unknown fields with one sentence naming ``source``."""
        if not isinstance(data, dict):
            raise ModelCardError(f"{source} is not a dict of network settings: re-save it with segflow.")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ModelCardError(f"{source} has unknown network fields {unknown}: upgrade segflow.")
        return cls(**data)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> NetConfig:
        """Return preset ``name`` with ``overrides`` applied (``None`` values are ignored)."""
        if name not in PRESETS:
            raise ModelCardError(f"network preset {name!r} is unknown: choose one of {sorted(PRESETS)}.")
        changes = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ModelCardError(f"network overrides {unknown} are unknown: valid fields are those of NetConfig.")
        return dataclasses.replace(PRESETS[name], **changes)


PRESETS: dict[str, NetConfig] = {
    "lite": NetConfig(name="lite"),
    "paper": NetConfig(
        name="paper", base=128, channel_mults=(1, 1, 2, 2, 4, 4), num_res_blocks=3, attention_ds=(16, 8),
        heads=1, groups=32, encoder_blocks=12, encoder_nf=64, encoder_growth=32,
    ),
}


class ImageEncoder(nn.Module):
    """RRDB image encoder: conv, RRDB trunk with a long residual, conv, LeakyReLU, conv to ``base`` channels.

    ``forward(image[B, C, H, W]) -> features[B, base, H, W]``; it depends on neither t nor the state.
    """

    def __init__(self, cfg: NetConfig):
        super().__init__()
        nf = cfg.encoder_nf
        self.conv_first = nn.Conv2d(cfg.in_channels, nf, 3, padding=1)
        self.trunk = nn.Sequential(*(RRDB(nf, cfg.encoder_growth) for _ in range(cfg.encoder_blocks)))
        self.trunk_conv = nn.Conv2d(nf, nf, 3, padding=1)
        self.hr_conv = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_last = nn.Conv2d(nf, cfg.base, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(image)
        fea = fea + self.trunk_conv(self.trunk(fea))
        return self.conv_last(F.leaky_relu(self.hr_conv(fea), 0.2))


class VectorFieldUNet(nn.Module):
    """Time-conditioned ADM U-Net ``v(x, t, features[, label])`` with SegDiff fusion after the first conv."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        base, temb, g = cfg.base, cfg.time_emb_dim, cfg.groups

        def res(a: int, b: int) -> ResBlock:
            return ResBlock(a, b, time_emb_dim=temb, groups=g, dropout=cfg.dropout)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, heads=cfg.heads, groups=g)

        self.time_embed = nn.Sequential(nn.Linear(base, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.label_emb = nn.Embedding(cfg.num_labels, temb) if cfg.num_labels > 0 else None
        self.conv_in = nn.Conv2d(cfg.state_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, ds = [base], base, 1
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                blocks = [res(ch, base * mult)]
                ch = base * mult
                if ds in cfg.attention_ds:
                    blocks.append(attn(ch))
                self.down.append(EmbSequential(blocks))
                skips.append(ch)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(EmbSequential([Downsample(ch)]))
                skips.append(ch)
                ds *= 2
        middle = [res(ch, ch)] + ([attn(ch)] if cfg.attention_middle else []) + [res(ch, ch)]
        self.middle = EmbSequential(middle)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for i in range(cfg.num_res_blocks + 1):
                blocks = [res(ch + skips.pop(), base * mult)]
                ch = base * mult
                if ds in cfg.attention_ds:
                    blocks.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    blocks.append(Upsample(ch))
                    ds //= 2
                self.up.append(EmbSequential(blocks))
        self.out = nn.Sequential(norm(ch, g), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.state_channels, 3, padding=1)))

    def embed(self, t: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        """Time (and label) embedding, shape ``[B, 4 * base]``; a missing label means the null label 0."""
        if t.dtype != torch.float32:  # scaled in float32: 0.123456 * 1000 is 123.5 in float16
            t = t.float()
        temb = timestep_embedding(t * self.cfg.time_scale, self.cfg.base)  # float32
        weight = self.time_embed[0].weight
        if temb.dtype != weight.dtype:
            temb = temb.to(weight.dtype)  # a half / bfloat16 model: its Linear layers take their own dtype
        emb = self.time_embed(temb)
        if self.label_emb is not None:
            if label is None:
                label = torch.zeros(t.shape[0], dtype=torch.int64, device=t.device)
            emb = emb + self.label_emb(label)
        elif label is not None:
            raise ValueError("label given but the network was built with num_labels=0")
        return emb

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, features: torch.Tensor, label: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Velocity (FlowSDF) or bridge noise (SSB) for state ``x[B,1,H,W]`` at times ``t[B]``."""
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.embed(t, label)
        h = self.conv_in(x) + features
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        h = self.middle(h, emb)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class SegModel(nn.Module):
    """The encoder and the field together; ``forward(x, t, image, label=None)`` runs both."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ImageEncoder(cfg)
        self.field = VectorFieldUNet(cfg)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, image: torch.Tensor, label: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.field(x, t, self.encoder(image), label)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
