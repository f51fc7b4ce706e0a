"""Realistic-size synthetic slides (40,000-60,000 px per side) written in seconds.

A real Aperio AT2 scan is mostly blank glass, and its annotations range from a few hundred px to tens of
thousands. Painting and JPEG-encoding 2.4 gigapixels would take minutes per slide, so the slide is a mosaic:

- tissue is decided per 256 px tile (blobs covering 20-60% of the slide, and every annotated region);
- a pool of tissue tiles is painted once per slide (the project's H&E painter, one 2048 px canvas cut into 64
  tiles), and each level-0 tissue tile is a pool tile chosen by a seeded random draw: its JPEG bytes are encoded
  once and reused;
- every glass tile of every level reuses one encoded glass tile's bytes;
- coarser levels are mosaics of the pool tiles averaged n x n (exactly the block mean of the level-0 mosaic,
  as `slide_writer.downsample` computes it), encoded per tile, so levels agree with each other as a scanner's do.

The file layout is slide_writer's Aperio SVS (level 0, strip thumbnail, coarser levels; RGB-coded JPEG with
shared tables). Same arguments, same bytes.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile

from crystal_dask.synthetic.slide_writer import (
    _RGB_JPEG,
    APERIO_HEADER,
    WrittenSlide,
    _encode,
    _split_tables,
    aperio_description,
    downsample,
)
from crystal_dask.synthetic.tissue import paint_slide
from crystal_dask.wsi.annotations import Region

TILE = 256
POOL_SIDE = 2048  # painted once per slide, cut into (POOL_SIDE / TILE)^2 reusable tissue tiles
GLASS = 243  # near-white glass, as a scanner sees it
TISSUE_FRACTION = (0.2, 0.6)


def tissue_grid(width: int, height: int, regions: list[Region], rng: np.random.Generator) -> np.ndarray:
    """(rows, cols) bool of the level-0 tiles holding tissue: every region's tiles, then elliptical blobs until
    a drawn 20-60% of the tiles are tissue."""
    ny, nx = -(-height // TILE), -(-width // TILE)
    grid = np.zeros((ny, nx), bool)
    yy, xx = np.mgrid[0:ny, 0:nx]
    for r in regions:
        x0, x1 = int(min(r.x)) // TILE, int(max(r.x)) // TILE
        y0, y1 = int(min(r.y)) // TILE, int(max(r.y)) // TILE
        grid[y0:y1 + 1, x0:x1 + 1] = True
    target = rng.uniform(*TISSUE_FRACTION)
    while grid.mean() < target:
        cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
        a, b = rng.uniform(0.05, 0.3) * nx, rng.uniform(0.05, 0.3) * ny
        theta = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        grid |= u * u + v * v <= 1.0
    return grid


def tissue_pool(regions: list[Region], flavour: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Tissue tiles painted once: a POOL_SIDE canvas with a few of the slide's labels painted in, cut in tiles."""
    labels = [r.label for r in regions[:6]] or ["norm"]
    k = len(labels)
    painted = []
    for i, label in enumerate(labels):  # one polygon per label, side by side across the canvas
        cx, cy, rad = (i + 0.5) * POOL_SIDE / k, POOL_SIDE / 2, 0.45 * POOL_SIDE / k
        ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        painted.append((label, cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
    canvas = paint_slide(POOL_SIDE, POOL_SIDE, painted, flavour, rng)
    n = POOL_SIDE // TILE
    return [np.ascontiguousarray(canvas[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE])
            for r in range(n) for c in range(n)]


def write_realistic_slide(path: str | Path, width: int, height: int, regions: list[Region], mpp: float,
                          flavour: str, rng: np.random.Generator, *, downsamples: tuple[int, ...] = (1, 4, 16),
                          quality: int = 80, metadata: dict[str, str] | None = None, threads: int = 2
                          ) -> WrittenSlide:
    """Write a width x height Aperio SVS whose level-0 tissue tiles come from a painted pool (see the module)."""
    path = Path(path)
    start = time.perf_counter()
    grid = tissue_grid(width, height, regions, rng)
    pool = tissue_pool(regions, flavour, rng)
    choice = rng.integers(len(pool), size=grid.shape)  # which pool tile each level-0 tissue tile shows
    tables, _ = _split_tables(_encode(np.full((TILE, TILE, 3), GLASS, np.uint8), quality))

    def encoded(block: np.ndarray) -> bytes:
        tab, stream = _split_tables(_encode(block, quality))
        return stream if tab == tables else _encode(block, quality)  # own tables when they differ (never expected)

    glass = encoded(np.full((TILE, TILE, 3), GLASS, np.uint8))
    pool_bytes = [encoded(t) for t in pool]
    encode_seconds = time.perf_counter() - start

    def level_tiles(n: int, lw: int, lh: int):
        """The tiles of the level at downsample n: mosaics of n x n level-0 tiles reduced n times, encoded on
        threads (imagecodecs releases the GIL) in order."""
        small = [downsample(t, n) for t in pool] if n > 1 else pool
        side = TILE // n

        def one(rc: tuple[int, int]) -> bytes:
            r, c = rc
            cells = grid[r * n:(r + 1) * n, c * n:(c + 1) * n]
            if n == 1:
                return pool_bytes[choice[r, c]] if grid[r, c] else glass
            if not cells.any():
                return glass
            block = np.full((TILE, TILE, 3), GLASS, np.uint8)
            picks = choice[r * n:(r + 1) * n, c * n:(c + 1) * n]
            for i, j in zip(*np.nonzero(cells), strict=True):
                block[i * side:(i + 1) * side, j * side:(j + 1) * side] = small[picks[i, j]]
            return encoded(block)

        coords = [(r, c) for r in range(-(-lh // TILE)) for c in range(-(-lw // TILE))]
        if n == 1:
            yield from map(one, coords)
        else:
            with ThreadPoolExecutor(threads) as ex:
                yield from ex.map(one, coords)

    sizes = [(width // n, height // n) for n in downsamples]
    coarsest = downsamples[-1]
    lw, lh = sizes[-1]
    thumb = np.full((lh, lw, 3), GLASS, np.uint8)  # the coarsest level as an array, for the thumbnail
    side = TILE // coarsest
    small = [downsample(t, coarsest) for t in pool]
    for i, j in zip(*np.nonzero(grid), strict=True):
        y, x = i * side, j * side
        if y < lh and x < lw:
            tile = small[choice[i, j]]
            thumb[y:y + side, x:x + side] = tile[:lh - y, :lw - x]
    description = aperio_description(width, height, tile=TILE, quality=quality, mpp=mpp, app_mag=20,
                                     metadata=metadata or {})
    common = {"photometric": "rgb", "software": False, "metadata": None}
    tissue_tiles = int(grid.sum())
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k, (n, (w, h)) in enumerate(zip(downsamples, sizes, strict=True)):
            t0 = time.perf_counter()
            desc = description if k == 0 else (f"{APERIO_HEADER}{width}x{height} [0,0 {width}x{height}] "
                                               f"({TILE}x{TILE}) -> {w}x{h} JPEG/RGB Q={quality}")
            tif.write(level_tiles(n, w, h), shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE),
                      compression="jpeg", compressionargs=_RGB_JPEG, subsampling=(1, 1), jpegtables=tables,
                      description=desc, subfiletype=0, **common)
            encode_seconds += time.perf_counter() - t0
            if k == 0:
                thumbnail = downsample(thumb, max(1, -(-thumb.shape[1] // 1024)))
                tif.write(thumbnail, rowsperstrip=16, compression="jpeg",
                          compressionargs={**_RGB_JPEG, "level": quality}, subsampling=(1, 1),
                          description=f"{APERIO_HEADER}{width}x{height} -> {thumbnail.shape[1]}x"
                                      f"{thumbnail.shape[0]} - |{description.partition('|')[2]}",
                          subfiletype=0, maxworkers=1, **common)
    raw = sum(w * h * 3 for w, h in sizes)
    written = WrittenSlide(path, tuple(sizes), path.stat().st_size, encode_seconds, raw)
    object.__setattr__(written, "tissue_fraction", tissue_tiles / grid.size)  # reported by the corpus summary
    return written
