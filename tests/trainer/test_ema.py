"""EMA: exact blend with the warm-up decay, state round trip."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from segflow.trainer.ema import EMA  # noqa: E402

pytestmark = pytest.mark.torch


def test_ema_blend_is_exact():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay min(0.9, 1/10) = 0.1 -> 0.9
    assert ema.shadow.weight.item() == pytest.approx(0.9)
    ema.update(model)  # decay min(0.9, 2/11) -> 0.9 * 2/11 + 9/11
    assert ema.shadow.weight.item() == pytest.approx(0.9 * 2 / 11 + 9 / 11)
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9


def test_ema_state_round_trip_and_validation():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.99)
    ema.update(model)
    other = EMA(torch.nn.Linear(2, 2), 0.99)
    other.load_state_dict(ema.state_dict(), updates=1)
    assert other.updates == 1 and torch.equal(other.shadow.weight, ema.shadow.weight)
    assert not any(p.requires_grad for p in other.shadow.parameters())
    with pytest.raises(ValueError):
        EMA(model, 1.0)
