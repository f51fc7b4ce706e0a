"""Reduced JPEG decoding for tiled slide levels: libjpeg-turbo's DCT-domain scaling (1/2, 1/4, 1/8) and
luma-only greyscale output, through simplejpeg (which bundles libjpeg-turbo).

A TIFF JPEG tile is usually an abbreviated stream whose quantisation and Huffman tables sit in the level's
JPEGTables tag; `splice` makes one complete stream of the two. The colour space of the stream decides what a
greyscale decode costs:

- YCbCr (JFIF, and TIFF photometric YCbCr): the Y channel *is* BT.601 luma, so a greyscale decode runs the inverse
  DCT on the luma plane only and skips the colour conversion.
- Aperio "JPEG/RGB" (photometric RGB, components coded as R, G, B with no colour transform and no Adobe marker):
  libjpeg would guess YCbCr from three components and return wrong colours. `splice` adds an Adobe APP14 marker
  with transform 0, which tells libjpeg the components are RGB; a greyscale decode then still decodes all three
  components and computes 0.299 R + 0.587 G + 0.114 B itself (no luma-only saving, but the DCT scaling still
  applies). With the marker, the RGB decode is bit-identical to tifffile's.
- Anything else (CMYK, 2 or 4 samples, lossless or 12-bit JPEG, old-style JPEG): `scalable` says no and the
  caller keeps the full decode.
"""

from __future__ import annotations

import numpy as np

try:  # optional at import time so that reading slides never depends on it; `available()` says whether it is here
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a declared dependency
    simplejpeg = None

__all__ = ["SCALES", "available", "decode_scaled", "frame", "scalable", "splice"]

SCALES = (8, 4, 2, 1)  # the reductions libjpeg-turbo does in the DCT domain with its fast (SIMD) inverse DCTs
# Adobe APP14: "Adobe", version 100, flags0 0, flags1 0, transform 0 (components are not colour-transformed)
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
# baseline / extended sequential / progressive Huffman 8-bit DCT frames: what libjpeg-turbo scales
_SCALABLE_SOF = {0xC0, 0xC1, 0xC2}


def available() -> bool:
    """True when simplejpeg (libjpeg-turbo) is importable."""
    return simplejpeg is not None


def _markers(stream: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each header segment up to and including the first start-of-scan."""
    out, i = [], 2
    while i + 4 <= len(stream) and stream[i] == 0xFF:
        marker = stream[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        end = i + 2 + int.from_bytes(stream[i + 2:i + 4], "big")
        out.append((marker, i, end))
        if marker == 0xDA:
            break
        i = end
    return out


def splice(tables: bytes | None, tile: bytes, rgb: bool) -> bytes:
    """One complete JPEG stream of a tile: the level's JPEGTables (without their SOI/EOI) ahead of the tile's own
    segments, and, for RGB-coded data without an Adobe marker, an Adobe marker saying "no colour transform"."""
    if not tile.startswith(_SOI):
        raise ValueError("tile is not a JPEG stream (no start-of-image marker)")
    head = b""
    if tables:
        if not tables.startswith(_SOI):
            raise ValueError("JPEGTables is not a JPEG tables stream")
        head = tables[2:-2] if tables.endswith(_EOI) else tables[2:]
    # a JFIF (APP0) stream is YCbCr whatever the TIFF tag says (QuPath's OME-TIFFs: photometric RGB, JFIF tiles)
    marked = any(m in (0xE0, 0xEE) for m, _, _ in _markers(tile)) or (tables and b"\xff\xeeAdobe" in tables)
    if rgb and not marked:
        head = _ADOBE_RGB + head
    return _SOI + head + tile[2:]


def frame(stream: bytes) -> tuple[int, int, int] | None:
    """(SOF marker, sample precision, number of components) of a stream's frame header, None when it has none."""
    for marker, start, _ in _markers(stream):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker, stream[start + 4], stream[start + 9]
    return None


def scalable(stream: bytes) -> bool:
    """True when libjpeg-turbo decodes this complete stream scaled: an 8-bit Huffman DCT frame of 1 or 3
    components (lossless, arithmetic-coded and 12-bit frames keep the full decode)."""
    f = frame(stream)
    return f is not None and f[0] in _SCALABLE_SOF and f[1] == 8 and f[2] in (1, 3)


def decode_scaled(stream: bytes, scale: int, grey: bool, shape: tuple[int, int]) -> np.ndarray:
    """Decode a complete stream whose full size is `shape` (height, width) at 1/`scale` of it: (h, w) uint8 BT.601
    grey when `grey`, else (h, w, 3) RGB. Raises ValueError when the decoder refuses or sizes disagree."""
    h, w = shape
    need_h, need_w = -(-h // scale), -(-w // scale)
    # libjpeg-turbo picks the smallest of its M/8 scalings giving at least the asked size: asking for exactly
    # 1/scale of a size divisible by scale selects M = 8 / scale
    out = simplejpeg.decode_jpeg(stream, colorspace="GRAY" if grey else "RGB", min_height=need_h,
                                 min_width=need_w)
    if out.shape[0] != need_h or out.shape[1] != need_w:
        raise ValueError(f"scaled decode gave {out.shape[1]}x{out.shape[0]}, expected {need_w}x{need_h}")
    return out[..., 0] if grey else out
