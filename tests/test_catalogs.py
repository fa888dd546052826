"""Catalogue readers (storage/catalogs.py): real formats from ../shared/data/catalogs
(marker ``realdata``, skipped when absent) and small synthetic files made here."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from storage.catalogs import (
    read_fits_table, read_ldac, read_piff_stars, read_psfex, read_real_galaxy_catalog,
    read_sextractor_ascii, read_ztf_lightcurve_catalog, sextractor_to_sensor_catalog,
)
from tests.test_realdata import need

SEX_ASCII = """#   1 NUMBER                 Running object number
#   2 X_IMAGE                Object position along x                                    [pixel]
#   3 Y_IMAGE                Object position along y                                    [pixel]
#   4 FLUX_RADIUS            Fraction-of-light radii                                    [pixel]
#   7 CLASS_STAR             S/G classifier output
         1    10.0    20.0   1.1 2.0 3.0  0.98
         2    30.5    40.5   3.5 6.0 9.0  0.02
"""


def test_sextractor_ascii_vector_columns(tmp_path):
    p = tmp_path / "a.cat"
    p.write_text(SEX_ASCII)
    df = read_sextractor_ascii(p)
    assert list(df.columns) == ["NUMBER", "X_IMAGE", "Y_IMAGE", "FLUX_RADIUS", "FLUX_RADIUS_1", "FLUX_RADIUS_2",
                                "CLASS_STAR"]
    cat = sextractor_to_sensor_catalog(df)
    assert cat["x"].tolist() == [9.0, 29.5] and cat["extended"].tolist() == [False, True]
    with pytest.raises(FileNotFoundError):
        read_sextractor_ascii(tmp_path / "nope.cat")


def test_psfex_polynomial_order(tmp_path):
    basis = np.zeros((6, 5, 5))
    basis[0, 2, 2] = 1.0  # constant term: a delta
    basis[1, 2, 3] = 1.0  # x term moves light right
    col = fits.Column(name="PSF_MASK", format="150E", dim="(5, 5, 6)", array=basis[None].astype(np.float32))
    h = fits.BinTableHDU.from_columns([col], name="PSF_DATA")
    h.header.update(POLNAXIS=2, POLGRP1=1, POLNAME1="X_IMAGE", POLZERO1=100.0, POLSCAL1=100.0, POLGRP2=1,
                    POLNAME2="Y_IMAGE", POLZERO2=100.0, POLSCAL2=100.0, POLNGRP=1, POLDEG1=2, PSF_SAMP=1.0)
    p = tmp_path / "m.psf"
    fits.HDUList([fits.PrimaryHDU(), h]).writeto(p)
    m = read_psfex(p)
    assert m.degree == 2 and m.basis.shape == (6, 5, 5)
    assert np.allclose(m.terms(200.0, 100.0), [1, 1, 1, 0, 0, 0])  # x, x^2 = 1; y = 0
    img = m.image(200.0, 100.0, normalise=False)
    assert img[2, 2] == 1 and img[2, 3] == 1


@pytest.mark.realdata
def test_des_sextractor_ldac_real():
    p = need("catalogs/piff-des-star-catalogs/DECam_00241238_01_cat.fits")
    objs, hdr = read_ldac(p)
    assert len(objs) == 950 and {"X_IMAGE", "ALPHAWIN_J2000", "SPREAD_MODEL", "FLUX_RADIUS"} <= set(objs.columns)
    assert "NAXIS1" in hdr or len(hdr) > 10
    cat = sextractor_to_sensor_catalog(objs)
    assert {"ra", "dec", "mag", "extended", "r_half_px", "x", "y"} <= set(cat.columns)
    assert 0.05 < cat["extended"].mean() < 0.95 and np.isfinite(cat["ra"]).all()


@pytest.mark.realdata
def test_psfex_model_real():
    m = read_psfex(need("catalogs/galsim-des-psfex/DECam_00154912_12_psfcat.psf"))
    assert m.basis.shape == (6, 25, 25) and m.degree == 2 and m.names == ("X_IMAGE", "Y_IMAGE")
    img = m.image(1024.0, 2048.0)
    assert img.sum() == pytest.approx(1.0) and np.unravel_index(img.argmax(), img.shape) == (12, 12)
    used, _ = read_ldac(need("catalogs/piff-des-star-catalogs/DECam_00241238_01_psfcat.used.fits"))
    assert len(used) == 105 and "CHI2_PSF" in used.columns


@pytest.mark.realdata
def test_piff_and_findstars_real():
    stars, kind = read_piff_stars(need("catalogs/piff-des-star-catalogs/D00240560_r_c01_r2362p01_piff.fits"))
    assert kind == "SimplePSF" and len(stars) == 50 and {"x", "y", "ra", "dec", "flux"} <= set(stars.columns)
    fs = read_fits_table(need("catalogs/piff-des-star-catalogs/DECam_00241238_01_findstars.fits"))
    assert len(fs) == 1908 and "star_flag" in fs.columns
    with pytest.raises(ValueError, match="not a Piff"):
        read_piff_stars(need("catalogs/piff-des-star-catalogs/DECam_00241238_01_findstars.fits"))


@pytest.mark.realdata
def test_aegis_real_galaxy_catalog():
    cat, load = read_real_galaxy_catalog(need("catalogs/galsim-aegis-hst-galaxy-stamps/AEGIS_F606w_catalog.fits"))
    assert len(cat) == 5 and (cat["PIXEL_SCALE"] == 0.03).all()
    gal, psf = load(1)
    assert gal.ndim == 2 and psf.ndim == 2 and np.isfinite(gal).all()


@pytest.mark.realdata
def test_ztf_lightcurve_star_list_and_ntt_sextractor():
    stars = read_ztf_lightcurve_catalog(need("catalogs/kowalski-ztf-field-catalogs/ztf_000250_zg_c01_q1_dr5.parquet"))
    assert len(stars) == 5449 and stars["mag"].between(10, 24).mean() > 0.95
    ntt = read_sextractor_ascii(need("images/sep-ntt-emmi/image.cat"))
    assert len(ntt) == 65 and "FLUX_RADIUS_2" in ntt.columns
