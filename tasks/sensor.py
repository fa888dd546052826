"""The per-sensor pipeline: PSF -> injections -> subtraction -> detection -> labels -> stamps.

One call per sensor image (seconds of work); no Prefect, no file I/O. See docs/per_sensor.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sep
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from tasks.config import SensorConfig  # defined there, kept importable from here
from tasks.cutout import cutouts
from tasks.detect import assign_truth, detect, label_from_tns, match_injections
from tasks.inject import inject as inject_sources, plan_injections
from tasks.psf import PSFResult, build_psf
from tasks.subtract import subtract
from tasks.types import STAMP_SIZE, ImageMeta, StampFlag

GAUSS_RHALF_OVER_FWHM = 0.5  # half-light radius of a Gaussian = FWHM / 2


@dataclass(frozen=True)
class SensorResult:
    """stamps: (n, 3, 29, 29) float32 (new, ref, sub); table: n rows, STAMP_COLUMNS (stamp_id =
    night/exposure/sensor/det_id from new_meta) plus extras; injections: the
    plan with ``flux_realised`` and ``detected``; psf; subtraction_diagnostics; timings (s)."""

    stamps: np.ndarray
    table: pd.DataFrame
    injections: pd.DataFrame
    psf: PSFResult
    subtraction_diagnostics: dict
    timings: dict = field(default_factory=dict)
    limiting_mag: float = float("nan")


def catalog_from_ref(ref: np.ndarray, psf_fwhm: float, *, mask: np.ndarray | None = None,
                     zeropoint: float | None = None, thresh: float = 5.0,
                     extended_factor: float = 1.5) -> pd.DataFrame:
    """A host / bright-star catalogue from sep on the reference (when no catalogue exists).

    ref: (ny, nx) ADU with sky. Returns x, y (ref pixels), flux, mag (if zeropoint), r_half_px
    (sep.flux_radius at 0.5), extended (r_half_px > extended_factor x psf_fwhm / 2, the
    half-light radius of a Gaussian PSF of that FWHM), obj_id.
    """
    if psf_fwhm <= 0:
        raise ValueError(f"psf_fwhm must be > 0, got {psf_fwhm}")
    bad = ~np.isfinite(ref)
    if mask is not None:
        bad |= mask.astype(bool)
    data = np.where(bad, 0.0, ref).astype(np.float64)
    bkg = sep.Background(data, mask=bad)
    data = data - bkg.back()
    data[bad] = 0
    objs = sep.extract(data, thresh, err=bkg.globalrms, mask=bad, minarea=5)
    cols = ["obj_id", "x", "y", "flux", "mag", "r_half_px", "extended"]
    if len(objs) == 0:
        return pd.DataFrame({c: [] for c in cols})
    r, _ = sep.flux_radius(data, objs["x"], objs["y"], 6.0 * objs["a"], 0.5,
                           normflux=objs["flux"], subpix=5)
    flux = objs["flux"].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = (zeropoint - 2.5 * np.log10(flux)) if zeropoint is not None else np.full(
            len(flux), np.nan)
    return pd.DataFrame({
        "obj_id": [f"ref{i}" for i in range(len(objs))], "x": objs["x"], "y": objs["y"],
        "flux": flux, "mag": np.where(flux > 0, mag, np.nan), "r_half_px": r,
        "extended": r > extended_factor * GAUSS_RHALF_OVER_FWHM * psf_fwhm,
    })


def _catalog_on_new(catalog: pd.DataFrame, new_wcs: WCS | None, ref_wcs: WCS | None,
                    from_ref_pixels: bool) -> pd.DataFrame:
    """Catalogue positions on the new image's pixel grid (via ra/dec when present)."""
    cat = catalog.copy()
    if new_wcs is None:
        return cat
    if {"ra", "dec"} <= set(cat.columns) and not from_ref_pixels:
        x, y = new_wcs.all_world2pix(cat["ra"].to_numpy(float), cat["dec"].to_numpy(float), 0)
    elif from_ref_pixels and ref_wcs is not None and len(cat):
        ra, dec = ref_wcs.all_pix2world(cat["x"].to_numpy(float), cat["y"].to_numpy(float), 0)
        x, y = new_wcs.all_world2pix(ra, dec, 0)
        cat["ra"], cat["dec"] = ra, dec
    else:
        return cat
    cat["x"], cat["y"] = x, y
    return cat


