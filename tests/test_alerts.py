"""Alert readers and ``rbflow score-alerts`` on small synthetic alert files made here:
gzipped FITS cut-outs (ZTF-like Parquet and Avro), a corrupt one, a missing one, one with
a WCS at the wrong pixel scale, a Rubin-like Parquet, an edge-of-CCD truncated cut-out."""

from __future__ import annotations

import csv
import gzip
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from astropy.io import fits

from flows import cli
from flows.options import ScoreAlertsOptions
from flows.score import score_alerts_file
from models.export import export_model, load_exported, score_stamps
from models.networks import SimpleConfig, network_from_config
from storage.alerts import (
    CutoutError, cutout_pixel_scale, decode_cutout, detect_format, iter_alert_batches, place_cutout,
    prepare_batch,
)


def _img(seed: int, n: int = 63, peak: float = 500.0, sky: float = 100.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    src = peak * np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * 1.5 ** 2))
    return (sky + src + rng.normal(0, 5, (n, n))).astype(np.float32)


def _fits_bytes(img: np.ndarray, header: fits.Header | None = None, gz: bool = True) -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(img, header=header).writeto(buf)
    raw = buf.getvalue()
    return gzip.compress(raw) if gz else raw


def _wcs_header(scale_arcsec: float) -> fits.Header:
    h = fits.Header()
    s = scale_arcsec / 3600.0
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=2.0, CRPIX1=32.0, CRPIX2=32.0,
             CD1_1=-s, CD1_2=0.0, CD2_1=0.0, CD2_2=s)
    return h


def ztf_rows() -> pd.DataFrame:
    """6 alerts: 0-1 good, 2 corrupt difference, 3 missing template, 4 WCS at 0.25"/px,
    5 truncated at the CCD's low-x edge (63 x 40, candidate at column 8)."""
    rows = []
    for i in range(4):
        rows.append({"candid": 1000 + i, "cutoutScience": _fits_bytes(_img(i)),
                     "cutoutTemplate": _fits_bytes(_img(i, peak=0)), "cutoutDifference": _fits_bytes(_img(i, sky=0)),
                     "xpos": 500.0, "ypos": 500.0})
    rows[2]["cutoutDifference"] = gzip.compress(b"this is not a FITS file at all")
    rows[3]["cutoutTemplate"] = None
    rows.append({"candid": 1004, "cutoutScience": _fits_bytes(_img(4), _wcs_header(0.25)),
                 "cutoutTemplate": _fits_bytes(_img(4, peak=0), _wcs_header(0.25)),
                 "cutoutDifference": _fits_bytes(_img(4, sky=0), _wcs_header(0.25)), "xpos": 9.0, "ypos": 700.0})
    edge = _img(5, sky=0)[:, 23:]  # columns 23..62: the candidate (column 31) is at column 8
    rows.append({"candid": 1005, "cutoutScience": _fits_bytes(edge), "cutoutTemplate": _fits_bytes(edge),
                 "cutoutDifference": _fits_bytes(edge), "xpos": 9.0, "ypos": 700.0})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = SimpleConfig()
    net = network_from_config(cfg).eval()
    return export_model(net, tmp_path_factory.mktemp("m") / "model", net_config=cfg, train_config={},
                        meta={"pixel_scale": 1.01})


@pytest.fixture()
def ztf_parquet(tmp_path):
    p = tmp_path / "alerts.parquet"
    ztf_rows().to_parquet(p, index=False, row_group_size=2)
    return p


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_decode_and_errors():
    img = _img(0)
    a, _ = decode_cutout(_fits_bytes(img))
    b, _ = decode_cutout(_fits_bytes(img, gz=False))
    assert np.array_equal(a, img) and np.array_equal(b, img)
    for bad, reason in ((None, "missing_cutout"), (b"", "missing_cutout"), (b"\x1f\x8bgarbage", "corrupt_cutout"),
                        (gzip.compress(b"SIMPLE  =    T" + b" " * 3000), "corrupt_cutout"),
                        (_fits_bytes(img)[:200], "corrupt_cutout")):
        with pytest.raises(CutoutError) as e:
            decode_cutout(bad)
        assert e.value.reason == reason
    # scaled integers go through astropy (BZERO), not the fast path
    hdu = fits.PrimaryHDU(np.arange(12, dtype=np.int16).reshape(3, 4))
    hdu.header["BZERO"] = 32768
    buf = io.BytesIO()
    hdu.writeto(buf)
    got, _ = decode_cutout(buf.getvalue())
    assert got[0, 0] == 32768 and got.dtype == np.float32


