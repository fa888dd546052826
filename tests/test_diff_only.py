"""Difference-only ingest (docs/per_sensor.md, "Real-data ingest modes"): a survey's own
difference image takes injections and detection directly; no subtraction runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from tasks.sensor import SensorConfig, process_given_diff
from tasks.types import ImageMeta, StampFlag

N = 256
FWHM = 3.0
SKY, GAIN, ZP = 200.0, 2.0, 25.0


def header(dx: float = 0.0, **extra) -> fits.Header:
    """A TAN WCS (0.263"/px) and the default header keys; dx shifts CRPIX1 (another grid)."""
    h = fits.Header()
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=2.0, CRPIX1=128.5 + dx,
             CRPIX2=128.5, CD1_1=-0.263 / 3600, CD1_2=0.0, CD2_1=0.0, CD2_2=0.263 / 3600,
             EXPOSURE="e1", SENSOR="s1", NIGHT="2026-01-10", **{"MJD-OBS": 61050.1},
             GAIN=GAIN, SATURATE=1e6, MAGZP=ZP, RDNOISE=5.0, PIXSCALE=0.263, SEEING=FWHM * 0.263)
    h.update(extra)
    return h


def meta() -> ImageMeta:
    return ImageMeta(exposure="e1", sensor="s1", night="2026-01-10", mjd=61050.1, gain=GAIN,
                     saturation=1e6, zeropoint=ZP, read_noise=5.0, pixel_scale=0.263, seeing=FWHM * 0.263)


def gaussian_stars(rng, n: int, flux_lo=2e4, flux_hi=2e5, margin=14) -> np.ndarray:
    """(ny, nx) image of n pixel-integrated Gaussian stars on a jittered grid (isolated)."""
    from scipy.special import erf
    s = FWHM / 2.3548
    side = int(np.ceil(np.sqrt(n)))
    g = np.linspace(margin, N - 1 - margin, side)
    gx, gy = np.meshgrid(g, g)
    x = (gx.ravel() + rng.uniform(-2, 2, gx.size))[:n]
    y = (gy.ravel() + rng.uniform(-2, 2, gy.size))[:n]
    f = rng.uniform(flux_lo, flux_hi, n)
    e = np.arange(N + 1) - 0.5
    img = np.zeros((N, N))
    for xi, yi, fi in zip(x, y, f):
        px = 0.5 * (erf((e[1:] - xi) / (np.sqrt(2) * s)) - erf((e[:-1] - xi) / (np.sqrt(2) * s)))
        py = 0.5 * (erf((e[1:] - yi) / (np.sqrt(2) * s)) - erf((e[:-1] - yi) / (np.sqrt(2) * s)))
        img += fi * np.outer(py, px)
    return img


@pytest.fixture(scope="module")
def scene():
    """new (stars + sky + noise), ref (the same stars, other noise), diff = noise of both."""
    rng = np.random.default_rng(3)
    stars = gaussian_stars(rng, 49)
    new = rng.poisson((stars + SKY) * GAIN) / GAIN
    ref = rng.poisson((stars + SKY) * GAIN) / GAIN
    diff = new - ref  # both on one grid and PSF: a perfect subtraction, noise of both
    return dict(new=new.astype(np.float32), ref=ref.astype(np.float32), diff=diff.astype(np.float32))


def config(**kw) -> SensorConfig:
    return SensorConfig(inject={"n_host": 0, "n_hostless": 40, "min_separation_px": 12.0}, **kw)


def run(scene, **kw):
    args = dict(new_header=header(), new_meta=meta(), diff_header=header(), config=config(),
                seed=5, id_prefix="t/")
    args.update(kw)
    return process_given_diff(scene["new"], scene["diff"], **args)


@pytest.fixture(scope="module")
def result(scene):
    return run(scene)


def test_injections_in_the_given_difference_are_found_at_their_flux_and_position(result):
    r = result
    assert r.psf.method == "epsf" and abs(r.psf.fwhm_px - FWHM) < 0.3
    plan = r.injections
    assert len(plan) >= 30
    bright = plan[plan["mag"] < r.limiting_mag - 2]
    assert len(bright) >= 10 and bright["detected"].mean() >= 0.95
    t = r.table
    inj = t[t["label"] == 1].merge(plan, on="injection_id", suffixes=("", "_inj"))
    inj = inj[inj["mag_inj"] < r.limiting_mag - 2]
    assert abs(np.median(inj["mag"] - inj["mag_inj"])) < 0.03  # PSF flux on the given diff
    assert np.median(np.hypot(inj["x"] - inj["x_inj"], inj["y"] - inj["y_inj"])) < 0.3
    faint = plan[plan["mag"] > r.limiting_mag + 0.5]
    assert faint["detected"].mean() < bright["detected"].mean()
    # depth of the difference image: sigma_diff = sqrt(2) sigma_sky
    sigma = np.sqrt(2 * SKY / GAIN)
    n_eff = r.psf.n_eff
    assert abs(r.limiting_mag - (ZP - 2.5 * np.log10(5 * sigma * np.sqrt(n_eff)))) < 0.1


