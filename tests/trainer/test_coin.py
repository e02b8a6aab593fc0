"""COIN self-distillation: loss weights, weighted flow loss, two-view scores and a tiny end-to-end loop."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from segflow.trainer.coin import (  # noqa: E402
    CoinConfig,
    PseudoLabels,
    expand,
    loss_weights,
    score_views,
    self_distill,
    weighted_flow_loss,
)
from segflow.trainer.flow import FlowObjective  # noqa: E402

from segflow.synthetic import synthetic_nuclei  # noqa: E402

TINY_NET = {"base": 8, "channel_mults": (1, 2), "attention_ds": (), "attention_middle": False,
            "encoder_nf": 8, "encoder_growth": 4, "groups": 4}

pytestmark = pytest.mark.torch


def test_loss_weights_hand_worked():
    lab = np.zeros((5, 7), int)
    lab[1:3, 1:3] = 1  # kept
    lab[2, 5] = 2  # dropped
    w = loss_weights(lab, np.array([1]), margin=1)
    want = np.ones((5, 7), np.float32)
    want[1:4, 5] = 0  # the dropped pixel and its 4-neighbours
    want[2, 4:7] = 0
    np.testing.assert_array_equal(w, want)
    ign = np.zeros((5, 7), bool)
    ign[4, 0] = True
    w2 = loss_weights(lab, np.array([1, 2]), ignore=ign, margin=0)
    assert w2.sum() == 34 and w2[4, 0] == 0


def test_expand_carries_confident_instances_hand_worked():
    prev_lab = np.array([[1, 1, 1, 0, 2, 2, 2, 0, 3, 3, 0, 0]])
    prev = PseudoLabels(prev_lab, np.array([True, True, False]), np.ones((1, 12), np.float32),
                        np.array([0.9, 0.8, 0.2]), 0.5)
    pred = np.array([[0, 5, 5, 5, 0, 0, 0, 0, 0, 7, 7, 0]])
    refined = np.zeros((1, 12), int)
    refined[0, 11] = 4  # seed foreground nobody kept
    # scores 0.95, 0.1: delta = min(0.525 + 0.425, 0.9) = 0.9 -> 5 is confident, 7 is not
    p = expand(prev, pred, np.array([0.95, 0.1]), refined, cap=0.9, margin=0)
    assert p.delta == pytest.approx(0.9)
    # 5 replaces 1 (its uncovered pixel is ignored), 2 is carried as 2 + 7, unconfident 7 stays with weight 0
    assert p.labels.tolist() == [[0, 5, 5, 5, 9, 9, 9, 0, 0, 7, 7, 0]]
    assert p.keep.tolist() == [True, False, True]
    np.testing.assert_allclose(p.scores, [0.95, 0.1, 0.8])
    assert p.weight.tolist() == [[0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]]
    # a round whose model is sure of nothing keeps every previous confident instance
    q = expand(prev, np.zeros((1, 12), int), np.zeros(0), refined, margin=0)
    assert q.labels.tolist() == [[1, 1, 1, 0, 2, 2, 2, 0, 0, 0, 0, 0]] and q.keep.all()


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, t, image):
        return self.a * x + image[:, :1]


def test_weighted_flow_loss_matches_mse_and_ignores_zero_weight():
    obj, net = FlowObjective(), _Net()
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 1, 4, 4, generator=g), "target": torch.rand(2, 1, 4, 4, generator=g) * 2 - 1,
             "weight": torch.ones(2, 1, 4, 4)}
    torch.manual_seed(1)
    ours = weighted_flow_loss(obj, net, batch)
    torch.manual_seed(1)
    ref = obj.loss(net, batch)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    batch["weight"][:, :, :2] = 0
    torch.manual_seed(1)
    a = weighted_flow_loss(obj, net, batch)
    batch["target"][:, :, :2] = 5.0  # change only ignored pixels
    torch.manual_seed(1)
    b = weighted_flow_loss(obj, net, batch)
    assert a.item() == b.item()


def test_score_views():
    pred = np.zeros((4, 6), int)
    pred[:, :3] = 1
    pred[:, 3:] = 2
    seeds = np.zeros((4, 6), int)
    seeds[:, :3] = 5  # instance 1 matches, instance 2 has no seed
    sdfs = np.stack([np.where(pred > 0, -1.0, 1.0)] * 2)
    sdfs[1][:, 3:] = 1.0  # one of two samples loses instance 2
    np.testing.assert_allclose(score_views(pred, sdfs, seeds, "samples"), [1.0, 0.5])
    np.testing.assert_allclose(score_views(pred, sdfs, seeds, "seeds"), [1.0, 0.0])
    np.testing.assert_allclose(score_views(pred, sdfs, seeds, "both"), [1.0, 0.25])
    with pytest.raises(ValueError, match="views"):
        score_views(pred, sdfs, seeds, "mae")


def test_self_distill_runs_and_scores_instances():
    images = [synthetic_nuclei((32, 32), n=4, seed=s)[0] for s in range(2)]
    cfg = CoinConfig(rounds=1, steps=3, batch=2, tile=16, samples=2, sample_steps=2, net=TINY_NET)
    res = self_distill(images, cfg)
    assert len(res.pseudo) == 2 and len(res.history) == 1
    for p in res.pseudo:
        assert p.weight.shape == (32, 32) and set(np.unique(p.weight)) <= {0.0, 1.0}
        assert p.keep.shape == p.scores.shape == (len(np.unique(p.labels)) - 1,)
        assert 0 <= p.delta <= 0.9
    assert np.isfinite(res.history[0]["loss"])
