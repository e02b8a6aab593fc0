"""``trainer coin``: annotation-free FlowSDF training by COIN-style recursive self-distillation.

Round 0 takes pseudo-labels from the images alone (:mod:`segflow.trainer.coin_seeds`: haematoxylin, Otsu and
watershed seeds, refined by entropic optimal transport). Each instance is scored by the agreement of two
independent views — the raw seeds against the OT-refined seeds in round 0; the model's K samples against each
other and against the refined seeds afterwards — and kept when its score reaches COIN's per-image adaptive
threshold ``delta_k = min(mean + std, cap)``. FlowSDF is trained on the kept instances only: the pixels of the
other instances (and a ``margin``-px ring around them) get loss weight 0. The trained model then predicts every
image, its instances are re-scored, and the next round trains on them (warm start). After ``rounds`` rounds
the checkpoint is written in the usual format (``trainer export`` works on it).

Substitutes for COIN's foundation models (none can be downloaded here): SAM's box-prompted refinement ->
entropic OT over hand-made pixel features; MAE feature similarity -> IoU agreement of views.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage as ndi
from segflow.runtime.confidence import adaptive_threshold, best_match_iou, instance_confidence
from segflow.trainer.coin_cli import CoinConfig
from segflow.trainer.coin_seeds import refine_seeds, seed_instances
from segflow.trainer.ema import EMA
from segflow.trainer.flow import FlowObjective
from segflow.trainer.nets import NetConfig, SegModel
from segflow.trainer.train import optimiser_step

from segflow.normalize import apply_norm, channels_and_stats
from segflow.sdf import mask_to_sdf

__all__ = ["CoinConfig", "PseudoLabels", "CoinResult", "pseudo_labels", "score_views", "loss_weights",
           "expand", "predict", "predict_instances", "self_distill"]


@dataclass(frozen=True)
class PseudoLabels:
    """Per-image pseudo-labels: instances, which are kept, the loss weight, and the scores behind them."""

    labels: NDArray[np.int32]
    keep: NDArray[np.bool_]
    weight: NDArray[np.float32]
    scores: NDArray[np.float64]
    delta: float


@dataclass(frozen=True)
class CoinResult:
    """The trained model, the last round's pseudo-labels, per-round statistics and the seeds of each image."""

    model: SegModel
    net: NetConfig
    pseudo: list[PseudoLabels]
    seeds: list[NDArray[np.int32]]
    refined: list[NDArray[np.int32]]
    history: list[dict[str, Any]]


def loss_weights(labels: NDArray, keep_ids: NDArray, *, ignore: NDArray | None = None, margin: int = 2
                 ) -> NDArray[np.float32]:
    """1 everywhere except on dropped instances (and ``ignore`` pixels), dilated by ``margin`` px: 0 there."""
    lab = np.asarray(labels)
    dropped = (lab > 0) & ~np.isin(lab, keep_ids)
    if ignore is not None:
        dropped |= np.asarray(ignore, bool)
    if margin > 0 and dropped.any():
        dropped = ndi.binary_dilation(dropped, iterations=margin)
    return np.where(dropped, 0.0, 1.0).astype(np.float32)


def _select(labels: NDArray, scores: NDArray, cap: float, margin: int, ignore: NDArray | None = None
            ) -> PseudoLabels:
    ids = np.unique(labels[labels > 0])
    delta = adaptive_threshold(scores, cap=cap)
    keep = scores >= delta
    w = loss_weights(labels, ids[keep], ignore=ignore, margin=margin)
    return PseudoLabels(labels.astype(np.int32), keep, w, scores, delta)


