"""Patient-level split for corpora without split folders (seeded, no patient in two sets, classes spread), and
the apportionment of a count by fractions that splits and samples share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from crystal_dask.vocab import SPLITS


def apportion(total: int, fractions: Sequence[float]) -> np.ndarray:
    """Split an integer by fractions, keeping the exact total: largest remainders, ties to the earlier share."""
    f = np.asarray(fractions, float) / sum(fractions)
    base = np.floor(total * f).astype(int)
    base[np.argsort(-(total * f - base), kind="stable")[: total - base.sum()]] += 1
    return base


def split_patients(
    patient_classes: Mapping[str, Mapping[str, int]],
    fractions: Sequence[float] = (0.5, 0.25, 0.25),
    seed: int = 0,
    names: Sequence[str] = SPLITS,
) -> dict[str, str]:
    """Assign each patient to one split.

    `patient_classes` gives each patient's region count per class. Patients are placed greedily, most
    constrained first: the patient holding the class with the most splits still lacking it per unplaced holder
    (seeded order among equals), into the split that lacks its scarcest classes or, failing that, whose share
    of the patient's classes and of the patient count lags its target fraction most. Then swaps (or, failing
    those, moves) of patients between splits that bring a class into a split lacking it without taking another
    away are made until none is left; so every class reaches every split where the data allows, and the patient
    counts follow the fractions.
    """
    if len(fractions) != len(names) or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions {list(fractions)} must be {len(names)} non-negative numbers summing to 1")
    target = np.asarray(fractions, dtype=float)
    patients = sorted(patient_classes)
    classes = sorted({c for counts in patient_classes.values() for c, n in counts.items() if n > 0})
    col = {c: j for j, c in enumerate(classes)}
    counts = np.zeros((len(patients), len(classes)))
    for i, p in enumerate(patients):
        for c, n in patient_classes[p].items():
            if n > 0:
                counts[i, col[c]] = n
    holds = counts > 0
    rank = np.random.default_rng(seed).permutation(len(patients))  # seeded order among equals
    is_open = target > 0

    split_of = np.full(len(patients), -1)
    placed = np.zeros((len(names), len(classes)))  # regions per split and class
    holders_in = np.zeros((len(names), len(classes)), dtype=int)  # patients per split holding each class
    n_patients = np.zeros(len(names))

    def assign(i: int, s: int, sign: int = 1) -> None:
        split_of[i] = s if sign > 0 else -1
        placed[s] += sign * counts[i]
        holders_in[s] += sign * holds[i]
        n_patients[s] += sign

    for _ in range(len(patients)):
        unplaced = split_of < 0
        left = holds[unplaced].sum(axis=0)  # unplaced holders per class
        lacking = (holders_in[is_open] == 0).sum(axis=0)  # open splits without the class
        urgency = np.where(left > 0, lacking / np.maximum(left, 1), 0.0)
        most = np.where(holds, urgency, 0.0).max(axis=1, initial=0.0)
        most[~unplaced] = -1.0
        tied = np.flatnonzero(most == most.max())
        i = int(tied[np.argmin(rank[tied])])
        present = holds[i]
        missing = ((holders_in[:, present] == 0) * urgency[present]).sum(axis=1)
        total = counts[:, present].sum(axis=0)
        class_lag = (target[:, None] - placed[:, present] / np.maximum(total, 1)).sum(axis=1)
        patient_lag = target - n_patients / len(patients)
        score = missing * 10.0 + class_lag + patient_lag * 2.0
        score[~is_open] = -np.inf
        assign(i, int(np.argmax(score)))

    # Repair what the greedy pass missed: each step strictly raises the number of (split, class) pairs covered.
    def covered(rows: np.ndarray) -> np.ndarray:
        return (rows > 0).sum(axis=-1)

    improved = True
    while improved:
        improved = False
        for s, c in zip(*np.nonzero((holders_in == 0) & is_open[:, None] & holds.any(axis=0)), strict=True):
            for i in sorted(np.flatnonzero(holds[:, c] & (split_of != s)), key=lambda i: rank[i]):
                t = split_of[i]
                before = covered(holders_in[t]) + covered(holders_in[s])
                others = np.flatnonzero(split_of == s)
                # swap i with each patient j of s (patient counts unchanged), else move i alone
                t_rows = holders_in[t] - holds[i] + holds[others]
                s_rows = holders_in[s] + holds[i] - holds[others]
                gain = covered(t_rows) + covered(s_rows) - before
                if others.size and gain.max() > 0:
                    j = int(others[np.lexsort((rank[others], -gain))[0]])
                    assign(j, s, -1)
                    assign(i, t, -1)
                    assign(j, t)
                    assign(i, s)
                elif covered(holders_in[t] - holds[i]) + covered(holders_in[s] + holds[i]) > before:
                    assign(i, t, -1)
                    assign(i, s)
                else:
                    continue
                improved = True
                break
            if improved:
                break
    return {p: names[s] for p, s in zip(patients, split_of, strict=True)}