def _wcs(header) -> WCS | None:
    if header is None:
        return None
    w = WCS(header)
    return w if w.has_celestial else None


def _truth_for(truth: dict | None, exposure: str) -> dict | None:
    if truth is None:
        return None
    out = {}
    for k, df in truth.items():
        if df is not None and "exposure" in df.columns and exposure:
            df = df[df["exposure"] == exposure]
        out[k] = df
    return out


def _label_detections(det: pd.DataFrame, *, new_wcs: WCS, plan: pd.DataFrame | None, tns, truth: dict | None,
                      config) -> pd.DataFrame:
    """Sky positions of the detections, their injection match (``plan``, an injected night) or
    TNS label (``tns``, a night without injections) and their truth class: the same for both
    sensor pipelines."""
    radius = config.detect.match_radius_px
    if len(det):
        ra, dec = new_wcs.all_pix2world(det["x"].to_numpy(float), det["y"].to_numpy(float), 0)
    else:
        ra = dec = np.zeros(0)
    det["ra"], det["dec"] = ra, dec
    det = match_injections(det, plan, radius)
    if plan is None:
        det = label_from_tns(det, ra, dec, tns, config.tns_radius_arcsec)
    return assign_truth(det, injections=plan, truth=truth, radius_px=radius)


def process_sensor(new: np.ndarray, ref: np.ndarray, *, new_header, ref_header,
                   new_meta: ImageMeta, ref_meta: ImageMeta, new_mask: np.ndarray | None = None,
                   ref_mask: np.ndarray | None = None, catalog: pd.DataFrame | None = None,
                   truth: dict[str, pd.DataFrame] | None = None, tns: pd.DataFrame | None = None,
                   config: SensorConfig = SensorConfig(), seed: int = 0, inject: bool = True,
                   id_prefix: str = "inj", new_var: np.ndarray | None = None,
                   ref_var: np.ndarray | None = None) -> SensorResult:
    """Run the per-sensor chain on one (new, ref) pair.

    new: (ny, nx) ADU; ref: any shape with its own WCS (headers carry the WCS). catalog:
    rows with x, y (ref pixels) or ra/dec, mag, extended, r_half_px; None -> built from the ref
    (:func:`catalog_from_ref`). truth: simulation truth frames (rows of other exposures are
    dropped by their ``exposure`` column). tns: reported transients, used for the labels when
    ``inject`` is False. new_var / ref_var: background variance maps (ADU^2, 1 / the survey's
    inverse-variance weight; inf = masked) handed to :func:`tasks.subtract.subtract`.
    Raises PSFError / ValueError (the caller adds file and sensor).
    """
    timings: dict[str, float] = {}
    new = np.asarray(new, np.float32)
    ref = np.asarray(ref, np.float32)
    if new.ndim != 2 or ref.ndim != 2:
        raise ValueError(f"new and ref must be 2-D, got {new.shape} and {ref.shape}")
    new_wcs, ref_wcs = _wcs(new_header), _wcs(ref_header)
    if new_wcs is None or ref_wcs is None:
        raise ValueError("new_header and ref_header must carry a celestial WCS")

    t = time.perf_counter()
    psf = build_psf(new, mask=new_mask, meta=new_meta, config=config.psf)
    timings["psf"] = time.perf_counter() - t

    # catalogue on the new grid
    if catalog is None:
        cat = catalog_from_ref(ref, psf.fwhm_px, mask=ref_mask, zeropoint=ref_meta.zeropoint,
                               thresh=config.catalog_thresh,
                               extended_factor=config.extended_factor)
        cat = _catalog_on_new(cat, new_wcs, ref_wcs, from_ref_pixels=True)
    else:
        cat = _catalog_on_new(catalog, new_wcs, ref_wcs, from_ref_pixels=False)

    # 5-sigma point-source depth of the new image
    bad_new = ~np.isfinite(new) if new_mask is None else (~np.isfinite(new) | new_mask)
    rms = float(sep.Background(np.where(bad_new, 0, new).astype(np.float64),
                               mask=bad_new).globalrms)
    limiting_mag = new_meta.zeropoint - 2.5 * np.log10(5.0 * rms * np.sqrt(psf.n_eff))

    t = time.perf_counter()
    new_inj = new
    plan = pd.DataFrame(columns=["injection_id", "x", "y", "flux_adu", "host_offset_arcsec"])
    if inject:
        hosts = cat if {"x", "y", "r_half_px", "extended"} <= set(cat.columns) else None
        plan = plan_injections(shape=new.shape, hosts=hosts, mask=bad_new, wcs=new_wcs,
                               meta=new_meta, config=config.inject, seed=seed,
                               id_prefix=id_prefix, limiting_mag=limiting_mag)
        res = inject_sources(new, psf, plan, gain=new_meta.gain, seed=seed)
        new_inj, plan = res.image, res.plan
    timings["inject"] = time.perf_counter() - t

    t = time.perf_counter()
    sub = subtract(new_inj, ref, new_wcs=new_wcs, ref_wcs=ref_wcs, new_mask=new_mask,
                   ref_mask=ref_mask, gain_new=new_meta.gain, gain_ref=ref_meta.gain,
                   read_noise_new=new_meta.read_noise, read_noise_ref=ref_meta.read_noise,
                   saturation_new=new_meta.saturation, saturation_ref=ref_meta.saturation,
                   config=config.subtract, var_new=new_var, var_ref=ref_var)
    timings["subtract"] = time.perf_counter() - t

    t = time.perf_counter()
    det = detect(sub.diff, sub.noise, mask=sub.mask, config=config.detect, psf=psf,
                 gain=new_meta.gain)
    det = _label_detections(det, new_wcs=new_wcs, plan=plan if inject else None, tns=None if inject else tns,
                            truth=_truth_for(truth, new_meta.exposure), config=config)
    timings["detect"] = time.perf_counter() - t

    t = time.perf_counter()
    cut = _stamps_and_rows([new_inj, sub.ref_aligned, sub.diff], [bad_new, sub.mask, sub.mask],
                           [new_meta.saturation, ref_meta.saturation, None], det, cat, psf,
                           new_meta, config, plan, "subtracted")
    timings["cut"] = time.perf_counter() - t
    diag = dict(sub.diagnostics)
    diag.update(mode="subtracted", convolved=sub.convolved, shift=tuple(float(v) for v in sub.shift))
    return SensorResult(stamps=cut.stamps, table=cut.table, injections=cut.injections, psf=psf,
                        subtraction_diagnostics=diag, timings=timings,
                        limiting_mag=float(limiting_mag))


