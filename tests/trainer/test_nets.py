"""Tests of segflow.trainer.nets: preset sizes, shapes, zero-init, fusion and label conditioning."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from segflow.trainer._blocks import timestep_embedding  # noqa: E402
from segflow.trainer.nets import (  # noqa: E402
    PRESETS,
    ImageEncoder,
    NetConfig,
    SegModel,
    VectorFieldUNet,
    count_parameters,
)

from segflow.errors import ModelCardError  # noqa: E402

pytestmark = pytest.mark.torch

TINY = dict(base=8, channel_mults=(1, 2), num_res_blocks=1, attention_ds=(2,), groups=4, encoder_blocks=1,
            encoder_nf=8, encoder_growth=4)


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter (including zero-initialised ones) small random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def test_paper_preset_has_the_reference_parameter_count():
    with torch.device("meta"):  # no memory for 160 M parameters
        model = SegModel(NetConfig.from_name("paper"))
    n = count_parameters(model)
    assert abs(n - 160.6e6) / 160.6e6 < 0.005
    # encoder: conv_first 3->64, 12 RRDBs, trunk/HR convs 64->64, conv_last 64->128
    rdb = sum(9 * (64 + 32 * i) * 32 + 32 for i in range(4)) + 9 * (64 + 128) * 64 + 64
    expected_encoder = (9 * 3 * 64 + 64) + 12 * 3 * rdb + 2 * (9 * 64 * 64 + 64) + (9 * 64 * 128 + 128)
    assert count_parameters(model.encoder) == expected_encoder


def test_lite_preset_is_small():
    n = count_parameters(SegModel(NetConfig.from_name("lite")))
    assert 1_000_000 <= n <= 3_000_000


@pytest.mark.parametrize("in_channels", [1, 3])
def test_shapes_and_feature_width(in_channels):
    cfg = NetConfig(**TINY, in_channels=in_channels)
    model = SegModel(cfg)
    image = torch.randn(3, in_channels, 16, 24)
    feats = model.encoder(image)
    assert feats.shape == (3, cfg.base, 16, 24)
    out = model.field(torch.randn(3, 1, 16, 24), torch.rand(3), feats)
    assert out.shape == (3, 1, 16, 24)


def test_fresh_field_outputs_exactly_zero():
    model = SegModel(NetConfig(**TINY))
    out = model(torch.randn(2, 1, 16, 16), torch.rand(2), torch.randn(2, 3, 16, 16))
    assert torch.count_nonzero(out) == 0


def test_field_depends_on_time_state_and_features():
    field = VectorFieldUNet(NetConfig(**TINY))
    _randomise(field)
    x, t, f = torch.randn(2, 1, 16, 16), torch.tensor([0.1, 0.7]), torch.randn(2, 8, 16, 16)
    base = field(x, t, f)
    assert not torch.allclose(base, field(x, t + 0.3, f))
    assert not torch.allclose(base, field(x + 1, t, f))
    assert not torch.allclose(base, field(x, t, f + 1))
    # a scalar time means the same time for every item
    assert torch.allclose(field(x, torch.tensor(0.5), f), field(x, torch.full((2,), 0.5), f))


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 0.03), (torch.bfloat16, 0.1)])
def test_half_precision_model_runs_and_follows_float32(dtype, rtol):
    """model.to(float16 / bfloat16), as the GPU benchmark's PyTorch reference runs it: the float32 time
    embedding is cast to the model's dtype (it used to reach the first Linear as float32 and raise)."""
    model = SegModel(NetConfig(**TINY)).eval()
    _randomise(model)
    x, t, image = torch.randn(2, 1, 16, 16), torch.tensor([0.125, 0.75]), torch.randn(2, 3, 16, 16)  # exact in
    with torch.inference_mode():  # float16 and bfloat16, so both time dtypes carry the same value
        ref = model(x, t, image)
        half = model.to(dtype)
        out = half(x.to(dtype), t.to(dtype), image.to(dtype))
        assert torch.equal(half(x.to(dtype), t, image.to(dtype)), out)  # float32 or low-precision time alike
    assert out.dtype == dtype
    assert float((out.float() - ref).abs().max()) <= rtol * float(ref.abs().max())


def test_segdiff_fusion_adds_features_after_first_conv():
    field = VectorFieldUNet(NetConfig(**TINY))
    _randomise(field)
    x, t = torch.randn(1, 1, 8, 8), torch.rand(1)
    # features equal to -conv_in(x) cancel the state: the output then no longer depends on x
    with torch.no_grad():
        out = field(x, t, -field.conv_in(x))
        zero_state = field(torch.zeros_like(x), t, -field.conv_in.bias[None, :, None, None].expand(1, 8, 8, 8))
    assert torch.allclose(out, zero_state, atol=1e-5)


def test_label_conditioning_only_with_a_label_table():
    cfg = NetConfig(**TINY, num_labels=3)
    field = VectorFieldUNet(cfg)
    _randomise(field)
    x, t, f = torch.randn(2, 1, 16, 16), torch.rand(2), torch.randn(2, 8, 16, 16)
    a = field(x, t, f, torch.tensor([1, 1]))
    b = field(x, t, f, torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
    assert torch.equal(field(x, t, f), field(x, t, f, torch.tensor([0, 0])))  # missing label = null label 0
    plain = VectorFieldUNet(NetConfig(**TINY))
    assert plain.label_emb is None
    with pytest.raises(ValueError, match="num_labels=0"):
        plain(x, t, f, torch.tensor([1, 1]))


def test_encoder_ignores_nothing_but_its_image():
    enc = ImageEncoder(NetConfig(**TINY))
    img = torch.randn(1, 3, 8, 8)
    assert torch.equal(enc(img), enc(img.clone()))
    assert not torch.allclose(enc(img), enc(img + 0.5))


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0.0, 2.0]), 5)
    assert emb.shape == (2, 5)
    # half = 2 frequencies: 1 and 1e-2; cos then sin, then one zero column
    assert torch.allclose(emb[0], torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]))
    expected = torch.tensor([torch.cos(torch.tensor(2.0)), torch.cos(torch.tensor(0.02)),
                             torch.sin(torch.tensor(2.0)), torch.sin(torch.tensor(0.02)), 0.0])
    assert torch.allclose(emb[1], expected, atol=1e-6)


def test_presets_overrides_and_dict_round_trip():
    cfg = NetConfig.from_name("paper", base=32, groups=8, encoder_blocks=1)
    assert (cfg.base, cfg.channel_mults, cfg.attention_ds, cfg.name) == (32, (1, 1, 2, 2, 4, 4), (16, 8), "paper")
    assert cfg.size_multiple == 32 and cfg.time_emb_dim == 128
    assert NetConfig.from_dict(cfg.to_dict()) == cfg
    assert PRESETS["lite"] == NetConfig.from_name("lite", base=None)  # None = keep the preset's value


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: NetConfig.from_name("huge"), "preset 'huge' is unknown"),
        (lambda: NetConfig.from_name("lite", widht=3), "unknown"),
        (lambda: NetConfig(base=12, groups=8), "not divisible by groups=8"),
        (lambda: NetConfig(in_channels=2), "in_channels=2"),
        (lambda: NetConfig.from_dict({"base": 8, "colour": 1}), "unknown network fields"),
    ],
)
def test_bad_configs_give_one_sentence(call, match):
    with pytest.raises(ModelCardError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