def test_pixel_scale_sources():
    _, h = decode_cutout(_fits_bytes(_img(0), _wcs_header(0.2)))
    assert cutout_pixel_scale(h) == pytest.approx(0.2, rel=1e-6)
    _, h = decode_cutout(_fits_bytes(_img(0)))
    assert cutout_pixel_scale(h, "ztf") == 1.0 and cutout_pixel_scale(h, "") is None
    assert cutout_pixel_scale(h, "ztf", override=0.5) == 0.5
    hk = fits.Header()
    hk["PIXSCALE"] = 0.27
    _, h = decode_cutout(_fits_bytes(_img(0), hk))
    assert cutout_pixel_scale(h, "ztf") == pytest.approx(0.27)


def test_place_cutout_centre_and_padding():
    img = np.arange(63 * 63, dtype=np.float32).reshape(63, 63)
    w = place_cutout(img, 29)
    assert w.shape == (29, 29) and w[14, 14] == img[31, 31]
    w = place_cutout(img[:, 23:], 29, center=(8.0, 31.0))
    assert w[14, 14] == img[31, 31] and np.isnan(w[:, :6]).all() and np.isfinite(w[:, 6:]).all()


def test_formats_and_batches(ztf_parquet, tmp_path):
    assert detect_format(ztf_parquet) == "ztf-parquet"
    batches = list(iter_alert_batches(ztf_parquet, batch_size=4))
    assert [len(b) for b in batches] == [4, 2]
    assert [a.candid for b in batches for a in b] == [str(1000 + i) for i in range(6)]
    rub = tmp_path / "rubin.parquet"
    pd.DataFrame({"diaSourceId": [7], "cutoutScience": [_fits_bytes(_img(0), _wcs_header(0.2), gz=False)],
                  "cutoutTemplate": [_fits_bytes(_img(1), _wcs_header(0.2), gz=False)],
                  "cutoutDifference": [_fits_bytes(_img(2), _wcs_header(0.2), gz=False)]}).to_parquet(rub)
    assert detect_format(rub) == "rubin-parquet"
    (a,), = list(iter_alert_batches(rub))
    prep = prepare_batch([a], model_pixel_scale=1.0)
    assert prep.error == ["pixel_scale_mismatch"] and prep.pixel_scale[0] == pytest.approx(0.2)
    prep = prepare_batch([a], model_pixel_scale=0.21, tolerance=0.1)
    assert prep.error == [""] and np.isfinite(prep.stamps).all()


def test_prepare_batch_channels_and_edges(ztf_parquet):
    alerts = [a for b in iter_alert_batches(ztf_parquet) for a in b]
    prep = prepare_batch(alerts, model_pixel_scale=1.01, tolerance=0.1)
    assert prep.error == ["", "", "corrupt_cutout", "missing_cutout", "pixel_scale_mismatch", ""]
    assert prep.stamps.shape == (6, 3, 29, 29) and prep.stamps.dtype == np.float32
    # channel order new, ref, sub = science, template, difference
    sci = _img(0)[17:46, 17:46]
    assert np.array_equal(prep.stamps[0, 0], sci)
    assert np.array_equal(prep.stamps[0, 2], _img(0, sky=0)[17:46, 17:46])
    # a model with channels (sub, new, ref)
    alt = prepare_batch(alerts[:1], channels=("sub", "new", "ref"))
    assert np.array_equal(alt.stamps[0, 1], sci)
    # truncated edge cut-out: the candidate lands at the stamp centre, the missing side is NaN
    e = prep.stamps[5, 0]
    assert np.nanargmax(e) == 14 * 29 + 14 and np.isnan(e[:, :6]).all()


def test_score_alerts_csv_contract(model_dir, ztf_parquet, tmp_path):
    out = tmp_path / "scores.csv"
    res = score_alerts_file(ScoreAlertsOptions(model=model_dir, alerts=ztf_parquet, out=out, batch_size=4))
    rows = read_csv(out)
    assert list(rows[0]) == ["candid", "score", "error"] and len(rows) == 6
    assert [r["candid"] for r in rows] == [str(1000 + i) for i in range(6)]
    assert [r["error"] for r in rows] == ["", "", "corrupt_cutout", "missing_cutout", "pixel_scale_mismatch", ""]
    good = [float(r["score"]) for r in rows if not r["error"]]
    assert all(0 <= s <= 1 for s in good) and all(r["score"] == "" for r in rows if r["error"])
    assert res["n_alerts"] == 6 and res["n_scored"] == 3 and res["errors"]["corrupt_cutout"] == 1
    # the scores are the model's on the same stamps
    alerts = [a for b in iter_alert_batches(ztf_parquet) for a in b]
    prep = prepare_batch(alerts[:2], model_pixel_scale=1.01)
    ref = score_stamps(load_exported(model_dir), prep.stamps)
    assert np.allclose(good[:2], ref, atol=1e-5)
    # a wider tolerance admits the 0.25"/px alert; a forced alert scale overrides the WCS
    score_alerts_file(ScoreAlertsOptions(model=model_dir, alerts=ztf_parquet, out=out, pixel_scale_tolerance=5))
    assert read_csv(out)[4]["error"] == ""
    score_alerts_file(ScoreAlertsOptions(model=model_dir, alerts=ztf_parquet, out=out, alert_pixel_scale=8.7))
    assert {r["error"] for r in read_csv(out) if r["candid"] in ("1000", "1001")} == {"pixel_scale_mismatch"}