def test_rows_record_the_mode_and_the_missing_ref(result):
    t, s = result.table, result.stamps
    assert (t["sub_source"] == "given").all() and len(t) == len(s)
    assert (t["flags"] & int(StampFlag.NO_REF)).all()
    assert (s[:, 1] == 0).all()  # the ref channel is zeros without a ref
    assert set(result.timings) == {"psf", "noise", "inject", "detect", "cut"}
    d = result.subtraction_diagnostics
    assert d["mode"] == "given" and d["ref"] == "none" and d["noise_source"] == "sep_rms_of_diff"
    # the injected source is in both the new and the sub channel (one realised source)
    k = t.index[(t["label"] == 1) & (t["snr"] > 50)]
    assert len(k) >= 5
    assert (s[k, 2, 13:16, 13:16].sum(axis=(1, 2)) > 10 * np.sqrt(2 * SKY / GAIN)).all()
    assert (s[k, 0, 13:16, 13:16].mean(axis=(1, 2)) > SKY).all()
    # only injections and noise: few bogus detections
    assert (t["label"] == 0).sum() <= 0.2 * len(t)


def test_deterministic(scene, result):
    again = run(scene)
    np.testing.assert_array_equal(again.stamps, result.stamps)
    pd.testing.assert_frame_equal(again.table, result.table)


def test_given_ref_fills_the_ref_channel(scene):
    r = run(scene, ref=scene["ref"], ref_header=header(), ref_meta=meta())
    t, s = r.table, r.stamps
    assert not (t["flags"] & int(StampFlag.NO_REF)).any()
    assert r.subtraction_diagnostics["ref"] == "given"
    ix, iy = np.floor(t["x"] + 0.5).astype(int), np.floor(t["y"] + 0.5).astype(int)
    inner = (ix > 14) & (ix < N - 15) & (iy > 14) & (iy < N - 15)
    i = int(np.flatnonzero(inner.to_numpy())[0])
    np.testing.assert_array_equal(s[i, 1], scene["ref"][iy[i] - 14:iy[i] + 15, ix[i] - 14:ix[i] + 15])


def test_ref_on_another_grid_is_resampled(scene):
    shifted = np.roll(scene["ref"], 3, axis=1)  # the sky moves 3 px right in the ref's pixels
    r = run(scene, ref=shifted, ref_header=header(dx=3.0), ref_meta=meta())
    assert r.subtraction_diagnostics["ref"] == "resampled"
    t, s = r.table, r.stamps
    ix, iy = np.floor(t["x"] + 0.5).astype(int), np.floor(t["y"] + 0.5).astype(int)
    ok = ((ix > 20) & (ix < N - 21) & (iy > 20) & (iy < N - 21)).to_numpy()
    for i in np.flatnonzero(ok)[:5]:
        np.testing.assert_allclose(s[i, 1], scene["ref"][iy[i] - 14:iy[i] + 15, ix[i] - 14:ix[i] + 15],
                                   atol=1e-2, rtol=1e-4)


def test_difference_on_another_grid_is_refused(scene):
    with pytest.raises(ValueError, match="not on the new image's pixel grid"):
        run(scene, diff_header=header(dx=2.0))
    with pytest.raises(ValueError, match="shape"):
        process_given_diff(scene["new"], scene["diff"][:, :200], new_header=header(), new_meta=meta())


def test_difference_variance_map_is_the_noise_and_zero_weight_is_masked(scene):
    var = np.full((N, N), 2 * SKY / GAIN)
    var[:, :64] = np.inf  # weight 0: masked
    r = run(scene, diff_var=var)
    t = r.table
    assert r.subtraction_diagnostics["noise_source"] == "weight_sub"
    assert (t["x"] >= 64 - 0.5).all()
    assert (r.injections["x"] > 64).all()
    touches = np.floor(t["x"] + 0.5) - 14 <= 63  # the 29 x 29 stamp reaches a masked column
    assert (touches == ((t["flags"] & int(StampFlag.NEAR_MASK)) > 0)).all()
    # the flux errors follow the given variance (plus the sources' Poisson term, counted in
    # the noise map and again by the PSF photometry, as in the subtraction mode)
    r4 = run(scene, diff_var=np.where(np.isfinite(var), 4 * var, np.inf))
    for res, v in ((r, var[0, 100]), (r4, 4 * var[0, 100])):
        d = res.table[res.table["label"] == 1]
        pred = np.sqrt(v * res.psf.n_eff + 2 * d["flux"] / GAIN)
        assert len(d) >= 15 and 0.9 < np.median(d["flux_err"] / pred) < 1.15
    assert abs((r.limiting_mag - r4.limiting_mag) - 2.5 * np.log10(2)) < 0.02


