"""Stage-1 folds: grouped by image (exposure+sensor), stratified by label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold


@dataclass(frozen=True)
class FoldPlan:
    fold: np.ndarray  # (N,) int, the held-out fold of each stamp
    k: int
    seed: int

    def train_index(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.fold != k)

    def test_index(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.fold == k)


def make_folds(table: pd.DataFrame, k: int = 5, seed: int = 0) -> FoldPlan:
    """Assign each stamp a fold so that no image straddles folds (sklearn StratifiedGroupKFold).

    ``table`` needs ``exposure``, ``sensor`` and ``label`` columns (and a ``night`` column when
    several nights are mixed, as exposures of different nights are different images).
    """
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    missing = {"exposure", "sensor", "label"} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks columns {sorted(missing)}")
    night = table["night"].astype(str) if "night" in table else ""
    groups = pd.factorize(night + "/" + table["exposure"].astype(str) + "/" + table["sensor"].astype(str),
                          sort=True)[0]
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise ValueError(f"k={k} folds need at least {k} images (exposure+sensor groups), have {n_groups}")
    y = table["label"].to_numpy().astype(int)
    fold = np.full(len(table), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        fold[test] = i
    return FoldPlan(fold=fold, k=k, seed=seed)


def fold_seed(seed: int, k: int) -> int:
    """Each fold's own seed, so results do not depend on the order folds run in."""
    return int(np.random.SeedSequence([seed, 1000 + k]).generate_state(1)[0])
