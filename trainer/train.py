"""Train a FlowSDF (or SSB) model; reads top to bottom: data, model, loop, validation, checkpoint.

Objectives live in a registry, :data:`OBJECTIVES`, of ``"module:Class"`` paths imported on first use. An
objective follows the :class:`Objective` protocol: ``from_config(cfg)``, ``net_overrides(n_labels=...)``,
``loss(model, batch) -> scalar tensor``, ``sample(model, image, steps=, method=, generator=, label=) ->
[B, 1, H, W]`` state in about [-1, 1] (mask = state <= threshold) and ``card_fields() -> dict``. Validation
therefore works the same for every objective: pooled foreground Dice and IoU of sampled masks on held-out
images, computed with the EMA weights.

Checkpoints follow docs/CONTRACTS.md and load with ``torch.load(path, weights_only=True)``. They hold torch's
and numpy's global RNG states; training tiles are a pure function of ``(seed, index)`` and validation uses its
own generator, so a resumed run repeats the uninterrupted one step for step.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from segflow.trainer.config import TrainConfig
from segflow.trainer.data import (
    TileDataset,
    batches,
    describe_data,
    load_pairs,
    prepare,
    split_pairs,
    val_tiles,
)
from segflow.trainer.ema import EMA
from segflow.trainer.nets import NetConfig, SegModel

from segflow import __version__
from segflow.card import ModelCard
from segflow.errors import InputError, ModelCardError
from segflow.imageio import atomic_path, write_json
from segflow.progress import Progress

__all__ = ["OBJECTIVES", "Objective", "TrainResult", "train", "get_objective", "load_checkpoint",
           "pooled_scores", "evaluate"]

OBJECTIVES: dict[str, str] = {
    "flowsdf": "segflow.trainer.flow:FlowObjective",
    "ssb": "segflow.trainer.bridge:BridgeObjective",
}


class Objective(Protocol):
    """What :func:`train` needs from an objective (see the module docstring)."""

    name: str

    def net_overrides(self, *, n_labels: int) -> dict[str, Any]: ...

    def loss(self, model: SegModel, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def sample(self, model: SegModel, image: torch.Tensor, **kw: Any) -> torch.Tensor: ...

    def card_fields(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TrainResult:
    """What a run produced: checkpoint path, final step, per-step losses of this run, last validation."""

    checkpoint: Path
    step: int
    losses: list[float]
    val: dict[str, float]
    card: ModelCard


def get_objective(cfg: TrainConfig) -> Objective:
    """Instantiate ``OBJECTIVES[cfg.kind]`` from the config."""
    if cfg.kind not in OBJECTIVES:
        raise InputError(f"kind {cfg.kind!r} is unknown: choose one of {sorted(OBJECTIVES)}.")
    module, name = OBJECTIVES[cfg.kind].split(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"objective {cfg.kind!r} is not available in this segflow ({exc}).") from exc
    return cls.from_config(cfg)


def get_lr(cfg: TrainConfig, it: int) -> float:
    """Constant learning rate after an optional linear warm-up."""
    return cfg.lr * min(1.0, (it + 1) / cfg.warmup) if cfg.warmup > 0 else cfg.lr


def pooled_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Foreground Dice and IoU pooled over all pixels (1.0 when both are empty)."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp, p, t = int((pred & true).sum()), int(pred.sum()), int(true.sum())
    union = p + t - tp
    return {"dice": 2 * tp / (p + t) if p + t else 1.0, "iou": tp / union if union else 1.0}


@torch.no_grad()
def evaluate(model: SegModel, objective: Objective, tiles: list[dict], cfg: TrainConfig,
             device: torch.device) -> dict[str, float]:
    """Sample masks for the validation tiles (own generator: the training RNG is untouched) and score them."""
    if not tiles:
        return {}
    gen = torch.Generator(device).manual_seed(cfg.seed + 1)
    preds, trues = [], []
    for i in range(0, len(tiles), cfg.batch):
        chunk = tiles[i:i + cfg.batch]
        image = torch.stack([c["image"] for c in chunk]).to(device)
        label = torch.stack([c["label"] for c in chunk]).to(device)
        state = sum(objective.sample(model, image, steps=cfg.val_steps, method=cfg.val_method, generator=gen,
                                     label=label) for _ in range(cfg.val_samples)) / cfg.val_samples
        preds.append(state[:, 0].cpu().numpy() <= cfg.threshold)
        trues.append(torch.stack([c["mask"] for c in chunk]).numpy())
    return pooled_scores(np.concatenate(preds), np.concatenate(trues))


def rng_state() -> dict[str, Any]:
    """torch's and numpy's global RNG states in checkpoint-safe types."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) with one-sentence errors."""
    p = Path(path)
    if not p.is_file():
        raise ModelCardError(f"checkpoint {p} does not exist: pass the checkpoint.pt written by `trainer train`.")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for foreign or corrupt files
        raise ModelCardError(f"checkpoint {p} is not a readable segflow checkpoint ({type(exc).__name__}): "
                             "pass a checkpoint.pt written by `trainer train`.") from exc
    if not isinstance(ckpt, dict) or not {"model", "step", "config", "net", "card"} <= set(ckpt):
        raise ModelCardError(f"checkpoint {p} lacks segflow's fields: pass a checkpoint.pt written by "
                             "`trainer train`.")
    return ckpt