def expand(prev: PseudoLabels, pred: NDArray, scores: NDArray, refined: NDArray, *, cap: float = 0.9,
           margin: int = 2) -> PseudoLabels:
    """Next round's pseudo-labels: the previous confident instances, progressively expanded by the model's.

    A predicted instance is confident when its score reaches this image's adaptive threshold ``delta_k``.
    Confident predictions enter the label set; a previous confident instance stays unless a confident
    prediction overlaps it (the prediction then replaces it, and the rest of its pixels are ignored), so the
    confident set never shrinks to what one round's model is sure of. Unconfident predictions are kept as
    labels with weight 0 (so the SDF around them stays right), as is refined-seed foreground that no
    confident instance covers.
    """
    pred = np.asarray(pred)
    ids = np.unique(pred[pred > 0])
    delta = adaptive_threshold(scores, cap=cap)
    conf_ids = ids[scores >= delta]
    conf = np.isin(pred, conf_ids)
    old_ids = np.unique(prev.labels[prev.labels > 0])
    old_kept = old_ids[prev.keep]
    old_mask = np.isin(prev.labels, old_kept)
    replaced = np.unique(prev.labels[conf & old_mask])
    carried = np.setdiff1d(old_kept, replaced)
    top = int(ids.max()) if ids.size else 0
    labels = np.where(conf, pred, 0).astype(np.int64)
    carry = np.isin(prev.labels, carried) & (labels == 0)
    labels[carry] = prev.labels[carry].astype(np.int64) + top  # old ids shifted past the predicted ones
    rest = (pred > 0) & (labels == 0) & ~conf  # unconfident predictions, where nothing confident lies
    labels[rest] = pred[rest]
    new_ids = np.unique(labels[labels > 0])
    kept_ids = np.concatenate([conf_ids, carried + top])
    keep = np.isin(new_ids, kept_ids)
    old_score = dict(zip(old_ids.tolist(), prev.scores.tolist(), strict=True))
    new_score = dict(zip(ids.tolist(), np.asarray(scores, np.float64).tolist(), strict=True))
    sc = np.array([new_score[i] if i <= top else old_score[i - top] for i in new_ids.tolist()], np.float64)
    ignore = (np.isin(prev.labels, replaced) | (np.asarray(refined) > 0)) & ~np.isin(labels, kept_ids)
    w = loss_weights(labels, kept_ids, ignore=ignore, margin=margin)
    return PseudoLabels(labels.astype(np.int32), keep, w, sc, delta)


def pseudo_labels(images: list[NDArray], cfg: CoinConfig) -> tuple[list, list, list[PseudoLabels]]:
    """Round 0: raw seeds, OT-refined seeds, and the refined instances scored against the raw ones."""
    seeds, refined, pseudo = [], [], []
    for i, img in enumerate(images):
        s = seed_instances(img)
        r = refine_seeds(img, s, reg=cfg.reg, n_prototypes=cfg.n_prototypes, seed=cfg.seed + i).labels
        scores = best_match_iou(r, s, exclusive=True)  # view 1: OT-refined, view 2: Otsu/watershed
        seeds.append(s)
        refined.append(r)
        pseudo.append(_select(r, scores, cfg.cap, cfg.margin))
    return seeds, refined, pseudo


def score_views(pred: NDArray, sample_sdfs: NDArray, refined: NDArray, views: str = "both") -> NDArray:
    """Instance scores of a prediction: K-sample agreement, agreement with refined seeds, or their mean."""
    if views not in ("samples", "seeds", "both"):
        raise ValueError(f"views must be samples, seeds or both, got {views!r}")
    s_samples = instance_confidence(pred, sample_sdfs).confidence if views != "seeds" else None
    s_seeds = best_match_iou(pred, refined, exclusive=True) if views != "samples" else None
    if views == "samples":
        return s_samples
    if views == "seeds":
        return s_seeds
    return (s_samples + s_seeds) / 2


def _norm_image(img: NDArray, in_channels: int) -> NDArray[np.float32]:
    x, stats = channels_and_stats(img, in_channels, {"mode": "dtype"}, name="image")
    return apply_norm(x, stats)


