"""TNS reader: real search export and bulk files, malformed rows, wrong files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storage.tns import TNS_COLUMNS, read_tns

TNS_DIR = Path("/work/shared/data/tns")
SEARCH = TNS_DIR / "tns_ztf_alerce_2018-2020.csv"
BULK = TNS_DIR / "tns_raw.parquet"


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real TNS file {path} is absent on this machine")


def test_search_export_real_file():
    _need(SEARCH)
    cat = read_tns(SEARCH)
    assert cat.schema == "search"
    assert tuple(cat.objects.columns) == TNS_COLUMNS
    assert len(cat) == 12291 and len(cat.rejected) == 0
    first = cat.objects.iloc[0]
    assert first["name"] == "AT 2020nei"
    assert first["ra_deg"] == pytest.approx(196.89961666666665)
    # 2020-06-17 05:44:50.208 UTC = MJD 59017 + 20690.208 s / 86400
    assert first["discovery_mjd"] == pytest.approx(59017 + 20690.208 / 86400, abs=1e-8)
    assert cat.objects["obj_type"].eq("SN Ia").sum() > 1000
    assert np.all((cat.objects["dec_deg"] >= -90) & (cat.objects["dec_deg"] <= 90))


def test_sexagesimal_agrees_with_decimal_columns(tmp_path):
    _need(SEARCH)
    raw = pd.read_csv(SEARCH, nrows=300)
    raw.drop(columns=["ra_deg", "dec_deg"]).to_csv(tmp_path / "sexa.csv", index=False)
    sexa = read_tns(tmp_path / "sexa.csv").objects
    assert len(sexa) == 300
    d_ra = (sexa["ra_deg"] - raw["ra_deg"]) * np.cos(np.radians(raw["dec_deg"])) * 3600
    assert np.abs(d_ra).max() < 0.01
    assert np.abs((sexa["dec_deg"] - raw["dec_deg"]) * 3600).max() < 0.01


def test_bulk_parquet_and_same_schema_as_csv(tmp_path):
    _need(BULK)
    cat = read_tns(BULK)
    assert cat.schema == "bulk" and len(cat) == 3 and len(cat.rejected) == 0
    obj = cat.objects.set_index("name")
    assert obj.loc["SN 2022and", "obj_type"] == "SN II"
    assert obj.loc["SN 2022and", "redshift"] == pytest.approx(0.043)
    assert obj.loc["SN 2018lzf", "dec_deg"] == pytest.approx(-9.688499)
    pd.read_parquet(BULK).to_csv(tmp_path / "bulk.csv", index=False)
    as_csv = read_tns(tmp_path / "bulk.csv").objects
    pd.testing.assert_frame_equal(as_csv[["name", "ra_deg", "dec_deg", "discovery_mjd"]],
                                  cat.objects[["name", "ra_deg", "dec_deg", "discovery_mjd"]])


def test_malformed_rows_are_rejected_not_fatal(tmp_path):
    text = "\n".join([
        "Name,RA,DEC,Obj. Type,Redshift,Discovery Date (UT)",
        "AT 2021a,10:00:00.0,+10:00:00.0,SN Ia,0.05,2021-01-01 00:00:00",
        "AT 2021b,not-an-angle,+10:00:00.0,,,2021-01-02 00:00:00",
        ",11:00:00.0,+11:00:00.0,,,2021-01-03 00:00:00",
        "AT 2021d,12:00:00.0,+95:00:00.0,,,2021-01-04 00:00:00",
        "AT 2021e,13:00:00.0,-20:30:00.0,,,sometime",
        "AT 2021f,150.5,-20.5,,,2021-01-06T12:00:00",
    ])
    path = tmp_path / "tns.csv"
    path.write_text(text + "\n")
    cat = read_tns(path)
    assert list(cat.objects["name"]) == ["AT 2021a", "AT 2021f"]
    assert cat.objects["ra_deg"].tolist() == pytest.approx([150.0, 150.5])
    assert cat.objects["discovery_mjd"].tolist() == pytest.approx([59215.0, 59220.5])
    assert list(cat.objects["source_row"]) == [0, 5]
    reasons = dict(zip(cat.rejected["source_row"], cat.rejected["reason"]))
    assert reasons == {1: "unparseable RA", 2: "missing name",
                       3: "Dec outside [-90, 90] deg", 4: "unparseable discovery date"}


def test_file_without_tns_columns_names_file_and_columns(tmp_path):
    path = tmp_path / "other.csv"
    pd.DataFrame({"id": [1], "ra": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"other\.csv.*missing columns.*Discovery Date"):
        read_tns(path)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_tns(tmp_path / "nope.csv")


def test_crossmatch_against_real_catalogue_finds_planted_detections():
    _need(SEARCH)
    from tasks.validation import crossmatch_tns

    tns = read_tns(SEARCH).objects
    pick = tns.iloc[[10, 500, 4000]]
    det = pd.DataFrame({
        "ra": np.r_[pick["ra_deg"], pick["ra_deg"].iloc[0]],
        "dec": np.r_[pick["dec_deg"] + 0.5 / 3600, pick["dec_deg"].iloc[0] + 5 / 3600],
        "mjd": np.r_[pick["discovery_mjd"] + 3.0, pick["discovery_mjd"].iloc[0]],
    })
    det.loc[2, "mjd"] += 500  # long after discovery: excluded
    xm = crossmatch_tns(det, tns)
    assert xm["val_class"].tolist() == [1, 1, -1, 0]
    assert xm["tns_name"].iloc[:3].tolist() == pick["name"].tolist()
    assert xm["tns_sep_arcsec"].iloc[:3].to_numpy() == pytest.approx(0.5, abs=1e-3)
