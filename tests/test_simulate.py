"""Simulated survey: config validation, determinism, FITS round trip (PSF, zero point), survey I/O, TNS list."""

from __future__ import annotations

import json

import galsim
import numpy as np
import pandas as pd
import pytest
import sep
from astropy.io import fits
from astropy.modeling import fitting, models
from astropy.time import Time
from scipy.spatial import cKDTree

from storage.fits_io import HeaderKeys, image_meta_from_header, read_image_fits, wcs_from_header, write_image_fits
from storage.survey import (finalize_survey, read_catalog, read_manifest, read_truth, simulate_survey,
                            write_field_sensor)
from tasks.simulate import (PRESETS, SurveyConfig, exposure_id, get_preset, make_tns_list,
                            simulate_field_sensor)

NIGHT = "2026-02-10"
HEADER_KEYS = ("EXPOSURE", "SENSOR", "FIELD", "VISIT", "NIGHT", "MJD-OBS", "DATE-OBS", "EXPTIME", "GAIN",
               "RDNOISE", "SATURATE", "MAGZP", "SEEING", "PIXSCALE", "FILTER", "CTYPE1", "CRVAL1", "CRPIX2")


def _cfg(**kw) -> SurveyConfig:
    return SurveyConfig(**{**get_preset("ci").model_dump(), **kw})


@pytest.fixture(scope="module")
def sim():
    return simulate_field_sensor(get_preset("ci"), NIGHT, 1, 2, seed=3)


# ------------------------------------------------------------------ config


def test_config_validation():
    with pytest.raises(ValueError, match="n_visits"):
        SurveyConfig(n_visits=1)
    with pytest.raises(ValueError, match="seeing_range"):
        SurveyConfig(seeing_range=(3.0, 2.0))
    with pytest.raises(ValueError, match="pixel_scale"):
        SurveyConfig(pixel_scale=0)
    with pytest.raises(ValueError, match="visit_interval_min"):
        SurveyConfig(n_fields=100, field_time_s=60, visit_interval_min=10)
    with pytest.raises(ValueError, match="extra"):
        SurveyConfig(not_a_field=1)
    with pytest.raises(ValueError, match="preset"):
        get_preset("hsc")
    with pytest.raises(ValueError, match="night"):
        simulate_field_sensor(get_preset("ci"), "2026/02/10", 0, 0, 1)
    with pytest.raises(ValueError, match="sensor"):
        simulate_field_sensor(get_preset("ci"), NIGHT, 0, 99, 1)
    with pytest.raises(Exception):
        get_preset("ci").nx = 10  # frozen


def test_presets_name_the_surveys():
    t, z, ci = PRESETS["tomoe"], PRESETS["ztf"], PRESETS["ci"]
    assert (t.n_sensors, t.nx, t.ny, t.pixel_scale) == (84, 2000, 1128, 1.19)
    assert z.pixel_scale == 1.01 and 1.6 <= sum(z.seeing_range) / 2 <= 2.4
    assert ci.n_fields * ci.n_sensors * ci.n_visits >= 10
    assert set(PRESETS) >= {"ci", "tomoe", "ztf", "val"} and PRESETS["val"].n_fields > ci.n_fields
    for cfg in PRESETS.values():
        assert cfg.ref_seeing < cfg.seeing_range[0] and cfg.ref_n_stack > 1


def test_quiet_preset_cuts_only_the_real_events(sim):
    """`ci-quiet` is `ci` with the real-event rates cut 6x (the flagging study's low own-error
    survey): every other field equal, the same static sky, and fewer events on the same night."""
    ci, quiet = PRESETS["ci"].model_dump(), PRESETS["ci-quiet"].model_dump()
    rates = ("supernova_rate", "hostless_rate", "nuclear_rate", "variable_rate", "asteroid_rate")
    assert {k for k in ci if ci[k] != quiet[k]} == {"name", "supernova_rate", "hostless_rate",
                                                    "variable_rate", "asteroid_rate"}
    assert sum(ci[k] for k in rates) == pytest.approx(6 * sum(quiet[k] for k in rates))
    q = simulate_field_sensor(get_preset("ci-quiet"), NIGHT, 1, 2, seed=3)
    pd.testing.assert_frame_equal(q.stars, sim.stars)  # static sky: its own seed stream
    pd.testing.assert_frame_equal(q.catalog, sim.catalog)
    assert len(q.events) < len(sim.events)


# ------------------------------------------------------------------ structure and determinism


