"""One RGB region prepared once for every feature family: optical density, H/E/D unmixing, tissue mask, grey.

Optical density (OD) here is decadic, OD = -log10(I / 255) per RGB channel (Beer-Lambert; Ruifrok & Johnston
2001), with I0 = 255 (the white point `skimage.color.rgb2hed` assumes too). A uint8 value of 0 is read as 1, so
the largest measurable OD is log10(255) = 2.41: JPEG-compressed scans carry isolated 0 values whose OD would
otherwise be unbounded (rgb2hed clamps at 1e-6, an OD of 6).

Stain amounts use scikit-image's H&E-DAB unmixing matrix (`skimage.color.hed_from_rgb`, the Ruifrok & Johnston
stain vectors). `rgb2hed` returns (ln-OD / ln 1e6) @ hed_from_rgb, which is (decadic OD / 6) @ hed_from_rgb, so
`Region.hed` = 6 x rgb2hed exactly wherever no channel is 0: the amount of each stain along its (unit) stain
vector, in decadic OD units. Computed from a 256-entry lookup table in float32, it is several times faster than
rgb2hed and is shared by every family.

Tissue is every pixel that is not white glass: summed RGB OD >= TISSUE_OD_SUM (0.3, i.e. a mean transmittance
below 79 %, roughly grey < 200). Bare glass in real scans sits at OD sums of 0.03-0.15 (I ~ 225-250), pale
stroma and fat walls at 0.3 and above. A region with less than MIN_TISSUE_FRACTION of tissue pixels cannot be
described and raises FeatureError("no tissue").
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from skimage.color import hed_from_rgb

TISSUE_OD_SUM = 0.3  # summed decadic RGB OD above which a pixel is tissue, not glass
MIN_TISSUE_FRACTION = 0.01  # fewer tissue pixels than this (or than MIN_TISSUE_PIXELS) -> "no tissue"
MIN_TISSUE_PIXELS = 16

# decadic OD of every uint8 value, 0 read as 1 (see module docstring)
OD_LUT = (-np.log10(np.maximum(np.arange(256), 1) / 255.0)).astype(np.float32)
HED_FROM_RGB = hed_from_rgb.astype(np.float32)  # rows: R, G, B contributions; columns: H, E, D
_UNMIX = np.concatenate([HED_FROM_RGB, np.ones((3, 1), np.float32)], axis=1)  # (3, 4): H, E, D, OD sum
GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], np.float32)  # skimage.color.rgb2gray's weights


class FeatureError(ValueError):
    """A region whose features cannot be computed; the message is a short reason ("no tissue", "no MPP")."""


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """The region as a C-contiguous (H, W, 3) uint8 array; anything else is a programming error (TypeError)."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise TypeError(f"expected an (H, W, 3) uint8 RGB array, got {getattr(rgb, 'dtype', type(rgb))} "
                        f"{getattr(rgb, 'shape', '')}")
    if min(rgb.shape[:2]) < 3:
        raise FeatureError("region too small")
    return np.ascontiguousarray(rgb)


class Region:
    """Lazily computed, shared intermediates of one region at `um_per_px` (None: slide without an MPP)."""

    def __init__(self, rgb: np.ndarray, um_per_px: float | None) -> None:
        self.rgb = check_rgb(rgb)
        if um_per_px is not None and not (np.isfinite(um_per_px) and um_per_px > 0):
            raise ValueError(f"um_per_px must be a positive number or None, got {um_per_px!r}")
        self.um_per_px = None if um_per_px is None else float(um_per_px)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]

    @cached_property
    def od(self) -> np.ndarray:
        """(H, W, 3) float32 decadic optical density of R, G, B."""
        return OD_LUT[self.rgb]

    @cached_property
    def _unmixed(self) -> np.ndarray:
        """(4, H, W) float32: H, E, D amounts clipped at 0, then the summed RGB OD (one matrix product)."""
        h, w = self.shape
        out = _UNMIX.T @ self.od.reshape(-1, 3).T  # (4, n), rows contiguous
        np.maximum(out[:3], 0, out=out[:3])
        return out.reshape(4, h, w)

    @property
    def hed(self) -> np.ndarray:
        """(3, H, W) float32 haematoxylin, eosin, DAB amounts in decadic OD units, clipped at 0 like rgb2hed.

        Channel-first (unlike rgb2hed's channel-last) so each stain is one contiguous plane.
        """
        return self._unmixed[:3]

    @property
    def od_sum(self) -> np.ndarray:
        """(H, W) float32 summed RGB optical density: how much light the pixel absorbs in all."""
        return self._unmixed[3]

    @cached_property
    def tissue(self) -> np.ndarray:
        """(H, W) bool: not white glass."""
        return self.od_sum >= TISSUE_OD_SUM

    @cached_property
    def tissue_pixels(self) -> int:
        return int(np.count_nonzero(self.tissue))

    @cached_property
    def grey(self) -> np.ndarray:
        """(H, W) uint8 luminance with rgb2gray's weights, rounded."""
        g = self.rgb.reshape(-1, 3).astype(np.float32) @ GREY_WEIGHTS
        return np.rint(g).astype(np.uint8).reshape(self.shape)

    def require_tissue(self) -> None:
        """Raise FeatureError("no tissue") when the region is (almost) all glass."""
        h, w = self.shape
        if self.tissue_pixels < max(MIN_TISSUE_PIXELS, MIN_TISSUE_FRACTION * h * w):
            raise FeatureError("no tissue")

    def require_mpp(self) -> float:
        """The region's µm per pixel, or FeatureError("no MPP") for slides without one."""
        if self.um_per_px is None:
            raise FeatureError("no MPP")
        return self.um_per_px
