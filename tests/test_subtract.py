"""PSF-matched subtraction on simulated pairs: noise-level residuals, planted transients, masks, errors."""

from __future__ import annotations

from pathlib import Path

import galsim
import numpy as np
import pytest
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from tasks.simulate import SurveyConfig, get_preset, simulate_field_sensor
from tasks.subtract import SubtractConfig, gaussian_basis, subtract

NIGHT = "2026-03-01"
QUIET = dict(supernova_rate=0, hostless_rate=0, nuclear_rate=0, variable_rate=0, asteroid_rate=0,
             cosmic_ray_rate=0, hot_pixel_rate=0, bad_column_rate=0)


def _cfg(**kw) -> SurveyConfig:
    return SurveyConfig(**{**get_preset("ci").model_dump(), **kw})


def _sub(sim, visit, **kw):
    v = sim.visits[visit]
    return subtract(v.new, sim.ref, new_wcs=WCS(v.header), ref_wcs=WCS(sim.ref_header),
                    gain_new=v.header["GAIN"], gain_ref=sim.ref_header["GAIN"],
                    read_noise_new=v.header["RDNOISE"], read_noise_ref=sim.ref_header["RDNOISE"],
                    saturation_new=v.header["SATURATE"], saturation_ref=sim.ref_header["SATURATE"], **kw)


def _away_from_bright(sim, exposure, shape, mag_star=18.5, mag_gal=19.5, radius=12):
    """Boolean (ny, nx): pixels farther than ``radius`` px from bright stars and galaxies."""
    st = sim.stars[(sim.stars.exposure == exposure) & (sim.stars.mag < mag_star)]
    ga = sim.galaxies[(sim.galaxies.exposure == exposure) & (sim.galaxies.mag < mag_gal)]
    pts = np.concatenate([st[["x", "y"]].to_numpy(), ga[["x", "y"]].to_numpy()])
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    d, _ = cKDTree(pts).query(np.stack([xx.ravel(), yy.ravel()], 1))
    return (d > radius).reshape(shape)


@pytest.fixture(scope="module")
def quiet():
    """One sensor without events or artifacts, and its two subtractions."""
    sim = simulate_field_sensor(_cfg(**QUIET), NIGHT, 0, 1, seed=11)
    return sim, [_sub(sim, i) for i in range(len(sim.visits))]


def test_residual_rms_matches_noise_map(quiet):
    sim, subs = quiet
    for v, s in zip(sim.visits, subs):
        assert s.convolved == "ref"
        assert s.diagnostics["kernel_method"] == "alard_lupton"
        assert s.diagnostics["n_stars_used"] >= 10
        sel = _away_from_bright(sim, v.exposure, s.diff.shape) & ~s.mask
        assert sel.sum() > 0.5 * sel.size
        ratio = np.sqrt(np.mean(s.diff[sel].astype(float) ** 2)) / np.sqrt(np.mean(s.noise[sel].astype(float) ** 2))
        assert abs(ratio - 1) < 0.10, ratio
        assert abs(s.diagnostics["kernel_sum"] - 1) < 0.02  # same zero point in new and ref


def test_star_matching_recovers_ref_misregistration(quiet):
    sim, subs = quiet
    for s in subs:
        assert np.hypot(*(np.subtract(s.shift, sim.ref_offset))) < 0.05
        assert s.ref_aligned.dtype == np.float32 and s.diff.dtype == np.float32
        assert np.isfinite(s.diff).all() and np.isfinite(s.noise).all()


def _psf_flux(diff, noise, mask, x, y, fwhm_px, beta, h=12):
    """PSF-weighted flux and error at a 0-based position (optimal for a known PSF)."""
    ix, iy = int(round(x)), int(round(y))
    sl = (slice(iy - h, iy + h + 1), slice(ix - h, ix + h + 1))
    img = galsim.Image(2 * h + 1, 2 * h + 1, scale=1.0, xmin=ix - h + 1, ymin=iy - h + 1)
    galsim.Moffat(beta=beta, fwhm=fwhm_px).drawImage(image=img, center=galsim.PositionD(x + 1, y + 1))
    p, d, n, m = img.array, diff[sl].astype(float), noise[sl].astype(float), mask[sl]
    if m.any() or d.shape != p.shape:
        return None
    w = p / n**2
    return (w * d).sum() / (w * p).sum(), 1 / np.sqrt((w * p).sum())


