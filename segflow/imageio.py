"""Reading images and writing results atomically (a failed run never leaves a partial file)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from segflow.errors import InputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


STAGE_OWNER = ".segflow-owner.json"  # in each staging folder: the host and process that made it


def make_stage(folder: str | Path, prefix: str) -> Path:
    """A new hidden staging folder ``folder/PREFIX*`` that records its host and process, so that a later run can
    tell it was left by a killed run (:func:`remove_stale_stages`)."""
    stage = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    try:
        (stage / STAGE_OWNER).write_text(json.dumps({**_this_machine(), "pid": os.getpid()}))
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage


def _this_machine() -> dict[str, Any]:
    """Where a pid means something: the host name, and on Linux the boot and the pid namespace (a container
    sharing the host's name has pids of its own)."""
    where: dict[str, Any] = {"host": socket.gethostname(), "boot": None, "pidns": None}
    try:
        where["boot"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        where["pidns"] = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pass
    return where


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) sends CTRL_C_EVENT there: never probe, never remove
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or a pid this OS cannot hold
        return True
    try:  # Linux: a killed process whose parent has not reaped it yet (a zombie) answers signal 0 too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_stages(folder: str | Path, pattern: str, say: Callable[[str], None]) -> None:
    """Remove the staging folders ``folder/PATTERN`` made by :func:`make_stage` on this host whose process is gone.

    A SIGKILL (the kernel's out-of-memory killer, a scheduler's hard stop) or a power cut skips a run's cleanup,
    and its staging folder can hold full-size plans or slide-size maps. A folder from an earlier boot of this
    host is removed whatever its pid says; folders of live processes, of other hosts (a shared disk) or other
    pid namespaces (containers sharing the host name), and without a readable owner record are left alone.
    ``say`` is told of each removal. On Windows only earlier boots' folders could qualify, and without a boot
    id there nothing is removed (no safe liveness probe there)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    here = _this_machine()
    for stage in sorted(folder.glob(pattern)):
        try:
            owner = json.loads((stage / STAGE_OWNER).read_text())
            pid = owner["pid"]
            if owner["host"] != here["host"] or not isinstance(pid, int) or pid <= 0:
                continue
            rebooted = None not in (owner.get("boot"), here["boot"]) and owner["boot"] != here["boot"]
            if not rebooted and (None not in (owner.get("pidns"), here["pidns"]) and owner["pidns"] != here["pidns"]
                                 or _process_alive(pid)):
                continue  # another container's pids (cannot tell), or the process lives
        except (OSError, ValueError, KeyError, TypeError):
            continue
        shutil.rmtree(stage, ignore_errors=True)
        if not stage.exists():
            say(f"removed {stage}, left by an interrupted run (process {pid})")


@contextmanager
def staging(folder: str | Path, prefix: str, stale: str, say: Callable[[str], None],
            unwritable: Callable[[Path, OSError], Exception]) -> Iterator[Path]:
    """A hidden staging folder ``folder/PREFIX*`` (``folder`` and its parents created if missing) for outputs
    written all or nothing: the caller moves its files into ``folder`` once all of them exist.

    Staging folders ``folder/STALE`` that killed runs left are removed first (:func:`remove_stale_stages`,
    ``say`` is told of each). On leaving, the staging folder is removed; on any failure, interruption included,
    so are the folders created here. ``unwritable(folder, error)`` makes the exception raised when ``folder``
    cannot be written to.
    """
    folder = Path(folder)
    made = [d for d in (folder.absolute(), *folder.absolute().parents) if not d.exists()]  # deepest first
    remove_stale_stages(folder, stale, say)
    stage, done = None, False
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            stage = make_stage(folder, prefix)
        except OSError as exc:
            raise unwritable(folder, exc) from exc
        yield stage
        done = True
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        for d in [] if done else made:
            with suppress(OSError):
                d.rmdir()


def read_image(path: str | Path) -> NDArray:
    """Read a 2-D grayscale or colour image (TIFF, PNG, JPEG, BMP) as (H, W) or (H, W, C), RGB order.

    Raises
    ------
    InputError
        If the file is missing, unreadable, truncated, or not a 2-D image.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image {p} does not exist: check the path.")
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            img = tifffile.imread(p)
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types for broken files
            raise InputError(f"image {p} is not a readable TIFF ({exc}): re-save or re-copy the file.") from exc
        img = np.asarray(img)
        # (C, H, W) with few channels -> (H, W, C)
        if img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[2] not in (1, 3, 4):
            img = np.moveaxis(img, 0, -1)
    elif suffix in IMAGE_SUFFIXES:
        import cv2

        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise InputError(f"image {p} is unreadable or truncated: re-save or re-copy the file.")
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    else:
        raise InputError(f"image {p} has an unsupported suffix {p.suffix!r}: use one of {IMAGE_SUFFIXES}.")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or min(img.shape[:2]) < 1:
        raise InputError(f"image {p} has shape {img.shape}: expected a 2-D grayscale or colour image.")
    if img.dtype.kind not in "uif" and img.dtype != bool:
        raise InputError(f"image {p} has unsupported dtype {img.dtype}: use 8-bit, 16-bit or float images.")
    return img


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Expand files and folders into a sorted list of image files."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise InputError(f"folder {p} holds no images: add {', '.join(IMAGE_SUFFIXES)} files.")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise InputError(f"input {p} does not exist: check the path.")
    return out


def default_file_mode() -> int:
    """Permission bits a plain ``open(path, "w")`` would give a new file: ``0o666`` less the process umask.

    ``tempfile.mkstemp`` creates files as ``0o600``; atomic writers apply this before renaming so outputs are as
    readable as any other file the user writes (a shared results folder stays readable by the group).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS, Windows): read the umask by setting it and putting it back
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the permissions a plain write would give it (:func:`default_file_mode`), not mkstemp's 0o600.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part", dir=p.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, default_file_mode())
        os.replace(tmp_path, p)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_tiff(path: str | Path, array: NDArray, **kwargs: Any) -> None:
    """Write a TIFF atomically (compression zlib by default)."""
    import tifffile

    kwargs.setdefault("compression", "zlib")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, **kwargs)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (indent 2)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def label_dtype(n_labels: int) -> np.dtype:
    """uint16 when the labels fit, else uint32."""
    return np.dtype(np.uint16) if n_labels < 65535 else np.dtype(np.uint32)
