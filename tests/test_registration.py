"""Registration on a constructed two-visit set."""

import numpy as np
import pandas as pd
import pytest

from tasks.registration import register

AS = 1 / 3600  # one arcsec in degrees


def _two_visits():
    """A: real, both visits (twice on visit 1: overlapping sensors); B: real, visit 1 only;
    C: real, visit 2 only; D: bogus at one spot on both visits (low score); E: bogus,
    visit 2, 3" from A (not the same coordinates)."""
    rows = [
        # exposure, mjd, ra, dec, score, tns_name
        ("v1", 100.0, 10.0, 0.0, 0.95, "AT A"),
        ("v1", 100.0, 10.0 + 0.4 * AS, 0.0, 0.90, "AT A"),
        ("v1", 100.0, 11.0, 0.0, 0.97, None),
        ("v1", 100.0, 12.0, 0.0, 0.10, None),
        ("v2", 101.0, 10.0 + 0.8 * AS, 0.3 * AS, 0.92, "AT A"),
        ("v2", 101.0, 13.0, 0.0, 0.99, "AT C"),
        ("v2", 101.0, 12.0 + 0.5 * AS, 0.0, 0.20, None),
        ("v2", 101.0, 10.0 + 3.0 * AS, 0.0, 0.30, None),
    ]
    df = pd.DataFrame(rows, columns=["exposure", "mjd", "ra", "dec", "score", "tns_name"])
    # shuffle the rows: registration must order visits by time itself
    return df.sample(frac=1.0, random_state=3).reset_index(drop=True)


def test_register_two_visits_with_and_without_classifier():
    df = _two_visits()
    r = register(df, df["score"].to_numpy(), 0.5, radius_arcsec=1.5)
    w, wo = r.with_classifier, r.without_classifier
    assert (w.n_candidates, w.n_variables, w.n_transients) == (5, 3, 1)
    assert w.n_tns_transients == 1 and w.tns_share_transients == pytest.approx(1.0)
    # without: A (transient), B, C, D (transient), E
    assert (wo.n_candidates, wo.n_variables, wo.n_transients) == (8, 5, 2)
    assert wo.tns_share_transients == pytest.approx(0.5)
    assert r.reduction["tns_share_gain"] == pytest.approx(2.0)
    assert r.reduction["variables_without_over_with"] == pytest.approx(5 / 3)
    obj = r.objects.set_index("tns_name", drop=False)
    a = obj.loc["AT A"]
    assert a["status"] == "transient" and a["n_visits"] == 2 and a["n_detections"] == 3
    assert a["first_mjd"] == 100.0 and a["transient_mjd"] == 101.0
    assert obj.loc["AT C", "status"] == "variable"
    assert r.objects["first_mjd"].is_monotonic_increasing


def test_register_without_threshold_and_bad_input():
    df = _two_visits()
    r = register(df, df["score"].to_numpy(), None)
    assert r.with_classifier == r.without_classifier
    assert r.to_dict()["threshold"] is None
    none = register(df, np.zeros(len(df)), 0.5)
    assert none.with_classifier.n_variables == 0 and none.reduction["tns_share_gain"] is None
    with pytest.raises(ValueError, match="radius_arcsec"):
        register(df, df["score"].to_numpy(), 0.5, radius_arcsec=-1)
    with pytest.raises(ValueError, match="scores shape"):
        register(df, np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="threshold"):
        register(df, df["score"].to_numpy(), 5.0)