@dataclass(frozen=True)
class _CutRows:
    """What both sensor pipelines cut from their detections (see ``_stamps_and_rows``)."""
    stamps: np.ndarray  # (N, 3, 29, 29) new / ref / diff
    table: pd.DataFrame  # N rows, every flag bit set
    injections: pd.DataFrame  # the injection plan with ``detected`` filled in (empty plan as is)


def _stamps_and_rows(images: list, masks: list, saturation: list, det: pd.DataFrame, cat: pd.DataFrame,
                     psf: PSFResult, new_meta: ImageMeta, config: SensorConfig, plan: pd.DataFrame,
                     sub_source: str, extra_flags: int = 0) -> _CutRows:
    """The stamps of the detections, their rows and the injection plan marked with what was
    detected. Shared by both sensor pipelines; ``extra_flags`` is OR-ed into every stamp's flags."""
    cut = cutouts(images, det["x"].to_numpy(float), det["y"].to_numpy(float), size=STAMP_SIZE, masks=masks,
                  saturation=saturation)
    flags = det["flags"].to_numpy(np.int32) | cut.flags
    if psf.method != "epsf":
        flags |= int(StampFlag.PSF_FALLBACK)
    flags |= extra_flags
    flags[~det["isdiffpos"].to_numpy(bool)] |= int(StampFlag.NEGATIVE)
    flags[_near_bright(det, cat, psf, new_meta, config)] |= int(StampFlag.NEAR_BRIGHT_STAR)
    table = _stamp_table(det, flags, new_meta, sub_source)
    if len(plan):
        plan = plan.assign(detected=plan["injection_id"].isin(
            table.loc[table["label"] == 1, "injection_id"].dropna()))
    return _CutRows(stamps=cut.stamps, table=table, injections=plan)


