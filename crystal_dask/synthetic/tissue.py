"""Procedural H&E-like breast tissue: paint a slide canvas and, inside each annotated polygon, its class's look.

Painting happens in stain space: two concentration maps, haematoxylin (nuclei, calcium: blue-purple) and eosin
(stroma, cytoplasm: pink), turned into RGB through a Beer-Lambert lookup table of the flavour's stain vectors.
Each class differs in ways that survive greyscale at 256x256: overall darkness, the scale of its structures
(ducts, nests, nuclei) and their density; calcified classes carry very dark deposits. The flavour is the
domain shift: `fcbr` (Fox Chase) stains lighter and is sharper, `tubr` (Temple) stains darker and more purple,
with a slight blur.

Textures are periodic fields computed once per process (fixed seeds) and sampled at random offsets and
orientations, so a slide costs a few vectorized passes; everything random comes from the caller's
`np.random.Generator`, so a slide is a pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy.ndimage import uniform_filter

from crystal_dask.wsi.polygon import polygon_mask

CMAX = 2.7  # stain concentration held by a uint8 canvas value of 255 (the darkest calcium: H 1.2 decadic OD)
_TEX = 512  # side of the periodic noise fields
_FIELD = 1024  # side of the periodic nucleus fields
_STRIPE = 512  # rows per pass over the full canvas (bounds memory)
_ANGLES = np.arange(0, 180, 15)  # fibre directions with a precomputed field
_SIGMAS = (1.0, 3.0, 4.0, 6.0, 10.0, 12.0, 14.0, 28.0, 40.0)  # feature sizes of the smooth-noise fields


@dataclass(frozen=True)
class Stain:
    """A lab's staining: optical-density vectors and strengths, plus the scanner's sharpness."""

    name: str
    haematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    h_od: float  # optical density of concentration 1.0
    e_od: float
    glass: float  # transmitted light through bare glass (1.0 = white)
    blur: bool  # a 2x2 box blur of the stain maps (a softer scanner focus)


FLAVOURS: dict[str, Stain] = {
    "fcbr": Stain("fcbr", (0.65, 0.70, 0.29), (0.05, 0.95, 0.38), h_od=1.05, e_od=0.75, glass=0.96, blur=False),
    "tubr": Stain("tubr", (0.55, 0.78, 0.30), (0.15, 0.95, 0.30), h_od=1.3, e_od=0.85, glass=0.95, blur=True),
}


# ------------------------------------------------------------------------------------------- textures
def _unit(v: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(v, (1, 99))
    return np.clip((v - lo) / (hi - lo), 0, 1).astype(np.float32)


@cache
def _fibres(angle_deg: int) -> np.ndarray:
    """Periodic field of long thin fibres at an angle, in [0, 1]: stroma collagen."""
    rng = np.random.default_rng(1000 + angle_deg)
    u = np.fft.fftfreq(_TEX)[None, :]
    v = np.fft.fftfreq(_TEX)[:, None]
    a = np.deg2rad(angle_deg)
    along, across = u * np.cos(a) + v * np.sin(a), -u * np.sin(a) + v * np.cos(a)
    kernel = np.exp(-2 * np.pi**2 * ((along * 14.0) ** 2 + (across * 1.6) ** 2))
    return _unit(np.fft.ifft2(np.fft.fft2(rng.standard_normal((_TEX, _TEX))) * kernel).real)


@cache
def _blobs(sigma: float) -> np.ndarray:
    """Periodic smooth noise with features about `sigma` px, in [0, 1]: patches, nests, smears."""
    rng = np.random.default_rng(2000 + int(sigma * 10))
    f = np.fft.fftfreq(_TEX)
    kernel = np.exp(-2 * np.pi**2 * sigma**2 * (f[None, :] ** 2 + f[:, None] ** 2))
    return _unit(np.fft.ifft2(np.fft.fft2(rng.standard_normal((_TEX, _TEX))) * kernel).real)


# kind -> (stamps per 10k px^2, semi-axis a range, semi-axis b range, darkness range)
_NUCLEI: dict[str, tuple[float, tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "fibroblast": (3.0, (6.0, 10.0), (1.6, 2.6), (0.55, 0.8)),
    "epithelial": (60.0, (3.5, 5.0), (3.0, 4.2), (0.55, 0.8)),
    "lymphocyte": (140.0, (2.6, 3.6), (2.4, 3.4), (0.85, 1.0)),
    "crowded": (70.0, (4.5, 6.5), (3.8, 5.5), (0.65, 0.9)),
    "atypical": (45.0, (6.0, 11.0), (4.5, 8.5), (0.6, 1.0)),
}


def _ellipse_offsets(a: float, b: float, theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel offsets (dy, dx) covering an ellipse and a nucleus profile (darker rim, lighter centre)."""
    r = int(np.ceil(max(a, b)))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    c, s = np.cos(theta), np.sin(theta)
    q = ((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2
    inside = q <= 1.0
    profile = 0.85 + 0.15 * q  # chromatin gathers at the nuclear membrane
    return dy[inside], dx[inside], profile[inside].astype(np.float32)


@cache
def _nuclei(kind: str) -> np.ndarray:
    """Periodic field of nuclei of one kind, in [0, 1] (haematoxylin density)."""
    density, (a0, a1), (b0, b1), (d0, d1) = _NUCLEI[kind]
    rng = np.random.default_rng(3000 + sorted(_NUCLEI).index(kind))
    n = int(density * _FIELD * _FIELD / 1e4)
    field = np.zeros((_FIELD, _FIELD), np.float32)
    # a few discrete shapes, each stamped at many places at once
    shapes = [_ellipse_offsets(rng.uniform(a0, a1), rng.uniform(b0, b1), rng.uniform(0, np.pi)) for _ in range(24)]
    which = rng.integers(len(shapes), size=n)
    cy, cx = rng.integers(_FIELD, size=n), rng.integers(_FIELD, size=n)
    dark = rng.uniform(d0, d1, size=n).astype(np.float32)
    for k, (dy, dx, prof) in enumerate(shapes):
        sel = which == k
        iy = (cy[sel, None] + dy[None, :]) % _FIELD
        ix = (cx[sel, None] + dx[None, :]) % _FIELD
        np.maximum.at(field, (iy, ix), dark[sel, None] * prof[None, :])
    grain = _blobs(1.0)
    return np.clip(field * (0.85 + 0.3 * np.tile(grain, (_FIELD // _TEX, _FIELD // _TEX))), 0, 1)


def warm_textures() -> None:
    """Compute every texture field now (e.g. before forking workers, which then share them)."""
    for kind in _NUCLEI:
        _nuclei(kind)
    for angle in _ANGLES:
        _fibres(int(angle))
    for sigma in _SIGMAS:
        _blobs(sigma)


def _window(tex: np.ndarray, h: int, w: int, rng: np.random.Generator, turn: bool = True) -> np.ndarray:
    """An (h, w) window of a periodic texture at a random offset (and random rotation/flip when `turn`)."""
    if turn:
        k = int(rng.integers(8))
        tex = np.rot90(tex, k % 4)
        tex = tex[:, ::-1] if k >= 4 else tex
    th, tw = tex.shape
    oy, ox = int(rng.integers(th)), int(rng.integers(tw))
    out = np.empty((h, w), tex.dtype)
    # copy block by block: exactly h*w values, no oversized np.tile
    y = 0
    while y < h:
        sy = (oy + y) % th
        ny = min(th - sy, h - y)
        x = 0
        while x < w:
            sx = (ox + x) % tw
            nx = min(tw - sx, w - x)
            out[y : y + ny, x : x + nx] = tex[sy : sy + ny, sx : sx + nx]
            x += nx
        y += ny
    return out


def _stroma_fibres(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Collagen in [0, 1]: two fibre families at random angles, gathered into bundles."""
    a1, a2 = (int(a) for a in rng.choice(_ANGLES, size=2, replace=False))
    fib = 0.65 * _window(_fibres(a1), h, w, rng, turn=False) + 0.35 * _window(_fibres(a2), h, w, rng, turn=False)
    return 0.7 * fib + 0.3 * _window(_blobs(14.0), h, w, rng)


# ---------------------------------------------------------------------------------------- region painting
@dataclass
class _Region:
    """Stain maps of one region's bounding box while it is painted; `mask` is the polygon."""

    h: np.ndarray
    e: np.ndarray
    mask: np.ndarray
    rng: np.random.Generator
    ink: np.ndarray | None = None  # RGB optical density added after the stain lookup (artefacts)

    @property
    def shape(self) -> tuple[int, int]:
        return self.h.shape

    def points(self, n: int) -> np.ndarray:
        """n random (y, x) pixels inside the polygon."""
        ys, xs = np.nonzero(self.mask)
        if len(ys) == 0:
            return np.empty((0, 2), np.intp)
        pick = self.rng.integers(len(ys), size=n)
        return np.stack([ys[pick], xs[pick]], axis=1)

    def count(self, per_mpx: float, minimum: int = 1) -> int:
        """How many structures for a density per million polygon pixels."""
        return max(minimum, round(self.mask.sum() * per_mpx / 1e6))


def _local(reg: _Region, cy: int, cx: int, r: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Window around (cy, cx) clipped to the region box, with the distance and angle of every pixel."""
    h, w = reg.shape
    y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
    yy, xx = np.ogrid[y0 - cy : y1 - cy, x0 - cx : x1 - cx]
    return (slice(y0, y1), slice(x0, x1)), np.hypot(yy, xx).astype(np.float32), np.arctan2(yy, xx)


def _wobble(theta: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Radius factor that makes a disc irregular."""
    p = rng.uniform(0, 2 * np.pi, 3)
    a = rng.uniform(0.3, 1.0, 3) * amount
    return 1 + a[0] * np.sin(2 * theta + p[0]) + a[1] * np.sin(3 * theta + p[1]) + a[2] * np.sin(5 * theta + p[2])


def _ducts(reg: _Region, n: int, radius: tuple[float, float], wall: tuple[float, float], nuclei: str,
           lumen: float = 1.0, fill: str | None = None, necrosis: float = 0.0) -> None:
    """Ducts: a lumen (white, or `fill`ed with cells), lined by a wall of epithelium with `nuclei`.

    `lumen` is the open fraction of the inner radius; `necrosis` the chance of a pink necrotic centre.
    """
    rng = reg.rng
    field = _nuclei(nuclei)
    for cy, cx in reg.points(n):
        r = rng.uniform(*radius)
        t = rng.uniform(*wall)
        win, d, theta = _local(reg, cy, cx, int(r * 1.4 + t + 2))
        dn = d / (r * _wobble(theta, rng, 0.12))
        outer = 1 + t / r
        nuc = _window(field, *d.shape, rng)
        h, e = reg.h[win], reg.e[win]
        in_wall = (dn >= lumen) & (dn < outer)
        inside = dn < lumen
        rim = (dn >= outer) & (dn < outer + 2.5 / r)
        e[rim] = 0.75
        h[in_wall] = 0.18 + 0.85 * nuc[in_wall]
        e[in_wall] = 0.42
        if fill is None:
            h[inside], e[inside] = 0.02, 0.05
        else:
            cells = _window(_nuclei(fill), *d.shape, rng)
            h[inside] = 0.22 + 0.8 * cells[inside]
            e[inside] = 0.38
            if rng.random() < necrosis:
                core = dn < rng.uniform(0.25, 0.5)
                debris = _window(_nuclei("lymphocyte"), *d.shape, rng)
                h[core] = 0.08 + 0.45 * debris[core] * (debris[core] > 0.6)
                e[core] = 0.62


def _lobules(reg: _Region, n: int) -> None:
    """Lobules: a pale intralobular stroma holding a cluster of small acini."""
    rng = reg.rng
    for cy, cx in reg.points(n):
        r = rng.uniform(45, 110)
        win, d, theta = _local(reg, cy, cx, int(r * 1.3))
        pale = d < r * _wobble(theta, rng, 0.15)
        reg.e[win][pale] *= 0.55
        sub = _Region(reg.h[win], reg.e[win], pale, rng)
        _ducts(sub, max(3, int(r * r / 900)), (5, 11), (5, 8), "epithelial")


# calcium phosphate as routine H&E shows it (docs/calcification.md): haematoxylin 0.5-1.2 decadic OD, blue-purple
# (eosin about a fifth of the haematoxylin, in OD), glassy, some laminated, some crossed by microtome cracks
CALCIUM_H_OD = (0.5, 1.2)
_H_PER_C = FLAVOURS["fcbr"].h_od / np.log(10)  # decadic haematoxylin OD of concentration 1 (the fcbr stain)
_E_PER_H = 0.2 * FLAVOURS["fcbr"].h_od / FLAVOURS["fcbr"].e_od  # eosin concentration per haematoxylin's


def _calcium(reg: _Region, cy: float, cx: float, r: float, irregular: float = 0.18) -> None:
    """One calcium deposit of radius r px: darkness drawn over CALCIUM_H_OD, laminated (concentric rings) one time
    in three, crossed by one or two straight 3-8 px cracks of bare glass one time in three (from 8 px radius)."""
    rng = reg.rng
    win, d, theta = _local(reg, int(cy), int(cx), int(r * 1.35) + 2)
    core = d < r * _wobble(theta, rng, irregular)
    c = np.float32(rng.uniform(*CALCIUM_H_OD) / _H_PER_C)
    h = np.full(d.shape, c, np.float32)
    if rng.random() < 1 / 3:
        h *= 1 + 0.15 * np.cos(2 * np.pi * d / rng.uniform(6.0, 12.0))
    h *= 1 + 0.01 * rng.standard_normal(d.shape).astype(np.float32)
    e = h * _E_PER_H
    if r >= 8 and rng.random() < 1 / 3:
        yy, xx = np.mgrid[win[0], win[1]]
        for _ in range(int(rng.integers(1, 3))):
            a, off = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3) * r
            gap = np.abs((yy - cy) * np.cos(a) - (xx - cx) * np.sin(a) - off) < rng.uniform(1.5, 4.0)
            h[gap], e[gap] = 0.02, 0.03
    reg.h[win][core] = h[core]
    reg.e[win][core] = e[core]


def _specks(reg: _Region, clusters: int) -> None:
    """Small loose clusters of calcific deposits of several sizes over the region (the cdcs look): 10-23 per
    cluster, 5-20 px radius (10-40 µm across at the corpora's 0.5 µm/px)."""
    rng = reg.rng
    side = min(reg.shape)
    for cy, cx in reg.points(clusters):
        spread = side * rng.uniform(0.06, 0.12)
        for _ in range(int(rng.integers(10, 24))):
            y, x = cy + rng.normal(0, spread), cx + rng.normal(0, spread)
            if 0 <= y < reg.shape[0] and 0 <= x < reg.shape[1]:
                _calcium(reg, y, x, rng.uniform(5, 20))


def _paint_bckg(reg: _Region) -> None:
    pass  # the stroma the region starts from


def _paint_norm(reg: _Region) -> None:
    _lobules(reg, reg.count(7))
    _ducts(reg, reg.count(14), (14, 45), (8, 13), "epithelial")


def _paint_susp(reg: _Region) -> None:
    reg.h += 0.6 * _window(_nuclei("fibroblast"), *reg.shape, reg.rng)
    _ducts(reg, reg.count(40, 2), (22, 60), (16, 30), "crowded", lumen=0.55)


def _paint_infl(reg: _Region) -> None:
    rng = reg.rng
    patch = _window(_blobs(28.0), *reg.shape, rng)
    dense = np.clip((patch - 0.3) * 3, 0, 1)
    lymph = _window(_nuclei("lymphocyte"), *reg.shape, rng)
    reg.h[:] = np.maximum(reg.h, dense * lymph * 1.05)
    reg.e *= 1 - 0.45 * dense


def _paint_dcis(reg: _Region) -> None:
    _ducts(reg, reg.count(16, 2), (45, 150), (6, 12), "crowded", lumen=1.0, fill="atypical", necrosis=0.6)


def _paint_nneo(reg: _Region) -> None:
    rng = reg.rng
    coarse = _window(_blobs(3.0), *reg.shape, rng)
    reg.e[:] = 0.5 + 0.5 * (0.75 * _stroma_fibres(*reg.shape, rng) + 0.25 * coarse)  # dense collagen
    reg.h *= 0.6
    _ducts(reg, reg.count(6), (12, 35), (10, 18), "crowded", lumen=0.7)


def _paint_indc(reg: _Region) -> None:
    rng = reg.rng
    h, w = reg.shape
    nests = _window(_blobs(10.0), h, w, rng) > 0.55
    cords = np.abs(_window(_fibres(int(rng.choice(_ANGLES))), h, w, rng, turn=False) - 0.5) < 0.09
    tumour = nests | cords
    cells = _window(_nuclei("atypical"), h, w, rng)
    reg.h[tumour] = 0.3 + 0.8 * cells[tumour]
    reg.e[tumour] = 0.36
    reg.e[~tumour] = np.minimum(reg.e[~tumour] * 1.15, 1.0)  # desmoplastic stroma
    _ducts(reg, reg.count(25), (4, 9), (4, 7), "atypical", lumen=1.0)


def _paint_artf(reg: _Region) -> None:
    rng = reg.rng
    h, w = reg.shape
    if rng.random() < 0.7:  # grease-pen strokes: blue, green or black, streaked along the stroke
        colour = np.array([(0.9, 0.45, 0.08), (0.85, 0.15, 0.7), (0.9, 0.9, 0.85)][int(rng.integers(3))], np.float32)
        density = np.zeros((h, w), np.float32)
        yy, xx = np.ogrid[:h, :w]
        for _ in range(int(rng.integers(1, 3))):
            angle = int(rng.choice(_ANGLES))
            py, px = reg.points(1)[0]
            a = np.deg2rad(angle)
            dist = np.abs((xx - px) * np.sin(a) - (yy - py) * np.cos(a))
            half = rng.uniform(0.15, 0.35) * min(h, w)
            band = np.clip((half - dist) / 25.0, 0, 1)
            streak = _window(_fibres(angle), h, w, rng, turn=False)
            density = np.maximum(density, band * (0.55 + 0.6 * streak))
        reg.ink = density[..., None] * colour * rng.uniform(0.7, 1.4)
    else:  # foreign bodies: dark fragments and air-bubble outlines
        frags = _window(_blobs(6.0), h, w, rng) > 0.8
        reg.ink = frags[..., None] * np.array((1.6, 1.5, 1.3), np.float32)
        for cy, cx in reg.points(reg.count(8)):
            win, d, _ = _local(reg, cy, cx, int(rng.uniform(40, 160)))
            r = d.shape[0] / 2.4
            ring = np.abs(d - r) < 3
            reg.ink[win][ring] = (1.1, 1.1, 1.0)
            reg.h[win][d < r - 3] *= 0.3
            reg.e[win][d < r - 3] *= 0.3


def _paint_null(reg: _Region) -> None:
    rng = reg.rng
    if rng.random() < 0.5:
        _paint_norm(reg)
    fade = rng.uniform(0.25, 0.45)
    size = int(rng.integers(9, 21))
    reg.h[:] = uniform_filter(uniform_filter(reg.h, size), size) * fade
    reg.e[:] = uniform_filter(uniform_filter(reg.e, size), size) * fade
    holes = _window(_blobs(12.0), *reg.shape, rng) > 0.78  # tears
    reg.h[holes], reg.e[holes] = 0.0, 0.02


def _paint_cdcs(reg: _Region) -> None:
    _paint_dcis(reg)
    _specks(reg, int(reg.rng.integers(7, 12)))


def _paint_cnno(reg: _Region) -> None:
    """The annotated deposit fills the middle of its region; a few smaller ones lie around it."""
    _paint_nneo(reg)
    rng = reg.rng
    h, w = reg.shape
    side = min(h, w)
    _calcium(reg, h / 2 + rng.normal(0, 0.04 * h), w / 2 + rng.normal(0, 0.04 * w), side * rng.uniform(0.3, 0.38))
    for cy, cx in reg.points(int(rng.integers(2, 6))):
        _calcium(reg, cy, cx, side * rng.uniform(0.03, 0.12))


def _paint_cidc(reg: _Region) -> None:
    """Ducts whose lumen is filled by a deposit, retracted from a wall of atypical cells by a clear halo."""
    _paint_indc(reg)
    rng = reg.rng
    side = min(reg.shape)
    for cy, cx in reg.points(int(rng.integers(3, 6))):
        r = side * rng.uniform(0.12, 0.2)
        win, d, _ = _local(reg, cy, cx, int(r * 1.5))
        wall = (d < r * 1.4) & (d >= r)
        cells = _window(_nuclei("atypical"), *d.shape, rng)
        reg.h[win][wall] = 0.3 + 0.8 * cells[wall]
        reg.e[win][wall] = 0.36
        halo = d < r
        reg.h[win][halo], reg.e[win][halo] = 0.02, 0.05
        _calcium(reg, cy, cx, r * 0.82, irregular=0.08)


PAINTERS: dict[str, Callable[[_Region], None]] = {
    "bckg": _paint_bckg, "norm": _paint_norm, "artf": _paint_artf, "null": _paint_null, "susp": _paint_susp,
    "infl": _paint_infl, "dcis": _paint_dcis, "nneo": _paint_nneo, "indc": _paint_indc,
    "cdcs": _paint_cdcs, "cnno": _paint_cnno, "cidc": _paint_cidc,
}


# ------------------------------------------------------------------------------------------- the slide
def stain_lut(stain: Stain, h_gain: float = 1.0, e_gain: float = 1.0) -> np.ndarray:
    """(256, 256, 3) uint8 RGB for every (haematoxylin, eosin) canvas value pair."""
    c = np.arange(256, dtype=np.float64) / 255 * CMAX
    hv = np.asarray(stain.haematoxylin) / np.linalg.norm(stain.haematoxylin) * stain.h_od * h_gain
    ev = np.asarray(stain.eosin) / np.linalg.norm(stain.eosin) * stain.e_od * e_gain
    od = c[:, None, None] * hv + c[None, :, None] * ev
    return np.round(255 * stain.glass * np.exp(-od)).astype(np.uint8)


def _to_u8(v: np.ndarray) -> np.ndarray:
    return np.clip(v * (255 / CMAX) + 0.5, 0, 255).astype(np.uint8)


def _paint_base(h8: np.ndarray, e8: np.ndarray, rng: np.random.Generator) -> None:
    """Tissue section (irregular blob on white glass) filled with stroma and sparse fibroblasts."""
    height, width = h8.shape
    cy, cx = height / 2 + rng.uniform(-0.05, 0.05) * height, width / 2 + rng.uniform(-0.05, 0.05) * width
    ry, rx = height * rng.uniform(0.5, 0.6), width * rng.uniform(0.5, 0.6)
    edge = _blobs(40.0)
    fib_a, fib_b = (int(a) for a in rng.choice(_ANGLES, size=2, replace=False))
    offsets = rng.integers(_TEX, size=(4, 2))
    nuc_off = rng.integers(_FIELD, size=2)
    e_level = rng.uniform(0.42, 0.52)

    def tiled(tex: np.ndarray, off: np.ndarray, y0: int, y1: int) -> np.ndarray:
        n = tex.shape[0]
        rows = (np.arange(y0, y1) + off[0]) % n
        reps = -(-(width + off[1]) // n)
        return np.tile(tex[rows], (1, reps))[:, off[1] : off[1] + width]

    for y0 in range(0, height, _STRIPE):
        y1 = min(y0 + _STRIPE, height)
        yy = ((np.arange(y0, y1, dtype=np.float32) - cy) / ry)[:, None]
        xx = ((np.arange(width, dtype=np.float32) - cx) / rx)[None, :]
        tissue = np.sqrt(yy * yy + xx * xx) + 0.2 * (tiled(edge, offsets[0], y0, y1) - 0.5) < 0.98
        fib = 0.65 * tiled(_fibres(fib_a), offsets[1], y0, y1) + 0.35 * tiled(_fibres(fib_b), offsets[2], y0, y1)
        fib = 0.7 * fib + 0.3 * tiled(_blobs(14.0), offsets[3], y0, y1)
        e = (e_level + 0.5 * (fib - 0.5)) * tissue
        h = (0.05 + 0.7 * tiled(_nuclei("fibroblast"), nuc_off, y0, y1)) * tissue
        e8[y0:y1] = _to_u8(e)
        h8[y0:y1] = _to_u8(h)


def paint_region(h8: np.ndarray, e8: np.ndarray, label: str, x: Sequence[float], y: Sequence[float],
                 rng: np.random.Generator) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Paint one polygon's look into the canvas stain maps; return its (box, mask, ink OD) when it has ink."""
    height, width = h8.shape
    ys, xs = np.asarray(y, np.float64), np.asarray(x, np.float64)
    y0, x0 = max(int(np.floor(ys.min())), 0), max(int(np.floor(xs.min())), 0)
    y1, x1 = min(int(np.ceil(ys.max())) + 1, height), min(int(np.ceil(xs.max())) + 1, width)
    mask = polygon_mask(xs - x0, ys - y0, (y1 - y0, x1 - x0))
    if not mask.any():
        return None
    box = (slice(y0, y1), slice(x0, x1))
    hh, ww = mask.shape
    e = (rng.uniform(0.4, 0.55) + 0.5 * (_stroma_fibres(hh, ww, rng) - 0.5)).astype(np.float32)
    h = (0.05 + 0.7 * _window(_nuclei("fibroblast"), hh, ww, rng)).astype(np.float32)
    reg = _Region(h, e, mask, rng)
    PAINTERS[label](reg)
    gain = rng.uniform(0.9, 1.1)  # region-to-region staining variation
    np.copyto(h8[box], _to_u8(reg.h * gain), where=mask)
    np.copyto(e8[box], _to_u8(reg.e * gain), where=mask)
    return (box, mask, reg.ink) if reg.ink is not None else None


def _box2(a: np.ndarray, y0: int, y1: int) -> np.ndarray:
    """Rows y0:y1 of `a` averaged over 2x2 boxes (edges repeated): a cheap, stripe-wise blur."""
    rows = a[y0 : min(y1 + 1, a.shape[0])].astype(np.uint16)
    if rows.shape[0] == y1 - y0:
        rows = np.concatenate([rows, rows[-1:]])
    rows = np.concatenate([rows, rows[:, -1:]], axis=1)
    total = rows[:-1, :-1] + rows[1:, :-1]
    total += rows[:-1, 1:]
    total += rows[1:, 1:]
    return ((total + 2) >> 2).astype(np.uint8)


def paint_slide(width: int, height: int, regions: Sequence[tuple[str, Sequence[float], Sequence[float]]],
                flavour: str, rng: np.random.Generator) -> np.ndarray:
    """An (height, width, 3) uint8 RGB slide: tissue on glass, each (label, x, y) polygon painted its class's look."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r} (known: {', '.join(FLAVOURS)})")
    stain = FLAVOURS[flavour]
    h8 = np.empty((height, width), np.uint8)
    e8 = np.empty((height, width), np.uint8)
    _paint_base(h8, e8, rng)
    # unannotated normal structures scattered through the section
    for _ in range(max(1, width * height // 1_500_000)):
        cy, cx, r = rng.integers(height), rng.integers(width), int(rng.uniform(60, 140))
        ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        paint_region(h8, e8, "norm", cx + r * np.cos(ang), cy + r * np.sin(ang), rng)
    inks = [ink for label, x, y in regions if (ink := paint_region(h8, e8, label, x, y, rng)) is not None]
    lut = stain_lut(stain, rng.uniform(0.92, 1.08), rng.uniform(0.92, 1.08)).reshape(-1, 3)
    rgb = np.empty((height, width, 3), np.uint8)
    for y0 in range(0, height, _STRIPE):
        y1 = min(y0 + _STRIPE, height)
        h, e = (_box2(m, y0, y1) if stain.blur else m[y0:y1] for m in (h8, e8))
        idx = h.astype(np.intp) * 256 + e
        np.take(lut, idx, axis=0, out=rgb[y0:y1])
    for box, mask, ink in inks:
        dst = rgb[box]
        tinted = (dst * np.exp(-ink)).astype(np.uint8)
        np.copyto(dst, tinted, where=mask[..., None])
    return rgb
