"""Detection on the difference image, matching to injections, truth classes and TNS labels.

Detection (:func:`detect`): ``sep.extract`` on the difference image with the per-pixel noise
map as ``err`` and ``thresh`` (default 5) as a *relative* threshold, i.e. 5 sigma of the
noise map after sep's matched filter (the sensor's PSF when given, else sep's default 3x3
kernel), i.e. with a PSF a 5-sigma PSF-fit detection; ``minarea`` (default 5) pixels. With
``negative`` the same is run on -diff and those rows get ``isdiffpos`` False (their ``flux``
is measured on -diff, so it is positive). Positions are sep windowed centroids
(``sep.winpos``, sigma = FWHM_psf / 2.355). Flux is a circular aperture sum (``sep.sum_circle``,
radius ``aper_radius_fwhm`` x ``default_fwhm_px``) at that position when no PSF is given;
with the sensor's PSF it is the PSF-weighted flux at that position (:func:`psf_flux`).
``flux_err`` combines the noise map and, with ``gain``, the source's Poisson noise. ``snr`` =
flux / flux_err. ``det_id`` is 0..n-1 in the order of (y, x) rounded to 1e-3 px.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import sep
from astropy.coordinates import SkyCoord
import astropy.units as u
from scipy.spatial import cKDTree

from tasks.config import DetectConfig  # defined there, kept importable from here
from tasks.psf import PSFResult
from tasks.types import StampFlag

DETECT_COLUMNS = ("det_id", "x", "y", "flux", "flux_err", "snr", "a", "b", "theta", "fwhm",
                  "elongation", "npix", "isdiffpos", "peak", "sep_flag")
ARTIFACT_DEFAULT = "artifact"


def _filter_kernel(psf: PSFResult | None) -> np.ndarray:
    """sep's matched filter: the sensor's PSF (2 ceil(FWHM) + 1 px square) when known, so that
    the threshold is in units of the PSF-fit S/N (with sep's default 3x3 kernel a source at
    PSF S/N 5 stays undetected: completeness fell ~1 mag brighter than the 5-sigma depth);
    else sep's default 3x3 kernel."""
    if psf is None:
        return np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
    r = int(np.ceil(psf.fwhm_px))
    h = psf.half_size
    box = psf.footprints([0.0], [0.0])[0][0][h - r:h + r + 1, h - r:h + r + 1]
    return np.ascontiguousarray(np.clip(box, 0, None) / box.sum())


