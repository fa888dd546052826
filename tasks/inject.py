"""Artificial point sources ("injections", the training positives) for one sensor image.

Placement (``plan_injections``):

* ``host``: a host is drawn uniformly (with replacement) among catalogue rows with
  ``extended`` True whose centre lies in the usable area; the offset follows the light of an
  exponential disk with the host's half-light radius r_half: p(r) ~ r exp(-r / h) (a Gamma
  distribution of shape 2, scale h = r_half / 1.678), at a uniform random angle.
* ``hostless``: uniform over the usable area (unmasked pixels at least ``edge_px`` from the
  border and ``mask_margin_px`` from any masked pixel).
  Positions that fall outside the usable area are redrawn (10 rounds), then dropped.
* magnitudes: uniform in [mag_bright, mag_faint]. With ``limiting_mag`` given (the 5-sigma
  point-source depth) the range is [limiting_mag - bright_range, limiting_mag + beyond_limit],
  i.e. it reaches ``beyond_limit`` (default 1) mag below the detection limit.
* each object gets its own seed, ``SeedSequence([seed, k]).generate_state(1)[0]``, used
  for its Poisson noise in :func:`inject`, so an injection's pixels do not depend on others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from tasks.config import InjectConfig  # defined there, kept importable from here
from tasks.psf import PSFResult, scatter_boxes
from tasks.types import ImageMeta

PLAN_COLUMNS = ("injection_id", "x", "y", "ra", "dec", "mag", "flux_adu", "host_id",
                "host_offset_arcsec", "kind", "flags", "seed")
EXP_DISK_RHALF_OVER_H = 1.678  # half-light radius of an exponential disk in scale lengths


@dataclass(frozen=True)
class InjectionResult:
    """image: (ny, nx) float32 copy with the sources added; plan: the plan plus
    ``flux_realised`` (ADU actually added inside the image, after Poisson noise)."""

    image: np.ndarray
    plan: pd.DataFrame


def usable_area(shape: tuple[int, int], mask: np.ndarray | None, edge_px: int,
                mask_margin_px: int) -> np.ndarray:
    """(ny, nx) bool: pixels where an injection may go."""
    ok = np.zeros(shape, bool)
    ny, nx = shape
    if ny > 2 * edge_px and nx > 2 * edge_px:
        ok[edge_px:ny - edge_px, edge_px:nx - edge_px] = True
    if mask is not None:
        bad = mask.astype(bool)
        if mask_margin_px > 0 and bad.any():
            bad = ndimage.binary_dilation(bad, iterations=mask_margin_px)
        ok &= ~bad
    return ok


def _thin(x: np.ndarray, y: np.ndarray, min_sep: float) -> np.ndarray:
    """Greedy, order-preserving thinning: keep a point unless an earlier kept one is closer than min_sep."""
    keep = np.ones(len(x), bool)
    if min_sep <= 0 or len(x) < 2:
        return keep
    from scipy.spatial import cKDTree
    tree = cKDTree(np.column_stack([x, y]))
    for i, j in sorted(tree.query_pairs(min_sep)):
        if keep[i] and keep[j]:
            keep[j] = False  # j > i: the later one goes
    return keep


def plan_injections(*, shape: tuple[int, int], hosts: pd.DataFrame | None,
                    mask: np.ndarray | None, wcs, meta: ImageMeta, config: InjectConfig,
                    seed: int, id_prefix: str = "inj", limiting_mag: float | None = None
                    ) -> pd.DataFrame:
    """Draw injection positions and magnitudes (see module docstring for distributions).

    hosts: catalogue rows with x, y, r_half_px, extended (and optionally host_id or id).
    wcs: astropy WCS of the image or None (ra/dec NaN). Returns a DataFrame with
    PLAN_COLUMNS, host rows first, then hostless; ``injection_id`` = id_prefix + running number.
    """
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"shape must be 2 positive ints, got {shape}")
    if mask is not None and mask.shape != tuple(shape):
        raise ValueError(f"mask shape {mask.shape} != shape {tuple(shape)}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A7]))
    ok = usable_area(tuple(shape), mask, config.edge_px, config.mask_margin_px)
    ny, nx = shape

    def inside(x, y):
        ix, iy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
        good = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        good[good] = ok[iy[good], ix[good]]
        return good

    # --- around hosts ---
    hx = hy = hoff = np.empty(0)
    hid = np.empty(0, dtype=object)
    if config.n_host > 0 and hosts is not None and len(hosts):
        for col in ("x", "y", "r_half_px", "extended"):
            if col not in hosts.columns:
                raise ValueError(f"hosts is missing column {col!r}")
        h = hosts[hosts["extended"].astype(bool)]
        h = h[inside(h["x"].to_numpy(float), h["y"].to_numpy(float))]
        if len(h):
            ids = (h["host_id"] if "host_id" in h else h["id"] if "id" in h
                   else pd.Series(h.index, index=h.index)).astype(str).to_numpy(object)
            pick = rng.choice(len(h), config.n_host, replace=len(h) < config.n_host)
            cx, cy = h["x"].to_numpy(float)[pick], h["y"].to_numpy(float)[pick]
            scale = np.maximum(h["r_half_px"].to_numpy(float)[pick],
                               config.min_r_half_px) / EXP_DISK_RHALF_OVER_H
            hx, hy, hoff = np.empty(config.n_host), np.empty(config.n_host), np.empty(config.n_host)
            todo = np.ones(config.n_host, bool)
            for _ in range(10):
                n = int(todo.sum())
                if n == 0:
                    break
                r = rng.gamma(2.0, scale[todo])
                phi = rng.uniform(0, 2 * np.pi, n)
                hx[todo], hy[todo], hoff[todo] = cx[todo] + r * np.cos(phi), \
                    cy[todo] + r * np.sin(phi), r
                todo &= ~inside(hx, hy)
            keep = ~todo
            hx, hy, hoff, hid = hx[keep], hy[keep], hoff[keep], ids[pick][keep]

    # --- hostless: uniform over usable pixels, uniform within the pixel ---
    idx = np.flatnonzero(ok)
    if config.n_hostless > 0 and len(idx):
        p = rng.choice(idx, config.n_hostless)
        ux = p % nx + rng.uniform(-0.5, 0.5, config.n_hostless)
        uy = p // nx + rng.uniform(-0.5, 0.5, config.n_hostless)
    else:
        ux = uy = np.empty(0)

    x = np.concatenate([hx, ux])
    y = np.concatenate([hy, uy])
    keep = _thin(x, y, config.min_separation_px)
    x, y = x[keep], y[keep]
    hoff, hid = hoff[keep[:len(hx)]], np.asarray(hid)[keep[:len(hx)]] if len(hid) else hid
    ux = ux[keep[len(hx):]]
    hx = hx[keep[:len(hx)]]
    n = len(x)
    if limiting_mag is not None:
        lo, hi = limiting_mag - config.bright_range, limiting_mag + config.beyond_limit
    else:
        lo, hi = config.mag_bright, config.mag_faint
    mag = rng.uniform(lo, hi, n)
    if wcs is not None and n:
        ra, dec = wcs.pixel_to_world_values(x, y)
    else:
        ra = dec = np.full(n, np.nan)
    seeds = np.array([np.random.SeedSequence([seed, k]).generate_state(1)[0] for k in range(n)],
                     dtype=np.int64)
    return pd.DataFrame({
        "injection_id": [f"{id_prefix}{k}" for k in range(n)],
        "x": x, "y": y, "ra": np.asarray(ra, float), "dec": np.asarray(dec, float),
        "mag": mag, "flux_adu": 10 ** (-0.4 * (mag - meta.zeropoint)),
        "host_id": pd.array(list(hid) + [None] * len(ux), dtype="string"),
        "host_offset_arcsec": np.concatenate([hoff * meta.pixel_scale,
                                              np.full(len(ux), np.nan)]),
        "kind": ["host"] * len(hx) + ["hostless"] * len(ux),
        "flags": np.zeros(n, np.int32),
        "seed": seeds,
    })


def inject(image: np.ndarray, psf: PSFResult, plan: pd.DataFrame, *, gain: float,
           poisson: bool = True, seed: int = 0) -> InjectionResult:
    """Add the planned point sources (PSF ``psf``, total flux ``flux_adu``) to a copy of image.

    With ``poisson`` each source's expected counts are replaced by a Poisson draw in
    electrons (gain e-/ADU), seeded from (seed, the plan's per-object seed).
    Returns the new float32 image and the plan with ``flux_realised`` (ADU added in-image).
    """
    if gain <= 0:
        raise ValueError(f"gain must be > 0, got {gain}")
    for col in ("x", "y", "flux_adu"):
        if col not in plan.columns:
            raise ValueError(f"plan is missing column {col!r}")
    out = np.array(image, dtype=np.float64, copy=True)
    plan = plan.copy()
    if len(plan) == 0:
        plan["flux_realised"] = np.empty(0)
        return InjectionResult(out.astype(np.float32), plan)
    boxes, x0, y0 = psf.footprints(plan["x"].to_numpy(float), plan["y"].to_numpy(float))
    boxes = boxes * plan["flux_adu"].to_numpy(float)[:, None, None]
    if poisson:
        # Poisson on the positive part; the ePSF's (noise) negative wings are added as they
        # are, so the expected added flux stays flux_adu.
        obj_seeds = plan["seed"].to_numpy() if "seed" in plan else np.arange(len(plan))
        for i, s in enumerate(obj_seeds):
            r = np.random.default_rng(np.random.SeedSequence([seed, int(s)]))
            pos = np.clip(boxes[i], 0, None)
            boxes[i] = r.poisson(pos * gain) / gain + (boxes[i] - pos)
    k = boxes.shape[1]
    g = np.arange(k)
    yy = y0[:, None] + g[None, :]
    xx = x0[:, None] + g[None, :]
    iny = (yy >= 0) & (yy < out.shape[0])
    inx = (xx >= 0) & (xx < out.shape[1])
    plan["flux_realised"] = np.einsum("nij,ni,nj->n", boxes, iny, inx)
    out += scatter_boxes(out.shape, boxes, x0, y0)
    return InjectionResult(out.astype(np.float32), plan)