def test_structure_ids_and_headers(sim):
    cfg = get_preset("ci")
    assert sim.ref.shape == (cfg.ny, cfg.nx) and sim.ref.dtype == np.float32
    assert len(sim.visits) == cfg.n_visits
    exps = [v.exposure for v in sim.visits]
    assert exps == sorted(exps) and exps[0] == exposure_id(NIGHT, 0, 1) == "2026021000001"
    assert [v.mjd for v in sim.visits] == sorted(v.mjd for v in sim.visits)
    assert sim.sensor_id == "02"
    for v in sim.visits:
        assert v.new.dtype == np.float32 and v.new.max() <= cfg.saturation
        for k in HEADER_KEYS:
            assert k in v.header, k
        assert v.header["EXPOSURE"] == v.exposure and v.header["SENSOR"] == "02"
    # enough usable stars, extended hosts in the catalogue, per-exposure truth rows
    assert (sim.catalog.kind == "star").sum() >= 60 and sim.catalog.extended.sum() >= 10
    assert set(sim.events.exposure) <= set(exps) and len(sim.events) > 0
    sn = sim.events[sim.events.kind == "supernova"]
    assert sn.host_id.notna().all() and (sn.host_offset_arcsec < 15).all()
    assert set(sim.artifacts.kind) <= {"cosmic_ray", "hot_pixel", "bad_column"}
    for df in (sim.stars, sim.galaxies, sim.events, sim.artifacts):
        assert {"night", "exposure", "sensor", "field", "x", "y", "ra", "dec", "kind"} <= set(df.columns)


def test_truth_position_matches_pixels(sim):
    """A bright planted event sits at its truth (x, y) in the new image (ref has no event)."""
    v = sim.visits[0]
    ev = sim.events[(sim.events.exposure == v.exposure) & (sim.events.kind.isin(["supernova", "hostless"]))]
    row = ev.sort_values("mag").iloc[0]
    ix, iy = int(round(row.x)), int(round(row.y))
    box = (v.new - sim.ref)[iy - 3:iy + 4, ix - 3:ix + 4].astype(float)
    box = np.clip(box - np.median(v.new - sim.ref), 0, None)
    yy, xx = np.mgrid[-3:4, -3:4]
    cx, cy = (box * xx).sum() / box.sum() + ix, (box * yy).sum() / box.sum() + iy
    assert np.hypot(cx - row.x, cy - row.y) < 0.7


def test_determinism_and_static_sky(sim):
    cfg = get_preset("ci")
    again = simulate_field_sensor(cfg, NIGHT, 1, 2, seed=3)
    assert np.array_equal(again.ref, sim.ref)
    assert all(np.array_equal(a.new, b.new) for a, b in zip(again.visits, sim.visits))
    pd.testing.assert_frame_equal(again.events, sim.events)
    pd.testing.assert_frame_equal(again.catalog, sim.catalog)
    assert repr(again.visits[0].header) == repr(sim.visits[0].header)
    other = simulate_field_sensor(cfg, "2026-02-11", 1, 2, seed=3)
    assert np.array_equal(other.ref, sim.ref)  # static sky: same every night
    pd.testing.assert_frame_equal(other.catalog, sim.catalog)
    assert other.ref_header == sim.ref_header
    assert not set(other.events.event_id) & set(sim.events.event_id)
    assert not np.array_equal(other.visits[0].new, sim.visits[0].new)
    seed2 = simulate_field_sensor(cfg, NIGHT, 1, 2, seed=4)
    assert not np.array_equal(seed2.ref, sim.ref)


# ------------------------------------------------------------------ FITS: PSF and zero point recovered


def _isolated_bright_stars(sim, exposure, cfg, lo=15.5, hi=19.5, radius=12):
    """Unsaturated stars without any object brighter than (own mag + 5) within ``radius`` px."""
    st = sim.stars[sim.stars.exposure == exposure]
    ga = sim.galaxies[sim.galaxies.exposure == exposure]
    ev = sim.events[sim.events.exposure == exposure]
    allobj = pd.concat([st[["x", "y", "mag"]], ga[["x", "y", "mag"]], ev[["x", "y", "mag"]]], ignore_index=True)
    tree = cKDTree(allobj[["x", "y"]].to_numpy())
    mags = allobj.mag.to_numpy()
    sel = st[(st.mag > lo) & (st.mag < hi) & (st.x > 20) & (st.x < cfg.nx - 21) & (st.y > 20) & (st.y < cfg.ny - 21)]
    keep = [(mags[tree.query_ball_point([r.x, r.y], radius)] < r.mag + 5).sum() == 1 for r in sel.itertuples()]
    return sel[np.asarray(keep, bool)]