def optimiser_step(model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer, loss: torch.Tensor,
                   grad_clip: float) -> float:
    """One update: backward, optional gradient-norm clipping, step, EMA update; return the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    ema.update(model)
    return float(loss.item())


def save_checkpoint(path: Path, **entries: Any) -> None:
    """Write the checkpoint atomically (a crash never leaves a truncated file)."""
    with atomic_path(path) as tmp:
        torch.save(entries, tmp)


def build_card(cfg: TrainConfig, net: NetConfig, objective: Objective, val: dict, extra: dict) -> ModelCard:
    """The model card: inference settings, training-data provenance and validation scores."""
    name, licence = describe_data(cfg.data)
    norm = {"mode": cfg.normalisation} if cfg.normalisation == "dtype" else {
        "mode": "percentile", "low": 1.0, "high": 99.8}
    fields = dict(preset=cfg.preset if not cfg.net else "custom", tile=cfg.tile, in_channels=net.in_channels,
                  feature_channels=net.base, normalisation=norm, sdf_delta=cfg.sdf_delta, threshold=cfg.threshold,
                  target=cfg.target, sigma_min=cfg.sigma_min, training_data=cfg.data_name or name,
                  pixel_size_um=cfg.pixel_size_um or None,
                  licence=cfg.data_licence or licence, version=__version__,
                  sampling={"steps": cfg.val_steps, "method": cfg.val_method, "samples": 4},
                  extra={**extra, "val": val})
    return ModelCard(**{**fields, **objective.card_fields()})


def train(cfg: TrainConfig, *, command: str = "") -> TrainResult:
    """Run (or resume) training as configured; return where the checkpoint is and what was measured."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = torch.device(cfg.device)
    objective = get_objective(cfg)
    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None
    if ckpt is not None and ckpt["config"].get("kind") != cfg.kind:
        raise ModelCardError(f"checkpoint {cfg.resume} is a {ckpt['config'].get('kind')} model, not {cfg.kind}: "
                             "resume it with its own --kind.")

    # -- data: whole images normalised once, tiles drawn per index, validation tiles fixed -------------
    pairs = load_pairs(cfg.data)
    train_pairs, val_pairs = split_pairs(pairs, cfg.val_images, cfg.seed)
    in_ch = cfg.in_channels or (3 if pairs[0].image.ndim == 3 else 1)
    norm = {"mode": cfg.normalisation, "low": 1.0, "high": 99.8}

    def prep(p):
        return prepare(p, in_channels=in_ch, normalisation=norm, target=cfg.target, sdf_delta=cfg.sdf_delta)

    dataset = TileDataset([prep(p) for p in train_pairs], tile=cfg.tile, augment=cfg.augment, jitter=cfg.jitter,
                          seed=cfg.seed)
    vtiles = val_tiles([prep(p) for p in val_pairs], cfg.tile, cfg.val_tiles, cfg.seed)

    # -- model, EMA, optimiser (restored when resuming) --------------------------------------------------
    n_labels = max(p.label for p in pairs)
    if ckpt is not None:
        net_cfg = NetConfig.from_dict(ckpt["net"], source=f"network config in {cfg.resume}")
    else:
        net_cfg = NetConfig.from_name(cfg.preset, **{**cfg.net, "in_channels": in_ch,
                                                     **objective.net_overrides(n_labels=n_labels)})
    if cfg.tile % net_cfg.size_multiple:
        raise InputError(f"tile={cfg.tile} is not a multiple of {net_cfg.size_multiple} that the network needs.")
    model = SegModel(net_cfg).to(device)
    ema = EMA(model, cfg.ema)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        ema.load_state_dict(ckpt["ema"], updates=start)
        set_rng_state(ckpt["rng"])

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    extra = {"command": command, "data": cfg.data, "val_images": sorted({p.name for p in val_pairs}),
             "train_images": len({p.name for p in train_pairs})}
    elapsed0 = float(ckpt["card"]["extra"].get("train_seconds", 0.0)) if ckpt is not None else 0.0
    t_start = time.perf_counter()
    losses: list[float] = []
    val: dict[str, float] = {}

    def save(step: int) -> ModelCard:
        seconds = elapsed0 + time.perf_counter() - t_start
        card = build_card(cfg, net_cfg, objective, val, {
            **extra, "steps": step, "train_seconds": round(seconds, 1),
            "trained_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
        save_checkpoint(ckpt_path, model=model.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                        step=step, config=cfg.to_dict(), net=net_cfg.to_dict(), card=card.to_dict(),
                        rng=rng_state())
        write_json(out / "card.json", card.to_dict())
        return card

    def log(record: dict) -> None:
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- the loop ----------------------------------------------------------------------------------------
    model.train()
    card = None
    bar = Progress(total=max(cfg.steps - start, 0), desc="train", unit="step")
    tty = bar.enabled
    for step, batch in enumerate(batches(dataset, cfg.batch, start, cfg.steps, workers=cfg.workers), start=start):
        batch = {k: v.to(device) for k, v in batch.items()}
        for group in opt.param_groups:
            group["lr"] = get_lr(cfg, step)
        losses.append(optimiser_step(model, ema, opt, objective.loss(model, batch), cfg.grad_clip))
        done = step + 1
        bar.update(1, postfix=f"loss {losses[-1]:.4f}")
        if not tty and cfg.log_every and done % cfg.log_every == 0:
            rate = len(losses) / max(time.perf_counter() - t_start, 1e-9)
            print(f"step {done}/{cfg.steps} loss {np.mean(losses[-cfg.log_every:]):.4f} {rate:.2f} it/s",
                  file=sys.stderr)
        if (cfg.val_every and done % cfg.val_every == 0) or done == cfg.steps:
            val = evaluate(ema.shadow, objective, vtiles, cfg, device)
            log({"step": done, "loss": float(np.mean(losses[-(cfg.val_every or len(losses)):])), **val})
            card = save(done)
            if val and not tty and cfg.log_every:
                print(f"step {done} validation dice {val['dice']:.4f} iou {val['iou']:.4f}", file=sys.stderr)
    bar.close()
    if card is None:  # nothing to do (resumed at or past cfg.steps): still leave a consistent checkpoint
        val = evaluate(ema.shadow, objective, vtiles, cfg, device)
        card = save(max(start, 0))
    return TrainResult(ckpt_path, max(cfg.steps, start), losses, val, card)

