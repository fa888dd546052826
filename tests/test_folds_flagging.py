"""Folds grouped by image and stratified by label; the flagging rules."""

import numpy as np
import pandas as pd
import pytest

from tasks.flagging import flag_at_cut, flag_label_errors
from tasks.folds import fold_seed, make_folds


def _table(n_images=20, per=50, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        rows.append(pd.DataFrame({"exposure": f"e{i // 4:03d}", "sensor": f"{i % 4:02d}",
                                  "label": (rng.random(per) < 0.3).astype(int)}))
    return pd.concat(rows, ignore_index=True)


def test_no_image_straddles_folds_and_labels_are_balanced():
    t = _table()
    plan = make_folds(t, k=5, seed=1)
    assert set(np.unique(plan.fold)) == set(range(5))
    per_image = t.assign(fold=plan.fold).groupby(["exposure", "sensor"])["fold"].nunique()
    assert (per_image == 1).all()
    share = t.assign(fold=plan.fold).groupby("fold")["label"].mean()
    assert share.max() - share.min() < 0.1
    np.testing.assert_array_equal(plan.fold, make_folds(t, k=5, seed=1).fold)  # seeded
    assert fold_seed(0, 1) != fold_seed(0, 2) and fold_seed(0, 1) == fold_seed(0, 1)


def test_folds_validate_arguments():
    with pytest.raises(ValueError, match="k must be >= 2"):
        make_folds(_table(), k=1)
    with pytest.raises(ValueError, match="at least 5 images"):
        make_folds(_table(n_images=3), k=5)
    with pytest.raises(ValueError, match="lacks columns"):
        make_folds(pd.DataFrame({"label": [0, 1]}), k=2)


def test_p05_rule_and_confident_rule():
    labels = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.1, 0.7, 0.5, 0.49])
    r = flag_label_errors(labels, p, "p05")
    np.testing.assert_array_equal(r.flagged, [False, True, False, True, False, False])
    c = flag_label_errors(labels, p, "confident")
    assert c.flagged[1] and c.flagged[3] and not c.flagged[0]
    with pytest.raises(ValueError, match="rule must be one of"):
        flag_label_errors(labels, p, "bogus")
    with pytest.raises(ValueError, match="non-finite"):
        flag_label_errors(labels, np.full(6, np.nan))


def test_flag_at_cut_flags_confident_disagreement_only():
    labels = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.1, 0.7, 0.05, 0.95])  # P(other): 0.1 0.8 0.1 0.7 0.95 0.95
    np.testing.assert_array_equal(flag_at_cut(labels, p, 0.5).flagged, [False, True, False, True, True, True])
    strict = flag_at_cut(labels, p, 0.9)
    np.testing.assert_array_equal(strict.flagged, [False, False, False, False, True, True])
    np.testing.assert_allclose(strict.margin, [0, 0, 0, 0, 0.05, 0.05], atol=1e-12)
    with pytest.raises(ValueError, match=r"cut must be in \[0.5, 1\), got 1.0"):
        flag_at_cut(labels, p, 1.0)
    with pytest.raises(ValueError, match="cut must be in"):
        flag_at_cut(labels, p, 0.3)
    with pytest.raises(ValueError, match="non-finite"):
        flag_at_cut(labels, np.full(6, np.nan), 0.9)
