"""The Segmenter session on the tiny engines: identity through the tiler, known mean/std, seeds, bad inputs."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import segflow.runtime.session as session_mod
from segflow.runtime.blend import BLENDS, Blender
from segflow.runtime.sampling import tile_noise
from segflow.runtime.session import Cancelled, Segmenter, iter_tiles
from segflow.runtime.tiling import plan_tiles

from segflow.errors import InputError, ModelCardError
from segflow.normalize import normalize

SIGMA = 1e-4


def _img(shape, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape).astype(np.uint8)
    if dtype == np.uint16:
        return rng.integers(0, 65536, shape).astype(np.uint16)
    return rng.uniform(0, 1, shape).astype(dtype)


def _discs(h=40, w=56):
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - 20) ** 2 + (xx - 15) ** 2 <= 8**2) | ((yy - 20) ** 2 + (xx - 40) ** 2 <= 9**2)
    return np.where(inside, 0, 255).astype(np.uint8), inside


@pytest.fixture(scope="module")
def dirac(models_dir):
    with Segmenter(models_dir / "dirac.onnx", samples=2, steps=3, stride=11, threads=1,
                   instances="watershed") as seg:
        yield seg


@pytest.mark.parametrize("blend", sorted(BLENDS))
@pytest.mark.parametrize("shape", [(37, 29), (16, 16), (5, 9), (1, 1), (50, 17)])
def test_identity_engine_reproduces_the_normalised_image(models_dir, blend, shape):
    img = _img(shape)
    with Segmenter(models_dir / "dirac.onnx", samples=2, steps=3, method="heun", stride=7, blend=blend,
                   threads=1, instances="threshold") as seg:
        r = seg(img)
    want = normalize(img[..., None], {"mode": "dtype"})[..., 0]
    # x1 = f0 + sigma_min * x0 exactly (OT field), so the only deviation is sigma_min times blended noise
    np.testing.assert_allclose(r.mean_sdf, want, atol=SIGMA * 6)
    assert r.mean_sdf.shape == shape and r.std.max() < SIGMA * 6
    assert r.sample_sdfs.shape == (2, *shape)
    np.testing.assert_array_equal(r.mask, r.mean_sdf <= 0)


@pytest.mark.parametrize("dtype,scale", [(np.uint16, 65535.0), (np.float32, 1.0), (np.float64, 1.0)])
def test_bit_depths_are_normalised_as_in_training(dirac, dtype, scale):
    img = _img((20, 21), dtype)
    r = dirac(img)
    want = np.clip(img.astype(np.float64) / scale, 0, 1) * 2 - 1
    np.testing.assert_allclose(r.mean_sdf, want, atol=SIGMA * 6)


def test_rgb_engine_takes_rgb_and_grayscale(models_dir):
    rgb, gray = _img((18, 23, 3)), _img((18, 23))
    with Segmenter(models_dir / "dirac_rgb.onnx", samples=1, stride=12, instances="threshold") as seg:
        r = seg(rgb)
        np.testing.assert_allclose(r.mean_sdf, rgb.astype(np.float64).mean(-1) / 255 * 2 - 1, atol=SIGMA * 6)
        r = seg(gray)  # repeated to three channels
        np.testing.assert_allclose(r.mean_sdf, gray / 255 * 2 - 1, atol=SIGMA * 6)


def test_grayscale_engine_takes_rgb_as_luminance(dirac):
    rgb = _img((18, 23, 3))
    lum = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(dirac(rgb).mean_sdf, lum / 255 * 2 - 1, atol=SIGMA * 6 + 1e-5)


def test_mean_std_prob_over_k_on_known_model(models_dir):
    img = _img((16, 16))  # one tile: no blending, samples are exactly (3/4)^4 * noise
    with Segmenter(models_dir / "negx.onnx", samples=5, steps=4, seed=11, instances="threshold") as seg:
        r = seg(img)
    noise = np.stack([tile_noise(11, 0, k, (16, 16)) for k in range(5)]).astype(np.float64) * 0.75**4
    np.testing.assert_allclose(r.sample_sdfs, noise, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r.mean_sdf, noise.mean(0), atol=1e-6)
    np.testing.assert_allclose(r.std, noise.std(0), atol=1e-6)
    np.testing.assert_allclose(r.prob, (noise <= 0).mean(0))
    assert r.nfe == 4 and r.timings["sample_evaluations"] == 5 * 4


def test_const_model_shifts_noise_by_half(models_dir):
    img = _img((16, 16))
    with Segmenter(models_dir / "const.onnx", samples=3, steps=5, method="rk4", seed=2,
                   instances="threshold") as seg:
        r = seg(img)
    noise = np.stack([tile_noise(2, 0, k, (16, 16)) for k in range(3)])
    np.testing.assert_allclose(r.sample_sdfs, noise + 0.5, atol=1e-6)
    assert r.nfe == 20


def test_blended_samples_match_a_manual_blend(models_dir):
    img = _img((30, 25))
    with Segmenter(models_dir / "negx.onnx", samples=2, steps=2, stride=9, seed=4, blend="linear",
                   instances="threshold") as seg:
        r = seg(img)
    plan = plan_tiles(img.shape, 16, 9)
    b = Blender(img.shape, 2, mode="linear")
    for t in plan:
        b.add(t, np.stack([tile_noise(4, t.index, k, (16, 16)) for k in range(2)]) * 0.25)
    np.testing.assert_allclose(r.sample_sdfs, b.result(), rtol=1e-6, atol=1e-7)


def test_seed_reproducible_and_independent_of_batch(models_dir):
    img = _img((40, 35))
    kw = {"samples": 3, "steps": 2, "stride": 10, "instances": "threshold"}
    with Segmenter(models_dir / "blur.onnx", batch_size=1, seed=7, **kw) as a, \
            Segmenter(models_dir / "blur.onnx", batch_size=64, seed=7, **kw) as b:
        ra, rb = a(img), b(img)
        np.testing.assert_array_equal(ra.sample_sdfs, rb.sample_sdfs)
        np.testing.assert_array_equal(ra.sample_sdfs, a(img).sample_sdfs)
        rc = a(img, seed=8)
        assert rc.seed == 8 and not np.array_equal(rc.sample_sdfs, ra.sample_sdfs)
        np.testing.assert_array_equal(rc.sample_sdfs, b(img, seed=8).sample_sdfs)


def test_instances_of_two_discs(dirac):
    img, inside = _discs()
    r = dirac(img)
    assert r.n_instances == 2 and r.labels.dtype == np.uint16
    np.testing.assert_array_equal(r.labels > 0, inside)
    areas = sorted(row["area"] for row in r.instances)
    assert areas == sorted([int(inside[:, :28].sum()), int(inside[:, 28:].sum())])
    for row in r.instances:
        assert row["mean_sdf"] == pytest.approx(-1.0, abs=1e-3) and row["mean_std"] < 1e-3
        assert set(row) >= {"id", "area", "centroid", "bbox", "mean_sdf", "mean_std"}
    json.dumps(list(r.instances))  # JSON-safe rows


def test_predict_tiles_streams_the_same_samples(dirac):
    img = _img((30, 30))
    full = dirac(img)
    x, stats = dirac.prepare(img)
    plan = plan_tiles(x.shape, 16, dirac.stride)
    b = Blender(x.shape[:2], 2, mode=dirac.blend)
    seen = []
    for tile, samples in dirac.predict_tiles(iter_tiles(x, plan), stats=stats):
        seen.append(tile.index)
        b.add(tile, samples)
    assert seen == [t.index for t in plan]
    np.testing.assert_array_equal(b.result(), full.sample_sdfs)


def test_progress_and_cancel(dirac):
    calls = []
    r = dirac(_img((30, 30)), progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (r.timings["tiles"], r.timings["tiles"])
    with pytest.raises(Cancelled):
        dirac(_img((30, 30)), cancel=lambda: True)


def test_threads_share_one_segmenter(dirac):
    imgs = [_img((24, 31), seed=s) for s in range(3)]
    want = [dirac(im).sample_sdfs for im in imgs]
    got = [None] * 3
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, dirac(imgs[i]).sample_sdfs)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w, g)


@pytest.mark.parametrize("image,match", [
    (np.zeros((8, 8), np.complex64), "dtype"),
    (np.zeros((8, 8), bool), "dtype"),
    (np.zeros((8, 8, 2), np.uint8), "channels"),
    (np.zeros((2, 8, 8, 3), np.uint8), "shape"),
    (np.full((8, 8), np.nan, np.float32), "NaN"),
])
def test_bad_images(dirac, image, match):
    with pytest.raises(InputError, match=match):
        dirac(image)


def _copy_engine(models_dir, tmp_path, name="negx", encoder=True):
    shutil.copy(models_dir / f"{name}.onnx", tmp_path / f"{name}.onnx")
    if encoder:
        shutil.copy(models_dir / f"{name}.encoder.onnx", tmp_path / f"{name}.encoder.onnx")
    return tmp_path / f"{name}.onnx"


def test_engine_errors(models_dir, tmp_path):
    with pytest.raises(ModelCardError, match="does not exist"):
        Segmenter(tmp_path / "missing.onnx")
    with pytest.raises(ModelCardError, match="companion encoder"):
        Segmenter(_copy_engine(models_dir, tmp_path, encoder=False))
    with pytest.raises(ModelCardError, match="encoder graph"):
        Segmenter(models_dir / "negx.encoder.onnx")


def _with_card(models_dir, tmp_path, **changes):
    eng = _copy_engine(models_dir, tmp_path)
    card = json.loads(Segmenter(models_dir / "negx.onnx").card.to_json())
    card.update(changes)
    (tmp_path / "negx.card.json").write_text(json.dumps(card))
    return eng


def test_wrong_kind_and_channels(models_dir, tmp_path):
    with pytest.raises(ModelCardError, match="kind 'ssb'"):
        Segmenter(_with_card(models_dir, tmp_path, kind="ssb"))
    with pytest.raises(ModelCardError, match="channels"):
        Segmenter(_with_card(models_dir, tmp_path, in_channels=3))
    with pytest.raises(ModelCardError, match="unknown"):
        Segmenter(_with_card(models_dir, tmp_path, kind="gan"))


def test_sampling_option_errors(models_dir):
    with pytest.raises(InputError, match="stride"):
        Segmenter(models_dir / "negx.onnx", stride=17)
    with pytest.raises(InputError, match="samples must be at least 1, got -1"):
        Segmenter(models_dir / "negx.onnx", samples=-1)
    with pytest.raises(InputError, match="invalid sampling options"):  # checked by SamplingSettings itself
        Segmenter(models_dir / "negx.onnx", noise_iterations=-1)
    with pytest.raises(InputError, match="blend"):
        Segmenter(models_dir / "negx.onnx", blend="max")
    with pytest.raises(InputError, match="instance method"):
        Segmenter(models_dir / "negx.onnx", instances="cellpose")


def test_batch_is_capped_at_an_engine_s_largest_batch(models_dir, monkeypatch):
    """A TensorRT engine's profile fixes its largest batch: the Segmenter fits its batch under it, same result."""

    real_open = session_mod.open_backend
    seen: list[int] = []

    class Capped:
        def __init__(self, inner, cap):
            self.inner, self.max_batch = inner, cap

        def activate(self):
            self.inner.activate()
            return self

        def infer(self, feed, **kw):
            seen.append(next(iter(feed.values())).shape[0])
            assert seen[-1] <= self.max_batch
            return self.inner.infer(feed, **kw)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    img = _img((48, 60))
    with Segmenter(models_dir / "dirac.onnx", samples=2, steps=2, stride=11, threads=1, batch_size=64) as seg:
        want = seg(img)
    monkeypatch.setattr(session_mod, "open_backend", lambda *a, **k: Capped(real_open(*a, **k), 4))
    with Segmenter(models_dir / "dirac.onnx", samples=2, steps=2, stride=11, threads=1) as seg:
        assert seg.settings.batch == 4  # min(field 4, encoder 4 x K=2)
        got = seg(img)
    assert seen and max(seen) == 4  # field calls of 2 tiles x K=2 fill the cap
    np.testing.assert_array_equal(got.mean_sdf, want.mean_sdf)
    with pytest.raises(InputError, match=r"exceeds the largest batch .*\(4\): lower it or rebuild with `runtime "
                                         r"build --onnx NAME.onnx --out .*dirac.onnx --batch 1:8:8`\.$"):
        Segmenter(models_dir / "dirac.onnx", samples=2, steps=2, threads=1, batch_size=8)


