"""benchmarks/bench_runtime.py times its PyTorch reference on the engine's own architecture, not a look-alike.

Until this check existed the reference for the shipped default of the time (flowsdf-tiny-monuseg, preset
"custom") was the `lite` preset at the card's width: 587 521 weights against the engine's 319 793, which inflated
the reported speed-up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from segflow.card import load_card, resolve_engine  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "models" / "flowsdf-small-monuseg.onnx"


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_runtime")


def _weights(model) -> int:
    return sum(p.numel() for p in model.state_dict().values())


def _unrecorded(card):
    """The card as exports before the architecture was recorded wrote it."""
    return card.replace(extra={k: v for k, v in card.extra.items() if k != "net"})


def test_reference_for_default_model_is_its_own_architecture(bench):
    paths = resolve_engine(DEFAULT)
    card = _unrecorded(load_card(paths))
    shapes, total = bench.graph_parameters(paths)
    source, cfg = bench.reference_config(card, paths)
    assert source == "configs/flowsdf-small-monuseg.toml"
    assert (cfg.base, cfg.channel_mults, cfg.attention_ds) == (16, (1, 2, 2), ())
    assert (cfg.encoder_blocks, cfg.encoder_nf, cfg.encoder_growth) == (2, 32, 16)
    model, arch = bench.build_reference(card, paths, None)
    assert arch == source and _weights(model) == total
    assert all(tuple(model.state_dict()[k].shape) == v for k, v in shapes.items())


def test_lookalike_preset_is_rejected(bench, tmp_path, monkeypatch):
    """The old reference (lite at base 16) has other weights; with no matching candidate the run stops."""
    from segflow.trainer.nets import NetConfig, SegModel

    paths = resolve_engine(DEFAULT)
    _, total = bench.graph_parameters(paths)
    assert _weights(SegModel(NetConfig.from_name("lite", base=16))) != total
    card = _unrecorded(load_card(paths))
    monkeypatch.setattr(bench, "ROOT", tmp_path)  # no configs/ here: only the card's preset is left
    with pytest.raises(SystemExit, match="no known network architecture matches"):
        bench.reference_config(card.replace(preset="lite"), paths)


def test_recorded_net_is_preferred(bench):
    paths = resolve_engine(DEFAULT)
    card = load_card(paths)
    assert "net" in card.extra  # exports record it
    source, cfg = bench.reference_config(card, paths)
    assert source == "card extra.net" and cfg.to_dict() == card.extra["net"]


def test_a_subset_of_the_graph_is_not_a_match(bench, tmp_path, monkeypatch):
    """The default's config with one encoder block: each of its weights is in the graph with the right shape,
    but the graph's second block is not among its parameters, so it is refused (the match goes both ways)."""
    paths = resolve_engine(DEFAULT)
    card = _unrecorded(load_card(paths))
    (tmp_path / "configs").mkdir()
    table = (ROOT / "configs" / "flowsdf-small-monuseg.toml").read_text()
    (tmp_path / "configs" / "one-block.toml").write_text(table.replace("encoder_blocks = 2", "encoder_blocks = 1"))
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    with pytest.raises(SystemExit, match="no known network architecture matches"):
        bench.reference_config(card, paths)
    (tmp_path / "configs" / "two-blocks.toml").write_text(table)
    assert bench.reference_config(card, paths)[0] == "configs/two-blocks.toml"


def test_dynamo_export_matches_its_recorded_net(bench, tmp_path):
    """The dynamo exporter folds some weights into constants (``val_N``), so the total differs from PyTorch's;
    the named weights still identify the network."""
    import torch
    from segflow.export.onnx import export_model
    from segflow.trainer.nets import NetConfig, SegModel

    from segflow.card import ModelCard

    cfg = NetConfig(base=8, channel_mults=(1, 2), attention_ds=(2,), groups=4, encoder_blocks=1, encoder_nf=8,
                    encoder_growth=4)
    torch.manual_seed(0)
    card = ModelCard(kind="flowsdf", tile=16, in_channels=3, feature_channels=cfg.base)
    export_model(SegModel(cfg).eval(), card, tmp_path / "d.onnx", check=False)  # default exporter: dynamo
    paths = resolve_engine(tmp_path / "d.onnx")
    written = load_card(paths)
    assert bench.reference_config(written, paths) == ("card extra.net", cfg)
    other = NetConfig(**{**cfg.to_dict(), "channel_mults": (1, 2, 2)}).to_dict()
    with pytest.raises(SystemExit, match="no known network architecture matches"):
        bench.reference_config(written.replace(extra={"net": other}), paths)
