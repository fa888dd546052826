"""A seeded factory of labelled stamp sets with planted label errors (for stage tests).

Reals are a Gaussian point source in new and sub over a noisy galaxy-free background; bogus
are a mix of pure noise peaks, hot pixels (one bright pixel in new and sub) and dipoles
(a positive and a negative lobe in sub). ``flip`` flips that share of labels at random,
and returns which ones, so that stage 1 can be checked to find them (cleanlab-style).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.types import STAMP_SIZE


@dataclass(frozen=True)
class StampSet:
    stamps: np.ndarray  # (N, 3, 29, 29) float32
    table: pd.DataFrame  # stamps.parquet-like rows (label is the possibly flipped label)
    clean_label: np.ndarray  # (N,) the label before flipping
    flipped: np.ndarray  # (N,) bool


def _gauss(n: int, x0: np.ndarray, y0: np.ndarray, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:STAMP_SIZE, 0:STAMP_SIZE]
    return np.exp(-((xx[None] - x0[:, None, None]) ** 2 + (yy[None] - y0[:, None, None]) ** 2) / (2 * sigma**2))


def make_stamp_set(n: int = 1000, *, real_fraction: float = 0.4, flip: float = 0.05, n_images: int = 20,
                   snr: tuple[float, float] = (8.0, 60.0), night: str = "2026-01-05", seed: int = 0) -> StampSet:
    if n < 10:
        raise ValueError(f"n must be >= 10, got {n}")
    if not 0 < real_fraction < 1:
        raise ValueError(f"real_fraction must be in (0, 1), got {real_fraction}")
    if not 0 <= flip < 0.5:
        raise ValueError(f"flip must be in [0, 0.5), got {flip}")
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < real_fraction).astype(np.int64)
    c = STAMP_SIZE // 2
    x0 = c + rng.uniform(-0.5, 0.5, n)
    y0 = c + rng.uniform(-0.5, 0.5, n)
    amp = rng.uniform(*snr, n) / 2.5
    noise = rng.normal(0, 1, (n, 3, STAMP_SIZE, STAMP_SIZE)).astype(np.float32)
    sky = 100.0
    stamps = noise.copy()
    stamps[:, :2] += sky
    ref_gal = _gauss(n, x0 + rng.normal(0, 3, n), y0 + rng.normal(0, 3, n), 3.0) * rng.uniform(0, 20, n)[:, None, None]
    stamps[:, 1] += ref_gal
    stamps[:, 0] += ref_gal
    psf = _gauss(n, x0, y0, 1.2) * amp[:, None, None]
    real = label == 1
    stamps[real, 0] += psf[real]
    stamps[real, 2] += psf[real]
    kind = rng.integers(0, 3, n)
    hot = (~real) & (kind == 1)
    stamps[hot, 0, c, c] += amp[hot] * 3
    stamps[hot, 2, c, c] += amp[hot] * 3
    dip = (~real) & (kind == 2)
    shifted = _gauss(n, x0 + 1.5, y0, 1.2) * amp[:, None, None]
    stamps[dip, 2] += psf[dip] - shifted[dip]
    stamps[dip, 0] += psf[dip]
    stamps[dip, 1] += shifted[dip]
    true_class = np.where(real, "injected", np.array(["noise", "hot_pixel", "dipole"])[kind])
    flipped = rng.random(n) < flip
    noisy = np.where(flipped, 1 - label, label)
    image = rng.integers(0, n_images, n)
    exposure = np.array([f"{night.replace('-', '')}{i // 4:04d}" for i in image])
    sensor = np.array([f"{i % 4:02d}" for i in image])
    det_id = np.zeros(n, dtype=np.int64)
    for key in np.unique(image):
        m = image == key
        det_id[m] = np.arange(m.sum())
    table = pd.DataFrame({
        "stamp_id": [f"{night}/{e}/{s}/{d}" for e, s, d in zip(exposure, sensor, det_id)],
        "night": night, "exposure": exposure, "sensor": sensor, "det_id": det_id,
        "x": x0, "y": y0, "ra": rng.uniform(0, 1, n), "dec": rng.uniform(0, 1, n), "mjd": 61045.0,
        "isdiffpos": True, "snr": amp * 2.5, "mag": 20 - 2.5 * np.log10(amp), "label": noisy,
        "true_class": true_class, "true_label": label, "injection_id": None, "host_offset": np.nan,
        "flags": np.zeros(n, np.int32)})
    order = np.lexsort((det_id, sensor, exposure))
    return StampSet(stamps[order], table.iloc[order].reset_index(drop=True), label[order], flipped[order])
