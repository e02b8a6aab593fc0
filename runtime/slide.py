"""Region readers for whole slides: read any rectangle of any pyramid level without loading a level whole.

* :class:`TiffSlide` — tiled or pyramidal TIFF, OME-TIFF, SVS, NDPI, ... through tifffile's zarr store (zarr 3);
* :class:`OpenSlideReader` — other vendor formats (MRXS, VMS, ...) when ``openslide-python`` and
  ``openslide-bin`` are installed (``pip install -e ".[wsi]"``);
* :class:`ArrayReader` — an in-memory (or memory-mapped, or zarr) array, for embedding and tests.

All readers share :class:`SlideReader`: ``levels`` (size, downsample and microns per pixel of each level),
``read_region(x, y, w, h, level=...)`` in that level's pixels, returning (h, w) or (h, w, C), and ``close()``.
:func:`choose_level` picks the level whose pixel size matches the model card, or honours ``--level`` /
``--mpp``; :class:`LevelView` presents one level (resampled when no level matches) as a plain 2-D image.
"""

from __future__ import annotations

import math
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from segflow.errors import InputError, MissingDependency, require

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif", ".qptiff", ".btf", ".tf8", ".tf2")
_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}
# The oldest releases whose zarr store works together: tifffile < 2025.5.21 hands zarr 3 a store it rejects
# (TypeError: Unsupported type for store_like), zarr < 3.0.7 rejects the chunks tifffile's store returns
# (ValueError: only byte dtype allowed; 3.0.7 itself is yanked).
TIFFFILE_MIN, ZARR_MIN = "2025.5.21", "3.0.8"
ZARR_FIX = f'pip install -U "tifffile>={TIFFFILE_MIN}" "zarr>={ZARR_MIN}"'
CODECS_FIX = 'pip install imagecodecs` (part of the wsi extra: `pip install -e ".[wsi]"`'


@dataclass(frozen=True)
class Level:
    """One pyramid level: size in pixels, downsample from level 0 (level-0 px per px) and microns per pixel."""

    index: int
    height: int
    width: int
    downsample: float
    mpp: float | None


