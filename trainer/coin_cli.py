"""The ``trainer coin`` command line: its settings, flags and entry point, importable without torch.

``trainer`` builds every sub-parser on each call, so this module holds only what the parser needs
(:class:`CoinConfig`, :data:`HELP`, :func:`add_arguments`); :func:`run` imports the torch-based
:mod:`segflow.trainer.coin` when the command actually runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HELP = "annotation-free training: OT-refined seeds, two-view confidence, recursive self-distillation"


@dataclass(frozen=True)
class CoinConfig:
    """Settings of a COIN run (network via ``preset`` + ``net`` overrides)."""

    rounds: int = 2
    steps: int = 300
    batch: int = 4
    tile: int = 64
    lr: float = 1e-3
    ema: float = 0.99
    grad_clip: float = 1.0
    preset: str = "lite"
    net: dict = field(default_factory=dict)
    sdf_delta: float = 8.0
    sigma_min: float = 1e-4
    reg: float = 0.05
    n_prototypes: int = 8
    cap: float = 0.9
    views: str = "both"
    samples: int = 4
    sample_steps: int = 4
    margin: int = 2
    seed: int = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``trainer coin``."""
    p.add_argument("data", help="folder of unlabelled images (labels, if any, are ignored), or 'synthetic'")
    p.add_argument("--out", default="runs/coin", help="output folder (checkpoint.pt, card.json, coin.json)")
    for f in dataclasses.fields(CoinConfig):
        if f.name == "net":
            continue
        flag = "--" + f.name.replace("_", "-")
        p.add_argument(flag, dest=f.name, type=type(f.default), default=None, help=f"(default {f.default})")
    p.add_argument("--base", type=int, default=None, help="network base width override")
    p.add_argument("--max-images", type=int, default=0, help="use at most this many images (0 = all)")


def _load_images(source: str, limit: int) -> list[Any]:
    from segflow.trainer.data import load_pairs

    pairs = load_pairs(source)
    names, images = set(), []
    for pair in pairs:
        if pair.name not in names:
            names.add(pair.name)
            images.append(pair.image)
    return images[:limit] if limit else images


def run(args: argparse.Namespace) -> int:
    """Run COIN self-distillation and write a checkpoint in the ``trainer train`` format."""
    from segflow.trainer.coin import self_distill
    from segflow.trainer.train import rng_state, save_checkpoint

    from segflow.card import ModelCard
    from segflow.imageio import write_json

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(CoinConfig)
                 if f.name != "net" and getattr(args, f.name, None) is not None}
    cfg = dataclasses.replace(CoinConfig(), **overrides, net={"base": args.base} if args.base else {})
    images = _load_images(args.data, args.max_images)
    result = self_distill(images, cfg, log=lambda s: print(f"coin round {s['round']}: loss {s['loss']:.4f}, kept "
                                                           f"{s['kept']}/{s['instances']} instances, "
                                                           f"{s['seconds']:.1f} s", file=sys.stderr))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    card = ModelCard(kind="flowsdf", preset=cfg.preset if not cfg.net else "custom", tile=cfg.tile,
                     in_channels=result.net.in_channels, feature_channels=result.net.base,
                     normalisation={"mode": "dtype"}, sdf_delta=cfg.sdf_delta, threshold=0.0, target="sdf",
                     sigma_min=cfg.sigma_min, training_data=f"{args.data} (unlabelled, COIN pseudo-labels)",
                     licence="of the images used", sampling={"steps": cfg.sample_steps, "method": "euler",
                                                            "samples": cfg.samples},
                     extra={"coin": dataclasses.asdict(cfg), "history": result.history})
    state = result.model.state_dict()
    save_checkpoint(out / "checkpoint.pt", model=state, ema=state, optimizer={}, step=cfg.rounds * cfg.steps,
                    config={"kind": "flowsdf", "preset": cfg.preset, "coin": dataclasses.asdict(cfg)},
                    net=result.net.to_dict(), card=card.to_dict(), rng=rng_state())
    write_json(out / "card.json", card.to_dict())
    write_json(out / "coin.json", {"config": dataclasses.asdict(cfg), "history": result.history})
    print(f"coin: wrote {out / 'checkpoint.pt'}", file=sys.stderr)
    return 0