def _moffat_fwhm(img, x, y, beta, h=8):
    ix, iy = int(round(x)), int(round(y))
    cut = img[iy - h:iy + h + 1, ix - h:ix + h + 1].astype(float)
    yy, xx = np.mgrid[iy - h:iy + h + 1, ix - h:ix + h + 1]
    m0 = models.Moffat2D(amplitude=cut.max(), x_0=x, y_0=y, gamma=2.0, alpha=beta, fixed={"alpha": True})
    m = fitting.LevMarLSQFitter()(m0, xx, yy, cut)
    return float(m.fwhm)


def test_fits_roundtrip_recovers_psf_fwhm_and_zeropoint(sim, tmp_path):
    cfg = get_preset("ci")
    rows = write_field_sensor(sim, tmp_path)
    v = sim.visits[0]
    data, header = read_image_fits(tmp_path / rows[0]["new"])
    assert np.array_equal(data, v.new)
    meta = image_meta_from_header(header)
    assert meta.exposure == v.exposure and meta.sensor == "02" and meta.night == NIGHT
    assert meta.zeropoint == cfg.zeropoint and meta.gain == cfg.gain
    d = data.astype(np.float64)
    bkg = sep.Background(d)
    sub = d - bkg.back()
    stars = _isolated_bright_stars(sim, v.exposure, cfg)
    assert len(stars) >= 10
    # FWHM: Moffat fit of the written stars vs the same fit of a noiseless galsim star
    fwhm_true = header["SEEING"] / header["PIXSCALE"]
    fit = np.median([_moffat_fwhm(sub, r.x, r.y, cfg.moffat_beta) for r in stars.itertuples()])
    model = galsim.Image(17, 17, scale=1.0)
    galsim.Moffat(beta=cfg.moffat_beta, fwhm=fwhm_true).drawImage(image=model, center=galsim.PositionD(9.2, 8.7))
    ref_fit = _moffat_fwhm(model.array, 8.2, 7.7, cfg.moffat_beta)
    assert abs(fit / ref_fit - 1) < 0.03, (fit, ref_fit, fwhm_true)
    assert abs(fit / fwhm_true - 1) < 0.10
    # zero point from aperture photometry against the catalogue magnitudes
    cat = read_catalog(tmp_path / rows[0]["catalog"]).set_index("obj_id")
    flux, ferr, _ = sep.sum_circle(sub, stars.x.to_numpy(), stars.y.to_numpy(), 4 * fwhm_true, err=bkg.globalrms,
                                   gain=meta.gain)
    zp = np.median(cat.loc[stars.star_id, "mag"].to_numpy() + 2.5 * np.log10(flux))
    assert abs(zp - header["MAGZP"]) < 0.02, zp
    # the ref is deeper
    assert sep.Background(sim.ref.astype(float)).globalrms < 0.7 * bkg.globalrms


# ------------------------------------------------------------------ survey directory


TINY = dict(n_fields=1, n_sensors=2, nx=128, ny=128)


def test_survey_directory_two_nights_and_byte_identical(tmp_path):
    cfg = _cfg(**TINY)
    a, b = tmp_path / "a", tmp_path / "b"
    simulate_survey(cfg, "2026-01-01", 9, a)
    simulate_survey(cfg, "2026-01-02", 9, a)
    simulate_survey(cfg, "2026-01-01", 9, b)
    man = read_manifest(a / "manifest.csv")
    assert len(man) == 2 * cfg.n_sensors * cfg.n_visits
    assert list(man.exposure) == sorted(man.exposure) and not man.duplicated(["exposure", "sensor"]).any()
    assert set(man.night) == {"2026-01-01", "2026-01-02"} and man.sensor.str.len().eq(2).all()
    for rel in list(man.new) + list(man.ref) + list(man.catalog):
        assert (a / rel).is_file()
    # same config + seed + night -> byte-identical FITS
    for rel in man[man.night == "2026-01-01"].new.tolist() + man.ref.unique().tolist():
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    meta = json.loads((a / "survey.json").read_text())
    assert meta["nights"] == ["2026-01-01", "2026-01-02"] and meta["seed"] == 9
    ev = pd.read_parquet(a / "truth" / "events.parquet")
    assert set(ev.night) == {"2026-01-01", "2026-01-02"}
    t = read_truth(a, man.exposure[0], man.sensor[0])
    assert set(t) == {"stars", "galaxies", "events", "artifacts"} and len(t["stars"]) > 0
    assert (t["stars"].exposure == man.exposure[0]).all()
    assert all(len(v) == 0 for v in read_truth(tmp_path / "none", "x", "00").values())
    tns = pd.read_csv(a / "tns.csv")
    for col in ("ID", "Name", "RA", "DEC", "Obj. Type", "Redshift", "Host Name", "Discovery Date (UT)",
                "Discovery Mag/Flux", "Discovering Group/s", "ra_deg", "dec_deg", "event_id"):
        assert col in tns.columns
    assert set(tns.event_id) <= set(ev.event_id)
    with pytest.raises(ValueError, match="another config"):
        finalize_survey(a, [], "2026-01-03", _cfg(**{**TINY, "gain": 3.0}), 9)