def test_planted_transients_at_truth_position_and_flux():
    cfg = _cfg(supernova_rate=6, hostless_rate=6, variable_rate=0, asteroid_rate=2, cosmic_ray_rate=0,
               hot_pixel_rate=0, bad_column_rate=0, event_mag_range=(18.5, 21.0))
    pulls, offsets = [], []
    for sensor in (0, 2):
        sim = simulate_field_sensor(cfg, NIGHT, 1, sensor, seed=5)
        for i, v in enumerate(sim.visits):
            s = _sub(sim, i)
            ev = sim.events[sim.events.exposure == v.exposure]
            others = sim.stars[(sim.stars.exposure == v.exposure) & (sim.stars.mag < 20)]
            tree = cKDTree(others[["x", "y"]].to_numpy())
            evt = cKDTree(ev[["x", "y"]].to_numpy())
            for row in ev.itertuples():
                if tree.query_ball_point([row.x, row.y], 10) or len(evt.query_ball_point([row.x, row.y], 10)) > 1:
                    continue
                r = _psf_flux(s.diff, s.noise, s.mask, row.x, row.y, v.seeing / cfg.pixel_scale, cfg.moffat_beta)
                if r is None:
                    continue
                pulls.append((r[0] - row.flux_adu) / r[1])
                # centroid of the positive residual in a 7x7 box
                ix, iy = int(round(row.x)), int(round(row.y))
                box = np.clip(s.diff[iy - 3:iy + 4, ix - 3:ix + 4].astype(float), 0, None)
                yy, xx = np.mgrid[-3:4, -3:4]
                offsets.append(np.hypot((box * xx).sum() / box.sum() + ix - row.x,
                                        (box * yy).sum() / box.sum() + iy - row.y))
    pulls = np.asarray(pulls)
    assert len(pulls) >= 20
    assert abs(np.std(pulls) - 1) < 0.2, pulls
    assert abs(np.mean(pulls)) < 0.5, pulls
    assert np.median(offsets) < 0.5


def test_ref_with_other_shape_and_new_sharper(quiet):
    sim, _ = quiet
    v = sim.visits[0]
    ref_wcs = WCS(sim.ref_header)
    crop = (slice(20, 480), slice(40, 500))
    s = subtract(v.new, sim.ref[crop], new_wcs=WCS(v.header), ref_wcs=ref_wcs[crop],
                 gain_new=v.header["GAIN"], gain_ref=sim.ref_header["GAIN"],
                 read_noise_new=v.header["RDNOISE"], read_noise_ref=sim.ref_header["RDNOISE"])
    assert s.diff.shape == v.new.shape
    assert s.mask[:, :5].all() and s.mask[-5:, :].all()  # outside the cropped ref's footprint
    assert np.hypot(*(np.subtract(s.shift, sim.ref_offset))) < 0.05
    # swap roles: the sharper image (the ref) is now "new", so "new" gets convolved
    sw = subtract(sim.ref, v.new, new_wcs=ref_wcs, ref_wcs=WCS(v.header),
                  gain_new=sim.ref_header["GAIN"], gain_ref=v.header["GAIN"],
                  read_noise_new=sim.ref_header["RDNOISE"], read_noise_ref=v.header["RDNOISE"])
    assert sw.convolved == "new"
    sel = ~sw.mask & (np.abs(sw.diff) < 50 * np.maximum(sw.noise, 1e-3))
    z = sw.diff[sel] / sw.noise[sel]
    assert abs(1.4826 * np.median(np.abs(z - np.median(z))) - 1) < 0.15


