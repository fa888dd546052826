"""Feature-based real/bogus baseline: sep shape features + a random forest (as ZTF's ``rb``).

ZTF's first real/bogus classifier (Mahabal et al. 2019; Duev et al. 2019 for braai) was a
random forest over hand-made features of each candidate: shape (FWHM, elongation, number of
pixels), S/N, and counts of negative / bad pixels around it. Here the features are the sep
columns the stamps table already carries (``tasks/detect.py``: ``snr``, ``fwhm``,
``elongation``, ``npix``, ``a``, ``b``, ``flux``, ``flux_err``, ``mag``, ``isdiffpos``) plus a
few cheap pixel statistics of the stamps (negative and non-finite pixels in the difference
core, peak contrast, the sub-to-new flux ratio). Labels are the same (noisy) training labels
the CNNs see. Pure sklearn + numpy; no Prefect.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TABLE_FEATURES = ("snr", "fwhm", "elongation", "npix", "a", "b", "flux", "flux_err", "mag", "isdiffpos")
STAMP_FEATURES = ("sub_nneg", "sub_nbad", "sub_peak_contrast", "sub_new_ratio", "ref_core_frac")
MISSING = -999.0


def stamp_features(stamps: np.ndarray, core: int = 5) -> pd.DataFrame:
    """Pixel statistics of (N, 3, 29, 29) raw stamps (new, ref, sub); ``core`` is the
    half-width of the central box."""
    x = np.asarray(stamps, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"stamps must be (N, 3, H, W), got {x.shape}")
    c = x.shape[-1] // 2
    sl = slice(c - core, c + core + 1)
    sub = x[:, 2]
    finite = np.isfinite(sub)
    subf = np.where(finite, sub, np.nan)
    med = np.nanmedian(subf.reshape(len(x), -1), axis=1)
    mad = np.nanmedian(np.abs(subf.reshape(len(x), -1) - med[:, None]), axis=1) * 1.4826 + 1e-6
    core_sub = subf[:, sl, sl] - med[:, None, None]
    nneg = np.sum(np.nan_to_num(core_sub, nan=0.0) < -3 * mad[:, None, None], axis=(1, 2))
    nbad = np.sum(~finite[:, sl, sl], axis=(1, 2))
    peak = np.nanmax(core_sub.reshape(len(x), -1), axis=1) / mad
    new = np.where(np.isfinite(x[:, 0]), x[:, 0], np.nan)
    ref = np.where(np.isfinite(x[:, 1]), x[:, 1], np.nan)
    new_core = np.nansum(new[:, sl, sl] - np.nanmedian(new.reshape(len(x), -1), 1)[:, None, None], axis=(1, 2))
    sub_core = np.nansum(core_sub, axis=(1, 2))
    ref_core = np.nansum(ref[:, sl, sl] - np.nanmedian(ref.reshape(len(x), -1), 1)[:, None, None], axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = sub_core / np.where(np.abs(new_core) > 1e-6, new_core, np.nan)
        ref_frac = ref_core / np.where(np.abs(new_core) > 1e-6, new_core, np.nan)
    out = pd.DataFrame({"sub_nneg": nneg, "sub_nbad": nbad, "sub_peak_contrast": peak, "sub_new_ratio": ratio,
                        "ref_core_frac": ref_frac})
    return out.replace([np.inf, -np.inf], np.nan).fillna(MISSING).astype(np.float64)


def features(table: pd.DataFrame, stamps: np.ndarray | None = None) -> pd.DataFrame:
    """Feature matrix (N, F): the sep columns present in ``table`` (missing -> -999) and,
    with ``stamps``, the pixel statistics."""
    cols = {}
    for c in TABLE_FEATURES:
        v = pd.to_numeric(table[c], errors="coerce") if c in table else pd.Series(np.nan, index=table.index)
        cols[c] = v.astype(float).to_numpy()
    X = pd.DataFrame(cols).replace([np.inf, -np.inf], np.nan).fillna(MISSING)
    if stamps is not None:
        if len(stamps) != len(table):
            raise ValueError(f"{len(stamps)} stamps for {len(table)} table rows")
        X = pd.concat([X.reset_index(drop=True), stamp_features(stamps)], axis=1)
    return X


def train_rf(X: pd.DataFrame | np.ndarray, y: np.ndarray, *, seed: int = 0, n_estimators: int = 300,
             n_jobs: int = 1):
    """A balanced random forest on labelled rows (labels -1 are dropped)."""
    from sklearn.ensemble import RandomForestClassifier
    y = np.asarray(y).astype(int)
    Xa = np.asarray(X, dtype=np.float64)
    m = y >= 0
    if len(np.unique(y[m])) < 2:
        raise ValueError("the random forest needs both classes among the labelled rows")
    rf = RandomForestClassifier(n_estimators=n_estimators, min_samples_leaf=2, class_weight="balanced",
                                random_state=seed, n_jobs=n_jobs)
    rf.fit(Xa[m], y[m])
    return rf


__all__ = ["TABLE_FEATURES", "STAMP_FEATURES", "features", "stamp_features", "train_rf"]
