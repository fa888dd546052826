"""Readers for real star / galaxy catalogues in their native formats, and a bridge to the
sensor catalogue the build uses (``ra, dec, mag, extended, r_half_px``, optionally ``x, y``).

* SExtractor ASCII_HEAD (``# 1 NUMBER ...``; vector columns such as FLUX_RADIUS(3) become
  FLUX_RADIUS, FLUX_RADIUS_1, ...): :func:`read_sextractor_ascii` (astropy ``sextractor``).
* SExtractor / PSFEx FITS_LDAC (``LDAC_IMHEAD`` + ``LDAC_OBJECTS``): :func:`read_ldac`
  returns the objects and the image header stored in the catalogue.
* PSFEx models (``*.psf``, ``PSF_DATA`` with a polynomial basis in X_IMAGE/Y_IMAGE):
  :class:`PSFExModel` evaluates the PSF at a position.
* Piff PSF files (``psf_stars`` extension) and Piff / findstars star lists: :func:`read_piff_stars`,
  :func:`read_fits_table`.
* GalSim RealGalaxyCatalog (HST AEGIS stamps): :func:`read_real_galaxy_catalog`.
* ZTF DR light-curve Parquet (``objra, objdec, mag[]``): :func:`read_ztf_lightcurve_catalog`.
* HDF5/PyTables match files need ``tables``, which is not a dependency: not read here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "read_sextractor_ascii", "read_ldac", "read_fits_table", "read_piff_stars", "PSFExModel", "read_psfex",
    "read_real_galaxy_catalog", "read_ztf_lightcurve_catalog", "sextractor_to_sensor_catalog",
]


def _exists(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: catalogue not found")
    return p


def _table_to_frame(tab) -> pd.DataFrame:
    """astropy Table / FITS_rec -> DataFrame; vector columns split into NAME, NAME_1, ...;
    big-endian columns made native."""
    from astropy.table import Table
    t = tab if isinstance(tab, Table) else Table(tab)
    cols = {}
    for name in t.colnames:
        v = np.asarray(t[name])
        if v.dtype.byteorder == ">":
            v = v.astype(v.dtype.newbyteorder("="))
        if v.ndim == 1:
            cols[name] = v
        elif v.ndim == 2:
            for k in range(v.shape[1]):
                cols[name if k == 0 else f"{name}_{k}"] = v[:, k]
        else:
            cols[name] = list(v)
    return pd.DataFrame(cols)


def read_sextractor_ascii(path) -> pd.DataFrame:
    """A SExtractor ASCII_HEAD catalogue (the ``# n NAME  description [unit]`` header)."""
    from astropy.io import ascii
    p = _exists(path)
    try:
        t = ascii.read(p, format="sextractor")
    except Exception as exc:
        raise ValueError(f"{p}: not a SExtractor ASCII_HEAD catalogue ({exc})") from exc
    return t.to_pandas()


def read_ldac(path) -> tuple[pd.DataFrame, "object"]:
    """(objects, image header) of a FITS_LDAC catalogue (SExtractor / PSFEx ``.cat`` / ``.fits``)."""
    from astropy.io import fits
    p = _exists(path)
    with fits.open(p, memmap=False) as hdul:
        names = [h.name for h in hdul]
        if "LDAC_OBJECTS" not in names:
            raise ValueError(f"{p}: no LDAC_OBJECTS extension (HDUs {names})")
        objects = _table_to_frame(hdul["LDAC_OBJECTS"].data)
        header = fits.Header()
        if "LDAC_IMHEAD" in names:
            cards = np.asarray(hdul["LDAC_IMHEAD"].data["Field Header Card"]).ravel()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = fits.Header.fromstring("".join(str(c).ljust(80)[:80] for c in cards))
    return objects, header


def read_fits_table(path, hdu: int | str = 1) -> pd.DataFrame:
    """One binary-table HDU as a DataFrame (e.g. Piff ``findstars`` / ``use_stars`` lists)."""
    from astropy.io import fits
    p = _exists(path)
    with fits.open(p, memmap=False) as hdul:
        try:
            h = hdul[hdu]
        except (KeyError, IndexError):
            raise ValueError(f"{p}: no HDU {hdu!r}") from None
        if not isinstance(h, fits.BinTableHDU):
            raise ValueError(f"{p}: HDU {hdu!r} is not a binary table")
        return _table_to_frame(h.data)


def read_piff_stars(path) -> tuple[pd.DataFrame, str]:
    """(PSF stars with x, y, ra, dec, flux, snr..., the PSF type) of a Piff PSF file."""
    from astropy.io import fits
    p = _exists(path)
    with fits.open(p, memmap=False) as hdul:
        names = [h.name.lower() for h in hdul]
        if "psf_stars" not in names:
            raise ValueError(f"{p}: not a Piff PSF file (no psf_stars extension)")
        stars = _table_to_frame(hdul["psf_stars"].data)
        kind = str(hdul["psf"].data["type"][0]) if "psf" in names else ""
    return stars, kind


@dataclass(frozen=True)
class PSFExModel:
    """A PSFEx model: ``basis`` (n_terms, ny, nx) sampled every ``samp`` pixels, polynomial
    of degree ``degree`` in ((x - zero) / scale) of the context parameters (X_IMAGE, Y_IMAGE,
    1-based pixels as in SExtractor)."""

    basis: np.ndarray
    degree: int
    zero: tuple[float, float]
    scale: tuple[float, float]
    samp: float
    fwhm: float
    names: tuple[str, str]
    n_accepted: int

    def terms(self, x: float, y: float) -> np.ndarray:
        """Polynomial terms, PSFEx order: x^i y^j for j = 0..d, i = 0..d - j."""
        dx = (x - self.zero[0]) / self.scale[0]
        dy = (y - self.zero[1]) / self.scale[1]
        out = [dx ** i * dy ** j for j in range(self.degree + 1) for i in range(self.degree + 1 - j)]
        return np.asarray(out, float)

    def image(self, x: float, y: float, normalise: bool = True) -> np.ndarray:
        """The PSF at (x, y) on the PSFEx sampling grid (sum 1 when ``normalise``)."""
        t = self.terms(x, y)
        if len(t) != len(self.basis):
            raise ValueError(f"PSFEx model has {len(self.basis)} basis images, degree {self.degree} needs {len(t)}")
        img = np.tensordot(t, self.basis, axes=1)
        return img / img.sum() if normalise else img


def read_psfex(path) -> PSFExModel:
    """A PSFEx ``.psf`` file (one context group in X_IMAGE, Y_IMAGE)."""
    from astropy.io import fits
    p = _exists(path)
    with fits.open(p, memmap=False) as hdul:
        if "PSF_DATA" not in [h.name for h in hdul]:
            raise ValueError(f"{p}: not a PSFEx model (no PSF_DATA extension)")
        h = hdul["PSF_DATA"].header
        basis = np.asarray(hdul["PSF_DATA"].data["PSF_MASK"][0], float)
    if int(h.get("POLNAXIS", 0)) == 0:
        degree, zero, scale, names = 0, (0.0, 0.0), (1.0, 1.0), ("", "")
    else:
        if int(h.get("POLNGRP", 1)) != 1 or int(h["POLNAXIS"]) != 2:
            raise ValueError(f"{p}: only PSFEx models with one context group of 2 parameters are supported")
        degree = int(h["POLDEG1"])
        zero = (float(h["POLZERO1"]), float(h["POLZERO2"]))
        scale = (float(h["POLSCAL1"]), float(h["POLSCAL2"]))
        names = (str(h["POLNAME1"]).strip(), str(h["POLNAME2"]).strip())
    if basis.ndim == 2:
        basis = basis[None]
    return PSFExModel(basis=basis, degree=degree, zero=zero, scale=scale, samp=float(h.get("PSF_SAMP", 1.0)),
                      fwhm=float(h.get("PSF_FWHM", np.nan)), names=names, n_accepted=int(h.get("ACCEPTED", -1)))


def read_real_galaxy_catalog(path) -> tuple[pd.DataFrame, callable]:
    """(catalogue, load(i) -> (galaxy stamp, PSF stamp)) of a GalSim RealGalaxyCatalog
    (``GAL_FILENAME``/``GAL_HDU``, ``PSF_FILENAME``/``PSF_HDU`` beside the catalogue)."""
    from astropy.io import fits
    p = _exists(path)
    cat = read_fits_table(p, 1)
    for c in cat.columns:
        if cat[c].dtype == object or cat[c].dtype.kind in "SU":
            cat[c] = cat[c].astype(str).str.strip()
    need = {"GAL_FILENAME", "GAL_HDU", "PSF_FILENAME", "PSF_HDU"}
    if not need <= set(cat.columns):
        raise ValueError(f"{p}: not a RealGalaxyCatalog (lacks {sorted(need - set(cat.columns))})")

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        r = cat.iloc[i]
        gal = fits.getdata(p.parent / r["GAL_FILENAME"], int(r["GAL_HDU"])).astype(np.float32)
        psf = fits.getdata(p.parent / r["PSF_FILENAME"], int(r["PSF_HDU"])).astype(np.float32)
        return gal, psf

    return cat, load


def read_ztf_lightcurve_catalog(path, min_epochs: int = 1) -> pd.DataFrame:
    """A ZTF DR light-curve Parquet as a star list: objectid, ra, dec, mag (median of the
    unflagged epochs), mag_std, nepochs."""
    p = _exists(path)
    df = pd.read_parquet(p)
    need = {"objra", "objdec", "mag"}
    if not need <= set(df.columns):
        raise ValueError(f"{p}: not a ZTF light-curve catalogue (lacks {sorted(need - set(df.columns))})")
    med, std = [], []
    flags = df["catflags"] if "catflags" in df.columns else [None] * len(df)
    for m, f in zip(df["mag"], flags):
        m = np.asarray(m, float)
        if f is not None:
            m = m[np.asarray(f) == 0] if (np.asarray(f) == 0).any() else m
        med.append(float(np.median(m)) if len(m) else np.nan)
        std.append(float(np.std(m)) if len(m) else np.nan)
    out = pd.DataFrame({"objectid": df.get("objectid", pd.Series(range(len(df)))).astype(str),
                        "ra": df["objra"].astype(float), "dec": df["objdec"].astype(float),
                        "mag": med, "mag_std": std,
                        "nepochs": df["nepochs"] if "nepochs" in df.columns else [len(np.asarray(m)) for m in df["mag"]],
                        "extended": False})
    return out[out["nepochs"] >= min_epochs].reset_index(drop=True)


def sextractor_to_sensor_catalog(cat: pd.DataFrame, *, class_star_max: float = 0.5,
                                 spread_model_min: float = 0.003) -> pd.DataFrame:
    """SExtractor columns -> the build's sensor catalogue (``obj_id, x, y, ra, dec, mag,
    extended, r_half_px``; 0-based x, y). Extended: SPREAD_MODEL > ``spread_model_min`` when
    present, else CLASS_STAR < ``class_star_max``, else FLUX_RADIUS above 1.5 x its median."""
    def first(*names):
        for n in names:
            if n in cat.columns:
                return cat[n].to_numpy(float)
        return None

    x, y = first("XWIN_IMAGE", "X_IMAGE"), first("YWIN_IMAGE", "Y_IMAGE")
    ra, dec = first("ALPHAWIN_J2000", "ALPHA_J2000"), first("DELTAWIN_J2000", "DELTA_J2000")
    mag = first("MAG_AUTO", "MAG_PSF", "MAG_ISO")
    if mag is None:
        flux = first("FLUX_AUTO", "FLUX_ISO")
        if flux is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                mag = np.where(flux > 0, 25.0 - 2.5 * np.log10(flux), np.nan)
    r_half = first("FLUX_RADIUS")
    n = len(cat)
    if "SPREAD_MODEL" in cat.columns:
        extended = cat["SPREAD_MODEL"].to_numpy(float) > spread_model_min
    elif "CLASS_STAR" in cat.columns:
        extended = cat["CLASS_STAR"].to_numpy(float) < class_star_max
    elif r_half is not None:
        extended = r_half > 1.5 * np.nanmedian(r_half)
    else:
        extended = np.zeros(n, bool)
    out = pd.DataFrame({"obj_id": [f"sex{int(i)}" for i in (cat["NUMBER"] if "NUMBER" in cat else range(n))]})
    if x is not None and y is not None:
        out["x"], out["y"] = x - 1.0, y - 1.0
    if ra is not None and dec is not None:
        out["ra"], out["dec"] = ra, dec
    out["mag"] = mag if mag is not None else np.nan
    out["extended"] = extended
    out["r_half_px"] = r_half if r_half is not None else np.nan
    return out
