"""Inverse-variance weight maps (manifest columns weight_new / weight_ref / weight_sub):
they define the noise of their image in the subtraction's noise map; weight 0 = masked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from tasks.subtract import subtract
from tasks.types import StampFlag
from tests.test_diff_only import GAIN, N, SKY, config, gaussian_stars, header

SKY_VAR = SKY / GAIN  # ADU^2: the sky's Poisson variance


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(8)
    stars = gaussian_stars(rng, 49)
    new = (rng.poisson((stars + SKY) * GAIN) / GAIN).astype(np.float32)
    ref = (rng.poisson((stars + SKY) * GAIN) / GAIN).astype(np.float32)
    sky = (stars < 0.5)  # pixels free of starlight
    return new, ref, sky


def _sub(new, ref, **kw):
    return subtract(new, ref, new_wcs=WCS(header()), ref_wcs=WCS(header()), gain_new=GAIN, gain_ref=GAIN,
                    **kw)


def test_variance_maps_define_the_noise(pair):
    new, ref, sky = pair
    base = _sub(new, ref)
    true = _sub(new, ref, var_new=np.full(new.shape, SKY_VAR), var_ref=np.full(ref.shape, SKY_VAR))
    big = _sub(new, ref, var_new=np.full(new.shape, 4 * SKY_VAR), var_ref=np.full(ref.shape, 4 * SKY_VAR))
    sel = sky & ~base.mask & ~true.mask & ~big.mask
    assert sel.sum() > 0.3 * sel.size
    assert true.diagnostics["variance_maps"] == ["new", "ref"] and base.diagnostics["variance_maps"] == []
    # the true variance: the same noise as measured from the images, and it matches the residuals
    assert abs(np.median(true.noise[sel] / base.noise[sel]) - 1) < 0.1
    z = true.diff[sel] / true.noise[sel]
    assert abs(np.std(z) - 1) < 0.1
    # 4x the variance (weights / 4): twice the noise
    assert abs(np.median(big.noise[sel] / true.noise[sel]) - 2) < 0.05  # (+ the Poisson term)
    assert np.std(big.diff[sel] - true.diff[sel]) < 0.1 * np.std(true.diff[sel])  # ~ the same kernel


def test_zero_weight_is_masked(pair):
    new, ref, _ = pair
    w_new = np.full(new.shape, 1 / SKY_VAR)
    w_new[40:80, 40:80] = 0
    w_ref = np.full(ref.shape, 1 / SKY_VAR)
    w_ref[150:170, 150:170] = 0
    with np.errstate(divide="ignore"):
        s = _sub(new, ref, var_new=1 / w_new, var_ref=1 / w_ref)
    assert s.mask[40:80, 40:80].all() and (s.diff[40:80, 40:80] == 0).all()
    assert s.mask[150:170, 150:170].all() and (s.noise[150:170, 150:170] == 0).all()
    assert s.mask.mean() < 0.2
    with pytest.raises(ValueError, match="var_new: shape"):
        _sub(new, ref, var_new=np.ones((10, 10)))
    with pytest.raises(ValueError, match="every weight is 0"):
        _sub(new, ref, var_new=np.full(new.shape, np.inf))


def _manifest(tmp_path: Path, pair, w_new, w_ref, **cols) -> Path:
    new, ref, _ = pair
    fits.PrimaryHDU(new, header()).writeto(tmp_path / "new.fits")
    fits.PrimaryHDU(ref, header()).writeto(tmp_path / "ref.fits")
    # the new image's weight in HDU 1 of a separate file, the ref's in a primary HDU
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(w_new.astype(np.float32))]).writeto(tmp_path / "wnew.fits")
    fits.PrimaryHDU(w_ref.astype(np.float32)).writeto(tmp_path / "wref.fits")
    row = dict(exposure="e1", sensor="s1", new="new.fits", ref="ref.fits", weight_new="wnew.fits",
               hdu_weight_new=1, weight_ref="wref.fits", night="2026-01-10")
    row.update(cols)
    man = tmp_path / "manifest.csv"
    pd.DataFrame([row]).to_csv(man, index=False)
    return man


def _job(man: Path):
    from storage.sensor_io import jobs_from_manifest
    (job,) = jobs_from_manifest(man, man.parent / "ds", night=None, inject=True, seed=2, tns=None,
                                config_json=config().model_dump_json())
    return job


def test_manifest_weight_columns_reach_the_subtraction(tmp_path, pair):
    from storage.sensor_io import process_sensor_files
    w_new = np.full((N, N), 1 / SKY_VAR)
    w_new[:, 200:] = 0  # a dead amplifier: masked
    w_ref = np.full((N, N), 1 / SKY_VAR)
    job = _job(_manifest(tmp_path, pair, w_new, w_ref))
    assert job.weight_new.endswith("wnew.fits") and job.hdu_weight_new == 1 and job.weight_ref.endswith("wref.fits")
    result, table, inj = process_sensor_files(job)
    assert result.subtraction_diagnostics["variance_maps"] == ["new", "ref"]
    assert (table["sub_source"] == "subtracted").all()
    assert (table["x"] < 200).all() and (inj["x"] < 200).all()
    touches = np.floor(table["x"] + 0.5) + 14 >= 200
    assert touches.any() and (table.loc[touches, "flags"] & int(StampFlag.NEAR_MASK)).all()
    assert (table["label"] == 1).sum() >= 15


def test_bad_weight_map_fails_the_sensor_naming_the_file(tmp_path, pair):
    from storage.sensor_io import run_sensor_job
    man = _manifest(tmp_path, pair, np.ones((N, N)), np.ones((N, N)))
    fits.PrimaryHDU(np.ones((10, 10), np.float32)).writeto(tmp_path / "wref.fits", overwrite=True)
    rec = run_sensor_job(_job(man))
    assert rec.status == "failed" and rec.reason.startswith(str(tmp_path / "wref.fits"))
    assert "reference weight map" in rec.reason and "shape" in rec.reason
