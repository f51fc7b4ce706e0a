"""`calcification` family: segmentation of calcium-phosphate deposits and their morphology, in µm.

What is detected: calcium phosphate (hydroxyapatite, "type II" calcification), which in H&E is dark, deeply
basophilic (blue-purple), sharply bordered, often laminated or fractured by the microtome. Calcium OXALATE
("type I") is pale, colourless to amber and nearly invisible in H&E without polarised light: this family does
NOT detect it, and a region holding only oxalate crystals reads as "no deposits".

Detection (version 4) separates deposits from nuclei by more than darkness. Every size is in µm, so it means
the same tissue at any resolution, except two read in whole pixels: the pixel-scale glassiness's window (at
least 3 px) and rule 9's one-pixel crack margin and edge. Rules 6b-9 were decided at the features stage's
2 µm/px and behave somewhat differently at other resolutions (docs/features.md gives 1 µm/px figures).
docs/features.md gives each rule's reason and the curves measured by the
validation harness (`crystal-dask bench calcification`, deposits painted on real H&E):
1. Cracks closed: a grey closing of the haematoxylin amount H with a disk of CLOSE_UM (3 µm) radius fills the
   microtome's fracture lines (up to ~2 x CLOSE_UM wide) and lamination troughs, so a shattered deposit is one.
2. Size, as a plateau: a grey opening of the closed H with a disk of CORE_UM (6 µm) radius keeps only dark
   plateaus that hold a 12 µm disc: a nucleus (5-15 µm, mostly under 12) or a cluster of nuclei with gaps
   between them falls through. Plateau = opened H >= DEPOSIT_H_OD (0.4 decadic OD; the palest deposits are 0.5).
3. Glassy: inside the plateau the closed H may rise above the opened one (the top-hat: chromatin, nucleoli, a
   dark nucleus on purple cytoplasm) by at most TEXTURE_MAX (30 %) of the plateau level, on average over a
   window of 2 x TEXTURE_UM; the glassy plateau is opened again by the CORE_UM disk, so what remains is a core
   of homogeneous mineral at least 12 µm across (an opening by a disk smaller by TEXTURE_UM found 0.94 of the
   deposits instead of 0.87, but 77 false objects per mm² instead of 28, with rule 6's earlier quarter border:
   specificity first).
4. Basophilic: a core's median eosin amount is at most E_PER_H_MAX (1x) its median haematoxylin.
5. The deposit is its core grown by GROW_UM (4 µm) into the closed H >= DEPOSIT_H_OD (rim and protrusions).
6. Sharp border: the BORDER_Q-th percentile (50th) of H in a BORDER_UM (2 µm) ring just outside the deposit is
   at most BORDER_RATIO (0.6) of the deposit's median H: at least half of its edge is a clear step down, as a
   mineral's edge is where it lies in stroma or a lumen. Keratin, epidermis and clumps of nuclei at 2 µm/px are
   as glassy and as dark as a deposit, but they continue into dark tissue along much of their border (a quarter
   of the border let 32 false objects per mm² through on real skin and breast, half lets 3).
   6b. An object that is glassy at the scanner's scale (below) may have that ring read one BORDER_UM further
   out, past the pixels blended with its rim: a pale deposit (H 0.5) on mid-purple tissue (H 0.3-0.4) blends
   into its first ring, which then reads as dark as tissue.
7. A darker body inside a rejected object: a deposit against epidermis, a nucleus or a duct wall merges with
   that tissue's plateau, and rule 6 then judges mostly tissue. Inside each object that failed rule 6, rules 2-6
   run again on the plateau >= SPLIT_RATIO (1.2) x the object's median H, the rest of the object counting as
   ring; a body found so must also be glassy at the scanner's scale.
8. A glassy body inside a rejected object: a deposit as pale as the tissue it merged with has no darker body for
   rule 7, and one merged with textured tissue (nuclei, epidermis) makes rule 7's body, which includes that tissue,
   fail the pixel-scale glassiness. Inside each object that failed rules 6 and 7, the pixels that are glassy at the
   scanner's scale (local coefficient of variation <= PIXEL_CV_MAX, below) are opened by a disk of GLASS_CORE_UM
   (4 µm) radius: the window reaches GLASS_UM past the core's edge and each crack, so a cracked 20 µm deposit keeps
   an 8 µm glassy disc, not a 12 µm one. These basophilic glassy cores (rule 4), grown as in rule 5, are deposits
   when the median H of their ring (rule 6's, the rest of the object counting as ring) is at most
   GLASS_BORDER_RATIO (1 / SPLIT_RATIO) x their median: a glassy body SPLIT_RATIO darker than all round it. The
   glassy cores of deposit-free real tissue (smooth cytoplasm and stroma) read a ring of 0.89-1.5 x their H.
9. A small cracked deposit: at 2 µm/px a 20 µm deposit is 10 px across, and a crack or two (1.5-4 µm) leave the
   closed H a valley that fails rule 3's texture or leaves no 12 µm glassy disc, so no core, no object. Where
   rules 2-5 made no object, they run again with a disc of SMALL_CORE_UM (4 µm) radius; since nuclei (5-15 µm)
   hold such a disc, the size rule is read on the grown object instead (equivalent diameter >= SMALL_MIN_UM,
   16 µm), with a stricter border (first ring's median H <= SMALL_RING, 0.35, x the object's) and glassiness at
   the scanner's scale read away from the cracks (pixels within one pixel of one under CRACK_RATIO, 0.5, x the
   object's median H left out; median CV <= SMALL_CV_MAX, 0.2). Rule 4 is read on the object.
Glassy at the scanner's scale (rules 6b, 7, 8): H's local coefficient of variation, in a window of 2 x GLASS_UM + 1
px after a grey closing of that size (it fills one-pixel cracks), at most PIXEL_CV_MAX (0.07); for rules 6b and 7
its median over the object's interior. Mineral has no chromatin; the purple cytoplasm of epidermis reads 0.08-0.10
at 2 µm/px, clumps of nuclei 0.12-0.25. Laminated and cracked deposits read 0.05-0.2, so rules 6b and 7 mostly
rescue smooth ones, and rule 8 the smooth parts of the others.
Known limits (measured, docs/features.md): fine granular deposits under ~15 µm are missed by design (rules 2, 9);
20 µm deposits crossed by cracks that touch dark tissue, or whose ring reads above SMALL_RING x their H, still
lose their core to rule 3; pale deposits (H 0.5-0.6) lying on or against tissue
nearly as dark, with no glassy disc of 8 µm or a ring under 1 / SPLIT_RATIO of their H, still fail.

Deposits are 8-connected components (`skimage.measure.label`), measured as
`regionprops` defines area, centroid, eccentricity, perimeter (4-neighbourhood) and solidity, but vectorised over
all objects (bincounts, one convolution, a loop only for the convex hulls): 10-20x cheaper than
`regionprops_table` on a patch with tens of objects, and equal to it (tested).

Columns (areas in µm², lengths in µm, densities per mm² of tissue; see docs/features.md): count per mm² of
tissue; area fraction of the tissue; deposit area mean, median, p90 and max; mean eccentricity and mean
perimeter/area (1/µm) over all deposits; mean solidity over the MAX_SHAPE largest deposits (bounds the cost of
one convex hull per object on a crowded patch); mean nearest-neighbour centroid distance, or NN_SENTINEL_UM
(2000 µm) when fewer than 2 deposits ("no neighbour in the region": larger than any centroid distance in a
region of up to 1414 µm side, e.g. 512 px at 2 µm/px); the number of clusters (single linkage at CLUSTER_UM =
50 µm between centroids, groups of at least 2 deposits) and the fraction of deposits in such clusters. With no
deposit every column is 0 except the nearest-neighbour sentinel.

Size: the deposit's extent is where the closed H stays >= DEPOSIT_H_OD within GROW_UM of its core, so areas
include the rim down to that level (and cracks, which are part of the deposit).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import (
    binary_dilation,
    binary_erosion,
    binary_opening,
    convolve,
    find_objects,
    grey_closing,
    grey_opening,
    median,
    uniform_filter,
)
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import ConvexHull, cKDTree
from skimage.measure import grid_points_in_poly, label
from skimage.morphology import disk

from crystal_dask.features.region import Region

VERSION = 4
DEPOSIT_H_OD = 0.4  # plateau floor: haematoxylin amount, decadic OD
CLOSE_UM = 3.0  # radius of the grey closing that bridges microtome cracks
CORE_UM = 6.0  # radius of the disc a deposit's glassy plateau must hold
TEXTURE_UM = 2.0  # half-side of the window over which the top-hat is averaged
TEXTURE_MAX = 0.3  # largest mean top-hat / plateau level of glassy mineral
E_PER_H_MAX = 1.0  # basophilic: median eosin <= this x median haematoxylin
GROW_UM = 4.0  # the core grows this far into the dark pixels around it
BORDER_UM = 2.0  # width of the ring outside a deposit where its border step is read
BORDER_Q = 50.0  # percentile of H in that ring (half the border) ...
BORDER_RATIO = 0.6  # ... which must be <= this x the deposit's median H
SPLIT_RATIO = 1.2  # rule 7: a body this much darker than the median of the object it failed in is judged alone
GLASS_UM = 1.0  # rules 6b, 7, 8 and 9: half-side of the window of the pixel-scale glassiness (3 px at 2 µm/px)
PIXEL_CV_MAX = 0.07  # rules 6b, 7 and 8: largest (median) local coefficient of variation of H of glassy mineral
GLASS_CORE_UM = 4.0  # rule 8: radius of the disc a glassy core inside a rejected object must hold
GLASS_BORDER_RATIO = 1 / SPLIT_RATIO  # rule 8: a glassy body's ring median H <= this x its median H
SMALL_CORE_UM = 4.0  # rule 9: radius of the smaller disc a cracked small deposit's glassy plateau must hold
SMALL_MIN_UM = 16.0  # rule 9: smallest equivalent diameter of the grown object (nuclei are 5-15 µm)
SMALL_RING = 0.35  # rule 9: largest median H of the object's first ring, as a fraction of its median H
CRACK_RATIO = 0.5  # rule 9: a pixel below this x the object's median H is a crack (or outside it)
SMALL_CV_MAX = 0.2  # rule 9: largest median pixel-scale CV of H over the interior away from cracks
CLUSTER_UM = 50.0  # single-linkage distance between deposit centroids that joins them into one cluster
NN_SENTINEL_UM = 2000.0  # mean nearest-neighbour distance reported when fewer than 2 deposits (see docstring)
MAX_SHAPE = 32  # solidity over at most this many (largest) deposits

COLUMNS: tuple[str, ...] = (
    "calc_count_per_mm2",
    "calc_area_frac",
    "calc_area_mean_um2",
    "calc_area_median_um2",
    "calc_area_p90_um2",
    "calc_area_max_um2",
    "calc_eccentricity_mean",
    "calc_solidity_mean",
    "calc_perimeter_per_area_mean",
    "calc_nn_dist_mean_um",
    "calc_clusters",
    "calc_clustered_frac",
)
EMPTY = np.array([NN_SENTINEL_UM if c == "calc_nn_dist_mean_um" else 0.0 for c in COLUMNS], np.float32)  # no deposit


def _px(um: float, length_um: float) -> int:
    """A length in µm as a whole number of pixels, at least 1."""
    return max(1, int(round(length_um / um)))


def _disk(radius_px: int) -> np.ndarray:
    return disk(radius_px).astype(bool)


def _border_step(h: np.ndarray, lab: np.ndarray, n: int, ring_px: int, skip_px: int = 0,
                 ratio: float = BORDER_RATIO) -> np.ndarray:
    """(n,) bool: rule 6, the BORDER_Q-th percentile of `h` in each object's outer ring of `ring_px`, starting
    `skip_px` outside it, <= `ratio` x its median (False for an object with no ring, i.e. filling the
    region). Pixels of `h` outside every object count as ring, so a body inside dark tissue (rules 7, 8) is judged
    against that tissue where it touches it."""
    ok = np.zeros(n, bool)
    for i, box in enumerate(find_objects(lab), 1):
        box = tuple(slice(max(s.start - ring_px - skip_px, 0), s.stop + ring_px + skip_px) for s in box)
        obj = lab[box] == i
        ring = binary_dilation(obj, iterations=ring_px + skip_px) & (lab[box] == 0)
        if skip_px:
            ring &= ~binary_dilation(obj, iterations=skip_px)
        if ring.any():
            ok[i - 1] = np.percentile(h[box][ring], BORDER_Q) <= ratio * np.median(h[box][obj])
    return ok


def _glassy_cores(closed: np.ndarray, level: np.ndarray, floor: float | np.ndarray, core_disk: np.ndarray,
                  window: int) -> np.ndarray:
    """Rules 2-3 on the plateau `level` >= `floor` (a scalar, or per pixel for rule 7): glassy cores that hold the
    `core_disk`."""
    plateau = level >= floor
    if not plateau.any():
        return plateau
    tophat = uniform_filter((closed - level) / np.maximum(level, floor), window)
    return binary_opening(plateau & (tophat <= TEXTURE_MAX), structure=core_disk)


def _cores(h: np.ndarray, e: np.ndarray, closed: np.ndarray, level: np.ndarray, floor: float | np.ndarray,
           core_disk: np.ndarray, window: int) -> np.ndarray:
    """Rules 2-4: the glassy cores (`_glassy_cores`) that are basophilic."""
    core = _glassy_cores(closed, level, floor, core_disk, window)  # 2-3
    lab, n = label(core, connectivity=2, return_num=True)
    return _basophilic(h, e, lab, n) if n else core  # 4


def _basophilic(h: np.ndarray, e: np.ndarray, lab: np.ndarray, n: int) -> np.ndarray:
    """Rule 4: the labelled cores whose median eosin is at most E_PER_H_MAX x their median haematoxylin."""
    idx = np.arange(1, n + 1)
    basophilic = np.asarray(median(e, lab, idx)) <= E_PER_H_MAX * np.asarray(median(h, lab, idx))
    return np.concatenate([[False], basophilic])[lab]


def _grow(core: np.ndarray, closed: np.ndarray, floor: float | np.ndarray, um: float) -> tuple[np.ndarray, int]:
    """Rule 5: the cores grown by GROW_UM into closed H >= `floor`, labelled (8-connected)."""
    grown = binary_dilation(core, iterations=_px(um, GROW_UM), mask=closed >= floor)
    return label(grown, connectivity=2, return_num=True)


def _deposits(h: np.ndarray, closed: np.ndarray, cv: np.ndarray, core: np.ndarray, floor: float | np.ndarray,
              um: float) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Rules 5-6: the cores grown into closed H >= `floor`, labelled (8-connected); which pass the border; and
    which are glassy at the pixel scale (`cv`: `_local_cv`)."""
    lab, n = _grow(core, closed, floor, um)  # 5
    ring_px = _px(um, BORDER_UM)
    ok = _border_step(h, lab, n, ring_px)  # 6
    glassy = _pixel_glassy(cv, lab, n)
    # 6b: past the blended rim: a pale deposit on mid-purple tissue blends into its first ring
    return lab, n, ok | (_border_step(h, lab, n, ring_px, ring_px) & glassy), glassy