def _avro_files(tmp_path):
    import fastavro
    ztf_schema = {"type": "record", "name": "alert", "namespace": "ztf", "fields": [
        {"name": "objectId", "type": "string"}, {"name": "candid", "type": "long"},
        {"name": "candidate", "type": {"type": "record", "name": "candidate", "fields": [
            {"name": "candid", "type": "long"}, {"name": "xpos", "type": "float"}, {"name": "ypos", "type": "float"}]}},
    ] + [{"name": f"cutout{k}", "type": ["null", {"type": "record", "name": f"cutout{k}", "fields": [
        {"name": "fileName", "type": "string"}, {"name": "stampData", "type": "bytes"}]}]}
        for k in ("Science", "Template", "Difference")]}
    recs = []
    for i in range(3):
        recs.append({"objectId": f"ZTF26aaaa{i}", "candid": 2000 + i,
                     "candidate": {"candid": 2000 + i, "xpos": 400.0, "ypos": 300.0},
                     **{f"cutout{k}": {"fileName": "x.fits.gz", "stampData": _fits_bytes(_img(i))}
                        for k in ("Science", "Template", "Difference")}})
    recs[1]["cutoutDifference"] = {"fileName": "x.fits.gz", "stampData": b"\x1f\x8b\x08broken"}
    recs[2]["cutoutScience"] = None
    d = tmp_path / "avro"
    d.mkdir()
    with open(d / "ztf.avro", "wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(ztf_schema), recs)
    pgir_schema = {"type": "record", "name": "alert", "namespace": "pgir", "fields": [
        {"name": "publisher", "type": "string"}, {"name": "candid", "type": "long"},
        {"name": "cutoutScience", "type": "bytes"}, {"name": "cutoutTemplate", "type": "bytes"},
        {"name": "cutoutDifference", "type": "bytes"}]}
    with open(d / "pgir.avro", "wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(pgir_schema), [
            {"publisher": "pgirdps", "candid": 3000, "cutoutScience": _fits_bytes(_img(0, 61)),
             "cutoutTemplate": _fits_bytes(_img(1, 61)), "cutoutDifference": _fits_bytes(_img(2, 61))}])
    return d


def test_avro_packets(model_dir, tmp_path):
    d = _avro_files(tmp_path)
    alerts = [a for b in iter_alert_batches(d, batch_size=2) for a in b]
    assert [(a.candid, a.survey) for a in alerts] == [("3000", "pgir"), ("2000", "ztf"), ("2001", "ztf"), ("2002", "ztf")]
    out = tmp_path / "s.csv"
    res = score_alerts_file(ScoreAlertsOptions(model=model_dir, alerts=d, out=out))
    got = {r["candid"]: r for r in read_csv(out)}
    assert got["3000"]["error"] == "pixel_scale_mismatch"  # Gattini-IR: 8.7"/px
    assert got["2000"]["error"] == "" and 0 <= float(got["2000"]["score"]) <= 1
    assert got["2001"]["error"] == "corrupt_cutout" and got["2002"]["error"] == "missing_cutout"
    assert res["n_alerts"] == 4


def test_missing_input_is_a_clear_error(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such alert file"):
        score_alerts_file(ScoreAlertsOptions(model=model_dir, alerts=tmp_path / "nope.parquet", out=tmp_path / "o.csv"))
    assert not (tmp_path / "o.csv").exists()
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="unknown alert format"):
        score_alerts_file(ScoreAlertsOptions(model=model_dir, alerts=tmp_path / "x.txt", out=tmp_path / "o.csv"))
    assert not list(tmp_path.glob(".o.csv*"))


def test_cli_parses_score_alerts():
    args = cli.build_parser().parse_args(["score-alerts", "--model", "m", "--alerts", "a.parquet", "--out", "o.csv",
                                          "--batch-size", "64", "--pixel-scale-tolerance", "0.05"])
    o = ScoreAlertsOptions(**{k: v for k, v in vars(args).items() if k != "command"})
    assert o.batch_size == 64 and o.pixel_scale_tolerance == 0.05 and o.format == "auto"
    assert json.loads(o.model_dump_json())["alerts"] == "a.parquet"
