"""The realism artifacts and events of tasks.simulate: each kind is in the truth, in the pixels
where the truth says, and its true_class reaches the detections (small 256x256 images)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tasks.detect import _near_artifacts, assign_truth
from tasks.simulate import ARTIFACT_KINDS, SurveyConfig, get_preset, simulate_field_sensor
from tasks.types import ARTIFACT_CLASSES, REAL_CLASSES

NIGHT = "2026-03-01"
# dense bright stars so that spikes, bleeds, ghosts and saturated cores occur on a small sensor
BASE = dict(n_fields=1, n_sensors=1, nx=256, ny=256, star_density=1500.0, star_mag_ref=12.0,
            star_mag_range=(9.5, 16.5), galaxy_density=0.0, supernova_rate=0.0, hostless_rate=0.0,
            variable_rate=0.0, asteroid_rate=0.0, cosmic_ray_rate=0.0, hot_pixel_rate=0.0,
            bad_column_rate=0.0)
OFF = SurveyConfig(**BASE)

# kind -> (config updates, image where it shows)
KINDS = {
    "dead_pixel": (dict(dead_pixel_rate=5.0), "new"),
    "cosmic_ray": (dict(cosmic_ray_track_rate=4.0), "new"),
    "satellite_trail": (dict(satellite_rate=2.0, satellite_adu=(300.0, 1000.0)), "new"),
    "diffraction_spike": (dict(spike_rate=1.0), "new"),
    "bleed_trail": (dict(bleed_rate=1.0), "new"),
    "halo": (dict(halo_rate=1.0, halo_flux_fraction=(0.2, 0.3)), "new"),
    "dipole": (dict(dipole_rate=1.0, dipole_shift_px=(1.0, 2.0)), "new"),
    "masked_ref": (dict(ref_mask_rate=3.0, ref_mask_size_px=(30.0, 60.0)), "ref"),
    "ref_edge": (dict(ref_edge_rate=1.0), "ref"),
}


@pytest.fixture(scope="module")
def off():
    return simulate_field_sensor(OFF, NIGHT, 0, 0, 11)


def _sim(kind):
    upd, _ = KINDS[kind]
    return simulate_field_sensor(SurveyConfig(**{**BASE, **upd}), NIGHT, 0, 0, 11)


def _sigma(img, cfg, gain):
    return np.sqrt(np.clip(img, cfg.sky_level, None) / gain + (cfg.read_noise / gain) ** 2)


def test_kind_names_are_shared():
    assert set(ARTIFACT_KINDS) <= set(ARTIFACT_CLASSES)
    assert not set(ARTIFACT_CLASSES) & set(REAL_CLASSES)
    for name in ("ci", "tomoe", "ztf"):  # presets parse and the base keeps the new kinds off
        get_preset(name)
    assert OFF.spike_rate == OFF.satellite_rate == OFF.dipole_rate == OFF.ref_mask_rate == 0


def test_all_rates_zero_adds_no_new_kind(off):
    assert len(off.artifacts) == 0  # this config has no artifact rate at all
    assert get_preset("ci").saturated_star_truth is False and get_preset("ztf").saturated_star_truth


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kind_in_truth_and_in_pixels(kind, off):
    sim = _sim(kind)
    cfg = SurveyConfig(**{**BASE, **KINDS[kind][0]})
    image = KINDS[kind][1]
    art = sim.artifacts
    rows = art[(art["kind"] == kind) & (art["visit"] == 0)]
    assert len(rows), f"{kind} missing from the truth"
    assert {"extent_px", "angle", "width_px", "scope", "artifact_id"} <= set(art.columns)
    if image == "new":
        on, ref_off, gain = sim.visits[0].new.astype(float), off.visits[0].new.astype(float), cfg.gain
    else:
        on, ref_off, gain = sim.ref.astype(float), off.ref.astype(float), cfg.gain * cfg.ref_n_stack
    sig = math.sqrt(2) * _sigma(ref_off, cfg, gain)
    yy, xx = np.nonzero(np.abs(on - ref_off) > 8 * sig)
    assert len(yy), f"{kind}: no pixel changed"
    # every strongly changed pixel lies on a truth row of the kind (ref kinds: pixels of the ref
    # are compared with the row mapped onto the new image, so allow the pointing jitter)
    tol = 3.0 if image == "new" else 3.0 + 4 * cfg.pointing_jitter_px
    shapes = rows
    if kind == "diffraction_spike":  # the arms start outside the star's core: add the cores
        g = np.arange(len(rows)) // 4
        c = rows[["x", "y"]].groupby(g).mean()
        r0 = (np.hypot(rows.x.to_numpy() - c.x.to_numpy()[g], rows.y.to_numpy() - c.y.to_numpy()[g])
              - rows.extent_px.to_numpy() / 2)
        shapes = pd.concat([rows, c.assign(extent_px=pd.Series(r0).groupby(g).max().to_numpy())], ignore_index=True)
    j, _ = _near_artifacts(shapes, np.c_[xx, yy].astype(float), tol)
    assert (j >= 0).mean() > 0.97, f"{kind}: {(j < 0).sum()} of {len(j)} changed pixels off its truth"
    # and each truth row well inside the image has changed pixels on it
    j_row, _ = _near_artifacts(pd.DataFrame({"x": xx, "y": yy}).astype(float), rows[["x", "y"]].to_numpy(float),
                               rows["extent_px"].max() + rows["width_px"].max() + tol)
    assert (j_row >= 0).mean() >= 0.5, f"{kind}: {(j_row < 0).sum()} of {len(j_row)} rows without changed pixels"


def test_saturated_cores_and_pattern_noise(off):
    cfg = OFF
    sim = simulate_field_sensor(OFF.model_copy(update={"saturated_star_truth": True}), NIGHT, 0, 0, 11)
    assert all(np.array_equal(a.new, b.new) for a, b in zip(sim.visits, off.visits))  # truth only
    sat = sim.artifacts[(sim.artifacts["kind"] == "saturated_star") & (sim.artifacts["visit"] == 0)]
    assert len(sat)
    v = off.visits[0].new
    for r in sat.itertuples():
        ix, iy = int(round(r.x)), int(round(r.y))
        if 2 <= ix < cfg.nx - 2 and 2 <= iy < cfg.ny - 2:
            assert v[iy - 1:iy + 2, ix - 1:ix + 2].max() >= cfg.saturation
    pat = simulate_field_sensor(OFF.model_copy(update={"pattern_noise_rate": 1.0}), NIGHT, 0, 0, 11)
    row = pat.artifacts[pat.artifacts["kind"] == "pattern_noise"]
    assert len(row) == cfg.n_visits and (row["scope"] == "background").all()
    d = pat.visits[0].new.astype(float) - off.visits[0].new.astype(float)  # added after the noise
    sky_sig = math.sqrt(cfg.sky_level / cfg.gain + (cfg.read_noise / cfg.gain) ** 2)
    assert 0.3 * sky_sig < d.std() < 3 * sky_sig
    assert abs(np.corrcoef(d[:, :-1].ravel(), d[:, 1:].ravel())[0, 1]) > 0.3  # a pattern, not noise


def test_tracking_error_elongates_and_crowded_patch(off):
    te = simulate_field_sensor(OFF.model_copy(update={"tracking_error_rate": 1.0, "tracking_error_shear": (0.3, 0.3)}),
                               NIGHT, 0, 0, 11)
    rows = te.artifacts[te.artifacts["kind"] == "tracking_error"]
    assert len(rows) == OFF.n_visits and (rows["scope"] == "area").all()

    def moments(img, sim):
        st = sim.stars[(sim.stars.visit == 0) & (sim.stars.mag > 12.5) & (sim.stars.mag < 14)
                       & sim.stars.x.between(10, 245) & sim.stars.y.between(10, 245)]
        e = []
        for r in st.itertuples():
            ix, iy = int(round(r.x)), int(round(r.y))
            c = np.clip(img[iy - 6:iy + 7, ix - 6:ix + 7].astype(float) - OFF.sky_level, 0, None)
            yy, xx = np.mgrid[-6:7, -6:7]
            m = c.sum()
            qxx, qyy, qxy = (c * xx**2).sum() / m, (c * yy**2).sum() / m, (c * xx * yy).sum() / m
            e.append(math.hypot(qxx - qyy, 2 * qxy) / (qxx + qyy))
        return np.median(e)

    assert moments(te.visits[0].new, te) > moments(off.visits[0].new, off) + 0.15
    cr = simulate_field_sensor(OFF.model_copy(update={"crowded_rate": 1.0, "crowded_stars": 200}), NIGHT, 0, 0, 11)
    row = cr.artifacts[(cr.artifacts["kind"] == "crowded_field") & (cr.artifacts["visit"] == 0)].iloc[0]
    assert row["scope"] == "area"
    assert len(cr.catalog) >= len(off.catalog) + 150
    extra = cr.stars[cr.stars.star_id.str.contains("-c") & (cr.stars.visit == 0)]
    assert (np.hypot(extra.x - row.x, extra.y - row.y) <= row.extent_px + 3).all()


def test_fast_asteroids_are_trailed():
    cfg = OFF.model_copy(update={"fast_asteroid_rate": 4.0, "fast_asteroid_speed": (30.0, 40.0)})
    sim = simulate_field_sensor(cfg, NIGHT, 0, 0, 12)
    ast = sim.events[sim.events["kind"] == "asteroid"]
    assert len(ast) and (ast["extent_px"] > 1).all()
    # 30-40"/min over a 6 s exposure: 3-4 px trails centred on the truth position
    assert ast["extent_px"].between(2.9, 4.1).all()
    base = simulate_field_sensor(OFF, NIGHT, 0, 0, 12)
    for r in ast.itertuples():
        v = sim.visits[int(r.visit)]
        d = v.new.astype(float) - base.visits[int(r.visit)].new.astype(float)
        ix, iy = int(round(r.x)), int(round(r.y))
        assert d[max(iy - 3, 0):iy + 4, max(ix - 3, 0):ix + 4].sum() > 0.5 * r.flux_adu


def test_assign_truth_shapes_and_priorities():
    det = pd.DataFrame({"x": [50.0, 62.0, 100.0, 150.0, 150.0, 200.0, 30.0, 220.0],
                        "y": [50.0, 50.0, 100.0, 20.0, 150.0, 200.0, 220.0, 30.0]})
    art = pd.DataFrame([
        dict(kind="halo", x=50.0, y=50.0, extent_px=12.0, width_px=2.0, angle=np.nan, scope="point"),
        dict(kind="satellite_trail", x=128.0, y=100.0, extent_px=300.0, width_px=2.0, angle=0.0, scope="point"),
        dict(kind="masked_ref", x=150.0, y=150.0, extent_px=40.0, width_px=20.0, angle=0.0, scope="area"),
        dict(kind="tracking_error", x=128.0, y=128.0, extent_px=256.0, width_px=128.0, angle=0.0, scope="area"),
        dict(kind="pattern_noise", x=128.0, y=128.0, extent_px=256.0, width_px=128.0, angle=0.0,
             scope="background"),
    ])
    stars = pd.DataFrame({"x": [50.0, 150.0, 30.0], "y": [50.0, 20.0, 220.0], "extent_px": [8.0, 0.0, 6.0]})
    # halo is an annulus: the star inside it is a star residual, the ring itself the halo
    out = assign_truth(det, injections=None, truth={"artifacts": art.iloc[[0, 1, 2, 4]], "stars": stars})
    assert list(out["true_class"]) == ["star_residual", "halo", "satellite_trail", "star_residual",
                                       "masked_ref", "pattern_noise", "star_residual", "pattern_noise"]
    out = assign_truth(det, injections=None, truth={"artifacts": art, "stars": stars})
    # in several areas the smaller (more specific) one wins
    assert list(out["true_class"])[3:] == ["tracking_error", "masked_ref"] + ["tracking_error"] * 3
    assert (out["true_label"] == 0).all()
    # a trailed asteroid is a segment: its whole trail is the asteroid
    ev = pd.DataFrame({"x": [100.0], "y": [60.0], "kind": ["asteroid"], "extent_px": [20.0], "angle": [0.0]})
    out = assign_truth(pd.DataFrame({"x": [91.0, 109.0, 100.0], "y": [60.0, 60.0, 66.0]}), injections=None,
                       truth={"events": ev})
    assert list(out["true_class"]) == ["asteroid", "asteroid", "noise"]


def test_new_kinds_reach_the_detections():
    from tasks.sensor import SensorConfig, process_sensor
    from tasks.types import ImageMeta
    cfg = SurveyConfig(**{**BASE, "nx": 288, "ny": 288, "sky_level": 1500.0, "star_density": 300.0,
                          "dead_pixel_rate": 6.0, "cosmic_ray_track_rate": 4.0, "cosmic_ray_adu": (1500.0, 3000.0),
                          "satellite_rate": 1.0, "satellite_adu": (200.0, 400.0), "spike_rate": 1.0,
                          "bleed_rate": 1.0, "halo_rate": 1.0, "halo_flux_fraction": (0.05, 0.1),
                          "dipole_rate": 0.3, "dipole_shift_px": (0.5, 1.5), "ref_mask_rate": 2.0,
                          "fast_asteroid_rate": 3.0, "fast_asteroid_speed": (40.0, 60.0)})
    sim = simulate_field_sensor(cfg, NIGHT, 0, 0, 5)
    v = sim.visits[0]

    def meta(h, e):
        return ImageMeta(exposure=e, sensor=sim.sensor_id, night=NIGHT, mjd=float(h["MJD-OBS"]),
                         gain=float(h["GAIN"]), saturation=float(h["SATURATE"]), zeropoint=float(h["MAGZP"]),
                         read_noise=float(h["RDNOISE"]), pixel_scale=float(h["PIXSCALE"]),
                         seeing=float(h["SEEING"]))

    res = process_sensor(v.new, sim.ref, new_header=v.header, ref_header=sim.ref_header,
                         new_meta=meta(v.header, v.exposure), ref_meta=meta(sim.ref_header, "ref"),
                         catalog=sim.catalog, truth=dict(events=sim.events, artifacts=sim.artifacts,
                                                         stars=sim.stars, galaxies=sim.galaxies),
                         config=SensorConfig(), seed=1, inject=False)
    got = set(res.table["true_class"].astype(str))
    present = set(sim.artifacts.loc[sim.artifacts.visit == 0, "kind"])
    want = {"dead_pixel", "cosmic_ray", "satellite_trail", "dipole"} & present
    assert want <= got, (want - got, res.table["true_class"].value_counts().to_dict())
    assert len(got & (set(ARTIFACT_CLASSES) - {"cosmic_ray", "hot_pixel", "bad_column"})) >= 4
    art = res.table[res.table["true_class"].isin(list(ARTIFACT_CLASSES))]
    assert (art["true_label"] == 0).all()