def _tile_batch(data: list[tuple], cfg: CoinConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    imgs, tgts, ws = [], [], []
    t = cfg.tile
    for _ in range(cfg.batch):
        img, tgt, w = data[int(rng.integers(len(data)))]
        y, x = int(rng.integers(img.shape[0] - t + 1)), int(rng.integers(img.shape[1] - t + 1))
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        parts = [np.rot90(a[y:y + t, x:x + t], k) for a in (img, tgt, w)]
        if flip:
            parts = [p[:, ::-1] for p in parts]
        imgs.append(parts[0].transpose(2, 0, 1))
        tgts.append(parts[1][None])
        ws.append(parts[2][None])
    return {k: torch.from_numpy(np.ascontiguousarray(np.stack(v), np.float32))
            for k, v in (("image", imgs), ("target", tgts), ("weight", ws))}


def weighted_flow_loss(objective: FlowObjective, model: SegModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """FlowSDF's flow-matching MSE with a per-pixel weight (0 = ignored): ``sum(w e^2) / sum(w)``."""
    x1 = batch["target"]
    x0 = torch.randn_like(x1)  # same draw order as FlowObjective.loss: noise, then times
    t = torch.rand(x1.shape[0], dtype=x1.dtype)
    ps = objective.path.sample(x0, x1, t)
    err = (model(ps.x_t, ps.t, batch["image"]) - ps.dx_t) ** 2
    w = batch["weight"]
    return (w * err).sum() / w.sum().clamp_min(1.0)


def _train_round(model, ema, opt, objective, data, cfg: CoinConfig, rng) -> list[float]:
    model.train()
    losses = []
    for _ in range(cfg.steps):
        loss = weighted_flow_loss(objective, model, _tile_batch(data, cfg, rng))
        losses.append(optimiser_step(model, ema, opt, loss, cfg.grad_clip))
    return losses


@torch.no_grad()
def predict(model: SegModel, image: NDArray, *, samples: int = 4, steps: int = 4, seed: int = 0,
            in_channels: int = 3, multiple: int = 8) -> NDArray[np.float32]:
    """K sampled SDFs (K, H, W) of one whole image (reflect-padded to a multiple of the net's stride)."""
    model.eval()
    x = _norm_image(image, in_channels)
    h, w = x.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    img = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].repeat(samples, 1, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    out = FlowObjective().sample(model, img, steps=steps, generator=gen)
    return out[:, 0, :h, :w].numpy()


def predict_instances(model: SegModel, image: NDArray, *, samples: int = 4, steps: int = 4, seed: int = 0,
                      in_channels: int = 3, multiple: int = 8) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """The instances the loop takes from a model (watershed on the mean of K samples) and the K samples."""
    from segflow.runtime.instances import instances_from_sdf

    sdfs = predict(model, image, samples=samples, steps=steps, seed=seed, in_channels=in_channels,
                   multiple=multiple)
    return instances_from_sdf(sdfs.mean(0), method="watershed").astype(np.int32), sdfs


def self_distill(images: list[NDArray], cfg: CoinConfig | None = None, *, log=None, on_round=None) -> CoinResult:
    """Run the whole COIN loop on unlabelled ``images`` (RGB or grayscale, any size >= ``cfg.tile``); ``cfg``
    defaults to ``CoinConfig()``.

    ``log(stats)`` gets each round's statistics; ``on_round(round, model)`` gets the round number (1..R) and the
    EMA model after that round's training (e.g. to evaluate every round on held-out images).
    """
    cfg = cfg or CoinConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    in_ch = 3 if np.asarray(images[0]).ndim == 3 else 1
    net = NetConfig.from_name(cfg.preset, **{**cfg.net, "in_channels": in_ch, "num_labels": 0})
    model = SegModel(net)
    ema = EMA(model, cfg.ema)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    objective = FlowObjective(sigma_min=cfg.sigma_min)
    normed = [_norm_image(im, in_ch) for im in images]
    seeds, refined, pseudo = pseudo_labels(images, cfg)
    history = []
    for r in range(cfg.rounds):
        t0 = time.perf_counter()
        data = [(x, mask_to_sdf(p.labels, cfg.sdf_delta), p.weight) for x, p in zip(normed, pseudo, strict=True)]
        losses = _train_round(model, ema, opt, objective, data, cfg, rng)
        new = []
        if on_round is not None:
            on_round(r + 1, ema.shadow)
        for i, img in enumerate(images):
            pred, sdfs = predict_instances(ema.shadow, img, samples=cfg.samples, steps=cfg.sample_steps,
                                           seed=cfg.seed + i, in_channels=in_ch, multiple=net.size_multiple)
            scores = score_views(pred, sdfs, refined[i], cfg.views)
            new.append(expand(pseudo[i], pred, scores, refined[i], cap=cfg.cap, margin=cfg.margin))
        pseudo = new
        stats = {"round": r + 1, "loss": float(np.mean(losses[-max(1, len(losses) // 5):])),
                 "kept": int(sum(p.keep.sum() for p in pseudo)), "instances": int(sum(p.keep.size for p in pseudo)),
                 "mean_delta": float(np.mean([p.delta for p in pseudo])), "seconds": time.perf_counter() - t0}
        history.append(stats)
        if log is not None:
            log(stats)
    return CoinResult(ema.shadow, net, pseudo, seeds, refined, history)