def _local_cv(h: np.ndarray, um: float) -> np.ndarray:
    """H's local coefficient of variation at the scanner's scale: in a window of 2 x GLASS_UM + 1 px after a grey
    closing of the same size (it fills one-pixel cracks); the mean is floored at DEPOSIT_H_OD."""
    size = 2 * _px(um, GLASS_UM) + 1
    hc = grey_closing(h, size=size)
    mean = uniform_filter(hc, size)
    return np.sqrt(np.maximum(uniform_filter(hc * hc, size) - mean * mean, 0)) / np.maximum(mean, DEPOSIT_H_OD)


def _pixel_glassy(cv: np.ndarray, lab: np.ndarray, n: int) -> np.ndarray:
    """(n,) bool: rules 6b and 7's glassiness at the scanner's scale: over each object's interior (the object less
    its one-pixel edge, or all of it when nothing is left), the median of `cv` (`_local_cv`) is at most
    PIXEL_CV_MAX."""
    inner = np.where(binary_erosion(lab > 0), lab, 0)  # 8-connected objects never touch: one erosion for all
    idx = np.arange(1, n + 1)
    has_inner = np.bincount(inner.ravel(), minlength=n + 1)[1:] > 0
    cv_med = np.where(has_inner, np.asarray(median(cv, inner, idx)), np.asarray(median(cv, lab, idx)))
    return cv_med <= PIXEL_CV_MAX


