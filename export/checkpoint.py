"""Read and write segflow training checkpoints (``torch.save`` dicts loadable with ``weights_only=True``).

The format is fixed in docs/CONTRACTS.md: ``{"model", "ema", "optimizer", "step", "config", "net", "card",
"rng"}``, where ``model`` and ``ema`` are state dicts of a :class:`segflow.trainer.nets.SegModel`, ``net`` the
:class:`~segflow.trainer.nets.NetConfig` fields and ``card`` the :class:`~segflow.card.ModelCard` fields.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from segflow.trainer.nets import NetConfig, SegModel

from segflow.card import ModelCard
from segflow.errors import ModelCardError
from segflow.imageio import default_file_mode

__all__ = ["make_checkpoint", "load_checkpoint", "model_from_checkpoint"]


def make_checkpoint(model: SegModel, card: ModelCard, path: str | Path, **extra: Any) -> Path:
    """Write ``model`` and ``card`` as a segflow checkpoint without training (atomically).

    Parameters
    ----------
    model : SegModel
        The network; its weights go to both ``model`` and ``ema`` unless ``extra`` gives ``ema``.
    card : ModelCard
        The model card stored under ``card``.
    path : str or Path
        Destination ``.pt`` file.
    **extra
        Further or replacing top-level entries (``ema``, ``step``, ``config``, ...).

    Returns
    -------
    Path
        ``path``.
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ckpt: dict[str, Any] = {
        "model": state, "ema": state, "optimizer": {}, "step": 0, "config": {},
        "net": model.cfg.to_dict(), "card": card.to_dict(), "rng": {},
    }
    ckpt.update(extra)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a segflow checkpoint safely (``weights_only=True``) and check that it is one.

    Raises
    ------
    ModelCardError
        If the file is missing, not a PyTorch file, holds non-weight objects, or lacks the segflow keys.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelCardError(f"checkpoint {p} does not exist: pass the .pt file written by `trainer train`.")
    if not zipfile.is_zipfile(p):  # torch.save has written zip archives since torch 1.6
        raise ModelCardError(f"{p} is not a PyTorch checkpoint (not a torch.save archive): pass a .pt file.")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelCardError(
            f"checkpoint {p} holds objects other than weights and plain values, which segflow refuses to "
            f"unpickle: re-save it with `trainer train`."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for files that are not checkpoints
        raise ModelCardError(f"{p} is not a PyTorch checkpoint ({type(exc).__name__}): pass a .pt file.") from exc
    missing = [k for k in ("model", "card") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ModelCardError(
            f"{p} is not a segflow checkpoint (it lacks {missing}): pass a checkpoint written by `trainer train`."
        )
    return ckpt


def model_from_checkpoint(
    path: str | Path, *, use_ema: bool = True, expect_kind: str | None = None
) -> tuple[SegModel, ModelCard]:
    """Rebuild the network of a checkpoint and load its (EMA) weights.

    Parameters
    ----------
    path : str or Path
        The checkpoint.
    use_ema : bool
        Load the EMA weights (what you normally deploy) instead of the raw ones.
    expect_kind : {"flowsdf", "ssb"} or None
        Refuse a checkpoint whose card is of another kind.

    Returns
    -------
    (SegModel, ModelCard)
        The model in eval mode on the CPU and its card.
    """
    ckpt = load_checkpoint(path)
    card = ModelCard.from_dict(ckpt["card"], source=f"model card in {path}")
    if expect_kind is not None and card.kind != expect_kind:
        raise ModelCardError(
            f"checkpoint {path} holds a {card.kind!r} model, not {expect_kind!r}: pass the right file."
        )
    net = ckpt.get("net")
    if net:
        cfg = NetConfig.from_dict(dict(net), source=f"network config in {path}")
    else:  # older checkpoints: rebuild from the card's preset
        cfg = NetConfig.from_name(card.preset, in_channels=card.in_channels)
    key = "ema" if use_ema else "model"
    state = ckpt.get(key)
    if not state:
        fix = "export the raw weights with --no-ema" if use_ema else "export the EMA weights (drop --no-ema)"
        raise ModelCardError(f"checkpoint {path} has no {key!r} weights: {fix}.")
    model = SegModel(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelCardError(
            f"checkpoint {path}: its {key!r} weights do not fit the network its 'net' entry describes: "
            f"re-save the checkpoint with the same segflow version that trained it."
        ) from exc
    return model.eval(), card