def test_cpu_default_batch_keeps_calls_cache_sized(models_dir, tmp_path):
    """On the CPU provider the default batch holds at most CPU_CALL_PIXELS pixels; --batch-size overrides it."""
    from segflow.runtime.sampling import batch_from_budget

    for tile in (16, 64, 256):
        engine = _retiled(models_dir, tmp_path / str(tile), tile)
        with Segmenter(engine, samples=2, steps=1, threads=1, backend="cpu") as seg:
            budget = batch_from_budget(tile, seg.card.feature_channels, "euler", 1024 * 2**20)
            want = min(budget, max(1, session_mod.CPU_CALL_PIXELS // tile**2))
            assert seg.settings.batch == want
            assert want < budget or tile == 16  # the cap binds for every tile but the smallest
        with Segmenter(engine, samples=2, steps=1, threads=1, backend="cpu", batch_size=40) as seg:
            assert seg.settings.batch == 40


def _retiled(models_dir, folder, tile):
    """The dirac engine with its card's tile changed (the graphs are fully convolutional)."""
    import onnx

    folder.mkdir()
    for name in ("dirac.onnx", "dirac.encoder.onnx"):
        model = onnx.load(models_dir / name)
        for prop in model.metadata_props:
            if prop.key == "segflow.card":
                card = json.loads(prop.value)
                card["tile"] = tile
                prop.value = json.dumps(card, sort_keys=True)
        onnx.save(model, folder / name)
    return folder / "dirac.onnx"


def _tile_threads():
    return [t for t in threading.enumerate() if t.name.startswith("segflow-tiles")]


def test_tile_workers_give_the_same_result(models_dir):
    """Groups of tiles sampled by two workers (one ORT thread each) give what one worker with two threads gives."""
    img = _img((70, 90, 3))
    runs = {}
    for workers in (1, 2):
        with Segmenter(models_dir / "blur.onnx", samples=2, steps=2, stride=11, threads=2, tile_workers=workers,
                       batch_size=2, backend="cpu", instances="watershed") as seg:
            assert seg.tile_workers == workers
            assert seg.backend_info["threads"] == 2 // workers and seg.backend_info["tile_workers"] == workers
            runs[workers] = seg(img)
            x, stats = seg.prepare(img)
            plan = plan_tiles(x.shape, seg.card.tile, seg.stride)
            streamed = list(seg.predict_tiles(iter_tiles(x, plan), stats=stats))
            assert [t.index for t, _ in streamed] == [t.index for t in plan]  # in plan order, whatever finished first
            b = Blender(x.shape[:2], 2, mode=seg.blend)
            for tile, samples in streamed:
                b.add(tile, samples)
            np.testing.assert_array_equal(b.result(), runs[workers].sample_sdfs)
    one, two = runs[1], runs[2]
    assert one.timings["tiles"] > 4 * 2  # more groups than the two workers hold in flight
    np.testing.assert_allclose(two.sample_sdfs, one.sample_sdfs, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(two.labels, one.labels)
    for key in ("encoder_tiles", "field_calls", "sample_evaluations"):
        assert two.timings[key] == one.timings[key]
    assert not _tile_threads()


def test_tile_workers_pass_on_errors_and_cancel(models_dir, monkeypatch):
    img = _img((60, 60))
    with Segmenter(models_dir / "dirac.onnx", samples=2, steps=1, stride=11, threads=2, tile_workers=2,
                   batch_size=2, backend="cpu", instances="threshold") as seg:
        real, calls = seg.sampler.sample, []

        def flaky(images, indices, stats=None, **kw):
            calls.append(indices)
            if len(calls) == 3:
                raise RuntimeError("engine failed on group 3")
            return real(images, indices, stats, **kw)

        monkeypatch.setattr(seg.sampler, "sample", flaky)
        with pytest.raises(RuntimeError, match="group 3"):
            seg(img)
        polls = []
        with pytest.raises(Cancelled):
            seg(img, cancel=lambda: polls.append(1) or len(polls) > 5)
        assert not _tile_threads()
    with pytest.raises(InputError, match="tile_workers must be at least 1"):
        Segmenter(models_dir / "dirac.onnx", tile_workers=0)