# ------------------------------------------------------------------ manifest and sensor job

def _write(path: Path, data, hdr) -> str:
    fits.PrimaryHDU(np.asarray(data, np.float32), hdr).writeto(path, overwrite=True)
    return path.name


def _survey(tmp_path: Path, scene, rows: list[dict]) -> Path:
    _write(tmp_path / "new.fits", scene["new"], header())
    _write(tmp_path / "ref.fits", scene["ref"], header())
    _write(tmp_path / "diff.fits", scene["diff"], header())
    man = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(man, index=False)
    return man


def _jobs(man: Path, cfg: SensorConfig, **kw):
    from storage.sensor_io import jobs_from_manifest
    return jobs_from_manifest(man, man.parent / "ds", night=None, inject=True, seed=1, tns=None,
                              config_json=cfg.model_dump_json(), **kw)


def test_manifest_row_with_sub_and_empty_ref_runs_difference_only(tmp_path, scene):
    from storage.sensor_io import run_sensor_job
    from storage.stampstore import read_part
    man = _survey(tmp_path, scene, [dict(exposure="e1", sensor="s1", new="new.fits", ref="",
                                         sub="diff.fits", hdu_sub=0, night="2026-01-10")])
    (job,) = _jobs(man, config())
    assert job.uses_given_sub and job.ref == "" and job.sub.endswith("diff.fits")
    rec = run_sensor_job(job)
    assert rec.status == "done", rec.reason
    stamps, table, inj = read_part(Path(rec.path))
    assert len(stamps) == len(table) == rec.n_stamps > 10 and len(inj) >= 30
    assert (table["sub_source"] == "given").all() and (table["label"] == 1).sum() >= 20
    assert (table["flags"] & int(StampFlag.NO_REF)).all() and (stamps[:, 1] == 0).all()
    assert json.loads((Path(rec.path) / "part.json").read_text())["meta"]["subtraction"]["mode"] == "given"


def test_use_given_sub_switch_chooses_between_the_modes(tmp_path, scene):
    from storage.sensor_io import process_sensor_files
    man = _survey(tmp_path, scene, [dict(exposure="e1", sensor="s1", new="new.fits", ref="ref.fits",
                                         sub="diff.fits", night="2026-01-10")])
    (job,) = _jobs(man, config())
    assert not job.uses_given_sub  # a ref is given: subtract as usual
    _, table, _ = process_sensor_files(job)
    assert (table["sub_source"] == "subtracted").all()
    (job,) = _jobs(man, config(use_given_sub=True))
    assert job.uses_given_sub
    result, table, inj = process_sensor_files(job)
    assert (table["sub_source"] == "given").all() and result.subtraction_diagnostics["ref"] == "given"
    assert not (table["flags"] & int(StampFlag.NO_REF)).any() and (table["label"] == 1).sum() >= 20
    assert len(inj) and (inj["night"] == "2026-01-10").all()


def test_manifest_rules_for_difference_only_rows(tmp_path, scene):
    from storage.survey import read_manifest
    man = _survey(tmp_path, scene, [dict(exposure="e1", sensor="s1", new="new.fits", ref="", sub="",
                                         night="2026-01-10")])
    with pytest.raises(ValueError, match=r"empty values in columns \['ref'\]"):
        read_manifest(man)
    pd.DataFrame([dict(exposure="e1", sensor="s1", new="new.fits", ref="", sub="diff.fits",
                       weight_sub="w.fits")]).to_csv(man, index=False)
    assert len(read_manifest(man)) == 1
    pd.DataFrame([dict(exposure="e1", sensor="s1", new="new.fits", ref="", sub="diff.fits",
                       weight_ref="w.fits")]).to_csv(man, index=False)
    with pytest.raises(ValueError, match="weight_ref.*without its image"):
        read_manifest(man)


