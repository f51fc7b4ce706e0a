"""Write an RGB image as an Aperio-style pyramidal TIFF (.svs) that tifffile and OpenSlide read as Aperio SVS.

The page order and tags follow a real AT2/ImageScope file (CMU-1-Small-Region.svs): page 0 is level 0, tiled JPEG
with the Aperio description (`AppMag`, `MPP`, ...); page 1 is a strip JPEG thumbnail; then the further tiled
levels (downsample 4, 16, ...); then an LZW label and a strip JPEG macro image. As in Aperio's "JPEG/RGB" files the
JPEG data is coded in RGB (no YCbCr transform, no chroma subsampling, Adobe marker), the PhotometricInterpretation
tag is RGB, and the quantization and Huffman tables are shared in the JPEGTables tag, each tile holding an
abbreviated stream. Tiles are encoded in parallel on threads (imagecodecs releases the GIL); the bytes depend
only on the input and the arguments.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

APERIO_HEADER = "Aperio Image Library v12.0.15 \r\n"
_JPEG_TABLE_MARKERS = (0xDB, 0xC4)  # DQT, DHT: moved to the shared JPEGTables
_RGB_JPEG = {"outcolorspace": "RGB"}  # tifffile: keep PhotometricInterpretation RGB for JPEG pages


@dataclass(frozen=True)
class WrittenSlide:
    """What `write_slide` wrote: level sizes (width, height), file size and time spent encoding JPEG."""

    path: Path
    levels: tuple[tuple[int, int], ...]
    nbytes: int
    encode_seconds: float
    raw_bytes: int  # uncompressed RGB bytes of all tiled levels


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of factor x factor blocks (the trailing partial blocks are dropped, as Aperio's level sizes are)."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    if h == 0 or w == 0:
        raise ValueError(f"image {image.shape[1]}x{image.shape[0]} is smaller than the downsample {factor}")
    crop = image[: h * factor, : w * factor]
    total = np.zeros((h, w, *image.shape[2:]), np.uint16 if factor * factor * 255 < 2**16 else np.uint32)
    for i in range(factor):  # strided adds: several times faster than a sum over a 5-d reshape
        for j in range(factor):
            total += crop[i::factor, j::factor]
    return ((total + factor * factor // 2) // (factor * factor)).astype(np.uint8)


DOWNSAMPLES = (1, 4, 16)  # the pyramid levels write_slide writes by default, relative to level 0


def pyramid(image: np.ndarray, downsamples: Sequence[int] = DOWNSAMPLES) -> list[np.ndarray]:
    """`image` at each of `downsamples` (the first must be 1, each divides the next), each level made from the one
    before it."""
    downsamples = tuple(int(d) for d in downsamples)
    if downsamples[0] != 1 or any(b % a for a, b in pairwise(downsamples)):
        raise ValueError(f"downsamples {downsamples} must start at 1 and each divide the next")
    levels = [image]
    for prev, ds in pairwise(downsamples):
        levels.append(downsample(levels[-1], ds // prev))
    return levels


def _encode(tile: np.ndarray, quality: int) -> bytes:
    return imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="RGB")


def _split_tables(jpeg: bytes) -> tuple[bytes, bytes]:
    """Split a JPEG stream into (tables-only stream, abbreviated stream without DQT/DHT segments)."""
    tables, rest = [], [jpeg[:2]]
    i = 2
    while i < len(jpeg):
        marker = jpeg[i + 1]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data and EOI
            rest.append(jpeg[i:])
            break
        end = i + 2 + int.from_bytes(jpeg[i + 2 : i + 4], "big")
        (tables if marker in _JPEG_TABLE_MARKERS else rest).append(jpeg[i:end])
        i = end
    return b"\xff\xd8" + b"".join(tables) + b"\xff\xd9", b"".join(rest)


class _TileEncoder:
    """JPEG-encodes tiles of one level on a thread pool, stripping the tables every tile shares."""

    def __init__(self, tile: int, quality: int, pool: ThreadPoolExecutor):
        self.tile, self.quality, self.pool = tile, quality, pool
        self.tables, _ = _split_tables(_encode(np.full((tile, tile, 3), 255, np.uint8), quality))
        self.seconds = 0.0

    def _one(self, image: np.ndarray, y: int, x: int) -> tuple[bytes, float]:
        t = self.tile
        block = image[y : y + t, x : x + t]
        if block.shape[:2] != (t, t):  # edge tiles are padded with white glass
            padded = np.full((t, t, 3), 255, np.uint8)
            padded[: block.shape[0], : block.shape[1]] = block
            block = padded
        start = time.perf_counter()
        tables, stream = _split_tables(_encode(np.ascontiguousarray(block), self.quality))
        took = time.perf_counter() - start
        # a tile whose tables differ keeps them in its own stream (valid JPEG-in-TIFF, and never expected)
        return (stream if tables == self.tables else _encode(np.ascontiguousarray(block), self.quality)), took

    def tiles(self, image: np.ndarray) -> Iterator[bytes]:
        t = self.tile
        coords = [(y, x) for y in range(0, image.shape[0], t) for x in range(0, image.shape[1], t)]
        for stream, took in self.pool.map(lambda c: self._one(image, *c), coords):
            self.seconds += took
            yield stream


def aperio_description(width: int, height: int, *, tile: int, quality: int, mpp: float | None,
                       app_mag: int, metadata: Mapping[str, str]) -> str:
    """Page-0 ImageDescription: header line, then `|key = value` fields as Aperio writes them."""
    fields = {"AppMag": str(app_mag), **dict(metadata)}
    if mpp is not None:
        fields["MPP"] = f"{mpp:.4f}"
    body = "|".join(f"{k} = {v}" for k, v in fields.items())
    return f"{APERIO_HEADER}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}|{body}"


def write_slide(
    path: str | Path,
    image: np.ndarray,
    mpp: float | None,
    *,
    tile: int = 256,
    downsamples: Sequence[int] = DOWNSAMPLES,
    quality: int = 80,
    workers: int = 2,
    app_mag: int = 20,
    thumbnail_width: int = 1024,
    label: np.ndarray | None = None,
    macro: np.ndarray | None = None,
    metadata: Mapping[str, str] | None = None,
    levels: Sequence[np.ndarray] | None = None,
) -> WrittenSlide:
    """Write `image` (H, W, 3) uint8 as a pyramidal Aperio SVS; `mpp` None leaves MPP out of the description.

    `downsamples` are the pyramid levels relative to level 0 (the first must be 1, each divides the next);
    `metadata` adds `key = value` fields to the description (Filename, Date, ...); `label` and `macro` are
    optional associated images. `levels`: pyramid(image, downsamples) when the caller made it already (a
    caller that needs a small level too, e.g. for the macro, saves a pass over the whole image).
    """
    path = Path(path)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{path}: image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if tile % 16:
        raise ValueError(f"{path}: tile {tile} is not a multiple of 16")
    if levels is None:
        try:
            levels = pyramid(image, downsamples)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    elif levels[0] is not image or len(levels) != len(downsamples):
        raise ValueError(f"{path}: `levels` must be pyramid(image, downsamples)")
    height, width = image.shape[:2]

    meta = dict(metadata or {})
    description = aperio_description(width, height, tile=tile, quality=quality, mpp=mpp, app_mag=app_mag,
                                     metadata=meta)
    thumb_src = next((lv for lv in reversed(levels) if lv.shape[1] >= thumbnail_width), image)
    thumbnail = downsample(thumb_src, -(-thumb_src.shape[1] // thumbnail_width))
    th, tw = thumbnail.shape[:2]
    raw = sum(lv.nbytes for lv in levels)

    common = {"photometric": "rgb", "software": False, "metadata": None}
    with ThreadPoolExecutor(max(1, workers)) as pool, tifffile.TiffWriter(path, bigtiff=raw > 2**31) as tif:
        encoder = _TileEncoder(tile, quality, pool)

        def write_level(level: np.ndarray, desc: str) -> None:
            tif.write(encoder.tiles(level), shape=level.shape, dtype=np.uint8, tile=(tile, tile),
                      compression="jpeg", compressionargs=_RGB_JPEG, subsampling=(1, 1),
                      jpegtables=encoder.tables, description=desc, subfiletype=0, **common)

        def write_strip_jpeg(img: np.ndarray, desc: str, subfiletype: int) -> None:
            tif.write(img, rowsperstrip=16, compression="jpeg", compressionargs={**_RGB_JPEG, "level": quality},
                      subsampling=(1, 1), description=desc, subfiletype=subfiletype, maxworkers=1, **common)

        write_level(levels[0], description)
        thumb_desc = f"{APERIO_HEADER}{width}x{height} -> {tw}x{th} - |{description.partition('|')[2]}"
        write_strip_jpeg(thumbnail, thumb_desc, 0)
        for lv in levels[1:]:
            write_level(lv, f"{APERIO_HEADER}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) -> "
                            f"{lv.shape[1]}x{lv.shape[0]} JPEG/RGB Q={quality}")
        if label is not None:
            tif.write(label, rowsperstrip=label.shape[0], compression="lzw", predictor=True, subfiletype=1,
                      description=f"{APERIO_HEADER}label {label.shape[1]}x{label.shape[0]}", **common)
        if macro is not None:
            write_strip_jpeg(macro, f"{APERIO_HEADER}macro {macro.shape[1]}x{macro.shape[0]}", 9)
    return WrittenSlide(path, tuple((lv.shape[1], lv.shape[0]) for lv in levels), path.stat().st_size,
                        encoder.seconds, raw)
