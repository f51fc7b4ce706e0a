"""Whole-slide TIFF reading: open SVS, OME-TIFF, NDPI and generic tiled pyramids with tifffile, and read
rectangles of any level as RGB uint8 by decoding only the tiles or strips the rectangle touches.

Opening reads metadata only and fails early (SlideError naming the file) on files that are not TIFF, hold no
usable 8-bit RGB/greyscale level, or use a compression without a decoder. A Slide holds an open file handle:
open it inside the task that reads it (it refuses to be pickled).
"""

from __future__ import annotations

import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from crystal_dask.wsi import jpeg

__all__ = ["Level", "Slide", "SlideError", "slide_info"]

# plausible pixel sizes for a microscope slide; outside this, resolution tags are scanner/encoder defaults
_MPP_RANGE = (0.05, 100.0)
_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([-+0-9.eE]+)")
# micrometres per unit of OME PhysicalSize*Unit (two spellings of micro: U+00B5 and U+03BC)
_OME_UNITS_UM = {
    "m": 1e6, "dm": 1e5, "cm": 1e4, "mm": 1e3, "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0,
    "nm": 1e-3, "pm": 1e-6, "Å": 1e-4, "in": 25400.0, "ft": 304800.0,
}
_TIFF_UNITS_UM = {2: 25400.0, 3: 10000.0}  # ResolutionUnit: inch, centimetre
_JPEG_COMPRESSIONS = {6, 7, 33007, 34892}  # those whose decoder turns YCbCr into RGB
_APERIO_J2K_YCBCR = 33003  # Aperio JPEG 2000 whose codestream holds YCbCr without a component transform


