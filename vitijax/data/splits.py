"""Splits by patient, never by image: the paper's held-out list, a seeded fraction, grouped k-fold.

Every function returns {split name: sorted patient ids} and goes through
:func:`check_no_leak`, so a patient can never land in two splits.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

import numpy as np


class SplitLeak(ValueError):
    """A patient appears in more than one split; the message names each patient and split."""


def check_no_leak(splits: Mapping[str, Iterable[str]]) -> None:
    seen: dict[str, list[str]] = {}
    for name, patients in splits.items():
        for p in patients:
            seen.setdefault(p, []).append(name)
    leaks = {p: s for p, s in seen.items() if len(s) > 1}
    if leaks:
        lines = [f"  patient {p} is in {', '.join(s)}" for p, s in sorted(leaks.items())]
        raise SplitLeak("patients in more than one split (images of one patient must stay together):\n"
                        + "\n".join(lines))


def read_patient_list(path: str | os.PathLike) -> list[str]:
    """Patient ids, one per line; blank lines and '#' comments ignored."""
    with open(path) as f:
        ids = [line.split("#", 1)[0].strip() for line in f]
    return [i for i in ids if i]


def fraction_split(patients: Sequence[str], *, val_fraction: float = 0.1, test_fraction: float = 0.1,
                   seed: int = 0) -> dict[str, list[str]]:
    """Seeded shuffle of patients into train/validation/test (each non-empty split gets >= 1 patient)."""
    ids = sorted(set(patients))
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_test = max(1, round(test_fraction * len(ids))) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * len(ids))) if val_fraction > 0 else 0
    if n_test + n_val >= len(ids):
        n = len(ids)
        if n >= 3:
            remedy = (f"lower the fractions (--val-fraction {1 / n:.2f} --test-fraction {1 / n:.2f} keeps one patient "
                      "each), or name the held-out patients in ROOT/splits/test.txt")
        elif n == 2:
            remedy = ("--val-fraction 0 --test-fraction 0.5 holds one patient out for test (then train with "
                      "--config.data.eval_split=test)")
        else:
            remedy = "one patient cannot be held out from itself: add patients"
        raise ValueError(f"{n} patients cannot fill validation ({n_val}), test ({n_test}) and train (each needs a "
                         f"patient of its own); {remedy}")
    splits = {"test": sorted(order[:n_test]), "validation": sorted(order[n_test:n_test + n_val]),
              "train": sorted(order[n_test + n_val:])}
    check_no_leak(splits)
    return splits


def split_names(spec: str) -> set[str]:
    """The split names of a TFDS split spec: "validation+unlabelled[:50%]" -> {"validation", "unlabelled"}."""
    return {part.split("[")[0].strip() for part in str(spec).split("+")}


def withhold_labels(splits: dict[str, list[str]], labelled_patients: int, seed: int = 0) -> dict[str, list[str]]:
    """``splits`` with train cut to ``labelled_patients`` of its patients (a seeded choice) and the rest
    moved to an ``unlabelled`` split: their photos are trained on without their masks (semi-supervised
    training, :mod:`vitijax.tasks.lesion_semi`). Validation and test are untouched, so a run on all the
    labels and a run on a few are scored on the same held-out patients."""
    train = list(splits["train"])
    if not 0 < labelled_patients <= len(train):
        raise ValueError(f"labelled_patients must be 1..{len(train)} (the training patients), got {labelled_patients}")
    keep = set(np.random.default_rng(seed + 1).choice(train, labelled_patients, replace=False).tolist())
    out = {**splits, "train": sorted(p for p in train if p in keep),
           "unlabelled": sorted(p for p in train if p not in keep)}
    check_no_leak(out)
    return out


def held_out_split(patients: Sequence[str], test_patients: Sequence[str], *,
                   validation_patients: Sequence[str] | None = None, val_fraction: float = 0.1,
                   seed: int = 0) -> dict[str, list[str]]:
    """The paper's split: the listed patients are the test set.

    Validation is the listed ``validation_patients`` if given, else a seeded
    fraction of the rest; train is everything else. A patient listed in both
    lists raises :class:`SplitLeak`.
    """
    ids = sorted(set(patients))
    listed = {"test": sorted(set(test_patients))}
    if validation_patients is not None:
        listed["validation"] = sorted(set(validation_patients))
    check_no_leak(listed)
    for name, lst in listed.items():
        unknown = sorted(set(lst) - set(ids))
        if unknown:
            raise ValueError(f"{name} patients not in the data set: {', '.join(unknown)}")
    rest = [p for p in ids if not any(p in lst for lst in listed.values())]
    if "validation" in listed:
        splits = {"train": rest, **listed}
    elif val_fraction:
        inner = fraction_split(rest, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
        splits = {"train": inner["train"], "validation": inner["validation"], **listed}
    else:
        splits = {"train": rest, "validation": [], **listed}
    check_no_leak(splits)
    return splits


def kfold_split(patients: Sequence[str], folds: int, *, seed: int = 0) -> dict[str, list[str]]:
    """Grouped k-fold: patients shuffled (seeded) into ``folds`` splits named fold0..fold{k-1}."""
    ids = sorted(set(patients))
    if not 2 <= folds <= len(ids):
        raise ValueError(f"cannot make {folds} folds of {len(ids)} patients")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    splits = {f"fold{k}": sorted(order[k::folds]) for k in range(folds)}
    check_no_leak(splits)
    return splits