class SlideReader:
    """Base class of region readers: validation, context manager, level queries."""

    path: str = "<array>"
    levels: tuple[Level, ...] = ()
    channels: int = 1
    dtype: np.dtype = np.dtype(np.uint8)

    @property
    def mpp(self) -> float | None:
        """Microns per pixel at level 0 (None when the slide does not say)."""
        return self.levels[0].mpp

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of level 0."""
        return self.levels[0].height, self.levels[0].width

    def level(self, index: int) -> Level:
        """Return level ``index`` or raise :class:`InputError` naming the levels the slide has."""
        if not 0 <= index < len(self.levels):
            last = len(self.levels) - 1
            raise InputError(f"slide {self.path} has no pyramid level {index}: it has levels 0..{last}.")
        return self.levels[index]

    def read_region(self, x: int, y: int, w: int, h: int, *, level: int = 0) -> NDArray:
        """Read the rectangle ``[y, y + h) x [x, x + w)`` of ``level`` (that level's pixels).

        Raises
        ------
        InputError
            If the region is empty or leaves the level, or the slide's data cannot be decoded.
        """
        lv = self.level(level)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > lv.width or y + h > lv.height:
            raise InputError(
                f"region x={x},y={y},w={w},h={h} lies outside level {level} ({lv.width}x{lv.height}) of slide "
                f"{self.path}: pick a region inside the slide."
            )
        try:
            out = self._read(int(x), int(y), int(w), int(h), level)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - codecs raise many types on damaged data
            missing = _missing_codec(exc)
            if missing is not None:
                raise MissingDependency(
                    f"slide {self.path} ({self._compression(level) or 'its compression'}) cannot be decoded "
                    f"without the 'imagecodecs' package ({missing}): run `{CODECS_FIX}).") from exc
            raise InputError(
                f"slide {self.path} is corrupt or truncated at level {level} near x={x},y={y} "
                f"({type(exc).__name__}): re-copy or re-export the slide."
            ) from exc
        return out[..., 0] if out.ndim == 3 and out.shape[2] == 1 else out

    def _read(self, x: int, y: int, w: int, h: int, level: int) -> NDArray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _compression(self, level: int) -> str | None:
        """Name of the compression of ``level``'s data, when the reader knows it (for error messages)."""
        return None

    def close(self) -> None:
        """Release the file handles."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _missing_codec(exc: BaseException | None) -> str | None:
    """What tifffile said when ``exc`` (or an exception behind it) is a codec that is not installed, else None.

    tifffile decodes zlib, LZMA and PackBits itself and everything else (JPEG, JPEG 2000, LZW, WebP, JPEG XL,
    Zstandard, ...) through imagecodecs: without it, it raises ``ValueError("<COMPRESSION.JPEG: 7> requires the
    'imagecodecs' package")`` or, for Zstandard, the ImportError of its fallback module.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ImportError) or (isinstance(exc, ValueError) and "'imagecodecs'" in str(exc)):
            return str(exc) or type(exc).__name__
        exc = exc.__cause__ or exc.__context__
    return None


def _version(text: str) -> tuple[int, ...] | None:
    """Leading numeric release of a version string ("3.1.7.dev2+g1" -> (3, 1, 7)); None when there is none."""
    m = re.match(r"\d+(?:\.\d+)*", str(text))
    return tuple(int(p) for p in m.group(0).split(".")) if m else None


def _zarr_mismatch(tifffile, zarr, why: str = "") -> MissingDependency:
    return MissingDependency(
        f"reading slides region by region needs tifffile >= {TIFFFILE_MIN} and zarr >= {ZARR_MIN} (older pairs "
        f"cannot share tifffile's zarr store), but tifffile {tifffile.__version__} and zarr {zarr.__version__} "
        f"are installed{why}: "
        f"run `{ZARR_FIX}`."
    )


def require_tiff_zarr():
    """zarr, once tifffile's zarr store is known to work with it, or :class:`MissingDependency` naming the fix."""
    import tifffile

    zarr = require("zarr", f'"zarr>={ZARR_MIN}" imagecodecs', "reading slides region by region")
    for module, low in ((tifffile, TIFFFILE_MIN), (zarr, ZARR_MIN)):
        have = _version(getattr(module, "__version__", ""))
        if have is not None and have < _version(low):
            raise _zarr_mismatch(tifffile, zarr)
    return zarr


def _pyramid_levels(shapes: list[tuple[int, int]], mpp: float | None) -> tuple[Level, ...]:
    h0, w0 = shapes[0]
    out = []
    for i, (h, w) in enumerate(shapes):
        ds = w0 / w
        out.append(Level(i, int(h), int(w), float(ds), None if mpp is None else mpp * ds))
    return tuple(out)


class ArrayReader(SlideReader):
    """A slide held in an array-like (numpy, memmap, zarr): one level, ``(H, W)`` or ``(H, W, C)``."""

    def __init__(self, array, *, mpp: float | None = None, name: str = "<array>") -> None:
        if len(array.shape) not in (2, 3):
            raise InputError(f"slide {name} has shape {array.shape}: expected (H, W) or (H, W, C).")
        self.array, self.path = array, name
        self.channels = 1 if len(array.shape) == 2 else int(array.shape[2])
        self.dtype = np.dtype(array.dtype)
        self.levels = _pyramid_levels([tuple(array.shape[:2])], mpp)

    def _read(self, x: int, y: int, w: int, h: int, level: int) -> NDArray:
        return np.asarray(self.array[y : y + h, x : x + w])


class TiffSlide(SlideReader):
    """Tiled/pyramidal TIFF, OME-TIFF and SVS through tifffile's zarr store; regions are decoded tile by tile."""

    def __init__(self, path: str | Path) -> None:
        import tifffile

        zarr = require_tiff_zarr()
        self.path = str(path)
        p = Path(path)
        if not p.is_file():
            raise InputError(f"slide {p} does not exist: check the path.")
        try:
            self._tif = tifffile.TiffFile(p)
            series = max(self._tif.series, key=lambda s: int(np.prod(s.shape)))
            self._series = series
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"slide {p} is not a readable TIFF ({exc}): re-copy or re-export the slide.") from exc
        try:
            self._setup(series, zarr)
        except Exception:
            self._tif.close()
            raise

    def _setup(self, series, zarr) -> None:
        axes = series.axes
        extra = [a for a in axes if a not in "YXSC"]
        for a in extra:
            if series.shape[axes.index(a)] != 1:
                raise InputError(
                    f"slide {self.path} has a {a} axis of size {series.shape[axes.index(a)]}: "
                    "export a single plane (one time point, one z-slice) to segment it."
                )
        if "Y" not in axes or "X" not in axes or ("S" in axes and "C" in axes):
            raise InputError(f"slide {self.path} has axes {axes!r}: expected a 2-D (Y, X[, channels]) image.")
        self._axes = axes
        self._check_complete(series)
        try:
            self._arrays = [zarr.open(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]
        except TypeError as exc:  # an older tifffile's store, which zarr 3 does not accept
            import tifffile

            raise _zarr_mismatch(tifffile, zarr, f" ({exc})") from exc
        shapes = [(lv.shape[axes.index("Y")], lv.shape[axes.index("X")]) for lv in series.levels]
        self.levels = _pyramid_levels(shapes, _tiff_mpp(self._tif))
        ch = [series.shape[axes.index(a)] for a in "SC" if a in axes]
        self.channels = int(ch[0]) if ch else 1
        self.dtype = np.dtype(series.dtype)

    def _check_complete(self, series) -> None:
        size = Path(self.path).stat().st_size
        for i, lv in enumerate(series.levels):
            for page in lv.pages:
                if page is None or not hasattr(page, "dataoffsets"):
                    continue
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
                if ends and max(ends) > size:
                    raise InputError(
                        f"slide {self.path} is truncated (level {i} needs {max(ends)} bytes, the file has "
                        f"{size}): re-copy the slide."
                    )

    def _read(self, x: int, y: int, w: int, h: int, level: int) -> NDArray:
        idx = []
        for a in self._axes:
            idx.append({"Y": slice(y, y + h), "X": slice(x, x + w)}.get(a, slice(None) if a in "SC" else 0))
        out = np.asarray(self._arrays[level][tuple(idx)])
        kept = [a for a in self._axes if a in "YXSC"]
        order = [kept.index("Y"), kept.index("X")] + [kept.index(a) for a in "SC" if a in kept]
        return np.transpose(out, order)

    def _compression(self, level: int) -> str | None:
        try:
            return f"{self._series.levels[level].keyframe.compression.name}-compressed"
        except (AttributeError, IndexError):
            return None

    def close(self) -> None:
        """Close the TIFF file."""
        self._tif.close()


def _tiff_mpp(tif) -> float | None:
    """Microns per pixel from OME-XML, the SVS description or the TIFF resolution tags, else None."""
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pixels = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            size = pixels.get("PhysicalSizeX")
            if size is not None:
                return float(size) * _UNIT_TO_UM.get(pixels.get("PhysicalSizeXUnit", "µm"), 1.0)
        except (ET.ParseError, StopIteration, ValueError):
            pass
    page = tif.pages[0]
    match = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
    if match:
        return float(match.group(1))
    xres, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if xres is not None and unit is not None:
        num, den = xres.value
        ppu = num / den if den else 0.0
        per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
        if per_unit and ppu > 1.0:
            return per_unit / ppu
    return None


class OpenSlideReader(SlideReader):
    """Vendor formats through OpenSlide (``pip install openslide-python openslide-bin``); RGB, transparent = white."""

    def __init__(self, path: str | Path) -> None:
        openslide = require("openslide", "openslide-python openslide-bin", f"reading slide {path}")
        self.path = str(path)
        try:
            self._slide = openslide.OpenSlide(str(path))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"slide {path} cannot be opened by OpenSlide ({exc}): re-copy or convert it.") from exc
        mpp = self._slide.properties.get("openslide.mpp-x")
        dims = [(h, w) for w, h in self._slide.level_dimensions]
        self.levels = tuple(
            Level(i, h, w, float(ds), None if mpp is None else float(mpp) * float(ds))
            for i, ((h, w), ds) in enumerate(zip(dims, self._slide.level_downsamples, strict=True))
        )
        self.channels, self.dtype = 3, np.dtype(np.uint8)

    def _read(self, x: int, y: int, w: int, h: int, level: int) -> NDArray:
        ds = self.levels[level].downsample
        rgba = np.asarray(self._slide.read_region((round(x * ds), round(y * ds)), level, (w, h)))
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 255
        return rgb

    def close(self) -> None:
        """Close the slide."""
        self._slide.close()


def open_slide(path: str | Path) -> SlideReader:
    """Open a slide with tifffile when it is a TIFF flavour, PNG/JPEG/BMP in memory, else with OpenSlide."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"slide {p} does not exist: check the path.")
    if p.suffix.lower() in TIFF_SUFFIXES:
        return TiffSlide(p)
    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):  # small formats: read whole, serve regions
        from segflow.imageio import read_image

        return ArrayReader(read_image(p), name=str(p))
    return OpenSlideReader(p)


def is_slide(path: str | Path, *, min_pixels: int = 64_000_000) -> bool:
    """True when ``path`` should take the streaming path: a pyramidal TIFF, a large TIFF, or a vendor slide."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in TIFF_SUFFIXES:
        return suffix in (".mrxs", ".vms", ".vmu", ".czi", ".svslide")
    if suffix not in (".tif", ".tiff"):
        return True
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            s = tif.series[0]
            return bool(s.is_pyramidal) or len(s.levels) > 1 or int(np.prod(s.shape)) >= min_pixels
    except Exception:  # noqa: BLE001 - unreadable files are reported by the reader that opens them
        return False


@dataclass(frozen=True)
class LevelChoice:
    """The pyramid level to read and the extra resampling factor (target mpp / level mpp; 1 = none)."""

    level: int
    factor: float
    mpp: float | None


def choose_level(reader: SlideReader, *, level: int | None = None, mpp: float | None = None,
                 card_mpp: float | None = None, tolerance: float = 0.1) -> LevelChoice:
    """Pick the level to segment: ``level`` if given, else the one matching ``mpp`` (or the card's pixel size).

    The coarsest level whose pixel size is at most ``target * (1 + tolerance)`` is read; when it differs from
    the target by more than ``tolerance`` the regions are resampled by ``factor`` to the target pixel size.
    """
    if level is not None and mpp is not None:
        raise InputError("--level and --mpp both given: pass only one of them.")
    if level is not None:
        lv = reader.level(level)
        return LevelChoice(level, 1.0, lv.mpp)
    target = mpp if mpp is not None else card_mpp
    if target is None:
        return LevelChoice(0, 1.0, reader.mpp)
    if target <= 0:
        raise InputError(f"--mpp {target} must be positive.")
    if reader.mpp is None:
        if mpp is not None:
            raise InputError(f"slide {reader.path} does not record its pixel size, so --mpp cannot be honoured: "
                             "pass --level instead.")
        warnings.warn(f"slide {reader.path} does not record its pixel size; segmenting level 0 as is.",
                      stacklevel=2)
        return LevelChoice(0, 1.0, None)
    fine = [lv for lv in reader.levels if lv.mpp <= target * (1 + tolerance)]
    lv = max(fine, key=lambda v: v.mpp) if fine else reader.levels[0]
    factor = target / lv.mpp
    if abs(factor - 1.0) <= tolerance:
        return LevelChoice(lv.index, 1.0, lv.mpp)
    return LevelChoice(lv.index, factor, target)


class LevelView:
    """One level of a slide as a 2-D image, resampled by ``factor`` (>1 shrinks) when no level matches.

    ``downsample`` converts this view's pixels to level-0 pixels (the slide's full-resolution coordinates).
    """

    def __init__(self, reader: SlideReader, choice: LevelChoice) -> None:
        self.reader, self.level, self.factor = reader, choice.level, choice.factor
        lv = reader.level(choice.level)
        self.height = int(math.floor(lv.height / self.factor))
        self.width = int(math.floor(lv.width / self.factor))
        self.downsample = lv.downsample * self.factor
        self.mpp = choice.mpp
        self.channels, self.dtype = reader.channels, reader.dtype

    def read(self, x: int, y: int, w: int, h: int) -> NDArray:
        """Read the rectangle ``[y, y + h) x [x, x + w)`` in view pixels."""
        if self.factor == 1.0:
            return self.reader.read_region(x, y, w, h, level=self.level)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > self.width or y + h > self.height:
            raise InputError(f"region x={x},y={y},w={w},h={h} lies outside the {self.width}x{self.height} view of "
                             f"slide {self.reader.path}: pick a region inside the slide.")
        import cv2

        lv = self.reader.level(self.level)
        x0, y0 = int(math.floor(x * self.factor)), int(math.floor(y * self.factor))
        x1 = min(lv.width, int(math.ceil((x + w) * self.factor)))
        y1 = min(lv.height, int(math.ceil((y + h) * self.factor)))
        src = self.reader.read_region(x0, y0, x1 - x0, y1 - y0, level=self.level)
        interp = cv2.INTER_AREA if self.factor > 1 else cv2.INTER_LINEAR
        return cv2.resize(src, (w, h), interpolation=interp)