def _stamp_table(det: pd.DataFrame, flags: np.ndarray, new_meta: ImageMeta,
                 sub_source: str) -> pd.DataFrame:
    """One row per detection (STAMP_COLUMNS and extras); ``sub_source`` records the ingest
    mode: 'subtracted' (this pipeline's difference) or 'given' (the survey's own)."""
    flux = det["flux"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, new_meta.zeropoint - 2.5 * np.log10(flux), np.nan)
    det_ids = det["det_id"].to_numpy(np.int64)
    m = new_meta
    return pd.DataFrame({
        "stamp_id": [f"{m.night}/{m.exposure}/{m.sensor}/{i}" for i in det_ids],
        "night": m.night, "exposure": m.exposure, "sensor": m.sensor,
        "det_id": det_ids, "x": det["x"], "y": det["y"],
        "ra": det["ra"], "dec": det["dec"], "mjd": np.full(len(det), new_meta.mjd),
        "isdiffpos": det["isdiffpos"].astype(bool), "snr": det["snr"], "mag": mag,
        "flux": flux, "flux_err": det["flux_err"], "label": det["label"].astype(np.int8),
        "true_class": det["true_class"], "true_label": det["true_label"],
        "injection_id": det["injection_id"], "host_offset": det["host_offset"],
        "flags": flags.astype(np.int32),
        "fwhm": det["fwhm"], "elongation": det["elongation"], "npix": det["npix"],
        "a": det["a"], "b": det["b"], "theta": det["theta"],
        "tns_name": det["tns_name"] if "tns_name" in det else pd.array(
            [None] * len(det), dtype="string"),
        "sub_source": pd.array([sub_source] * len(det), dtype="string"),
    })


def _near_bright(det: pd.DataFrame, cat: pd.DataFrame, psf: PSFResult, meta: ImageMeta,
                 config: SensorConfig) -> np.ndarray:
    """(n,) bool: a bright, point-like catalogue object within bright_star_radius_px."""
    n = len(det)
    if n == 0 or cat is None or len(cat) == 0 or "mag" not in cat or "x" not in cat:
        return np.zeros(n, bool)
    stars = cat[~cat["extended"].astype(bool)] if "extended" in cat else cat
    mag = stars["mag"].to_numpy(float)
    bright = np.zeros(len(stars), bool)
    if np.isfinite(meta.saturation):
        peak_frac = float(psf.footprints([0.0], [0.0])[0].max())  # centre pixel / flux
        peak = 10 ** (-0.4 * (mag - meta.zeropoint)) * peak_frac
        bright |= peak >= config.bright_peak_fraction * meta.saturation
    if config.bright_star_mag is not None:
        bright |= mag <= config.bright_star_mag
    if not bright.any():
        return np.zeros(n, bool)
    tree = cKDTree(stars[["x", "y"]].to_numpy(float)[bright])
    d, _ = tree.query(det[["x", "y"]].to_numpy(float),
                      distance_upper_bound=config.bright_star_radius_px)
    return np.isfinite(d)


# ------------------------------------------------------------------ difference-only ingest

WCS_GRID_TOLERANCE_PX = 0.5  # a given difference / ref must map onto the new grid within this