def psf_flux(data: np.ndarray, err: np.ndarray, bad: np.ndarray, psf: PSFResult, x, y,
             gain: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PSF-weighted flux at fixed positions: F = sum(P D / s^2) / sum(P^2 / s^2).

    P: the unit-flux PSF footprint at (x, y) (the same rendering used for injection),
    s: the noise map; masked / outside pixels get weight 0. flux_err propagates
    s^2 + F P / gain (the source's Poisson noise when ``gain`` is given). Chosen over an
    aperture sum: on ePSF-rendered sources the aperture flux varies by ~1.5 % with the
    sub-pixel phase (measured, 3.6 px FWHM, r = 1.5 FWHM), the PSF fit by < 0.2 %.
    Returns (flux, flux_err, flag) each (n,); flag 1 = fewer than half the weight usable.
    """
    boxes, x0, y0 = psf.footprints(x, y)
    k = boxes.shape[1]
    pad = k
    d = np.pad(data, pad)
    v = np.pad(err**2, pad, constant_values=1.0)
    ok = np.pad(~bad, pad, constant_values=False)
    g = np.arange(k)
    yy = (y0 + pad)[:, None, None] + g[None, :, None]
    xx = (x0 + pad)[:, None, None] + g[None, None, :]
    dd, vv, mm = d[yy, xx], v[yy, xx], ok[yy, xx]
    w = np.where(mm, boxes / vv, 0.0)
    norm = np.sum(w * boxes, axis=(1, 2))
    full = np.sum(boxes**2 / vv, axis=(1, 2))
    safe = np.where(norm > 0, norm, 1.0)
    flux = np.sum(w * dd, axis=(1, 2)) / safe
    var_pix = vv + (np.clip(flux, 0, None)[:, None, None] * np.clip(boxes, 0, None) / gain
                    if gain else 0.0)
    ferr = np.sqrt(np.sum(w**2 * var_pix, axis=(1, 2))) / safe
    flag = (norm < 0.5 * full).astype(np.int32)
    flux = np.where(norm > 0, flux, np.nan)
    return flux, np.where(norm > 0, ferr, np.nan), flag


def _extract(data, err, bad, config, radius, sig, gain, psf=None):
    kernel = _filter_kernel(psf)
    objs = sep.extract(data, config.thresh, err=err, mask=bad, minarea=config.minarea,
                       deblend_cont=config.deblend_cont, filter_kernel=kernel,
                       clean=config.clean)
    if len(objs) == 0:
        return pd.DataFrame({c: [] for c in DETECT_COLUMNS[1:]})
    # windowed centroid started at the filtered peak (the barycentre of an isophote merged
    # with a neighbour's noise can sit px away); it can fail on odd shapes: keep the peak there
    px, py = objs["xcpeak"].astype(np.float64), objs["ycpeak"].astype(np.float64)
    x, y, wflag = sep.winpos(data, px, py, sig, mask=bad)
    far = (wflag != 0) | ~np.isfinite(x) | (np.hypot(x - px, y - py) > sig * 2)
    x = np.where(far, px, x)
    y = np.where(far, py, y)
    if psf is not None:
        flux, ferr, fflag = psf_flux(data, err, bad, psf, x, y, gain)
    else:
        flux, ferr, fflag = sep.sum_circle(data, x, y, radius, err=err, mask=bad,
                                           gain=gain if gain else None)
    a, b = objs["a"], objs["b"]
    return pd.DataFrame({
        "x": x, "y": y, "flux": flux, "flux_err": ferr,
        "snr": flux / np.maximum(ferr, 1e-30), "a": a, "b": b, "theta": objs["theta"],
        "fwhm": 2.0 * np.sqrt(np.log(2.0) * (a**2 + b**2)),
        "elongation": a / np.maximum(b, 1e-6), "npix": objs["npix"].astype(np.int64),
        "peak": objs["peak"], "sep_flag": (objs["flag"] | fflag).astype(np.int32),
    })


def detect(diff: np.ndarray, noise: np.ndarray, *, mask: np.ndarray | None = None,
           config: DetectConfig = DetectConfig(), psf: PSFResult | None = None,
           gain: float | None = None) -> pd.DataFrame:
    """Detect sources on a difference image.

    diff: (ny, nx) ADU; noise: (ny, nx) (or scalar) 1-sigma ADU; mask: (ny, nx) bool, True = bad
    (non-finite diff/noise and noise <= 0 are masked too). psf: for the aperture correction and
    the FWHM of the aperture; gain: e-/ADU, adds the source's Poisson noise to ``flux_err``.
    Returns a DataFrame with DETECT_COLUMNS (see module docstring).
    """
    diff = np.asarray(diff, dtype=np.float64)
    if diff.ndim != 2:
        raise ValueError(f"diff must be 2-D, got shape {diff.shape}")
    noise = np.broadcast_to(np.asarray(noise, dtype=np.float64), diff.shape)
    bad = ~np.isfinite(diff) | ~np.isfinite(noise) | (noise <= 0)
    if mask is not None:
        if mask.shape != diff.shape:
            raise ValueError(f"mask shape {mask.shape} != diff shape {diff.shape}")
        bad |= mask.astype(bool)
    data = np.ascontiguousarray(np.where(bad, 0.0, diff))
    err = np.ascontiguousarray(np.where(bad, np.nanmax(np.where(bad, 0, noise)) or 1.0, noise))
    fwhm = psf.fwhm_px if psf is not None else config.default_fwhm_px
    radius = config.aper_radius_fwhm * fwhm
    sig = fwhm / 2.3548
    frames = [_extract(data, err, bad, config, radius, sig, gain, psf).assign(isdiffpos=True)]
    if config.negative:
        frames.append(_extract(np.ascontiguousarray(-data), err, bad, config, radius, sig,
                               gain, psf).assign(isdiffpos=False))
    det = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(
        len(f) for f in frames) else frames[0]
    if len(det) > config.max_detections:
        det = det.nlargest(config.max_detections, "snr")
    order = np.lexsort((np.round(det["x"].to_numpy(float), 3),
                        np.round(det["y"].to_numpy(float), 3)))
    det = det.iloc[order].reset_index(drop=True)
    det.insert(0, "det_id", np.arange(len(det), dtype=np.int64))
    det["isdiffpos"] = det["isdiffpos"].astype(bool)
    return det[list(DETECT_COLUMNS)]


def _flags(df: pd.DataFrame) -> np.ndarray:
    return (df["flags"].to_numpy(np.int32).copy() if "flags" in df
            else np.zeros(len(df), np.int32))


def match_injections(detections: pd.DataFrame, injections: pd.DataFrame | None,
                     radius_px: float = 2.0) -> pd.DataFrame:
    """Label detections: 1 if an injection lies within ``radius_px`` (default 2 px), else 0.

    Each detection takes its nearest injection; more than one injection inside the radius
    sets ``StampFlag.AMBIGUOUS_MATCH``. Adds ``label`` (int8), ``injection_id`` (string, null
    when none), ``host_offset`` (arcsec from the injection's host, NaN when hostless/none).
    """
    if radius_px <= 0:
        raise ValueError(f"radius_px must be > 0, got {radius_px}")
    out = detections.copy()
    n = len(out)
    label = np.zeros(n, np.int8)
    inj_id = pd.array([None] * n, dtype="string")
    host_off = np.full(n, np.nan)
    flags = _flags(out)
    if injections is not None and len(injections) and n:
        tree = cKDTree(injections[["x", "y"]].to_numpy(float))
        xy = out[["x", "y"]].to_numpy(float)
        d, j = tree.query(xy, distance_upper_bound=radius_px)
        hit = np.isfinite(d)
        label[hit] = 1
        inj_id[hit] = injections["injection_id"].astype(str).to_numpy()[j[hit]]
        if "host_offset_arcsec" in injections:
            host_off[hit] = injections["host_offset_arcsec"].to_numpy(float)[j[hit]]
        cnt = np.array([len(v) for v in tree.query_ball_point(xy, radius_px)])
        flags[cnt > 1] |= int(StampFlag.AMBIGUOUS_MATCH)
    out["label"] = label
    out["injection_id"] = inj_id
    out["host_offset"] = host_off
    out["flags"] = flags
    return out


def _near(frame: pd.DataFrame | None, xy: np.ndarray, radius: float):
    """(index of nearest row within radius or -1, count within radius)."""
    n = len(xy)
    if frame is None or len(frame) == 0 or n == 0:
        return np.full(n, -1), np.zeros(n, int)
    tree = cKDTree(frame[["x", "y"]].to_numpy(float))
    d, j = tree.query(xy, distance_upper_bound=radius)
    j = np.where(np.isfinite(d), j, -1)
    cnt = np.array([len(v) for v in tree.query_ball_point(xy, radius)])
    return j, cnt


def _near_artifacts(frame: pd.DataFrame | None, xy: np.ndarray, radius: float):
    """Like _near, with each artifact's ``extent_px`` added to the radius. Shapes: a point
    artifact is a disc of radius ``extent_px`` (an annulus of half-width ``width_px`` when that is
    > 0: a ghost); a row with a finite ``angle`` (rad from +x) is a
    line / box of length ``extent_px`` centred on (x, y) with half-width ``width_px``; a
    ``bad_column`` is a vertical segment of that length. Inside several: the smallest wins."""
    n = len(xy)
    if frame is None or len(frame) == 0 or n == 0:
        return np.full(n, -1), np.zeros(n, int)
    if n * len(frame) > 2_000_000:  # bound the (n_det, n_art) work arrays
        step = max(1, 2_000_000 // len(frame))
        parts = [_near_artifacts(frame, xy[i:i + step], radius) for i in range(0, n, step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    m = len(frame)
    ax, ay = frame["x"].to_numpy(float), frame["y"].to_numpy(float)
    ext = np.nan_to_num(frame["extent_px"].to_numpy(float) if "extent_px" in frame else np.zeros(m))
    ang = frame["angle"].to_numpy(float) if "angle" in frame else np.full(m, np.nan)
    wid = np.nan_to_num(frame["width_px"].to_numpy(float) if "width_px" in frame else np.zeros(m))
    col = (frame["kind"].astype(str).to_numpy() == "bad_column") if "kind" in frame else np.zeros(m, bool)
    ang = np.where(col & ~np.isfinite(ang), np.pi / 2, ang)
    line = np.isfinite(ang)
    a = np.where(line, ang, 0.0)
    rx = xy[:, 0:1] - ax[None, :]
    ry = xy[:, 1:2] - ay[None, :]
    t = np.abs(rx * np.cos(a)[None, :] + ry * np.sin(a)[None, :])
    q = np.abs(-rx * np.sin(a)[None, :] + ry * np.cos(a)[None, :])
    d_line = np.hypot(np.clip(t - ext[None, :] / 2, 0, None), np.clip(q - wid[None, :], 0, None))
    rr = np.hypot(rx, ry)
    ring = ~line & (wid > 0)
    d_pt = np.where(ring[None, :], np.clip(np.abs(rr - ext[None, :]) - wid[None, :], 0, None),
                    np.clip(rr - ext[None, :], 0, None))
    d = np.where(line[None, :], d_line, d_pt)  # (n_det, n_art): artifacts are few per image
    inside = d <= radius
    size = np.where(line | ring, ext * np.maximum(wid, 0.5), np.pi * ext**2)  # tie-break: most specific
    score = d + 1e-9 * size[None, :]
    j = np.where(inside.any(1), np.argmin(np.where(inside, score, np.inf), axis=1), -1)
    return j, inside.sum(1)


def _near_extended(frame: pd.DataFrame | None, xy: np.ndarray, radius: float):
    """_near, and for rows with ``extent_px`` > radius (bright stars, trailed asteroids) also
    within that extent (via _near_artifacts on those few rows)."""
    j, cnt = _near(frame, xy, radius)
    if frame is None or not len(frame) or "extent_px" not in frame or not len(xy):
        return j, cnt
    big = np.flatnonzero(np.nan_to_num(frame["extent_px"].to_numpy(float)) > 0)
    if len(big):
        jb, cb = _near_artifacts(frame.iloc[big], xy, radius)
        use = (j < 0) & (jb >= 0)
        j = np.where(use, big[np.maximum(jb, 0)], j)
        cnt = np.where(use, cb, cnt)
    return j, cnt


def assign_truth(detections: pd.DataFrame, *, injections: pd.DataFrame | None,
                 truth: dict[str, pd.DataFrame] | None, radius_px: float = 2.0) -> pd.DataFrame:
    """Add ``true_class`` and ``true_label`` (contract: shared/contracts.md).

    truth: frames ``events`` / ``artifacts`` / ``stars`` / ``galaxies`` (columns x, y, kind; the
    caller passes only objects present on this image). Priority per detection, all within
    ``radius_px`` (default 2 px): injection ('injected', 1; -1 with INJECTION_ON_ARTIFACT
    when an artifact is also there) > event (its kind, 1; -1 if on an artifact; a trailed
    asteroid's ``extent_px`` / ``angle`` make it a segment) > artifact of ``scope`` 'point' (or no
    scope column; its kind, 0; the radius grows by the artifact's ``extent_px``, see
    _near_artifacts) > artifact of scope 'area' (masked ref region, crowded field, tracking
    error) > truth star ('star_residual', 0; within its ``extent_px`` when given, the radius
    where it is > 5 sigma, so PSF-mismatch rings count) > galaxy ('galaxy_residual', 0) >
    artifact of scope 'background' (pattern noise) > 'noise' (0). truth None (real data):
    both columns null.
    """
    out = detections.copy()
    n = len(out)
    if truth is None:
        out["true_class"] = pd.array([None] * n, dtype="string")
        out["true_label"] = pd.array([None] * n, dtype="Int8")
        return out
    xy = out[["x", "y"]].to_numpy(float) if n else np.empty((0, 2))
    flags = _flags(out)
    cls = np.full(n, "noise", dtype=object)
    lab = np.zeros(n, np.int8)
    done = np.zeros(n, bool)
    arts = truth.get("artifacts")
    scope = (arts["scope"].fillna("point").astype(str).to_numpy() if arts is not None and len(arts)
             and "scope" in arts else np.full(0 if arts is None else len(arts), "point"))
    layers = {k: (arts[scope == k] if arts is not None and len(arts) else None)
              for k in ("point", "area", "background")}
    j_art, c_art = _near_artifacts(layers["point"], xy, radius_px)
    on_art = j_art >= 0
    inj_frame = injections if injections is not None and len(injections) else None
    j_inj, c_inj = _near(inj_frame, xy, radius_px)
    j_ev, c_ev = _near_extended(truth.get("events"), xy, radius_px)
    hit = j_inj >= 0
    cls[hit], lab[hit] = "injected", 1
    lab[hit & on_art] = -1
    flags[hit & on_art] |= int(StampFlag.INJECTION_ON_ARTIFACT)
    flags[(c_inj + c_ev) > 1] |= int(StampFlag.AMBIGUOUS_MATCH)
    done |= hit
    if truth.get("events") is not None and len(truth["events"]):
        kinds = truth["events"]["kind"].astype(str).to_numpy(object)
        hit = ~done & (j_ev >= 0)
        cls[hit], lab[hit] = kinds[j_ev[hit]], 1
        lab[hit & on_art] = -1
        done |= hit
    def _kinds(a):
        return (a["kind"].astype(str).to_numpy(object) if "kind" in a
                else np.full(len(a), ARTIFACT_DEFAULT, object))

    if layers["point"] is not None and len(layers["point"]):
        hit = ~done & on_art
        cls[hit], lab[hit] = _kinds(layers["point"])[j_art[hit]], 0
        done |= hit
    if layers["area"] is not None and len(layers["area"]):
        j, _ = _near_artifacts(layers["area"], xy, radius_px)
        hit = ~done & (j >= 0)
        cls[hit], lab[hit] = _kinds(layers["area"])[j[hit]], 0
        done |= hit
    for key, name in (("stars", "star_residual"), ("galaxies", "galaxy_residual")):
        j, _ = (_near_extended if key == "stars" else _near)(truth.get(key), xy, radius_px)
        hit = ~done & (j >= 0)
        cls[hit] = name
        done |= hit
    if layers["background"] is not None and len(layers["background"]):
        j, _ = _near_artifacts(layers["background"], xy, radius_px)
        hit = ~done & (j >= 0)
        cls[hit], lab[hit] = _kinds(layers["background"])[j[hit]], 0
        done |= hit
    out["true_class"] = pd.array(cls, dtype="string")
    out["true_label"] = pd.array(lab, dtype="Int8")
    out["flags"] = flags
    return out


def label_from_tns(detections: pd.DataFrame, ra, dec, tns: pd.DataFrame | None,
                   radius_arcsec: float = 2.0) -> pd.DataFrame:
    """Label 1 where a detection at (ra, dec) deg is within ``radius_arcsec`` of a TNS object.

    tns: columns ra_deg, dec_deg, Name. Adds ``label`` (int8) and ``tns_name`` (string/null).
    """
    if radius_arcsec <= 0:
        raise ValueError(f"radius_arcsec must be > 0, got {radius_arcsec}")
    out = detections.copy()
    n = len(out)
    label = np.zeros(n, np.int8)
    names = pd.array([None] * n, dtype="string")
    if tns is not None and len(tns) and n:
        for col in ("ra_deg", "dec_deg", "Name"):
            if col not in tns.columns:
                raise ValueError(f"tns is missing column {col!r}")
        ra, dec = np.asarray(ra, float), np.asarray(dec, float)
        ok = np.isfinite(ra) & np.isfinite(dec)
        if ok.any():
            det_c = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg)
            cat = SkyCoord(tns["ra_deg"].to_numpy(float) * u.deg,
                           tns["dec_deg"].to_numpy(float) * u.deg)
            j, sep2d, _ = det_c.match_to_catalog_sky(cat)
            m = sep2d.arcsec <= radius_arcsec
            idx = np.flatnonzero(ok)[m]
            label[idx] = 1
            names[idx] = tns["Name"].astype(str).to_numpy()[j[m]]
    out["label"] = label
    out["tns_name"] = names
    return out