def test_unreadable_difference_image_names_its_file(tmp_path, scene):
    from storage.sensor_io import run_sensor_job
    man = _survey(tmp_path, scene, [dict(exposure="e1", sensor="s1", new="new.fits", ref="",
                                         sub="diff.fits", hdu_sub=3, night="2026-01-10")])
    (job,) = _jobs(man, config())
    rec = run_sensor_job(job)
    assert rec.status == "failed" and rec.reason.startswith(str(tmp_path / "diff.fits"))
    assert "difference image" in rec.reason and "HDU 3" in rec.reason


# ------------------------------------------------------------------ the real DECam triplet

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RBFLOW_SHARED_DATA") or (REPO.parent / "shared" / "data"))
DECAM = DATA / "images" / "sfft-decam-2epoch"


def _bench():
    from tests.conftest import load_benchmark
    return load_benchmark("realdata")


def _need_decam():
    if not (DECAM / "FinalDifference.fits").exists():
        pytest.skip(f"real data not available: {DECAM / 'FinalDifference.fits'} is absent "
                    "(set RBFLOW_SHARED_DATA to the shared data directory)")


@pytest.mark.realdata
def test_decam_given_sfft_difference_manifest(tmp_path):
    """A manifest in tmp_path points (absolute paths) at the real new image and the real SFFT
    difference, with no ref: injections go into the SFFT difference; bright ones are found."""
    _need_decam()
    from storage.fits_io import HeaderKeys
    from storage.sensor_io import jobs_from_manifest, process_sensor_files
    from storage.survey import read_manifest
    bench = _bench()
    man = tmp_path / "manifest.csv"
    pd.DataFrame([dict(exposure="e", sensor="37", new=str(DECAM / "Stack-DEC-OBS04.fits"), ref="",
                       sub=str(DECAM / "FinalDifference.fits"), night="2018-08-04")]).to_csv(man, index=False)
    with pytest.raises(ValueError, match="absolute path"):
        read_manifest(man)
    keys = HeaderKeys(**bench.DECAM_KEYS).model_dump_json()
    (job,) = jobs_from_manifest(man, tmp_path / "ds", night=None, inject=True, seed=1, tns=None,
                                config_json=bench.decam_config().model_dump_json(), header_keys_json=keys,
                                allow_outside_paths=True)
    assert job.uses_given_sub
    result, table, inj = process_sensor_files(job)
    assert result.psf.method == "epsf" and result.subtraction_diagnostics["mode"] == "given"
    assert len(table) == len(result.stamps) > 10 and (table["sub_source"] == "given").all()
    assert (table["flags"] & int(StampFlag.NO_REF)).all() and (result.stamps[:, 1] == 0).all()
    assert (table["label"] == 1).sum() >= 5 and table["true_label"].isna().all()
    # the SFFT difference's noise: ~9.2 ADU robust sigma (docs/realdata.md)
    assert 8.0 < result.subtraction_diagnostics["diff_rms"] < 10.5


@pytest.mark.realdata
def test_decam_given_difference_recovery_with_ref():
    """Three injection seeds into the SFFT difference (ref channel from the 2016 stack):
    bright injections found with small flux bias and sub-pixel positions."""
    _need_decam()
    from storage.fits_io import read_image_fits
    bench = _bench()
    new, nh, nm, ref, rh, rm, _ = bench.load_decam(DATA)
    diff, dh = read_image_fits(DECAM / "FinalDifference.fits")
    rows = []
    for k in range(3):
        r = process_given_diff(new, diff, new_header=nh, new_meta=nm, diff_header=dh, ref=ref, ref_header=rh,
                               ref_meta=rm, config=bench.decam_config(), seed=k, id_prefix=f"t{k}_")
        assert not (r.table["flags"] & int(StampFlag.NO_REF)).any() and r.subtraction_diagnostics["ref"] == "given"
        det = r.table[r.table["label"] == 1].drop_duplicates("injection_id").set_index("injection_id")
        inj = r.injections.assign(flux_meas=lambda d: d["injection_id"].map(det["flux"]),
                                  dx=lambda d: d["injection_id"].map(det["x"]) - d["x"],
                                  dy=lambda d: d["injection_id"].map(det["y"]) - d["y"], depth=r.limiting_mag)
        rows.append(inj)
    inj = pd.concat(rows, ignore_index=True)
    bright = inj[inj["mag"] < inj["depth"] - 2]
    assert len(bright) >= 10 and bright["detected"].mean() >= 0.85
    found = bright[bright["detected"].astype(bool)]
    dmag = -2.5 * np.log10(found["flux_meas"] / found["flux_adu"])
    assert abs(dmag.median()) < 0.03
    assert np.hypot(found["dx"], found["dy"]).median() < 0.3