class SlideError(Exception):
    """A slide cannot be opened or read; the message starts with the slide's path, then what failed."""


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size in pixels and its downsample from level 0 (mean of the x and y ratios)."""

    index: int
    width: int
    height: int
    downsample: float


def _enum_name(enum: type, code: int) -> str:
    try:
        return enum(code).name
    except ValueError:
        return str(int(code))


def _compression_name(code: int) -> str:
    return _enum_name(tifffile.COMPRESSION, code)


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp) or not _MPP_RANGE[0] <= mpp <= _MPP_RANGE[1]:
        return None
    return mpp


def _j2k_chroma_subsampled(data: bytes) -> bool:
    """True when a raw JPEG 2000 codestream stores components 1 and 2 at reduced resolution (SIZ marker).

    imagecodecs converts such subsampled YCbCr to RGB itself; full-resolution YCbCr comes back untouched.
    """
    # SOC FF4F, SIZ FF51, Lsiz, Rsiz, 8 x 4-byte sizes, Csiz, then (Ssiz, XRsiz, YRsiz) per component
    if len(data) < 51 or data[:4] != b"\xff\x4f\xff\x51":
        return True  # not a bare codestream (JP2 box): its colour box tells the decoder what to do
    return data[46] != 1 or data[47] != 1


def _ycbcr_to_rgb(tile: np.ndarray) -> np.ndarray:
    """Full-range (JFIF) YCbCr to RGB, as OpenSlide does for Aperio 33003 tiles."""
    ycc = tile[..., :3].astype(np.float32)
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128.0, ycc[..., 2] - 128.0
    rgb = np.stack((y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb), axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


class _LevelReader:
    """Segment geometry and decoder of one level's TIFF page; pastes decoded segments into output arrays."""

    def __init__(self, path: Path, index: int, page: Any) -> None:
        key = page.keyframe  # TiffFrames share their keyframe's layout and decoder
        self.path, self.index, self.page, self.key = path, index, page, key
        self.width, self.height = int(key.imagewidth), int(key.imagelength)
        self.compression = int(key.compression)
        self.tiled = bool(key.is_tiled)
        self.separate = key.planarconfig == 2 and key.samplesperpixel > 1
        samples = int(key.samplesperpixel)
        photometric = int(key.photometric)
        where = f"{path}: level {index}"
        if key.dtype != np.uint8:
            raise SlideError(f"{where} holds {key.dtype} samples; only 8-bit RGB(A) or greyscale is supported")
        if key.imagedepth != 1:
            raise SlideError(f"{where} is a volume (depth {key.imagedepth}); only 2-D slides are supported")
        if photometric == tifffile.PHOTOMETRIC.MINISBLACK and samples in (1, 2):
            self.grey = True
        elif photometric == tifffile.PHOTOMETRIC.RGB and samples in (3, 4):
            self.grey = False
        elif (photometric == tifffile.PHOTOMETRIC.YCBCR and samples == 3
              and self.compression in _JPEG_COMPRESSIONS):
            self.grey = False
        else:
            raise SlideError(f"{where} has photometric {_enum_name(tifffile.PHOTOMETRIC, photometric)} with "
                             f"{samples} samples; only RGB(A) or greyscale is supported")
        self.ycbcr_j2k = self.compression == _APERIO_J2K_YCBCR
        # planes to decode: every colour plane when samples are stored separately, else the one interleaved plane
        self.planes = (0,) if self.grey or not self.separate else (0, 1, 2)
        if self.tiled:
            self.seg_w, self.seg_h = int(key.tilewidth), int(key.tilelength)
        else:
            self.seg_w, self.seg_h = self.width, int(min(key.rowsperstrip, self.height))
        self.nx = math.ceil(self.width / self.seg_w)
        self.per_plane = self.nx * math.ceil(self.height / self.seg_h)
        self.offsets, self.bytecounts = page.dataoffsets, page.databytecounts
        needed = self.per_plane * (samples if self.separate else 1)
        if min(len(self.offsets), len(self.bytecounts)) < needed:
            raise SlideError(f"{where} lists {len(self.offsets)} {self.kind}s, its size needs {needed}")
        try:
            self.decode = key.decode
            # tifffile hands back a closure that raises on first use when it has no decoder: call it on an
            # empty segment now, which touches no codec when a decoder exists
            self.decode(None, 0, _fullsize=self.tiled)
        except Exception as exc:
            raise SlideError(f"{where} uses compression {_compression_name(self.compression)}, "
                             f"which cannot be decoded here: {exc}") from exc
        self.decodeargs = {"jpegtables": page.jpegtables, "jpegheader": key.jpegheader, "_fullsize": self.tiled}
        # reduced decoding (jpeg.py): new-style JPEG tiles, interleaved, greyscale or 3 colour samples
        self.scalable = (jpeg.available() and self.compression == 7 and self.tiled and not self.separate
                         and samples in (1, 3))
        self.rgb_coded = photometric == tifffile.PHOTOMETRIC.RGB

    @property
    def kind(self) -> str:
        return "tile" if self.tiled else "strip"

    def info(self) -> dict[str, Any]:
        return {
            "tile": [self.seg_w, self.seg_h] if self.tiled else None,
            "rows_per_strip": None if self.tiled else self.seg_h,
            "compression": _compression_name(self.compression),
            "planar": "separate" if self.separate else "contig",
        }

    def _segments(self, fh: Any, lock: threading.RLock, indices: list[int]) -> list[tuple[bytes, int]]:
        """The stored bytes of the given tiles or strips, in file order; a failed read names the level."""
        try:
            return list(fh.read_segments([self.offsets[i] for i in indices], [self.bytecounts[i] for i in indices],
                                         indices=indices, sort=True, lock=lock, flat=True))
        except Exception as exc:
            raise SlideError(f"{self.path}: reading {self.kind}s of level {self.index} failed: {exc}") from exc

    def paste(self, fh: Any, lock: threading.RLock, out: np.ndarray, x: int, y: int) -> None:
        """Fill `out`, whose top-left is this level's pixel (x, y), from the segments it overlaps, decoding each
        once; parts of `out` outside the level keep their values."""
        h, w = out.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.width), min(y + h, self.height)
        if x0 >= x1 or y0 >= y1:
            return
        rows = range(y0 // self.seg_h, (y1 - 1) // self.seg_h + 1)
        cols = range(x0 // self.seg_w, (x1 - 1) // self.seg_w + 1)
        indices = [p * self.per_plane + r * self.nx + c for p in self.planes for r in rows for c in cols]
        segments = self._segments(fh, lock, indices)
        for data, index in segments:
            if data is None:
                continue  # sparse file: a missing segment is background
            try:
                decoded = self.decode(data, index, **self.decodeargs)[0]
            except Exception as exc:
                raise SlideError(f"{self.path}: {self.kind} {index} of level {self.index}: "
                                 f"{_compression_name(self.compression)} decode failed: {exc}") from exc
            segment = decoded[0]  # (length, width, samples) of the single depth slice
            if self.ycbcr_j2k and not _j2k_chroma_subsampled(data):
                segment = _ycbcr_to_rgb(segment)
            plane, rest = divmod(index, self.per_plane)
            sy, sx = (rest // self.nx) * self.seg_h, (rest % self.nx) * self.seg_w
            oy0, ox0 = max(sy, y0), max(sx, x0)
            oy1, ox1 = min(sy + segment.shape[0], y1), min(sx + segment.shape[1], x1)
            if oy0 >= oy1 or ox0 >= ox1:
                continue
            src = segment[oy0 - sy:oy1 - sy, ox0 - sx:ox1 - sx]
            dst = out[oy0 - y:oy1 - y, ox0 - x:ox1 - x]
            if self.grey:
                dst[...] = src[..., :1]
            elif self.separate:
                dst[..., plane] = src[..., 0]
            else:
                dst[...] = src[..., :3]


    def paste_scaled(self, fh: Any, lock: threading.RLock, out: np.ndarray, x: int, y: int, scale: int,
                     grey: bool) -> None:
        """As `paste`, in pixels of this level reduced `scale` times (pixel (x, y) covers level pixels
        [x * scale, (x + 1) * scale)): each JPEG tile is decoded at 1/scale in the DCT domain, as BT.601 grey
        (`out` 2-D) or RGB. Only for levels with `scalable` set and tiles divisible by `scale`."""
        h, w = out.shape[:2]
        tw, th = self.seg_w // scale, self.seg_h // scale
        width, height = -(-self.width // scale), -(-self.height // scale)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x0 >= x1 or y0 >= y1:
            return
        rows, cols = range(y0 // th, (y1 - 1) // th + 1), range(x0 // tw, (x1 - 1) // tw + 1)
        indices = [r * self.nx + c for r in rows for c in cols]
        segments = self._segments(fh, lock, indices)
        tables = self.decodeargs["jpegtables"]
        for data, index in segments:
            if data is None:
                continue  # sparse file: a missing segment is background
            try:
                stream = jpeg.splice(tables, data, self.rgb_coded)
                try:
                    if not jpeg.scalable(stream):
                        raise ValueError("frame not scalable")
                    tile = jpeg.decode_scaled(stream, scale, grey, (self.seg_h, self.seg_w))
                except ValueError:
                    # a frame libjpeg-turbo does not scale (12-bit, lossless), or one it refuses: the full decoder
                    # decodes it (block means) or says, in its own words, what is wrong with it
                    tile = self._reduced(self.decode(data, index, **self.decodeargs)[0][0], scale, grey)
            except Exception as exc:
                raise SlideError(f"{self.path}: {self.kind} {index} of level {self.index}: "
                                 f"{_compression_name(self.compression)} decode failed: {exc}") from exc
            sy, sx = (index // self.nx) * th, (index % self.nx) * tw
            oy0, ox0 = max(sy, y0), max(sx, x0)
            oy1, ox1 = min(sy + tile.shape[0], y1), min(sx + tile.shape[1], x1)
            if oy0 < oy1 and ox0 < ox1:
                out[oy0 - y:oy1 - y, ox0 - x:ox1 - x] = tile[oy0 - sy:oy1 - sy, ox0 - sx:ox1 - sx]

    def _reduced(self, segment: np.ndarray, scale: int, grey: bool) -> np.ndarray:
        rgb = np.repeat(segment[..., :1], 3, axis=-1) if self.grey else segment[..., :3]
        h, w = (rgb.shape[0] // scale) * scale, (rgb.shape[1] // scale) * scale
        small = rgb[:h, :w].reshape(h // scale, scale, w // scale, scale, 3).mean(axis=(1, 3))
        if grey:
            small = small @ np.array([0.299, 0.587, 0.114])
        return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def _is_level_of(page: Any, base: Any, previous: Any) -> bool:
    """A further page of a generic TIFF is a pyramid level: tiled, smaller than the last level, same layout,
    same aspect ratio as level 0 (within rounding)."""
    key, bkey = page.keyframe, base.keyframe
    w, h, bw, bh = key.imagewidth, key.imagelength, bkey.imagewidth, bkey.imagelength
    return (
        key.is_tiled
        and w < previous.keyframe.imagewidth and h < previous.keyframe.imagelength
        and key.dtype == bkey.dtype and key.samplesperpixel == bkey.samplesperpixel
        and key.photometric == bkey.photometric
        and abs(h - bh * w / bw) <= max(2.0, 0.01 * h)
    )


class Slide:
    """An open whole-slide TIFF: its levels, pixel size and region reads. Use as a context manager."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except tifffile.TiffFileError as exc:
            raise SlideError(f"{self.path}: not a readable TIFF file: {exc}") from exc
        except OSError as exc:
            raise SlideError(f"{self.path}: cannot open: {exc}") from exc
        self._lock = threading.RLock()  # one seek+read at a time on the shared handle
        try:
            self._open()
        except SlideError:
            self._tif.close()
            raise
        except Exception as exc:  # tifffile parses lazily: malformed tags surface here
            self._tif.close()
            raise SlideError(f"{self.path}: cannot read slide structure: {exc}") from exc

    def _open(self) -> None:
        tif = self._tif
        self.format = "svs" if tif.is_svs else "ome" if tif.is_ome else "ndpi" if tif.is_ndpi else "tiff"
        series = tif.series
        if not series:
            raise SlideError(f"{self.path}: no image levels")
        pages = [lvl.pages[0] for lvl in series[0].levels if lvl.pages and lvl.pages[0] is not None]
        if not pages:
            raise SlideError(f"{self.path}: no image levels")
        if self.format == "tiff" and len(pages) == 1:
            candidates = [lvl.pages[0] for s in series[1:] for lvl in s.levels if lvl.pages]
            for page in sorted(candidates, key=lambda p: -p.keyframe.imagewidth):
                if _is_level_of(page, pages[0], pages[-1]):
                    pages.append(page)
        self._readers = [_LevelReader(self.path, i, p) for i, p in enumerate(pages)]
        w0, h0 = self._readers[0].width, self._readers[0].height
        self.levels = [Level(r.index, r.width, r.height, (w0 / r.width + h0 / r.height) / 2)
                       for r in self._readers]
        self.mpp, self.mpp_source = self._find_mpp(pages[0])

    def _find_mpp(self, page: Any) -> tuple[float | None, str]:
        if self.format == "svs":
            m = _APERIO_MPP.search(page.description or "")
            if m and (mpp := _plausible(float(m.group(1)))):
                return mpp, "aperio"
        if self.format == "ome" and (mpp := _plausible(self._ome_mpp())):
            return mpp, "ome"
        tags = page.keyframe.tags
        res, unit = tags.get(282), tags.get(296)  # XResolution, ResolutionUnit
        if res is not None and unit is not None and int(unit.value) in _TIFF_UNITS_UM:
            num, den = res.value
            if num > 0 and den > 0 and (mpp := _plausible(_TIFF_UNITS_UM[int(unit.value)] * den / num)):
                return mpp, "tiff-resolution"
        return None, "none"

    def _ome_mpp(self) -> float | None:
        try:
            root = ET.fromstring(self._tif.ome_metadata or "")
        except ET.ParseError:
            return None
        pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
        if pixels is None or pixels.get("PhysicalSizeX") is None:
            return None
        scale = _OME_UNITS_UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
        try:
            return float(pixels.get("PhysicalSizeX")) * scale if scale else None
        except ValueError:
            return None

    @property
    def width(self) -> int:
        return self.levels[0].width

    @property
    def height(self) -> int:
        return self.levels[0].height

    def _check_level(self, level: int) -> None:
        if not 0 <= level < len(self.levels):
            raise ValueError(f"{self.path}: no level {level} (the slide has {len(self.levels)})")

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB of a rectangle in `level`'s own pixels; outside the level is white."""
        self._check_level(level)
        if width <= 0 or height <= 0:
            raise ValueError(f"{self.path}: empty region {width}x{height} at ({x}, {y}) of level {level}")
        out = np.full((height, width, 3), 255, np.uint8)
        self._readers[level].paste(self._tif.filehandle, self._lock, out, x, y)
        return out

    def can_scale(self, level: int, scale: int) -> bool:
        """True when `read_scaled(level, ..., scale)` decodes `level` reduced in the DCT domain (JPEG tiles)."""
        self._check_level(level)
        r = self._readers[level]
        return r.scalable and scale in jpeg.SCALES and r.seg_w % scale == 0 and r.seg_h % scale == 0

    def read_scaled(self, level: int, x: int, y: int, width: int, height: int, scale: int,
                    grey: bool, out: np.ndarray | None = None) -> np.ndarray:
        """A rectangle of `level` reduced `scale` times by the JPEG decoder, in reduced pixels ((x, y) covers
        level pixels [x * scale, (x + 1) * scale)): (height, width) uint8 BT.601 grey when `grey`, else
        (height, width, 3) RGB; outside the level is white. Needs `can_scale(level, scale)`. `out`: decode into
        this array of that shape instead (a view into a larger one saves a copy); outside the level it keeps
        its values."""
        if not self.can_scale(level, scale):
            raise ValueError(f"{self.path}: level {level} cannot be decoded at 1/{scale}")
        if width <= 0 or height <= 0:
            raise ValueError(f"{self.path}: empty region {width}x{height} at ({x}, {y}) of level {level}")
        shape = (height, width) if grey else (height, width, 3)
        if out is None:
            out = np.full(shape, 255, np.uint8)
        elif out.shape != shape or out.dtype != np.uint8:
            raise ValueError(f"out must be {shape} uint8; got {out.shape} {out.dtype}")
        self._readers[level].paste_scaled(self._tif.filehandle, self._lock, out, x, y, scale, grey)
        return out

    def read_box(self, x0: int, y0: int, x1: int, y1: int, level: int) -> np.ndarray:
        """The level-0 half-open box [x0, x1) x [y0, y1) read at `level`, widened to whole level pixels."""
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"{self.path}: empty box [{x0}, {x1}) x [{y0}, {y1})")
        self._check_level(level)
        d = self.levels[level].downsample
        lx0, ly0 = math.floor(x0 / d), math.floor(y0 / d)
        return self.read(level, lx0, ly0, math.ceil(x1 / d) - lx0, math.ceil(y1 / d) - ly0)

    def best_level(self, box_width: int, box_height: int, min_side: int = 256) -> int:
        """The coarsest level at which the box's shorter side still spans `min_side` pixels (else level 0)."""
        for lvl in reversed(self.levels):
            if min(box_width, box_height) / lvl.downsample >= min_side:
                return lvl.index
        return 0

    def info(self) -> dict[str, Any]:
        """JSON-able summary: format, size, pixel size and its source, and each level's layout."""
        return {
            "path": str(self.path),
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "levels": [{"index": lvl.index, "width": lvl.width, "height": lvl.height,
                        "downsample": lvl.downsample, **r.info()}
                       for lvl, r in zip(self.levels, self._readers, strict=True)],
        }

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"Slide({str(self.path)!r}) cannot be pickled (it holds an open file handle): "
                        "pass the path and open the slide inside the task that reads it")

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, format={self.format!r}, levels={len(self.levels)}, mpp={self.mpp})"


def slide_info(path: str | os.PathLike) -> dict[str, Any]:
    """Open `path`, return Slide.info() and close it."""
    with Slide(path) as slide:
        return slide.info()
