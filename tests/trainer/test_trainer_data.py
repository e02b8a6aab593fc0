"""Data: folder layouts, split by image, deterministic tiles, targets aligned with images after augmentation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from segflow.trainer.cli import main  # noqa: E402
from segflow.trainer.data import (  # noqa: E402
    Pair,
    TileDataset,
    batches,
    describe_data,
    load_pairs,
    prepare,
    split_pairs,
    val_tiles,
)

from segflow.errors import InputError  # noqa: E402
from segflow.imageio import write_tiff  # noqa: E402
from segflow.normalize import normalize  # noqa: E402
from segflow.sdf import mask_to_sdf  # noqa: E402

pytestmark = pytest.mark.torch


def _write_folder(root, n=3, mask_dir="labels", mask_suffix=""):
    import cv2

    for i in range(n):
        img = np.full((20, 24, 3), 40 * i, np.uint8)
        lab = np.zeros((20, 24), np.uint16)
        lab[5:10, 5:10], lab[10:15, 5:10] = 1, 2
        (root / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"im{i}.png"), img)
        write_tiff(root / mask_dir / f"im{i}{mask_suffix}.tif", lab)


def test_paired_folder_with_train_subfolder_and_mask_suffix(tmp_path):
    _write_folder(tmp_path / "train", mask_dir="masks", mask_suffix="_mask")
    pairs = load_pairs(str(tmp_path))
    assert [p.name for p in pairs] == ["im0", "im1", "im2"]
    assert pairs[1].image.shape == (20, 24, 3) and pairs[1].image[0, 0, 0] == 40
    assert sorted(np.unique(pairs[0].labels).tolist()) == [0, 1, 2]


def test_missing_mask_is_one_sentence(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "labels" / "im1.tif").unlink()
    with pytest.raises(InputError, match="im1.png has no mask"):
        load_pairs(str(tmp_path))


def test_binary_255_masks_become_0_1(tmp_path):
    import cv2

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.bmp"), np.zeros((8, 8), np.uint8))
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:5] = 255
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), m)
    (pair,) = load_pairs(str(tmp_path))
    assert np.array_equal(pair.labels, (m > 0).astype(np.int32))


def test_ctc_and_annotator_layouts_from_trainer_synth(tmp_path):
    assert main(["synth", "--out", str(tmp_path / "seq"), "--kind", "sequence", "--n", "3", "--size", "48"]) == 0
    pairs = load_pairs(str(tmp_path / "seq"))
    assert [p.name for p in pairs] == ["01/t000", "01/t001", "01/t002"]
    assert all(p.labels.max() >= 1 and p.label == 0 for p in pairs)
    assert main(["synth", "--out", str(tmp_path / "les"), "--kind", "lesions", "--n", "2", "--size", "32"]) == 0
    pairs = load_pairs(str(tmp_path / "les"))
    assert [(p.name, p.label) for p in pairs] == [(f"case00{i}", k) for i in range(2) for k in range(1, 5)]
    train, val = split_pairs(pairs, 1, seed=0)
    assert len(val) == 4 and len({p.name for p in val}) == 1 and not {p.name for p in val} & {p.name for p in train}


def test_split_counts_and_fractions():
    pairs = [Pair(f"n{i}", np.zeros((4, 4)), np.zeros((4, 4), np.int32)) for i in range(10)]
    assert [len(s) for s in split_pairs(pairs, 0.2, 0)] == [8, 2]
    assert [len(s) for s in split_pairs(pairs, 3, 0)] == [7, 3]
    assert [len(s) for s in split_pairs(pairs, 0, 0)] == [10, 0]
    assert split_pairs(pairs, 0.2, 1) == split_pairs(pairs, 0.2, 1)


def test_tiles_are_deterministic_and_aligned():
    pair = Pair("x", *[np.asarray(a) for a in _nuclei()])
    item = prepare(pair, in_channels=3, normalisation={"mode": "dtype"}, target="sdf", sdf_delta=5.0)
    assert np.array_equal(item.image, normalize(pair.image, {"mode": "dtype"}))  # the runtime's normalisation
    assert np.array_equal(item.target, mask_to_sdf(pair.labels, 5.0))
    ds = TileDataset([item], tile=32, augment=True, seed=4)
    a, b = ds[17], ds[17]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(ds[18]["image"], a["image"])
    for i in range(6):
        t = ds[i]
        assert t["image"].shape == (3, 32, 32) and t["target"].shape == (1, 32, 32)
        assert torch.equal(t["target"] <= 0, t["mask"] > 0)  # mask and SDF stay aligned through rot/flip
    batch = next(batches(ds, 3, 2, 3))
    assert torch.equal(batch["image"][1], ds[7]["image"])


def test_small_images_are_padded_and_val_tiles_fixed():
    pair = Pair("s", np.zeros((10, 12), np.uint8), np.ones((10, 12), np.int32))
    item = prepare(pair, in_channels=1, normalisation={"mode": "dtype"}, target="binary", sdf_delta=8.0)
    t = TileDataset([item], tile=16, augment=False)[0]
    assert t["target"][0, :10, :12].eq(-1).all() and t["target"][0, 10:].eq(1).all()
    tiles = val_tiles([item], 16, 4, seed=0)
    assert len(tiles) == 1 and tiles[0]["mask"][:10, :12].all()


def test_describe_data():
    assert describe_data("/work/shared/data/monuseg")[1].startswith("CC BY-NC-SA")
    assert describe_data("synthetic-gray")[0] == "segflow synthetic"
    assert describe_data("/data/mine")[1].startswith("unknown")


def _nuclei():
    from segflow.synthetic import synthetic_nuclei

    return synthetic_nuclei((48, 40), n=6, seed=2)
