"""Patient-level split: seeded and deterministic, fractions by patient count, rare classes spread over the splits."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from crystal_dask.vocab import CLASSES
from crystal_dask.wsi.split import split_patients

VOCAB = [*CLASSES, "cdcs", "cnno", "cidc"]


def random_corpus(n: int, seed: int, max_classes: int = 3) -> dict[str, dict[str, int]]:
    """n patients, each with 1..max_classes classes and a region count per class."""
    rng = np.random.default_rng(seed)
    return {f"p{i:04d}": {str(c): int(rng.integers(1, 20))
                          for c in rng.choice(VOCAB, size=int(rng.integers(1, max_classes + 1)), replace=False)}
            for i in range(n)}


def coverage(corpus: dict[str, dict[str, int]], assignment: dict[str, str]) -> int:
    """Number of (split, class) pairs with at least one patient."""
    return len({(assignment[p], c) for p, counts in corpus.items() for c in counts})


def splits_of_class(corpus, assignment, cls) -> set[str]:
    return {assignment[p] for p, counts in corpus.items() if cls in counts}


def test_every_patient_gets_exactly_one_split():
    corpus = random_corpus(50, seed=3)
    assignment = split_patients(corpus)
    assert set(assignment) == set(corpus)
    assert set(assignment.values()) == {"train", "dev", "eval"}


def test_deterministic_for_a_seed_whatever_the_input_order():
    corpus = random_corpus(60, seed=1)
    shuffled = dict(reversed(list(corpus.items())))
    assert split_patients(corpus, seed=7) == split_patients(shuffled, seed=7) == split_patients(corpus, seed=7)


def test_different_seeds_give_different_splits():
    corpus = {f"p{i:03d}": {"norm": 1} for i in range(40)}
    splits = [split_patients(corpus, seed=s) for s in range(4)]
    assert all(a != b for a, b in itertools.combinations(splits, 2))
    for s in splits:  # each still 50/25/25
        assert Counter(s.values()) == {"train": 20, "dev": 10, "eval": 10}


@pytest.mark.parametrize("n", [40, 101, 296])
def test_patient_counts_follow_50_25_25(n):
    corpus = random_corpus(n, seed=n)
    got = Counter(split_patients(corpus, seed=0).values())
    for name, frac in (("train", 0.5), ("dev", 0.25), ("eval", 0.25)):
        assert abs(got[name] - frac * n) <= max(2, 0.03 * n), (name, got)


def test_other_fractions_and_names():
    corpus = {f"p{i:03d}": {"norm": 1, "indc": i % 3} for i in range(100)}
    got = Counter(split_patients(corpus, fractions=(0.8, 0.2), names=("fit", "test"), seed=2).values())
    assert set(got) == {"fit", "test"} and abs(got["fit"] - 80) <= 2


def test_a_zero_fraction_split_gets_no_patient():
    corpus = {**random_corpus(30, seed=5), "solo": {"cidc": 3}}
    assignment = split_patients(corpus, fractions=(0.5, 0.0, 0.5))
    assert "dev" not in assignment.values()


@pytest.mark.parametrize(
    "fractions",
    [(0.5, 0.5), (0.5, 0.25, 0.2), (0.6, 0.6, -0.2), (0.5, 0.25, 0.25, 0.0), (float("nan"), 0.5, 0.5)],
)
def test_fractions_are_validated(fractions):
    with pytest.raises(ValueError, match=r"split fractions .* must be 3 non-negative numbers summing to 1"):
        split_patients({"p": {"norm": 1}}, fractions=fractions)


def test_a_class_held_by_three_patients_reaches_every_split():
    corpus = {f"p{i:03d}": {"norm": 5, "bckg": 2} for i in range(30)}
    for p in ("p003", "p004", "p005"):  # the only crystalline patients, also holding the common classes
        corpus[p]["cnno"] = 1
    corpus["p010"]["cdcs"] = 4  # two holders: two splits
    corpus["p011"]["cdcs"] = 1
    for seed in range(5):
        assignment = split_patients(corpus, seed=seed)
        assert splits_of_class(corpus, assignment, "cnno") == {"train", "dev", "eval"}
        assert len(splits_of_class(corpus, assignment, "cdcs")) == 2
        counts = Counter(assignment.values())
        assert counts["train"] == 15 and {counts["dev"], counts["eval"]} == {7, 8}


@pytest.mark.parametrize("case", range(12))
def test_classes_are_spread_as_far_as_the_data_allows(case):
    # small corpora where patients hold several classes each: the best spread is found by trying every assignment
    corpus = random_corpus(7, seed=100 + case)
    patients = sorted(corpus)
    best = max(coverage(corpus, dict(zip(patients, combo, strict=True)))
               for combo in itertools.product(("train", "dev", "eval"), repeat=len(patients)))
    assert coverage(corpus, split_patients(corpus, seed=case)) == best


def test_rare_classes_reach_every_split_in_a_mid_sized_corpus():
    # this corpus once left a class held by 3 patients out of the eval split
    for seed in range(8):
        corpus = random_corpus(12, seed=seed)
        assignment = split_patients(corpus, seed=seed)
        holders = Counter(c for counts in corpus.values() for c in counts)
        for cls, n in holders.items():
            if n <= 3:
                assert len(splits_of_class(corpus, assignment, cls)) == n, (seed, cls)


def test_patients_without_regions_are_still_assigned():
    assignment = split_patients({"a": {}, "b": {"norm": 0}, "c": {"norm": 2}, "d": {}})
    assert set(assignment) == {"a", "b", "c", "d"}
    assert split_patients({}) == {}
