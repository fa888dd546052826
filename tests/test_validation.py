"""Validation: crossmatch, metrics vs hand-computed values, threshold rule, bootstrap
coverage, efficiency, the end-to-end result and its JSON/report."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from tasks.report import write_report
from tasks.validation import (
    OperatingPoint, ValidationOptions, _layout, _roc_from_counts, apply_threshold, choose_threshold,
    compute_metrics, crossmatch_tns, efficiency, metrics_json, paired_bootstrap, validate,
)

ARCSEC = 1 / 3600


def _tns():
    return pd.DataFrame({
        "name": ["AT A", "AT B", "AT C", "AT D"],
        "ra_deg": [150.0, 151.0, 152.0, 152.0 + 1.2 * ARCSEC],
        "dec_deg": [2.0, 2.0, 2.0, 2.0],
        "discovery_mjd": [60000.0, 59700.0, 59000.0, 60000.0],
    })


def test_crossmatch_planted_objects_radius_and_window():
    det = pd.DataFrame({
        "ra": [150.0 + 1.0 * ARCSEC, 150.0 + 3.0 * ARCSEC, 151.0, 152.0 + 0.3 * ARCSEC, 149.0,
               150.0],
        "dec": [2.0, 2.0, 2.0 + 0.5 * ARCSEC, 2.0, 2.0, 2.0],
        "mjd": [60010.0, 60010.0, 60010.0, 60010.0, 60010.0, 59985.0],
    }, index=[10, 11, 12, 13, 14, 15])
    xm = crossmatch_tns(det, _tns(), radius_arcsec=2.0, window_days=(-10.0, 100.0))
    assert list(xm.index) == [10, 11, 12, 13, 14, 15]
    # in radius and window / outside radius / in radius, 310 d after discovery /
    # nearest (C, 0.3") is 1010 d old but D (0.9") is in window / far away / 15 d early
    assert xm["val_class"].tolist() == [1, 0, -1, 1, 0, -1]
    assert xm["tns_name"].isna().tolist() == [False, True, False, False, True, False]
    assert xm["tns_name"].iloc[[0, 2, 3, 5]].tolist() == ["AT A", "AT B", "AT D", "AT A"]
    assert xm.loc[10, "tns_sep_arcsec"] == pytest.approx(1.0 * np.cos(np.radians(2.0)), rel=1e-3)
    assert xm.loc[11, "tns_sep_arcsec"] == pytest.approx(3.0 * np.cos(np.radians(2.0)), rel=1e-3)
    assert xm.loc[12, "tns_dt_days"] == pytest.approx(310.0)
    empty = crossmatch_tns(det, _tns().iloc[:0])
    assert (empty["val_class"] == 0).all() and empty["tns_name"].isna().all()


def test_crossmatch_bad_input():
    det = pd.DataFrame({"ra": [1.0], "dec": [np.nan], "mjd": [1.0]})
    with pytest.raises(ValueError, match="non-finite ra/dec/mjd"):
        crossmatch_tns(det, _tns())
    with pytest.raises(ValueError, match="lack columns.*mjd"):
        crossmatch_tns(det.drop(columns="mjd"), _tns())
    with pytest.raises(ValueError, match="radius_arcsec"):
        crossmatch_tns(det, _tns(), radius_arcsec=0)


# hand-computed fixture: reals 0.9 0.8 0.6 0.3, bogus 0.7 0.5 0.4 0.2 0.1
# AUC = (5 + 5 + 4 + 2) / 20 = 0.8; TPR >= 0.9 needs all 4 reals -> threshold 0.3, FP = 3 of 5
Y_HAND = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
S_HAND = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.4, 0.2, 0.1])


def test_metrics_reproduce_hand_computed_roc():
    m = compute_metrics(Y_HAND, S_HAND, threshold=0.55,
                        options=ValidationOptions(n_boot=50, snr_bins=(20.0, 40.0)))
    assert m["auc"] == pytest.approx(0.8)
    assert m["fpr_at_tpr90"] == pytest.approx(0.6)
    assert m["tpr_at_fpr1e-3"] == pytest.approx(0.5)  # above 0.7 only: 2 of 4 reals
    assert m["fpr_at_tpr0.983"] == pytest.approx(0.6)
    c = m["confusion"]  # threshold 0.55: TP 0.9 0.8 0.6; FP 0.7
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (3, 1, 4, 1)
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(7 / 9)
    assert m["n_real"] == 4 and m["n_bogus"] == 5
    lo, hi = m["auc_ci"]
    assert lo <= 0.8 <= hi
    json.dumps(m, allow_nan=False)


def test_weighted_roc_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.normal(y * 1.0, 1.0) / 4, 1)  # many ties
    w = rng.integers(0, 4, (3, 400)).astype(float)
    idx = np.arange(400)  # every detection its own cluster: weights = multiplicities
    lay = _layout(y, s, idx, idx, threshold=0.0)
    r = _roc_from_counts(lay, w[:, y == 1], w[:, y == 0], tprs=(0.9,), fprs=(0.1,))
    for b in range(3):
        assert r.auc[b] == pytest.approx(roc_auc_score(y, s, sample_weight=w[b]))
        fpr, tpr, _ = roc_curve(y, s, sample_weight=w[b], drop_intermediate=False)
        assert r.fpr_at_tpr[0.9][b] == pytest.approx(fpr[tpr >= 0.9].min())
        assert r.tpr_at_fpr[0.1][b] == pytest.approx(tpr[fpr <= 0.1].max())
        pred = s >= 0.0
        tp, fp = w[b, pred & (y == 1)].sum(), w[b, pred & (y == 0)].sum()
        assert r.recall[b] == pytest.approx(tp / w[b, y == 1].sum())
        assert r.precision[b] == pytest.approx(tp / (tp + fp))


def test_metrics_with_one_class_are_null_and_per_snr_bins():
    m = compute_metrics(np.zeros(5, int), np.linspace(0, 1, 5), threshold=0.5,
                        options=ValidationOptions(n_boot=10))
    assert m["auc"] is None and m["auc_ci"] == [None, None] and m["n_bogus"] == 5
    with pytest.raises(ValueError, match="non-finite"):
        compute_metrics(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="groups length"):
        compute_metrics(np.array([0, 1]), np.array([0.1, 0.9]), groups_image=["a"])
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30, int), np.zeros(60, int)]
    s = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    snr = np.tile([10.0, 30.0, 50.0], 30)
    m = compute_metrics(y, s, snr=snr, options=ValidationOptions(n_boot=0))
    assert [b["bin"] for b in m["snr_bins"]] == ["<20", "20-40", ">=40"]
    assert [b["n_real"] + b["n_bogus"] for b in m["snr_bins"]] == [30, 30, 30]
    b0 = snr == 10.0
    assert m["snr_bins"][0]["auc"] == pytest.approx(roc_auc_score(y[b0], s[b0]))


def test_fp_share_in_worst_images():
    y = np.zeros(30, int)
    y[:5] = 1
    s = np.full(30, 0.1)
    s[:5] = 0.9
    s[5:15] = 0.8  # 10 false positives: 8 in image "bad", 1 each in "x" and "y"
    img = np.array(["r"] * 5 + ["bad"] * 8 + ["x", "y"] + ["ok"] * 15, dtype=object)
    m = compute_metrics(y, s, groups_image=img, threshold=0.5,
                        options=ValidationOptions(n_boot=0, n_worst_images=1))
    assert m["fp_share_worst_images"] == pytest.approx(0.8)
    assert m["worst_images"] == [{"image": "bad", "n_fp": 8}]


def test_threshold_rule_prefers_precision_not_highest_threshold():
    reals = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.5, 0.45]
    bogus = [0.995, 0.6, 0.55, 0.3, 0.2, 0.1]
    y = np.r_[np.ones(10, int), np.zeros(6, int)]
    s = np.r_[reals, bogus]
    # TPR >= 0.9 needs threshold <= 0.5: at 0.5 precision 9/12, at 0.45 10/13 (best), 0.3 10/14
    op = choose_threshold(y, s, min_tpr=0.9)
    assert op.threshold == pytest.approx(0.45)
    assert op.precision == pytest.approx(10 / 13)
    assert op.tpr == pytest.approx(1.0) and op.fpr == pytest.approx(0.5)
    assert "TPR >= 0.9" in op.rule
    strict = choose_threshold(y, s, min_tpr=0.5)  # 0.92: 8 reals, 1 bogus above
    assert strict.threshold == pytest.approx(0.92) and strict.precision == pytest.approx(8 / 9)
    other = apply_threshold(np.array([1, 1, 0, 0]), np.array([0.5, 0.4, 0.46, 0.1]), op)
    assert isinstance(other, OperatingPoint) and other.rule.startswith("applied")
    assert (other.tpr, other.fpr, other.precision) == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="min_tpr"):
        choose_threshold(y, s, min_tpr=1.5)
    with pytest.raises(ValueError, match="both reals"):
        choose_threshold(np.zeros(3, int), np.zeros(3))


def test_bootstrap_interval_coverage_near_nominal():
    """100 simulated validation sets from N(d, 1) vs N(0, 1): population AUC Phi(d / sqrt 2)."""
    d = 1.5
    true_auc = norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(2024)
    opt = ValidationOptions(n_boot=200, ci_level=0.9, seed=1, extra_thresholds=())
    y = np.r_[np.ones(40, int), np.zeros(160, int)]
    hits = 0
    for _ in range(100):
        s = np.r_[rng.normal(d, 1, 40), rng.normal(0, 1, 160)]
        lo, hi = compute_metrics(y, s, options=opt)["auc_ci"]
        hits += lo <= true_auc <= hi
    assert 0.80 <= hits / 100 <= 0.97


def test_cluster_bootstrap_is_wider_than_detection_bootstrap():
    """Reals come in objects of 10 detections sharing a score offset: resampling objects
    must give a wider AUC interval than resampling detections."""
    rng = np.random.default_rng(5)
    n_obj, per = 20, 10
    obj = np.repeat(np.arange(n_obj), per)
    s_real = np.repeat(rng.normal(1.0, 1.0, n_obj), per) + rng.normal(0, 0.2, n_obj * per)
    s = np.r_[s_real, rng.normal(0, 1, 1000)]
    y = np.r_[np.ones(n_obj * per, int), np.zeros(1000, int)]
    groups = np.r_[obj.astype(str), np.arange(1000).astype(str)]
    opt = ValidationOptions(n_boot=300, ci_level=0.9)
    clus = compute_metrics(y, s, groups_object=groups, groups_image=groups, options=opt)
    naive = compute_metrics(y, s, options=opt)
    width = lambda m: m["auc_ci"][1] - m["auc_ci"][0]  # noqa: E731
    assert width(clus) > 1.8 * width(naive)
    assert clus["n_real_objects"] == n_obj


def test_paired_bootstrap():
    rng = np.random.default_rng(8)
    y = np.r_[np.ones(100, int), np.zeros(400, int)]
    base = np.r_[rng.normal(1.5, 1, 100), rng.normal(0, 1, 400)]
    worse = base + rng.normal(0, 1.5, 500)
    opt = ValidationOptions(n_boot=200, ci_level=0.9)
    same = paired_bootstrap(y, base, base, options=opt).metrics["auc"]
    assert same["diff"] == 0 and same["diff_ci"] == [0.0, 0.0]
    cmp = paired_bootstrap(y, base, worse, options=opt)
    auc = cmp.metrics["auc"]
    assert auc["diff"] > 0 and auc["diff_ci"][0] > 0 and auc["share_le_0"] < 0.05
    assert cmp.metrics["fpr_at_tpr90"]["diff"] < 0
    json.dumps(cmp.to_dict(), allow_nan=False)


def test_options_validation():
    with pytest.raises(ValueError, match="window_days"):
        ValidationOptions(window_days=(10.0, -10.0))
    with pytest.raises(ValueError, match="fixed_threshold"):
        ValidationOptions(threshold_rule="fixed")
    with pytest.raises(ValueError, match="snr_bins"):
        ValidationOptions(snr_bins=(40.0, 20.0))
    with pytest.raises(ValueError, match="ci_level"):
        ValidationOptions(ci_level=1.5)
    with pytest.raises(ValueError, match="radius"):
        ValidationOptions(radius=2.0)


def test_efficiency_counts_and_wilson_intervals():
    mag = np.r_[np.full(10, 15.5), np.full(20, 18.5), np.full(4, 25.0)]
    detected = np.r_[np.ones(10, bool), np.arange(20) < 10, np.zeros(4, bool)]
    score = np.where(detected, 0.9, np.nan)
    score[0] = 0.1  # detected but below threshold
    t = pd.DataFrame({"mag": mag, "detected": detected, "score": score})
    e = efficiency(t, None, 0.5, by="mag", bins=[15, 16, 17, 18, 19])
    assert e["n"].tolist() == [10, 0, 0, 20]
    assert e["n_recovered"].tolist() == [9, 0, 0, 10]
    assert e["efficiency"].iloc[0] == pytest.approx(0.9)
    assert np.isnan(e["efficiency"].iloc[1])
    assert e["detection_efficiency"].iloc[3] == pytest.approx(0.5)
    assert (e["ci_lo"].iloc[[0, 3]] < e["efficiency"].iloc[[0, 3]]).all()
    assert (e["ci_hi"].iloc[[0, 3]] > e["efficiency"].iloc[[0, 3]]).all()
    with pytest.raises(ValueError, match="by must be"):
        efficiency(t, None, 0.5, by="snr", bins=[0, 1])
    with pytest.raises(ValueError, match="bins"):
        efficiency(t, None, 0.5, by="mag", bins=[3, 2])


def _night(rng, with_truth=True):
    """Two visits, 4 sensors: 300 bogus, 12 TNS objects seen twice, 1 old TNS object."""
    n_b = 300
    det = pd.DataFrame({
        "exposure": rng.choice(["e1", "e2"], n_b), "sensor": rng.choice(list("abcd"), n_b),
        "ra": rng.uniform(10, 11, n_b), "dec": rng.uniform(0, 1, n_b),
        "snr": rng.uniform(5, 80, n_b), "true_class": "dipole", "true_label": 0.0})
    tns = pd.DataFrame({"name": [f"AT {i}" for i in range(13)],
                        "ra_deg": rng.uniform(10, 11, 13), "dec_deg": rng.uniform(0, 1, 13),
                        "discovery_mjd": [59995.0] * 12 + [50000.0]})
    reals = pd.DataFrame({
        "exposure": np.repeat(["e1", "e2"], 13), "sensor": "a",
        "ra": np.tile(tns.ra_deg, 2), "dec": np.tile(tns.dec_deg, 2),
        "snr": rng.uniform(5, 80, 26), "true_class": "supernova", "true_label": 1.0})
    d = pd.concat([det, reals], ignore_index=True)
    d["mjd"] = d["exposure"].map({"e1": 60000.1, "e2": 60001.1})
    d["stamp_id"] = [f"n/{e}/{s}/{i}" for i, (e, s) in enumerate(zip(d.exposure, d.sensor))]
    d["injection_id"] = None
    if not with_truth:
        d["true_label"] = np.nan
        d["true_class"] = None
    scores = np.r_[rng.beta(1, 6, n_b), rng.beta(6, 1, 26)]
    return d, scores, tns


def test_validate_end_to_end_json_and_report(tmp_path):
    d, s, tns = _night(np.random.default_rng(11))
    opt = ValidationOptions(n_boot=100)
    r = validate(d, s, tns, opt)
    assert r.counts["n_real"] == 24 and r.counts["n_excluded"] == 2
    assert r.counts["n_bogus"] == 300 and r.counts["n_tns_objects_detected"] == 12
    mj = metrics_json(r)
    text = json.dumps(mj, allow_nan=False)
    for key in ("auc", "auc_ci", "fpr_at_tpr90", "tpr_at_fpr1e-3", "n_real", "n_bogus",
                "threshold"):
        assert key in mj and key in mj["truth"]
    assert mj["n_real"] == 24 and mj["truth"]["n_real"] == 26  # truth counts the old one too
    assert mj["threshold"] == r.operating_point.threshold
    assert r.operating_point.tpr >= 0.9
    assert json.loads(text) == json.loads(json.dumps(metrics_json(validate(d, s, tns, opt))))
    paths = write_report(r, tmp_path / "val", title="test night")
    names = {p.name for p in paths}
    assert {"report.md", "metrics.json", "operating_point.json", "roc.png"} <= names
    assert all(p.exists() for p in paths)
    md = (tmp_path / "val" / "report.md").read_text()
    assert "unreported real transients" in md and "](roc.png)" in md and "truth CI" in md
    op = json.loads((tmp_path / "val" / "operating_point.json").read_text())
    assert op["threshold"] == r.operating_point.threshold and "precision" in op["rule"]


def test_validate_real_data_has_no_truth():
    d, s, tns = _night(np.random.default_rng(12), with_truth=False)
    r = validate(d, s, tns, ValidationOptions(n_boot=20))
    assert r.truth_metrics is None and metrics_json(r)["truth"] is None
    r0 = validate(d, s, tns.iloc[:0], ValidationOptions(n_boot=20))
    mj = metrics_json(r0)
    assert mj["auc"] is None and mj["n_real"] == 0 and mj["threshold"] == 0.5
    json.dumps(mj, allow_nan=False)
    with pytest.raises(ValueError, match="scores shape"):
        validate(d, s[:-1], tns)