def test_nan_zero_and_masked_regions_are_masked_not_spread(quiet):
    sim, _ = quiet
    v = sim.visits[0]
    new = v.new.copy()
    ref = sim.ref.copy()
    new[100:140, 100:140] = np.nan
    ref[300:320, 200:260] = 0.0
    user = np.zeros_like(new, bool)
    user[400:410, 400:410] = True
    s = subtract(new, ref, new_wcs=WCS(v.header), ref_wcs=WCS(sim.ref_header), new_mask=user,
                 gain_new=2.0, gain_ref=8.0)
    assert np.isfinite(s.diff).all() and np.isfinite(s.noise).all()
    assert s.mask[100:140, 100:140].all() and s.mask[400:410, 400:410].all()
    assert s.mask[300:320, 205:255].all()  # ref hole, moved by the pointing offset of < 5 px
    assert (s.diff[s.mask] == 0).all()
    h = SubtractConfig().kernel_half_width
    assert not s.mask[100:140, 140 + h + 3].any()  # a NaN block does not spread beyond the kernel
    assert s.mask.mean() < 0.1


def test_errors_and_fallback(quiet):
    sim, _ = quiet
    v = sim.visits[0]
    w_new, w_ref = WCS(v.header), WCS(sim.ref_header)
    far = w_ref.deepcopy()
    far.wcs.crval = [far.wcs.crval[0] + 5.0, far.wcs.crval[1]]
    with pytest.raises(ValueError, match="overlap"):
        subtract(v.new, sim.ref, new_wcs=w_new, ref_wcs=far)
    with pytest.raises(ValueError, match="new: all pixels are NaN"):
        subtract(np.full_like(v.new, np.nan), sim.ref, new_wcs=w_new, ref_wcs=w_ref)
    with pytest.raises(ValueError, match="gain_ref"):
        subtract(v.new, sim.ref, new_wcs=w_new, ref_wcs=w_ref, gain_ref=0)
    rng = np.random.default_rng(0)
    flat = (300 + rng.normal(0, 10, v.new.shape)).astype(np.float32)
    with pytest.raises(ValueError, match="too few stars"):
        subtract(flat, flat.copy(), new_wcs=w_new, ref_wcs=w_ref)
    # a few stars only: Gaussian kernel from the measured FWHMs, said in the diagnostics
    s = subtract(v.new, sim.ref, new_wcs=w_new, ref_wcs=w_ref, config=SubtractConfig(min_stars=10_000))
    assert s.diagnostics["kernel_method"] == "gaussian_fallback"
    assert any("Gaussian" in n for n in s.diagnostics["notes"])
    assert abs(s.kernel.sum() - 1) < 1e-6


def test_config_validation_and_basis():
    with pytest.raises(ValueError, match="basis_sigmas"):
        SubtractConfig(basis_sigmas=(1.0,), basis_degrees=(1, 2))
    with pytest.raises(ValueError, match="kernel_half_width"):
        SubtractConfig(kernel_half_width=1)
    with pytest.raises(ValueError):
        SubtractConfig(unknown=1)
    b = gaussian_basis(7, (0.7, 1.5), (2, 1))
    assert b.shape == (6 + 3, 15, 15)
    assert np.allclose((b**2).sum(axis=(1, 2)), 1)


DECAM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images" / "sfft-decam-2epoch"


@pytest.mark.skipif(not (DECAM / "Stack-DEC-OBS04.fits").is_file(), reason="real DECam pair not in ../shared/data")
def test_real_decam_pair_noise_and_sfft_comparison():
    """Real sky-subtracted DECam stacks (2018 new, 2016 ref): the noise map describes the
    difference and the residual scatter is no worse than sfft's published difference."""
    from storage.fits_io import read_image_fits, wcs_from_header

    new, hn = read_image_fits(DECAM / "Stack-DEC-OBS04.fits")
    ref, hr = read_image_fits(DECAM / "Stack-DEC-OBS18.fits")
    sfft, _ = read_image_fits(DECAM / "FinalDifference.fits")
    s = subtract(new, ref, new_wcs=wcs_from_header(hn), ref_wcs=wcs_from_header(hr), gain_new=hn["GAIN"],
                 gain_ref=hr["GAIN"], saturation_new=hn["SATURATE"], saturation_ref=hr["SATURATE"])
    m = ~s.mask
    z = s.diff[m] / s.noise[m]
    assert abs(1.4826 * np.median(np.abs(z - np.median(z))) - 1) < 0.15

    def mad(a):
        return 1.4826 * np.median(np.abs(a - np.median(a)))

    assert mad(s.diff[m]) < 1.1 * mad(sfft[m])
