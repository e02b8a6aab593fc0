"""segflow.imageio: reading the supported formats, one-sentence errors, atomic writes."""

from __future__ import annotations

import json
import os
import stat
import sys

import cv2
import numpy as np
import pytest

from segflow.errors import InputError
from segflow.imageio import atomic_path, default_file_mode, label_dtype, list_images, read_image, write_json, write_tiff


def test_png_rgb_order_and_gray(tmp_path):
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])
    out = read_image(tmp_path / "a.png")
    assert out.shape == (3, 4, 3) and out[0, 0].tolist() == [200, 0, 0]
    cv2.imwrite(str(tmp_path / "g.bmp"), np.full((5, 6), 9, np.uint8))
    assert read_image(tmp_path / "g.bmp").shape == (5, 6)


def test_tiff_channels_first_is_moved_last(tmp_path):
    write_tiff(tmp_path / "c.tif", np.zeros((3, 20, 30), np.uint16))
    assert read_image(tmp_path / "c.tif").shape == (20, 30, 3)
    write_tiff(tmp_path / "l.tif", np.arange(12, dtype=np.uint16).reshape(3, 4))
    assert read_image(tmp_path / "l.tif").tolist() == np.arange(12).reshape(3, 4).tolist()


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "x.png")
    (tmp_path / "bad.png").write_bytes(b"nonsense")
    with pytest.raises(InputError, match="bad.png is unreadable"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "bad.tif").write_bytes(b"nonsense")
    with pytest.raises(InputError, match="not a readable TIFF"):
        read_image(tmp_path / "bad.tif")
    (tmp_path / "x.gif").write_bytes(b"")
    with pytest.raises(InputError, match="unsupported suffix"):
        read_image(tmp_path / "x.gif")


def test_list_images(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        list_images([tmp_path / "d"])
    for n in ("b.png", "a.tif", "notes.txt"):
        (tmp_path / "d" / n).write_bytes(b"")
    assert [p.name for p in list_images([tmp_path / "d"])] == ["a.tif", "b.png"]
    with pytest.raises(InputError):
        list_images([tmp_path / "missing"])


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": np.int64(3), "b": np.float32(0.5), "c": np.arange(2)})
    assert json.loads(target.read_text()) == {"a": 3, "b": 0.5, "c": [0, 1]}
    assert label_dtype(10) == np.uint16 and label_dtype(70000) == np.uint32


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_permissions_a_plain_write_gets(tmp_path, umask):
    """mkstemp makes 0o600 files; outputs must follow the umask like any file the user writes (a results
    folder shared with a group stays readable by it)."""
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        assert default_file_mode() == 0o666 & ~umask
        write_tiff(tmp_path / "a.tif", np.zeros((4, 4), np.uint16))
        write_json(tmp_path / "a.json", {"a": 1})
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"1")
    finally:
        os.umask(old)
    want = stat.S_IMODE(plain.stat().st_mode)
    assert want == 0o666 & ~umask
    for name in ("a.tif", "a.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
