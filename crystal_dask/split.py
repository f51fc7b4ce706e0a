"""Patient-level split for corpora without split folders: seeded, no patient in two sets, classes spread."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from crystal_dask.layout import SPLITS


def split_patients(
    patient_classes: Mapping[str, Mapping[str, int]],
    fractions: Sequence[float] = (0.5, 0.25, 0.25),
    seed: int = 0,
    names: Sequence[str] = SPLITS,
) -> dict[str, str]:
    """Assign each patient to one split.

    `patient_classes` gives each patient's region count per class. Patients are placed greedily, those holding
    the rarest classes first (seeded order among equals), each into the split whose share of the patient's
    classes lags its target fraction most; so every class reaches every split where the data allows, and the
    patient counts follow the fractions.
    """
    if len(fractions) != len(names) or not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"split fractions {list(fractions)} must be {len(names)} non-negative numbers summing to 1")
    target = np.asarray(fractions, dtype=float)
    patients = sorted(patient_classes)
    classes = sorted({c for counts in patient_classes.values() for c in counts})
    col = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(patients), len(classes)))
    for i, p in enumerate(patients):
        for c, n in patient_classes[p].items():
            counts[i, col[c]] = n
    holders = (counts > 0).sum(axis=0)  # patients per class
    rarity = np.where(counts > 0, 1.0 / np.maximum(holders, 1), 0.0).max(axis=1, initial=0.0)
    tiebreak = np.random.default_rng(seed).permutation(len(patients))
    order = np.lexsort((tiebreak, -rarity))

    placed = np.zeros((len(names), len(classes)))  # class counts per split
    n_patients = np.zeros(len(names))
    holders_placed = np.zeros((len(names), len(classes)))
    assignment: dict[str, str] = {}
    for i in order:
        present = counts[i] > 0
        # lag of each split on the patient's classes (relative to each class's total), and on patient count
        total = counts[:, present].sum(axis=0)
        class_lag = (target[:, None] - placed[:, present] / np.maximum(total, 1)).sum(axis=1) if present.any() else 0
        # a split still missing one of the patient's classes gets priority while others already have it
        missing = ((holders_placed[:, present] == 0) & (target[:, None] > 0)).sum(axis=1)
        patient_lag = target - n_patients / max(len(patients), 1)
        score = missing * 10.0 + class_lag + patient_lag * 2.0
        score[target == 0] = -np.inf
        s = int(np.argmax(score))
        assignment[patients[i]] = names[s]
        placed[s] += counts[i]
        holders_placed[s] += present
        n_patients[s] += 1
    return assignment