def deposit_mask(region: Region) -> np.ndarray:
    """(H, W) bool mask of calcium-phosphate deposits: rules 1-9 (and 6b) of the module docstring."""
    um = region.require_mpp()
    h, e = region.hed[0], region.hed[1]
    closed = grey_closing(h, footprint=_disk(_px(um, CLOSE_UM)))  # 1
    core_disk = _disk(_px(um, CORE_UM))
    level = grey_opening(closed, footprint=core_disk)  # 2
    window = 2 * _px(um, TEXTURE_UM) - 1
    core = _cores(h, e, closed, level, DEPOSIT_H_OD, core_disk, window)
    if not core.any():
        return _small_cracked(h, e, closed, core, window, um, None)  # 9
    cv = _local_cv(h, um)
    lab, n, ok, _ = _deposits(h, closed, cv, core, DEPOSIT_H_OD, um)
    out = np.concatenate([[False], ok])[lab] | _small_cracked(h, e, closed, lab > 0, window, um, cv)  # 9
    if ok.all():
        return out
    # 7: a darker glassy body inside a rejected object (a deposit against epidermis, a duct wall) is judged alone
    idx = np.arange(1, n + 1)
    floor = np.concatenate([[np.inf], np.where(ok, np.inf, SPLIT_RATIO * np.asarray(median(h, lab, idx)))])[lab]
    sub = _cores(h, e, closed, level, floor, core_disk, window)
    if sub.any():
        sub_lab, sub_n, sub_ok, sub_glassy = _deposits(h, closed, cv, sub, floor, um)
        out |= np.concatenate([[False], sub_ok & sub_glassy])[sub_lab]
    # 8: the objects still rejected, rule 7 having found nothing in them
    rejected = (lab > 0) & ~np.concatenate([[False], ok])[lab]
    rescued = np.unique(lab[out & rejected])
    rejected &= ~np.isin(lab, rescued)
    if rejected.any():
        out |= _glassy_bodies(h, e, closed, cv, rejected, um)
    return out


