"""Training: the loss goes down, resume is exact, checkpoints load with weights_only=True and hold the card."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from _tiny import tiny_overrides  # noqa: E402
from segflow.trainer.config import load_config  # noqa: E402
from segflow.trainer.data import TileDataset, batches, load_pairs, prepare  # noqa: E402
from segflow.trainer.flow import FlowObjective  # noqa: E402
from segflow.trainer.nets import NetConfig, SegModel  # noqa: E402
from segflow.trainer.train import get_objective, load_checkpoint, pooled_scores, train  # noqa: E402

from segflow.card import ModelCard  # noqa: E402
from segflow.errors import InputError, ModelCardError  # noqa: E402

pytestmark = pytest.mark.torch


def _fixed_loss(model, batch, seed=123):
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(FlowObjective().loss(model, batch))


def test_a_few_steps_lower_the_loss(tmp_path):
    cfg = load_config(overrides=tiny_overrides(tmp_path / "run", steps=25, lr=3e-3, val_images=0))
    pairs = load_pairs(cfg.data)[:4]
    items = [prepare(p, in_channels=1, normalisation={"mode": "dtype"}, target="sdf", sdf_delta=8.0)
             for p in pairs]
    probe = next(batches(TileDataset(items, tile=32, seed=99), 8, 0, 1))
    torch.manual_seed(0)
    net = NetConfig.from_name("lite", in_channels=1, **cfg.net)
    before = _fixed_loss(SegModel(net), probe)
    result = train(cfg)
    model = SegModel(net)
    model.load_state_dict(torch.load(result.checkpoint, weights_only=True)["model"])
    after = _fixed_loss(model, probe)
    assert len(result.losses) == 25
    assert after < 0.8 * before, (before, after)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    straight = train(load_config(overrides=tiny_overrides(tmp_path / "a", steps=4)))
    first = train(load_config(overrides=tiny_overrides(tmp_path / "b", steps=2)))
    ckpt = load_checkpoint(first.checkpoint)
    assert ckpt["step"] == 2
    resumed = train(load_config(overrides={"steps": 4, "resume": str(first.checkpoint), "out": str(tmp_path / "c")},
                                base=ckpt["config"]))
    assert resumed.losses == straight.losses[2:]
    a, c = torch.load(straight.checkpoint, weights_only=True), torch.load(resumed.checkpoint, weights_only=True)
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, c[key][name]), (key, name)
    assert torch.equal(a["rng"]["torch"], c["rng"]["torch"])
    assert a["step"] == c["step"] == 4


def test_checkpoint_is_weights_only_and_carries_the_card(tmp_path):
    result = train(load_config(overrides=tiny_overrides(tmp_path, steps=2, target="binary", sdf_delta=6.0,
                                                        pixel_size_um=0.5)))
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert set(ckpt) >= {"model", "ema", "optimizer", "step", "config", "net", "card", "rng"}
    card = ModelCard.from_dict(ckpt["card"])
    assert card == result.card
    assert (card.kind, card.target, card.tile, card.in_channels, card.sdf_delta) == ("flowsdf", "binary", 32, 1, 6.0)
    assert card.pixel_size_um == 0.5
    assert card.feature_channels == ckpt["net"]["base"] == 8
    assert card.training_data == "segflow synthetic" and card.licence.startswith("MIT")
    assert set(card.extra["val"]) == {"dice", "iou"} and 0.0 <= card.extra["val"]["dice"] <= 1.0
    assert len(card.extra["val_images"]) == 2 and card.extra["steps"] == 2
    assert (tmp_path / "card.json").is_file() and (tmp_path / "log.jsonl").read_text().count("\n") == 1
    assert NetConfig.from_dict(ckpt["net"]).in_channels == 1


def test_pooled_scores_hand_worked():
    pred = [[1, 1, 0], [0, 0, 0]]
    true = [[1, 0, 0], [1, 0, 0]]
    # tp 1, |pred| 2, |true| 2 -> dice 0.5; union 3 -> iou 1/3
    s = pooled_scores(pred, true)
    assert s["dice"] == 0.5 and s["iou"] == pytest.approx(1 / 3)
    assert pooled_scores([[0]], [[0]]) == {"dice": 1.0, "iou": 1.0}


def test_bad_inputs_are_one_sentence_errors(tmp_path):
    with pytest.raises(ModelCardError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelCardError, match="not a readable segflow checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="unknown"):
        get_objective(load_config(overrides={"kind": "diffusion"}))
    with pytest.raises(InputError, match="not a folder"):
        train(load_config(overrides=tiny_overrides(tmp_path, data=str(tmp_path / "nowhere"))))
