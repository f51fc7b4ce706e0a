"""What whole-slide inference hands to users: QuPath GeoJSON, NEDC region decisions, overlay and heatmap PNGs.

Every export works on the window grid of one slide: `classes` (rows x cols, class index, -1 where no window was
scored) and `proba` (rows x cols x n_classes). A window (r, c) is the level-0 box at origin + (c, r) * step of
side `size`. Where windows overlap (step < size) each one is drawn as its centre cell of side `step` (NEDC's
frame at the centre of the window), so the cells tile the slide; where they do not (step >= size) each is drawn
as its own box.

CLASS_COLOURS is the fixed legend of the 9 classes, shared by every export so a class has one colour everywhere.
"""

from __future__ import annotations

from crystal_dask.vocab import CLASSES

# one fixed colour per class: glass/benign in greys and greens, artefacts brown, the disease classes warm
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "bckg": (170, 170, 170),  # grey: unremarkable stroma / background
    "norm": (44, 160, 44),  # green: normal breast tissue
    "artf": (140, 86, 75),  # brown: artefacts (ink, folds, debris)
    "null": (225, 225, 225),  # near white: unlabelled / blank
    "susp": (255, 187, 60),  # amber: suspicious
    "infl": (23, 190, 207),  # cyan: inflammation
    "dcis": (227, 80, 194),  # magenta: ductal carcinoma in situ
    "nneo": (31, 119, 180),  # blue: non-neoplastic (benign) lesions
    "indc": (214, 39, 40),  # red: invasive ductal carcinoma
}
assert tuple(CLASS_COLOURS) == CLASSES


def colours_for(class_names: tuple[str, ...] | list[str],
                colours: dict[str, tuple[int, int, int]] | None = None) -> list[tuple[int, int, int]]:
    """The colour of each class name (the fixed legend unless `colours` overrides it); unknown names are grey."""
    table = {**CLASS_COLOURS, **(colours or {})}
    return [tuple(int(v) for v in table.get(name, (128, 128, 128))) for name in class_names]
