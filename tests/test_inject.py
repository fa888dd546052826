"""Injection planning (placement, magnitudes, seeds) and adding sources to an image."""

import numpy as np
import pandas as pd
import pytest
from astropy.wcs import WCS

from tasks.inject import InjectConfig, inject, plan_injections, usable_area
from tasks.psf import PSFResult
from tasks.synthetic import pixel_integrated_psf
from tasks.types import ImageMeta

META = ImageMeta(exposure="e", sensor="s", night="n", mjd=0.0, gain=2.0, zeropoint=25.0,
                 pixel_scale=0.5)


def _psf():
    e = pixel_integrated_psf(3.0, "moffat", 3, 25)
    return PSFResult(epsf=e, oversampling=3, fwhm_px=3.0, ellipticity=0.0, n_stars=0,
                     residual_rms=0.0, method="epsf")


def _wcs(shape):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    w.wcs.cdelt = [-0.5 / 3600, 0.5 / 3600]
    return w


def test_plan_host_and_hostless_placement():
    shape = (400, 500)
    mask = np.zeros(shape, bool)
    mask[:, 250:300] = True
    hosts = pd.DataFrame({"x": [100.0, 400.0, 120.0], "y": [200.0, 100.0, 300.0],
                          "r_half_px": [4.0, 6.0, 2.0], "extended": [True, True, False],
                          "host_id": ["g1", "g2", "star"]})
    cfg = InjectConfig(n_host=400, n_hostless=400, edge_px=16, mask_margin_px=3, min_separation_px=0)
    plan = plan_injections(shape=shape, hosts=hosts, mask=mask, wcs=_wcs(shape), meta=META,
                           config=cfg, seed=5, id_prefix="n/e/s/")
    assert list(plan["injection_id"][:2]) == ["n/e/s/0", "n/e/s/1"]
    assert plan["injection_id"].is_unique
    host = plan[plan["kind"] == "host"]
    free = plan[plan["kind"] == "hostless"]
    assert len(free) == 400 and len(host) > 390
    assert set(host["host_id"]) <= {"g1", "g2"}  # never the non-extended row
    # offsets follow an exponential disk of the host's r_half: median r ~ r_half
    g1 = host[host["host_id"] == "g1"]
    r = np.hypot(g1["x"] - 100, g1["y"] - 200)
    assert 0.75 * 4 < np.median(r) < 1.25 * 4
    assert np.allclose(host["host_offset_arcsec"], np.hypot(
        host["x"] - np.where(host["host_id"] == "g1", 100, 400),
        host["y"] - np.where(host["host_id"] == "g1", 200, 100)) * 0.5)
    assert free["host_id"].isna().all() and free["host_offset_arcsec"].isna().all()
    ok = usable_area(shape, mask, 16, 3)
    ix, iy = np.floor(plan["x"] + 0.5).astype(int), np.floor(plan["y"] + 0.5).astype(int)
    assert ok[iy, ix].all()
    # hostless is uniform over the usable area: both sides of the masked band get some
    assert (free["x"] < 250).mean() == pytest.approx(234 / 418, abs=0.08)
    assert np.isfinite(plan["ra"]).all() and plan["ra"].between(149.9, 150.1).all()
    assert plan["mag"].between(cfg.mag_bright, cfg.mag_faint).all()
    assert np.allclose(plan["flux_adu"], 10 ** (-0.4 * (plan["mag"] - 25.0)))


def test_plan_magnitudes_reach_below_limit_and_is_deterministic():
    kw = dict(shape=(200, 200), hosts=None, mask=None, wcs=None, meta=META,
              config=InjectConfig(n_host=5, n_hostless=300, min_separation_px=0), seed=9,
              limiting_mag=20.0)
    a = plan_injections(**kw)
    b = plan_injections(**kw)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 300  # no hosts given -> no host injections
    assert a["mag"].min() >= 15.0 and a["mag"].max() <= 21.0
    assert (a["mag"] > 20.0).mean() == pytest.approx(1 / 6, abs=0.06)
    c = plan_injections(**{**kw, "seed": 10})
    assert not np.allclose(a["x"], c["x"])


def test_inject_adds_flux_with_poisson_noise():
    psf = _psf()
    img = np.full((120, 120), 100.0, np.float32)
    plan = pd.DataFrame({"injection_id": ["a", "b", "c"], "x": [30.2, 80.7, 1.0],
                         "y": [40.4, 90.1, 60.0], "flux_adu": [5000.0, 20000.0, 8000.0],
                         "seed": [1, 2, 3]})
    res = inject(img, psf, plan, gain=2.0, seed=4)
    assert img.max() == 100.0  # input untouched
    diff = res.image.astype(float) - 100.0
    assert abs(diff[28:53, 18:43].sum() - 5000) < 4 * np.sqrt(5000 / 2) + 50
    assert 0.7 * 8000 < res.plan["flux_realised"].iloc[2] < 0.9 * 8000  # partly off the image
    assert res.plan["flux_realised"].iloc[1] == pytest.approx(20000, rel=0.02)
    yy, xx = np.mgrid[78:103, 68:93]
    cut = diff[78:103, 68:93]
    assert abs((cut * xx).sum() / cut.sum() - 80.7) < 0.05
    # deterministic, and noiseless without poisson
    again = inject(img, psf, plan, gain=2.0, seed=4)
    assert np.array_equal(res.image, again.image)
    exact = inject(img, psf, plan, gain=2.0, poisson=False)
    assert np.allclose(exact.image.astype(float) - 100, psf.render(img.shape, plan["x"], plan["y"], plan["flux_adu"]), atol=1e-2)


def test_config_and_input_validation():
    with pytest.raises(ValueError, match="mag_faint"):
        InjectConfig(mag_bright=20, mag_faint=19)
    with pytest.raises(ValueError, match="n_host"):
        InjectConfig(n_host=-1)
    with pytest.raises(ValueError, match="mask shape"):
        plan_injections(shape=(10, 10), hosts=None, mask=np.zeros((5, 5), bool), wcs=None,
                        meta=META, config=InjectConfig(), seed=0)
    with pytest.raises(ValueError, match="r_half_px"):
        plan_injections(shape=(100, 100), hosts=pd.DataFrame({"x": [1.0], "y": [1.0],
                        "extended": [True]}), mask=None, wcs=None, meta=META,
                        config=InjectConfig(), seed=0)
    with pytest.raises(ValueError, match="gain"):
        inject(np.zeros((10, 10)), _psf(), pd.DataFrame({"x": [], "y": [], "flux_adu": []}),
               gain=0)


def test_plan_keeps_injections_apart():
    hosts = pd.DataFrame({"x": [100.0], "y": [100.0], "r_half_px": [3.0], "extended": [True]})
    plan = plan_injections(shape=(200, 200), hosts=hosts, mask=None, wcs=None, meta=META,
                           config=InjectConfig(n_host=30, n_hostless=30, min_separation_px=8), seed=1)
    from scipy.spatial.distance import pdist
    assert 0 < len(plan) < 60
    assert pdist(plan[["x", "y"]].to_numpy()).min() >= 8
    assert plan["injection_id"].is_unique
