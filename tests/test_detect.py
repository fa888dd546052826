"""Detection, injection recovery, matching, truth classes and TNS labels."""

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from tasks.detect import (DetectConfig, assign_truth, detect, label_from_tns,
                          match_injections)
from tasks.inject import InjectConfig, inject, plan_injections
from tasks.psf import PSFConfig, build_psf
from tasks.synthetic import make_star_field
from tasks.types import ImageMeta, StampFlag

GAIN = 2.0
META = ImageMeta(exposure="e", sensor="s", night="n", mjd=0.0, gain=GAIN, zeropoint=25.0)


@pytest.fixture(scope="module")
def recovery():
    """Inject ~300 sources into a 60+-star field; 'perfect subtraction' and detection.

    The difference is (injected image - noiseless truth model): the stars vanish exactly
    while the pixel noise the noise map describes stays (subtracting the un-injected *noisy*
    image would leave no background noise, and pulls / completeness would be meaningless).
    """
    f = make_star_field((768, 768), 150, 3.2, seed=21, min_separation=14, gain=GAIN)
    psf = build_psf(f.image, meta=META, config=PSFConfig())
    noise = np.sqrt(f.variance)
    depth = 25.0 - 2.5 * np.log10(5 * float(np.median(noise)) * np.sqrt(psf.n_eff))
    plan = plan_injections(shape=f.image.shape, hosts=None, mask=None, wcs=None, meta=META,
                           config=InjectConfig(n_host=0, n_hostless=300), seed=3,
                           limiting_mag=depth)
    res = inject(f.image, psf, plan, gain=GAIN, seed=4)
    diff = res.image.astype(np.float64) - f.model
    det = detect(diff, noise, psf=psf, gain=GAIN)
    m = match_injections(det, res.plan, 2.0)
    # injections with another injection within 12 px are blends: left out of the statistics
    xy = res.plan[["x", "y"]].to_numpy()
    d, _ = cKDTree(xy).query(xy, k=2)
    plan = res.plan.assign(isolated=d[:, 1] > 12, dm=res.plan["mag"] - depth)
    return psf, plan, m


def test_injections_recovered_position_flux_pull(recovery):
    psf, plan, m = recovery
    j = m[m["label"] == 1].merge(plan, on="injection_id", suffixes=("", "_true"))
    j = j[j["isolated"] & (j["snr"] > 20)]
    assert len(j) > 100
    dpos = np.hypot(j["x"] - j["x_true"], j["y"] - j["y_true"])
    assert np.median(dpos) < 0.3
    bias = np.median(j["flux"] / j["flux_adu"] - 1)
    assert abs(bias) < 0.01
    pull = (j["flux"] - j["flux_adu"]) / j["flux_err"]
    width = 1.4826 * np.median(np.abs(pull - np.median(pull)))
    assert 0.8 < width < 1.2


def test_completeness_falls_around_5_sigma_depth(recovery):
    _, plan, m = recovery
    iso = plan[plan["isolated"]]
    found = iso["injection_id"].isin(m.loc[m["label"] == 1, "injection_id"])
    bright = found[iso["dm"] < -1.0].mean()
    faint = found[iso["dm"] > 0.5].mean()
    assert bright > 0.95
    assert faint < 0.1
    mid = found[(iso["dm"] > -0.5) & (iso["dm"] < 0.25)].mean()
    assert 0.1 < mid < 0.9


def test_no_false_detections_and_sorted_ids(recovery):
    _, _, m = recovery
    assert (m["label"] == 0).sum() <= 3  # pure Gaussian noise at 5 sigma on 0.6 Mpx
    assert list(m["det_id"]) == list(range(len(m)))
    assert (np.diff(m["y"].round(3)) >= 0).all()


def test_negative_detections_and_masks():
    rng = np.random.default_rng(1)
    diff = rng.normal(0, 1.0, (200, 200))
    yy, xx = np.mgrid[:200, :200]
    blob = lambda x0, y0, a: a * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5**2))
    diff += blob(50, 60, 30) - blob(150, 120, 30) + blob(100, 180, 30)
    mask = np.zeros(diff.shape, bool)
    mask[170:190, 90:110] = True
    det = detect(diff, np.ones_like(diff), mask=mask)
    assert len(det) == 2
    pos = det[det["isdiffpos"]].iloc[0]
    neg = det[~det["isdiffpos"]].iloc[0]
    assert abs(pos["x"] - 50) < 0.3 and abs(neg["x"] - 150) < 0.3
    assert neg["flux"] > 0 and pos["snr"] > 10
    only_pos = detect(diff, np.ones_like(diff), mask=mask, config=DetectConfig(negative=False))
    assert only_pos["isdiffpos"].all() and len(only_pos) == 1
    empty = detect(np.zeros((50, 50)), np.ones((50, 50)))
    assert len(empty) == 0 and "isdiffpos" in empty.columns


