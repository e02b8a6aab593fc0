"""SSB training side: bridge posterior in torch, target, X1, Dice term, label dropout, card, short training."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from segflow.runtime.bridge import bridge_schedule, default_x1_recipe, x1_from_image  # noqa: E402
from segflow.trainer.bridge import (  # noqa: E402
    BridgeConfig,
    BridgeObjective,
    BridgePath,
    soft_dice_loss,
    x1_from_image_torch,
)
from segflow.trainer.nets import NetConfig, SegModel  # noqa: E402

from segflow.card import ModelCard  # noqa: E402

pytestmark = pytest.mark.torch
N = 50
PATH = BridgePath(bridge_schedule(N, 0.8))


def tiny_net(n_labels: int, in_channels: int = 1) -> SegModel:
    torch.manual_seed(0)
    cfg = NetConfig.from_name("lite", in_channels=in_channels, base=16, channel_mults=(1, 2), attention_ds=(),
                              attention_middle=False, encoder_blocks=0, encoder_nf=16, groups=8,
                              num_labels=n_labels + 1)
    return SegModel(cfg)


def test_posterior_ends_and_variance_between():
    x0 = torch.full((20000, 1, 1, 1), -1.0)
    x1 = torch.full_like(x0, 0.6)
    mu0, mu1, std, sigma = PATH.coefficients(torch.tensor([0]))
    assert (float(mu0), float(mu1), float(std), float(sigma)) == (1.0, 0.0, 0.0, 0.0)
    end = PATH.sample(x0[:4], x1[:4], torch.full((4,), N))
    torch.testing.assert_close(end.x_t, x1[:4])   # X_N = X1 exactly
    torch.manual_seed(0)
    for n in (1, 10, 25, 40):
        bs = PATH.sample(x0, x1, torch.full((len(x0),), n))
        s2, sb2 = PATH.schedule.sigma[n] ** 2, PATH.schedule.sigma_bar[n] ** 2
        mean, var = (sb2 * -1.0 + s2 * 0.6) / (s2 + sb2), s2 * sb2 / (s2 + sb2)
        assert float(bs.x_t.mean()) == pytest.approx(mean, abs=4 * np.sqrt(var / len(x0)))
        assert float(bs.x_t.var()) == pytest.approx(var, rel=0.05)
        assert float(bs.t[0]) == pytest.approx(n / N)


def test_target_recovers_x0_and_rejects_n_zero():
    g = torch.Generator().manual_seed(1)
    x0 = torch.where(torch.rand(3, 1, 8, 8, generator=g) < 0.5, -1.0, 1.0)
    x1 = torch.randn(3, 1, 8, 8, generator=g)
    bs = PATH.sample(x0, x1, torch.tensor([1, 20, N]))
    torch.testing.assert_close(bs.x_t - bs.sigma * bs.target, x0)
    with pytest.raises(ValueError, match="1..50"):
        PATH.sample(x0, x1, torch.tensor([0, 1, 2]))


def test_torch_x1_matches_runtime_x1():
    img = torch.rand(2, 3, 8, 8) * 2 - 1
    recipe = default_x1_recipe(scale=-0.5, noise=0.0)
    want = x1_from_image(img.numpy(), {"x1": recipe}, rng=np.random.default_rng(0))
    np.testing.assert_allclose(x1_from_image_torch(img, recipe).numpy(), want, atol=1e-6)
    noisy = x1_from_image_torch(torch.zeros(4, 1, 64, 64), default_x1_recipe(noise=0.3))
    assert float(noisy.std()) == pytest.approx(0.3, rel=0.05)


def test_soft_dice_loss_hand_worked():
    fg = torch.zeros(1, 1, 2, 2)
    fg[0, 0, 0] = 1.0                                           # 2 foreground pixels
    assert float(soft_dice_loss(1 - 2 * fg, fg)) == pytest.approx(0.0)
    assert float(soft_dice_loss(2 * fg - 1, fg)) == pytest.approx(1 - 1 / 5)   # p disjoint: (0+1)/(2+2+1)
    assert float(soft_dice_loss(torch.zeros(1, 1, 2, 2), fg)) == pytest.approx(1 - 3 / 5)  # p = 1/2 everywhere


class Spy(torch.nn.Module):
    """Records the labels the objective feeds and returns zeros with a gradient."""

    def __init__(self, num_labels: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.field = type("F", (), {"cfg": type("C", (), {"num_labels": num_labels})()})()
        self.labels = []

    def forward(self, x, t, image, label):
        self.labels.append(label.clone())
        assert ((t > 0) & (t <= 1)).all()
        return x * self.w


@pytest.mark.parametrize("p_uncond, expect_null", [(0.0, False), (1.0, True)])
def test_label_dropout(p_uncond, expect_null):
    obj = BridgeObjective(BridgeConfig(n_timesteps=N, p_uncond=p_uncond, sample_steps=10))
    spy = Spy(5)
    batch = {"image": torch.zeros(16, 1, 8, 8), "mask": torch.ones(16, 1, 8, 8), "label": torch.full((16,), 3)}
    loss = obj.loss(spy, batch)
    loss.backward()
    assert torch.isfinite(loss) and spy.w.grad is not None
    assert (spy.labels[0] == 0).all() if expect_null else (spy.labels[0] == 3).all()


def test_loss_backward_and_card_fields():
    obj = BridgeObjective.from_config(type("Cfg", (), {"objective": {"n_timesteps": N, "beta_max": 0.5,
                                                                     "sample_steps": 20}})())
    overrides = obj.net_overrides(n_labels=4)
    assert overrides["num_labels"] == 5
    model = tiny_net(4)
    batch = {"image": torch.randn(2, 1, 16, 16), "mask": (torch.rand(2, 1, 16, 16) < 0.3).float(),
             "label": torch.tensor([1, 4])}
    obj.loss(model, batch).backward()
    assert all(p.grad is not None for p in model.field.parameters() if p.requires_grad)
    card = ModelCard(**{"tile": 16, "in_channels": 1, **obj.card_fields()})
    assert card.kind == "ssb" and card.bridge["n_labels"] == 4 and card.bridge["n_timesteps"] == N
    assert card.sampling["steps"] == 20
    with pytest.raises(Exception, match="unknown option"):
        BridgeObjective.from_config(type("Cfg", (), {"objective": {"betamax": 1.0}})())


def test_sample_shapes_and_range():
    obj = BridgeObjective(BridgeConfig(n_timesteps=N, sample_steps=5))
    obj.net_overrides(n_labels=2)
    out = obj.sample(tiny_net(2).eval(), torch.randn(3, 1, 16, 16), label=torch.tensor([0, 1, 2]),
                     generator=torch.Generator().manual_seed(0), guidance=1.0)
    assert out.shape == (3, 1, 16, 16) and float(out.abs().max()) <= 1.0