def _grid_offset(new_wcs: WCS, other_wcs: WCS, shape) -> float:
    """Largest distance (px) between new pixel positions and the same sky positions in
    ``other_wcs``'s pixels, over a 5 x 5 grid spanning the image."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
    world = new_wcs.pixel_to_world_values(gx.ravel(), gy.ravel())
    ox, oy = other_wcs.world_to_pixel_values(*world)
    d = np.hypot(np.asarray(ox) - gx.ravel(), np.asarray(oy) - gy.ravel())
    return float(np.max(d)) if np.all(np.isfinite(d)) else float("inf")


def _ref_on_new_grid(ref: np.ndarray, ref_wcs: WCS, new_wcs: WCS, shape, ref_mask,
                     saturation: float, config: SensorConfig) -> tuple[np.ndarray, np.ndarray, bool]:
    """(ref on the new grid, its bad-pixel mask, resampled?). Same shape and WCS within
    0.05 px: taken as is; otherwise resampled by the WCS alone (the quadratic mapping of
    :mod:`tasks.subtract`, cubic spline; no star refinement: it only fills the ref channel)."""
    from scipy import ndimage
    from tasks.subtract import _bad, _eval_poly, _registration
    bad = _bad(ref, ref_mask, saturation, config.subtract.zero_is_bad)
    if ref.shape == tuple(shape) and _grid_offset(new_wcs, ref_wcs, shape) < 0.05:
        return np.where(bad, 0, ref).astype(np.float32), bad, False
    coef, _ = _registration(new_wcs, ref_wcs, tuple(shape), ref.shape)
    mx, my = _eval_poly(coef, shape[1], shape[0])
    fill = np.where(bad, np.median(ref[~bad]) if (~bad).any() else 0.0, ref).astype(np.float64)
    out = ndimage.map_coordinates(fill, [my, mx], order=config.subtract.interp_order, mode="nearest")
    bad_al = ~((mx >= -0.5) & (mx <= ref.shape[1] - 0.5) & (my >= -0.5) & (my <= ref.shape[0] - 0.5))
    if bad.any():
        bad_al |= ndimage.map_coordinates(bad.astype(np.float32), [my, mx], order=1, mode="nearest") > 0.01
    return np.where(bad_al, 0, out).astype(np.float32), bad_al, True


def process_given_diff(new: np.ndarray, diff: np.ndarray, *, new_header, new_meta: ImageMeta,
                       diff_header=None, ref: np.ndarray | None = None, ref_header=None,
                       ref_meta: ImageMeta | None = None, new_mask: np.ndarray | None = None,
                       diff_mask: np.ndarray | None = None, ref_mask: np.ndarray | None = None,
                       diff_var: np.ndarray | None = None, catalog: pd.DataFrame | None = None,
                       truth: dict[str, pd.DataFrame] | None = None, tns: pd.DataFrame | None = None,
                       config: SensorConfig = SensorConfig(), seed: int = 0, inject: bool = True,
                       id_prefix: str = "inj") -> SensorResult:
    """Difference-only ingest: inject into and detect on a survey's own difference image.

    The less realistic mode (docs/per_sensor.md, "Real-data ingest modes"): no subtraction
    runs, so injections never pass through registration, kernel matching or the ref's noise.

    new: (ny, nx) ADU, gives the ePSF (``build_psf``, its fallbacks included), the source
    Poisson term of the noise and the stamps' new channel. diff: (ny, nx) new - ref on the new
    image's pixel grid (its header's WCS, when it has one, must agree within 0.5 px), assumed
    to have the new image's PSF (ref convolved to the new). ref: optional, any grid with its
    own WCS: the stamps' ref channel (resampled by WCS) and the host catalogue; without it the
    ref channel is 0 and every stamp carries ``StampFlag.NO_REF``. diff_var: the difference's
    background variance (ADU^2, 1 / weight; inf = masked); without it, sep's background rms
    map of the difference. Either way the Poisson term of the new image's sources
    (``max(new - sky, 0) / gain``) is added. Injections: each planned source (same plan as
    :func:`process_sensor`, magnitudes relative to the difference image's 5-sigma depth) is
    added, with its own Poisson draw, identically to new and to diff.
    """
    timings: dict[str, float] = {}
    new = np.asarray(new, np.float32)
    diff = np.asarray(diff, np.float32)
    if new.ndim != 2 or diff.shape != new.shape:
        raise ValueError(f"the difference image must have the new image's shape {new.shape}, got {diff.shape}")
    new_wcs = _wcs(new_header)
    if new_wcs is None:
        raise ValueError("new_header must carry a celestial WCS")
    diff_wcs = _wcs(diff_header)
    if diff_wcs is not None:
        off = _grid_offset(new_wcs, diff_wcs, new.shape)
        if off > WCS_GRID_TOLERANCE_PX:
            raise ValueError(f"the difference image is not on the new image's pixel grid (its WCS is "
                             f"{off:.2f} px off; <= {WCS_GRID_TOLERANCE_PX} px needed)")
    ref_wcs = _wcs(ref_header) if ref is not None else None
    if ref is not None and ref_wcs is None:
        raise ValueError("ref_header must carry a celestial WCS")
    zero_bad = config.subtract.zero_is_bad

    bad_new = ~np.isfinite(new)
    if new_mask is not None:
        bad_new |= np.asarray(new_mask, bool)
    sat = new_meta.saturation
    bad_diff = bad_new | ~np.isfinite(diff) | (np.isfinite(sat) & (new >= sat))
    if zero_bad:  # zero-filled areas (3 x 3 blocks of exact zeros); isolated zeros are data
        from scipy import ndimage
        z = diff == 0
        bad_diff |= z & ndimage.maximum_filter(ndimage.minimum_filter(z, size=3), size=3)
    if diff_mask is not None:
        bad_diff |= np.asarray(diff_mask, bool)
    if diff_var is not None:
        diff_var = np.asarray(diff_var, np.float64)
        if diff_var.shape != new.shape:
            raise ValueError(f"difference variance map has shape {diff_var.shape}, image {new.shape}")
        bad_diff |= ~(np.isfinite(diff_var) & (diff_var > 0))
    if bad_diff.all():
        raise ValueError("difference image: every pixel is masked, NaN or zero")

    t = time.perf_counter()
    psf = build_psf(new, mask=new_mask, meta=new_meta, config=config.psf)
    timings["psf"] = time.perf_counter() - t

    ref_al = bad_ref_al = None
    resampled = False
    if ref is not None:
        ref = np.asarray(ref, np.float32)
        sat_ref = ref_meta.saturation if ref_meta is not None else float("inf")
        ref_al, bad_ref_al, resampled = _ref_on_new_grid(ref, ref_wcs, new_wcs, new.shape, ref_mask,
                                                         sat_ref, config)
    if catalog is not None:
        cat = _catalog_on_new(catalog, new_wcs, ref_wcs, from_ref_pixels=False)
    else:  # hosts from the ref when given, else from the new image
        src, mask_src, zp = ((ref_al, bad_ref_al, ref_meta.zeropoint if ref_meta else new_meta.zeropoint)
                             if ref is not None else (new, bad_new, new_meta.zeropoint))
        cat = catalog_from_ref(src, psf.fwhm_px, mask=mask_src, zeropoint=zp,
                               thresh=config.catalog_thresh, extended_factor=config.extended_factor)
        cat = _catalog_on_new(cat, new_wcs, new_wcs, from_ref_pixels=True)

    # the difference's smooth background (a pedestal left by the survey's pipeline) is removed,
    # as the kernel fit's background term does in subtract(); its rms map is the noise
    t = time.perf_counter()
    box = config.subtract.background_box
    d64 = np.where(bad_diff, 0.0, diff).astype(np.float64)
    bkg_d = sep.Background(d64, mask=bad_diff, bw=min(box, new.shape[1]), bh=min(box, new.shape[0]))
    diff_bs = d64 - bkg_d.back()
    n64 = np.where(bad_new, 0.0, new).astype(np.float64)
    bkg_n = sep.Background(n64, mask=bad_new, bw=min(box, new.shape[1]), bh=min(box, new.shape[0]))
    sky_var = diff_var if diff_var is not None else bkg_d.rms().astype(np.float64) ** 2
    rms_d = (float(np.sqrt(np.median(sky_var[~bad_diff]))) if diff_var is not None
             else float(bkg_d.globalrms))
    limiting_mag = new_meta.zeropoint - 2.5 * np.log10(5.0 * rms_d * np.sqrt(psf.n_eff))
    timings["noise"] = time.perf_counter() - t

    t = time.perf_counter()
    new_inj, diff_inj = new, diff_bs
    plan = pd.DataFrame(columns=["injection_id", "x", "y", "flux_adu", "host_offset_arcsec"])
    if inject:
        hosts = cat if {"x", "y", "r_half_px", "extended"} <= set(cat.columns) else None
        plan = plan_injections(shape=new.shape, hosts=hosts, mask=bad_diff, wcs=new_wcs,
                               meta=new_meta, config=config.inject, seed=seed,
                               id_prefix=id_prefix, limiting_mag=limiting_mag)
        # the same seeds give the same Poisson draw: one realised source, added to both
        res = inject_sources(new, psf, plan, gain=new_meta.gain, seed=seed)
        new_inj, plan = res.image, res.plan
        diff_inj = inject_sources(diff_bs, psf, plan, gain=new_meta.gain, seed=seed).image.astype(np.float64)
    timings["inject"] = time.perf_counter() - t

    t = time.perf_counter()
    var = sky_var + np.clip(np.where(bad_new, 0.0, new_inj) - bkg_n.back(), 0, None) / new_meta.gain
    noise = np.where(bad_diff, 0.0, np.sqrt(np.clip(var, 0, None))).astype(np.float32)
    bad_diff |= ~np.isfinite(noise) | (noise <= 0)
    diff_out = np.where(bad_diff, 0.0, diff_inj).astype(np.float32)
    noise = np.where(bad_diff, 0.0, noise).astype(np.float32)
    det = detect(diff_out, noise, mask=bad_diff, config=config.detect, psf=psf, gain=new_meta.gain)
    det = _label_detections(det, new_wcs=new_wcs, plan=plan if inject else None, tns=None if inject else tns,
                            truth=_truth_for(truth, new_meta.exposure), config=config)
    timings["detect"] = time.perf_counter() - t

    t = time.perf_counter()
    ref_channel = ref_al if ref_al is not None else np.zeros_like(new)
    sat_ref = ref_meta.saturation if (ref is not None and ref_meta is not None) else None
    cut = _stamps_and_rows([new_inj, ref_channel, diff_out], [bad_new, bad_ref_al, bad_diff],
                           [new_meta.saturation, sat_ref, None], det, cat, psf, new_meta, config, plan, "given",
                           extra_flags=int(StampFlag.NO_REF) if ref is None else 0)
    timings["cut"] = time.perf_counter() - t
    good = ~bad_diff
    diag = {"mode": "given", "noise_source": "weight_sub" if diff_var is not None else "sep_rms_of_diff",
            "diff_rms": rms_d, "diff_background_median": float(np.median(bkg_d.back()[good])),
            "diff_robust_sigma": float(1.4826 * np.median(np.abs(diff_bs[good] - np.median(diff_bs[good])))),
            "ref": ("resampled" if resampled else "given") if ref is not None else "none",
            "mask_fraction": float(bad_diff.mean()), "kernel_method": None, "convolved": None,
            "shift": (0.0, 0.0)}
    return SensorResult(stamps=cut.stamps, table=cut.table, injections=cut.injections, psf=psf,
                        subtraction_diagnostics=diag, timings=timings,
                        limiting_mag=float(limiting_mag))