def test_truth_classes_for_planted_objects():
    det = pd.DataFrame({"det_id": range(8),
                        "x": [10.0, 50.0, 90.0, 130.0, 170.0, 210.0, 250.0, 290.0],
                        "y": [10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 40.0]})
    inj = pd.DataFrame({"injection_id": ["i0", "i1"], "x": [10.5, 210.2], "y": [10.0, 10.3],
                        "host_offset_arcsec": [1.5, np.nan]})
    truth = {
        "events": pd.DataFrame({"x": [50.3, 130.0], "y": [10.2, 10.0],
                                "kind": ["supernova", "asteroid"]}),
        "artifacts": pd.DataFrame({"x": [90.0, 210.0, 290.0], "y": [11.0, 10.0, 10.0],
                                   "kind": ["cosmic_ray", "hot_pixel", "bad_column"],
                                   "extent_px": [3.0, 1.0, 80.0]}),
        "stars": pd.DataFrame({"x": [170.4], "y": [10.0], "kind": ["star"], "mag": [15.0]}),
        "galaxies": pd.DataFrame({"x": [250.0], "y": [11.0], "kind": ["galaxy"]}),
    }
    m = match_injections(det, inj, 2.0)
    out = assign_truth(m, injections=inj, truth=truth, radius_px=2.0)
    assert list(out["label"]) == [1, 0, 0, 0, 0, 1, 0, 0]
    assert list(out["true_class"]) == ["injected", "supernova", "cosmic_ray", "asteroid",
                                       "star_residual", "injected", "galaxy_residual",
                                       "bad_column"]
    assert list(out["true_label"]) == [1, 1, 0, 1, 0, -1, 0, 0]
    assert out.loc[5, "flags"] & StampFlag.INJECTION_ON_ARTIFACT
    assert out.loc[0, "injection_id"] == "i0" and out.loc[0, "host_offset"] == 1.5
    assert out["injection_id"].isna().sum() == 6
    noise = assign_truth(pd.DataFrame({"x": [400.0], "y": [400.0]}), injections=None,
                         truth=truth)
    assert noise["true_class"].iloc[0] == "noise" and noise["true_label"].iloc[0] == 0
    real = assign_truth(det, injections=inj, truth=None)
    assert real["true_class"].isna().all() and real["true_label"].isna().all()


def test_ambiguous_match_flag():
    det = pd.DataFrame({"x": [10.0], "y": [10.0]})
    inj = pd.DataFrame({"injection_id": ["a", "b"], "x": [10.5, 9.2], "y": [10.0, 10.0]})
    m = match_injections(det, inj, 2.0)
    assert m["label"].iloc[0] == 1 and m["injection_id"].iloc[0] == "a"
    assert m["flags"].iloc[0] & StampFlag.AMBIGUOUS_MATCH


def test_label_from_tns():
    det = pd.DataFrame({"x": [0.0, 1.0, 2.0]})
    ra = np.array([150.0, 150.01, 150.02])
    dec = np.array([2.0, 2.0, 2.0])
    tns = pd.DataFrame({"ra_deg": [150.01 + 1.0 / 3600], "dec_deg": [2.0], "Name": ["2026abc"]})
    out = label_from_tns(det, ra, dec, tns, radius_arcsec=2.0)
    assert list(out["label"]) == [0, 1, 0] and out["tns_name"].iloc[1] == "2026abc"
    out = label_from_tns(det, ra, dec, tns, radius_arcsec=0.5)
    assert out["label"].sum() == 0
    with pytest.raises(ValueError, match="Name"):
        label_from_tns(det, ra, dec, tns.drop(columns="Name"))


def test_config_validation():
    with pytest.raises(ValueError, match="thresh"):
        DetectConfig(thresh=0)
    with pytest.raises(ValueError, match="minarea"):
        DetectConfig(minarea=0)
    with pytest.raises(ValueError, match="radius_px"):
        match_injections(pd.DataFrame({"x": [], "y": []}), None, radius_px=0)
    with pytest.raises(ValueError, match="mask shape"):
        detect(np.zeros((10, 10)), 1.0, mask=np.zeros((5, 5), bool))
