"""Property-based tests (hypothesis): the cut-out at image edges, the TNS crossmatch and the
manifest parser, each against a slow obvious reference (issue 13, item 6)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from storage.survey import read_manifest
from tasks.cutout import cutouts
from tasks.types import StampFlag

pytestmark = pytest.mark.reliability

FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------ cut-outs
def _naive_stamp(img: np.ndarray, x: float, y: float, size: int):
    """Pixel by pixel: the stamp centred on the rounded position, 0 outside or on bad pixels."""
    h = size // 2
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    out = np.zeros((size, size), np.float32)
    edge = bad = False
    for r in range(size):
        for c in range(size):
            yy, xx = iy - h + r, ix - h + c
            if 0 <= yy < img.shape[0] and 0 <= xx < img.shape[1]:
                v = img[yy, xx]
                if np.isfinite(v):
                    out[r, c] = v
                else:
                    bad = True
            else:
                edge = True
    return out, edge, bad


@FAST
@given(ny=st.integers(1, 24), nx=st.integers(1, 24), size=st.sampled_from([1, 3, 7, 29]),
       seed=st.integers(0, 2**16), n=st.integers(0, 6), nan_frac=st.sampled_from([0.0, 0.05, 1.0]),
       data=st.data())
def test_cutout_matches_pixel_by_pixel_reference_at_edges(ny, nx, size, seed, n, nan_frac, data):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(ny, nx)).astype(np.float32)
    img[rng.random((ny, nx)) < nan_frac] = np.nan
    span = st.floats(-size - 3.0, max(nx, ny) + size + 3.0, allow_nan=False)
    xs = np.array(data.draw(st.lists(span, min_size=n, max_size=n)), float)
    ys = np.array(data.draw(st.lists(span, min_size=n, max_size=n)), float)
    c = cutouts([img, -img], xs, ys, size=size)
    assert c.stamps.shape == (n, 2, size, size) and c.flags.shape == (n,)
    for k in range(n):
        ref, edge, bad = _naive_stamp(img, xs[k], ys[k], size)
        np.testing.assert_array_equal(c.stamps[k, 0], ref)
        np.testing.assert_array_equal(c.stamps[k, 1], -ref + 0.0)
        assert bool(c.flags[k] & StampFlag.EDGE) == edge
        assert bool(c.flags[k] & StampFlag.NEAR_MASK) == bad
    assert np.isfinite(c.stamps).all()


# ------------------------------------------------------------------ crossmatch
def _sep_arcsec(ra1, dec1, ra2, dec2):
    """Haversine separation in arcsec (independent of astropy's search)."""
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    a = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))) * 3600


@FAST
@given(centre=st.tuples(st.sampled_from([0.0, 123.4, 359.9995]), st.sampled_from([-89.99, -30.0, 0.0, 45.0])),
       n_det=st.integers(0, 8), n_cat=st.integers(0, 8), seed=st.integers(0, 2**16),
       radius=st.sampled_from([1.0, 2.0, 5.0]))
def test_crossmatch_agrees_with_brute_force(centre, n_det, n_cat, seed, radius):
    from tasks.validation import crossmatch_tns
    rng = np.random.default_rng(seed)
    ra0, dec0 = centre
    scale = 8.0 / 3600  # a patch of +-8 arcsec, across RA = 0 and close to the pole
    cosd = np.cos(np.radians(dec0))

    def pos(n):
        return ((ra0 + rng.uniform(-1, 1, n) * scale / cosd) % 360.0,
                np.clip(dec0 + rng.uniform(-1, 1, n) * scale, -90, 90))

    dra, ddec = pos(n_det)
    cra, cdec = pos(n_cat)
    det = pd.DataFrame({"ra": dra, "dec": ddec, "mjd": 60000.0 + rng.integers(0, 4, n_det) * 40.0})
    tns = pd.DataFrame({"name": [f"AT{i}" for i in range(n_cat)], "ra_deg": cra, "dec_deg": cdec,
                        "discovery_mjd": 60000.0 + rng.integers(-1, 3, n_cat) * 35.0 + 0.5})
    sep = _sep_arcsec(dra[:, None], ddec[:, None], cra[None, :], cdec[None, :])  # (n_det, n_cat)
    assume(not (np.abs(sep - radius) < 1e-3).any())  # no pair on the radius itself
    out = crossmatch_tns(det, tns, radius_arcsec=radius, window_days=(-10.0, 100.0))
    assert list(out.index) == list(det.index)
    for i in range(n_det):
        near = np.flatnonzero(sep[i] < radius)
        dt = det["mjd"].iloc[i] - tns["discovery_mjd"].to_numpy()
        inwin = near[(dt[near] >= -10.0) & (dt[near] <= 100.0)]
        row = out.iloc[i]
        if len(near) == 0:
            assert pd.isna(row["tns_name"]) and row["val_class"] == 0
            continue
        best = inwin[np.argmin(sep[i, inwin])] if len(inwin) else near[np.argmin(sep[i, near])]
        assert row["val_class"] == (1 if len(inwin) else -1)
        assert row["tns_sep_arcsec"] == pytest.approx(sep[i, best], abs=1e-4)
        assert sep[i, tns["name"].tolist().index(row["tns_name"])] == pytest.approx(sep[i, best], abs=1e-4)


# ------------------------------------------------------------------ manifest parser
_ID = st.text("0123456789abcXYZ_-", min_size=1, max_size=8)
_PART = st.sampled_from(["images", "refs", "a b", "x.fits", "..", ".", "n-1", "é"])
_PATH = st.lists(_PART, min_size=1, max_size=4).map("/".join)


@FAST
@given(rows=st.lists(st.tuples(_ID, _ID, _PATH, _PATH, st.one_of(st.none(), st.floats(50000, 70000))),
                     min_size=1, max_size=6),
       extra=st.sampled_from([None, "x_seeing", "seeing"]))
def test_manifest_round_trip_and_containment(tmp_path_factory, rows, extra):
    d = tmp_path_factory.mktemp("man")
    df = pd.DataFrame(rows, columns=["exposure", "sensor", "new", "ref", "mjd"])
    if extra:
        df[extra] = "1.5"
    path = d / "manifest.csv"
    df.to_csv(path, index=False)
    base = os.path.abspath(d)
    escapes = any(os.path.commonpath([base, os.path.normpath(os.path.join(base, p))]) != base
                  for p in list(df["new"]) + list(df["ref"]))
    if extra == "seeing":
        with pytest.raises(ValueError, match=r"unknown columns \['seeing'\]"):
            read_manifest(path)
        return
    if escapes:
        with pytest.raises(ValueError, match=r"manifest\.csv: line \d+ column '(new|ref)': path .* leaves"):
            read_manifest(path)
        got = read_manifest(path, allow_outside_paths=True)
    else:
        got = read_manifest(path)
    # ids and paths come back exactly as written (as text: '007' stays '007')
    for col in ("exposure", "sensor", "new", "ref"):
        assert got[col].tolist() == df[col].tolist()
    np.testing.assert_allclose(got["mjd"].to_numpy(float), df["mjd"].to_numpy(float), equal_nan=True)