def _glassy_bodies(h: np.ndarray, e: np.ndarray, closed: np.ndarray, cv: np.ndarray, rejected: np.ndarray,
                   um: float) -> np.ndarray:
    """Rule 8: inside `rejected` objects, the cores of glassy pixels (`cv` <= PIXEL_CV_MAX) that hold a disc of
    GLASS_CORE_UM radius and are basophilic (rule 4), grown as rule 5, kept when the median H of their ring (rule
    6's, the rest of the object counting as ring) is <= GLASS_BORDER_RATIO x theirs."""
    core = binary_opening(rejected & (cv <= PIXEL_CV_MAX), structure=_disk(_px(um, GLASS_CORE_UM)))
    lab, n = label(core, connectivity=2, return_num=True)
    if n == 0:
        return core
    lab, n = _grow(_basophilic(h, e, lab, n), closed, DEPOSIT_H_OD, um)
    ok = _border_step(h, lab, n, _px(um, BORDER_UM), ratio=GLASS_BORDER_RATIO)
    return np.concatenate([[False], ok])[lab]


def _small_cracked(h: np.ndarray, e: np.ndarray, closed: np.ndarray, taken: np.ndarray, window: int, um: float,
                   cv: np.ndarray | None) -> np.ndarray:
    """Rule 9: small cracked deposits that rules 2-3 leave without a core, i.e. objects touching none of rule 5's
    (`taken`). Rules 2, 3 and 5 with a disc of SMALL_CORE_UM radius; the grown object must be at least SMALL_MIN_UM
    across (equivalent diameter), basophilic (rule 4, on the object rather than its core), have a first ring of
    median H <= SMALL_RING x its median H, and be glassy at the scanner's scale away from its cracks (median of
    `cv`, `_local_cv` computed here when None, <= SMALL_CV_MAX over its interior less the pixels within one pixel
    of one under CRACK_RATIO x its median H)."""
    small_disk = _disk(_px(um, SMALL_CORE_UM))
    core = _glassy_cores(closed, grey_opening(closed, footprint=small_disk), DEPOSIT_H_OD, small_disk, window)
    if not core.any():
        return core
    lab, n = _grow(core, closed, DEPOSIT_H_OD, um)
    area_um2 = np.bincount(lab.ravel(), minlength=n + 1)[1:] * um * um
    new = np.bincount(lab[taken], minlength=n + 1)[1:] == 0
    cand = new & (2 * np.sqrt(area_um2 / np.pi) >= SMALL_MIN_UM)
    if not cand.any():
        return np.zeros_like(core)
    lab, n = label(np.concatenate([[False], cand])[lab], connectivity=2, return_num=True)
    ok = _border_step(h, lab, n, _px(um, BORDER_UM), ratio=SMALL_RING)
    if cv is None:
        cv = _local_cv(h, um)
    for i, box in enumerate(find_objects(lab), 1):
        obj = lab[box] == i
        h_med = np.median(h[box][obj])
        if ok[i - 1] and np.median(e[box][obj]) <= E_PER_H_MAX * h_med:  # rule 4, on the few candidates only
            crack = binary_dilation(h[box] < CRACK_RATIO * h_med)
            inner = binary_erosion(obj) & ~crack  # the one-pixel edge and the cracks blend with the ring / glass
            ok[i - 1] = inner.any() and np.median(cv[box][inner]) <= SMALL_CV_MAX
        else:
            ok[i - 1] = False
    return np.concatenate([[False], ok])[lab]