def test_manifest_and_fits_errors(tmp_path):
    bad = tmp_path / "manifest.csv"
    bad.write_text("exposure,sensor,new\n1,00,a.fits\n")
    with pytest.raises(ValueError, match=r"lacks required columns \['ref'\]"):
        read_manifest(bad)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_manifest(tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match="nofile.fits"):
        read_image_fits(tmp_path / "nofile.fits")
    img = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    p = write_image_fits(tmp_path / "x.fits", img, fits.Header({"EXPOSURE": "e1"}))
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed away
    raw = p.read_bytes()
    (tmp_path / "trunc.fits").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="trunc.fits"):
        read_image_fits(tmp_path / "trunc.fits")
    (tmp_path / "text.fits").write_text("not a fits file at all")
    with pytest.raises(ValueError, match="text.fits"):
        read_image_fits(tmp_path / "text.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]).writeto(
        tmp_path / "tab.fits")
    with pytest.raises(ValueError, match="not an image"):
        read_image_fits(tmp_path / "tab.fits", hdu=1)
    with pytest.raises(ValueError, match="no celestial WCS"):
        wcs_from_header(fits.Header({"NAXIS": 2}))
    with pytest.raises(ValueError, match="missing required keys"):
        image_meta_from_header(fits.Header({"EXPOSURE": "e1"}))
    h = fits.Header({"EXPID": "77", "CCDID": "5", "MJD": 60000.5, "GAINA": 1.5})
    meta = image_meta_from_header(h, HeaderKeys(exposure="EXPID", sensor="CCDID", mjd="MJD", gain="GAINA"))
    assert (meta.exposure, meta.sensor, meta.mjd, meta.gain) == ("77", "5", 60000.5, 1.5)


# ------------------------------------------------------------------ TNS list


def test_tns_fraction_depends_on_magnitude():
    cfg = get_preset("ci")
    n = 2000
    rng = np.random.default_rng(1)
    mags = np.where(np.arange(n) < n // 2, 17.0, 21.0)
    mjd = 61000.5
    ev = pd.DataFrame({"event_id": [f"e{i:05d}" for i in range(n)], "kind": "supernova", "mag": mags,
                       "ra": rng.uniform(0, 1, n), "dec": rng.uniform(0, 1, n), "mjd": mjd,
                       "t_start_mjd": mjd - 20.0, "host_id": "g1"})
    ev = pd.concat([ev, ev.assign(kind="variable", event_id=ev.event_id + "v")], ignore_index=True)
    tns = make_tns_list(ev, cfg, seed=2)
    assert tns.event_id.is_unique and set(tns.event_id) <= set(ev.event_id[: n])  # no variables
    bright = tns.event_id.isin(ev.event_id[: n // 2]).sum() / (n // 2)
    faint = tns.event_id.isin(ev.event_id[n // 2: n]).sum() / (n // 2)
    assert bright > 0.45 and faint < 0.1 and bright > 5 * faint
    disc = Time(list(tns["Discovery Date (UT)"])).mjd
    assert (disc <= mjd + 1e-6).all() and (disc >= mjd - 20.0 - 1e-6).all()
    assert tns.Name.str.match(r"^(AT|SN) 20\d\d[a-z]{3}$").all() and tns.Name.is_unique
    assert tns.RA.str.match(r"^\d\d:\d\d:\d\d\.\d{3}$").all()
    pd.testing.assert_frame_equal(tns, make_tns_list(ev, cfg, seed=2))
