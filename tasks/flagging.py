"""Mislabel flagging from out-of-fold predictions (stage 1 -> unlabel manifest)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = {
    "p05": "out-of-fold P(real) disagrees with the label at p = 0.5 (Takahashi et al. 2022)",
    "confident": "confident learning (Northcutt et al. 2021): flagged when P(other class) >= that "
                 "class's mean self-confidence t_j, i.e. the off-diagonal of the confident joint",
}


@dataclass(frozen=True)
class FlagResult:
    flagged: np.ndarray  # (N,) bool
    margin: np.ndarray  # (N,) how far past its threshold each stamp is (0 when not flagged)
    rule: str
    thresholds: dict  # the thresholds used per label


def _checked(labels: np.ndarray, oof_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels as int, oof_prob as float), refused when their shapes differ or a score is not finite."""
    labels = np.asarray(labels).astype(int)
    p = np.asarray(oof_prob, dtype=float)
    if labels.shape != p.shape:
        raise ValueError(f"labels {labels.shape} and oof_prob {p.shape} differ in shape")
    if not np.all(np.isfinite(p)):
        raise ValueError("oof_prob has non-finite values: every stamp needs an out-of-fold prediction")
    return labels, p


def flag_label_errors(labels: np.ndarray, oof_prob: np.ndarray, rule: str = "p05") -> FlagResult:
    """Flag potential label errors. ``labels`` 0/1, ``oof_prob`` out-of-fold P(real)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
    labels, p = _checked(labels, oof_prob)
    if rule == "p05":
        t_real, t_bogus = 0.5, 0.5
        flagged = np.where(labels == 1, p < t_real, p >= t_bogus)
    else:
        # per-class thresholds t_j = mean P(class j) over samples labelled j
        t_real = float(p[labels == 1].mean()) if np.any(labels == 1) else 0.5
        t_bogus = float((1 - p[labels == 0]).mean()) if np.any(labels == 0) else 0.5
        flagged = np.where(labels == 1, (1 - p) >= t_bogus, p >= t_real)
    margin = np.where(flagged, np.abs(p - np.where(labels == 1, 1.0, 0.0)), 0.0)
    return FlagResult(flagged=flagged, margin=margin, rule=f"{rule}: {RULES[rule]}",
                      thresholds={"real": t_real, "bogus": t_bogus})


def flag_at_cut(labels: np.ndarray, oof_prob: np.ndarray, cut: float) -> FlagResult:
    """Flag the stamps whose out-of-fold probability of the *other* class exceeds ``cut``
    (0.5 <= cut < 1): a stricter set than ``p05`` (its rule at cut = 0.5, ties aside). ``labels``
    0/1, ``oof_prob`` out-of-fold P(real), from one flagger or an average of several."""
    if not 0.5 <= float(cut) < 1.0:
        raise ValueError(f"cut must be in [0.5, 1), got {cut!r}")
    labels, p = _checked(labels, oof_prob)
    other = np.where(labels == 1, 1.0 - p, p)
    flagged = other > cut
    margin = np.where(flagged, other - cut, 0.0)
    return FlagResult(flagged=flagged, margin=margin,
                      rule=f"cut {cut:g}: out-of-fold P(other class) > {cut:g}",
                      thresholds={"real": 1.0 - float(cut), "bogus": float(cut)})