def _clusters(cent_um: np.ndarray) -> tuple[int, float]:
    """Single-linkage groups of >= 2 centroids within CLUSTER_UM, and the fraction of centroids in them."""
    n = len(cent_um)
    pairs = cKDTree(cent_um).query_pairs(CLUSTER_UM, output_type="ndarray")
    if len(pairs) == 0:
        return 0, 0.0
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    big = sizes >= 2
    return int(big.sum()), float(sizes[big].sum() / n)


def _moments(ids: np.ndarray, ys: np.ndarray, xs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (n, 2) in px and eccentricities (n,) of labels 1..n from their pixels, vectorised.

    Eccentricity as regionprops defines it: sqrt(1 - l2 / l1) for the eigenvalues l1 >= l2 of the pixel
    coordinates' covariance (the inertia tensor / area), 0 for a single pixel.
    """
    def s(w: np.ndarray | None) -> np.ndarray:
        return np.bincount(ids, w, n + 1)[1:]

    cnt = s(None)
    my, mx = s(ys) / cnt, s(xs) / cnt
    dy, dx = ys - my[ids - 1], xs - mx[ids - 1]  # central moments from centred coordinates: no cancellation
    vy, vx, cxy = s(dy * dy) / cnt, s(dx * dx) / cnt, s(dy * dx) / cnt
    half, root = (vy + vx) / 2, np.sqrt(((vy - vx) / 2) ** 2 + cxy**2)
    l1, l2 = half + root, np.maximum(half - root, 0)
    ecc = np.sqrt(1 - np.divide(l2, l1, out=np.ones_like(l1), where=l1 > 0))
    return np.stack([my, mx], axis=1), ecc


_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
_PERIM_KERNEL = np.array([[10, 2, 10], [2, 1, 2], [10, 2, 10]], np.uint8)
_PERIM_WEIGHTS = np.zeros(50)
_PERIM_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIM_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIM_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2
_DIAMOND2 = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])  # pixel-edge midpoints, in half pixels


def _perimeters(lab: np.ndarray, border: np.ndarray, n: int) -> np.ndarray:
    """(n,) perimeters in px of labels 1..n: `skimage.measure.perimeter` (4-neighbourhood) per object at once.

    Exact per object because 8-connected components never touch: a border pixel's 3x3 window holds only its own
    object and background.
    """
    code = convolve(border.view(np.uint8), _PERIM_KERNEL, mode="constant", cval=0)
    return np.bincount(lab[border], _PERIM_WEIGHTS[code[border]], n + 1)[1:]


def _solidities(lab: np.ndarray, border: np.ndarray, area_px: np.ndarray, n: int) -> np.ndarray:
    """(n,) solidity (area / convex area) as regionprops computes it, for the MAX_SHAPE largest objects.

    The convex area is skimage's `convex_hull_image` count: pixel centres inside or on the hull of the object's
    pixel-edge midpoints; the hull is built from the border pixels only (they contain every hull vertex).
    """
    keep = np.argsort(-area_px, kind="stable")[:MAX_SHAPE] + 1
    boxes = find_objects(lab)
    out = np.empty(len(keep))
    for k, i in enumerate(keep):
        box = boxes[i - 1]
        pix = np.argwhere(border[box] & (lab[box] == i))
        # pixel-edge midpoints in half-pixel units are integers: dedupe them as one int64 key (np.unique on rows
        # is 20x slower); qhull can stumble on repeated points, as scikit-image notes
        half = (2 * pix[:, None, :] + _DIAMOND2).reshape(-1, 2)
        key = np.unique(half[:, 0] * (2 * lab.shape[1] + 4) + half[:, 1] + 1)
        pts = np.stack([key // (2 * lab.shape[1] + 4), key % (2 * lab.shape[1] + 4) - 1], axis=1) / 2.0
        hull = ConvexHull(pts)
        inside = grid_points_in_poly(lab[box].shape, pts[hull.vertices], binarize=False) >= 1
        out[k] = area_px[i - 1] / np.count_nonzero(inside)
    return out


def from_region(region: Region) -> np.ndarray:
    """The calcification vector of a prepared region (FeatureError: "no MPP", "no tissue")."""
    um = region.require_mpp()
    region.require_tissue()
    out = EMPTY.astype(np.float64)
    mask = deposit_mask(region)
    if not mask.any():
        return out.astype(np.float32)
    lab, n = label(mask, connectivity=2, return_num=True)
    px_area = um * um
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:] * px_area  # µm²
    tissue_um2 = region.tissue_pixels * px_area
    ys, xs = np.nonzero(lab)
    ids = lab[ys, xs]
    cent_px, ecc = _moments(ids, ys.astype(np.float64), xs.astype(np.float64), n)
    cent = cent_px * um
    border = mask & ~binary_erosion(mask, _CROSS, border_value=0)
    perim = _perimeters(lab, border, n)
    solidity = _solidities(lab, border, areas / px_area, n)
    out[0] = n / (tissue_um2 / 1e6)
    out[1] = areas.sum() / tissue_um2
    out[2:6] = areas.mean(), np.median(areas), np.percentile(areas, 90), areas.max()
    out[6] = ecc.mean()
    out[7] = solidity.mean()
    out[8] = np.mean(perim * um / areas)
    if n >= 2:
        d, _ = cKDTree(cent).query(cent, k=2)
        out[9] = d[:, 1].mean()
        out[10], out[11] = _clusters(cent)
    return out.astype(np.float32)


def compute(rgb: np.ndarray, um_per_px: float | None) -> np.ndarray:
    """Calcification features of one (H, W, 3) uint8 RGB region at `um_per_px` (None -> FeatureError)."""
    return from_region(Region(rgb, um_per_px))
