"""FlowSDF path, loss and sampler: exact checks against the formulas."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from segflow.trainer.flow import CondOTPath, FlowObjective  # noqa: E402

pytestmark = pytest.mark.torch


def test_target_is_x1_minus_scaled_noise_exactly():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(3, 1, 4, 4, generator=g), torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    t = torch.tensor([0.0, 0.3, 1.0])
    ps = CondOTPath(sigma_min=0.01).sample(x0, x1, t)
    assert torch.equal(ps.dx_t, x1 - (1 - 0.01) * x0)
    assert torch.equal(ps.t, t)
    assert torch.allclose(ps.x_t[0], x0[0], atol=0)  # noise at t = 0
    assert torch.allclose(ps.x_t[2], 0.01 * x0[2] + x1[2], atol=1e-7)  # data (+ sigma_min noise) at t = 1
    expected = (1 - 0.99 * 0.3) * x0[1] + 0.3 * x1[1]
    assert torch.allclose(ps.x_t[1], expected, atol=1e-7)


def test_path_velocity_is_time_derivative():
    x0, x1 = torch.randn(1, 1, 3, 3, dtype=torch.float64), torch.randn(1, 1, 3, 3, dtype=torch.float64)
    path, h = CondOTPath(1e-3), 1e-6
    a = path.sample(x0, x1, torch.tensor([0.4 - h], dtype=torch.float64)).x_t
    b = path.sample(x0, x1, torch.tensor([0.4 + h], dtype=torch.float64)).x_t
    assert torch.allclose((b - a) / (2 * h), path.sample(x0, x1, torch.tensor([0.4])).dx_t, atol=1e-8)


def test_path_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        CondOTPath().sample(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3), torch.zeros(1))
    with pytest.raises(ValueError, match="t must have shape"):
        CondOTPath().sample(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.zeros(3))
    with pytest.raises(ValueError):
        CondOTPath(sigma_min=1.0)


class _Recorder(torch.nn.Module):
    """model(x, t, image) returning a fixed tensor and recording its inputs."""

    def __init__(self, out):
        super().__init__()
        self.out, self.calls = out, []

    def forward(self, x, t, image):
        self.calls.append((x.clone(), t.clone()))
        return self.out


def test_loss_is_mse_against_the_path_target():
    obj = FlowObjective(sigma_min=0.1)
    x1 = torch.rand(2, 1, 4, 4) * 2 - 1
    model = _Recorder(torch.full((2, 1, 4, 4), 0.5))
    torch.manual_seed(5)
    loss = obj.loss(model, {"image": torch.zeros(2, 3, 4, 4), "target": x1})
    torch.manual_seed(5)
    x0 = torch.randn_like(x1)
    t = torch.rand(2)
    assert torch.equal(model.calls[0][1], t)
    assert torch.allclose(model.calls[0][0], (1 - 0.9 * t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * x1)
    assert torch.allclose(loss, ((0.5 - (x1 - 0.9 * x0)) ** 2).mean(), atol=1e-7)


class _ConstField(torch.nn.Module):
    """encoder = identity; field returns image-mean + 2 t (so Euler and RK4 results are known exactly)."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Identity()
        self.field = self._Field()
        self.nfe = 0

    class _Field(torch.nn.Module):
        def forward(self, x, t, features):
            return torch.ones_like(x) * features.mean() + 2 * t.view(-1, 1, 1, 1)


@pytest.mark.parametrize("method,steps", [("euler", 4), ("rk4", 2)])
def test_sample_integrates_from_noise(method, steps):
    g = torch.Generator().manual_seed(3)
    image = torch.full((2, 1, 4, 4), 0.25)
    out = FlowObjective().sample(_ConstField(), image, steps=steps, method=method, generator=g)
    x0 = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    # dx/dt = 0.25 + 2t: exact integral 0.25 + 1 = 1.25; Euler on 4 steps: 0.25 + 2 * (0 + .25 + .5 + .75)/4
    expected = 1.25 if method == "rk4" else 0.25 + 0.75
    assert torch.allclose(out, x0 + expected, atol=1e-6)


def test_card_fields_and_target_validation():
    assert FlowObjective(sigma_min=0.01, target="binary").card_fields() == {
        "kind": "flowsdf", "target": "binary", "sigma_min": 0.01, "bridge": {}}
    with pytest.raises(ValueError, match="target"):
        FlowObjective(target="mask")
