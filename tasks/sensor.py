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
from pydantic import BaseModel, ConfigDict, Field
from scipy.spatial import cKDTree

from tasks.cutout import cutouts
from tasks.detect import DetectConfig, assign_truth, detect, label_from_tns, match_injections
from tasks.inject import InjectConfig, inject as inject_sources, plan_injections
from tasks.psf import PSFConfig, PSFResult, build_psf
from tasks.subtract import SubtractConfig, subtract
from tasks.types import STAMP_SIZE, ImageMeta, StampFlag

GAUSS_RHALF_OVER_FWHM = 0.5  # half-light radius of a Gaussian = FWHM / 2


class SensorConfig(BaseModel):
    """Everything the per-sensor pipeline needs (nests the step configs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    psf: PSFConfig = Field(default_factory=PSFConfig, description="ePSF building / star selection")
    inject: InjectConfig = Field(default_factory=InjectConfig, description="injection plan")
    subtract: SubtractConfig = Field(default_factory=SubtractConfig, description="subtraction")
    detect: DetectConfig = Field(default_factory=DetectConfig, description="detection on diff")
    tns_radius_arcsec: float = Field(2.0, gt=0, description="TNS match radius (arcsec)")
    bright_star_radius_px: float = Field(
        15.0, gt=0, description="NEAR_BRIGHT_STAR: a bright catalogue star within this (px)")
    bright_peak_fraction: float = Field(
        0.25, gt=0, description="a star is bright if its expected peak >= this x saturation")
    bright_star_mag: float | None = Field(
        None, description="or if brighter than this magnitude (None: peak rule only)")
    catalog_thresh: float = Field(
        5.0, gt=0, description="catalog_from_ref: sep threshold in background sigma")
    extended_factor: float = Field(
        1.5, gt=1, description="catalog_from_ref: extended if r_half > this x PSF r_half")


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


def process_sensor(new: np.ndarray, ref: np.ndarray, *, new_header, ref_header,
                   new_meta: ImageMeta, ref_meta: ImageMeta, new_mask: np.ndarray | None = None,
                   ref_mask: np.ndarray | None = None, catalog: pd.DataFrame | None = None,
                   truth: dict[str, pd.DataFrame] | None = None, tns: pd.DataFrame | None = None,
                   config: SensorConfig = SensorConfig(), seed: int = 0, inject: bool = True,
                   id_prefix: str = "inj") -> SensorResult:
    """Run the per-sensor chain on one (new, ref) pair.

    new: (ny, nx) ADU; ref: any shape with its own WCS (headers carry the WCS). catalog:
    rows with x, y (ref pixels) or ra/dec, mag, extended, r_half_px; None -> built from the ref
    (:func:`catalog_from_ref`). truth: simulation truth frames (rows of other exposures are
    dropped by their ``exposure`` column). tns: reported transients, used for the labels when
    ``inject`` is False. Raises PSFError / ValueError (the caller adds file and sensor).
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
                   config=config.subtract)
    timings["subtract"] = time.perf_counter() - t

    t = time.perf_counter()
    det = detect(sub.diff, sub.noise, mask=sub.mask, config=config.detect, psf=psf,
                 gain=new_meta.gain)
    radius = config.detect.match_radius_px
    if len(det):
        ra, dec = new_wcs.all_pix2world(det["x"].to_numpy(float), det["y"].to_numpy(float), 0)
    else:
        ra = dec = np.zeros(0)
    det["ra"], det["dec"] = ra, dec
    det = match_injections(det, plan if inject else None, radius)
    if not inject:
        det = label_from_tns(det, ra, dec, tns, config.tns_radius_arcsec)
    det = assign_truth(det, injections=plan if inject else None,
                       truth=_truth_for(truth, new_meta.exposure), radius_px=radius)
    timings["detect"] = time.perf_counter() - t

    t = time.perf_counter()
    cut = cutouts([new_inj, sub.ref_aligned, sub.diff], det["x"].to_numpy(float),
                  det["y"].to_numpy(float), size=STAMP_SIZE,
                  masks=[bad_new, sub.mask, sub.mask],
                  saturation=[new_meta.saturation, ref_meta.saturation, None])
    flags = det["flags"].to_numpy(np.int32) | cut.flags
    if psf.method != "epsf":
        flags |= int(StampFlag.PSF_FALLBACK)
    flags[~det["isdiffpos"].to_numpy(bool)] |= int(StampFlag.NEGATIVE)
    flags[_near_bright(det, cat, psf, new_meta, config)] |= int(StampFlag.NEAR_BRIGHT_STAR)
    timings["cut"] = time.perf_counter() - t

    flux = det["flux"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, new_meta.zeropoint - 2.5 * np.log10(flux), np.nan)
    det_ids = det["det_id"].to_numpy(np.int64)
    m = new_meta
    table = pd.DataFrame({
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
    })
    if inject and len(plan):
        plan = plan.assign(detected=plan["injection_id"].isin(
            table.loc[table["label"] == 1, "injection_id"].dropna()))
    diag = dict(sub.diagnostics)
    diag.update(convolved=sub.convolved, shift=tuple(float(v) for v in sub.shift))
    return SensorResult(stamps=cut.stamps, table=table, injections=plan, psf=psf,
                        subtraction_diagnostics=diag, timings=timings,
                        limiting_mag=float(limiting_mag))


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
