"""segflow.card: validation, JSON round trip, engine resolution."""

from __future__ import annotations

import pytest

from segflow.card import ModelCard, load_card, resolve_engine
from segflow.errors import ModelCardError


def test_json_round_trip_and_digest():
    card = ModelCard(kind="ssb", tile=64, in_channels=1, bridge={"beta_max": 0.3}, extra={"val": {"dice": 0.8}})
    again = ModelCard.from_json(card.to_json())
    assert again == card and again.digest() == card.digest()
    assert card.replace(tile=128).digest() != card.digest()


@pytest.mark.parametrize("changes,match", [
    ({"kind": "gan"}, "kind"), ({"in_channels": 2}, "in_channels"), ({"tile": 60}, "multiple of 8"),
    ({"sdf_delta": 0}, "sdf_delta"), ({"normalisation": {"mode": "zscore"}}, "normalisation"),
])
def test_invalid_cards_are_rejected(changes, match):
    with pytest.raises(ModelCardError, match=match):
        ModelCard(**changes)


def test_unknown_fields_and_bad_json():
    with pytest.raises(ModelCardError, match="unknown fields"):
        ModelCard.from_dict({"kind": "flowsdf", "colour": "red"}, source="x.json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        ModelCard.from_json("{", source="x.json")
    with pytest.raises(ModelCardError, match="not a JSON object"):
        ModelCard.from_dict([1, 2])


def test_resolve_engine_conventions(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ModelCardError, match="no companion encoder"):
        resolve_engine(tmp_path / "m.onnx")
    (tmp_path / "m.encoder.onnx").write_bytes(b"")
    for arg in (tmp_path / "m.onnx", tmp_path / "m", tmp_path):
        e = resolve_engine(arg)
        assert (e.field.name, e.encoder.name, e.card.name, e.format) == ("m.onnx", "m.encoder.onnx",
                                                                         "m.card.json", "onnx")
    with pytest.raises(ModelCardError, match="encoder graph"):
        resolve_engine(tmp_path / "m.encoder.onnx")
    with pytest.raises(ModelCardError, match="does not exist"):
        resolve_engine(tmp_path / "other.onnx")
    (tmp_path / "n.onnx").write_bytes(b"")
    with pytest.raises(ModelCardError, match="2 field graphs"):
        resolve_engine(tmp_path)


def test_card_sidecar_wins_and_plans_need_one(tmp_path):
    for name in ("p.plan", "p.encoder.plan"):
        (tmp_path / name).write_bytes(b"")
    e = resolve_engine(tmp_path / "p.plan")
    with pytest.raises(ModelCardError, match="has no card"):
        load_card(e)
    card = ModelCard(tile=32)
    (tmp_path / "p.card.json").write_text(card.to_json())
    assert load_card(e) == card
