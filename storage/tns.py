"""Read Transient Name Server (TNS) catalogues into one normalised table.

Two schemas are accepted, as CSV (optionally gzipped) or Parquet:

* the TNS *search export* (also what ``rbflow simulate`` writes as ``tns.csv``):
  ``Name``, sexagesimal ``RA``/``DEC`` and/or decimal ``ra_deg``/``dec_deg``,
  ``Discovery Date (UT)``, ``Obj. Type``, ``Redshift``;
* the TNS *bulk CSV* (``objid, name_prefix, name, ra, declination, redshift, type,
  discoverydate, ..., fullname``).

The normalised frame has one row per accepted object and the columns
``name, ra_deg, dec_deg, discovery_mjd, obj_type, redshift, source_row``
(``source_row``: 0-based data row in the file, header excluded). Rows that cannot be
used (missing name, unparseable or out-of-range coordinates, unparseable date) are
listed in ``TNSCatalog.rejected`` (``source_row``, ``reason``) rather than raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.coordinates import Angle
from astropy.time import Time
import astropy.units as u

TNS_COLUMNS = ("name", "ra_deg", "dec_deg", "discovery_mjd", "obj_type", "redshift", "source_row")

# Column names per schema: (name, ra sexagesimal or degrees, dec, date, type, redshift)
_SEARCH = {
    "name": "Name", "ra": "RA", "dec": "DEC", "ra_deg": "ra_deg", "dec_deg": "dec_deg",
    "date": "Discovery Date (UT)", "type": "Obj. Type", "redshift": "Redshift",
}
_BULK = {
    "name": "name", "ra": "ra", "dec": "declination", "date": "discoverydate",
    "type": "type", "redshift": "redshift",
}


@dataclass(frozen=True)
class TNSCatalog:
    """A normalised TNS table.

    objects: DataFrame with ``TNS_COLUMNS`` (n_accepted rows).
    rejected: DataFrame ``source_row`` (int), ``reason`` (str), one row per unusable row.
    schema: ``"search"`` or ``"bulk"``; path: the file read.
    """

    objects: pd.DataFrame
    rejected: pd.DataFrame
    schema: str
    path: str

    def __len__(self) -> int:
        return len(self.objects)


def _read_table(path: Path) -> pd.DataFrame:
    suffixes = "".join(path.suffixes).lower()
    if suffixes.endswith(".parquet") or suffixes.endswith(".pq"):
        return pd.read_parquet(path)
    # TNS exports may carry a leading BOM and mixed-type columns: read everything as text.
    return pd.read_csv(path, dtype=str, keep_default_na=True, encoding="utf-8-sig")


def _detect_schema(df: pd.DataFrame, path: Path) -> str:
    cols = set(df.columns)
    has_search_coords = {"RA", "DEC"} <= cols or {"ra_deg", "dec_deg"} <= cols
    if "Name" in cols and has_search_coords and _SEARCH["date"] in cols:
        return "search"
    if {"name", "ra", "declination", "discoverydate"} <= cols:
        return "bulk"
    need_search = ["Name", "RA|ra_deg", "DEC|dec_deg", _SEARCH["date"]]
    need_bulk = ["name", "ra", "declination", "discoverydate"]
    miss_search = [c for c in need_search if not any(p in cols for p in c.split("|"))]
    miss_bulk = [c for c in need_bulk if c not in cols]
    raise ValueError(
        f"{path}: not a TNS table: missing columns {miss_search} (search-export schema) "
        f"or {miss_bulk} (bulk-CSV schema); found {sorted(cols)[:12]}"
    )


def _to_float(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


def _parse_angles(values: pd.Series, unit: u.Unit) -> np.ndarray:
    """Parse sexagesimal (``unit``) or decimal-degree strings; NaN where unparseable.

    Shape (n,) float degrees. Vectorised through astropy ``Angle``; falls back to one
    value at a time only when the batch contains a bad entry.
    """
    text = values.astype("string").str.strip()
    out = np.full(len(text), np.nan)
    present = text.notna().to_numpy() & (text.fillna("") != "").to_numpy()
    if not present.any():
        return out
    strings = text[present].to_numpy(dtype=str)
    sexa = np.char.find(strings, ":") >= 0
    sexa |= np.char.find(np.char.strip(strings), " ") >= 0
    dec_vals = np.full(len(strings), np.nan)
    # decimal degrees
    dec_vals[~sexa] = pd.to_numeric(pd.Series(strings[~sexa]), errors="coerce").to_numpy(float)
    if sexa.any():
        s = strings[sexa]
        try:
            dec_vals[sexa] = Angle(s, unit=unit).degree
        except Exception:
            parsed = []
            for item in s:
                try:
                    parsed.append(Angle(item, unit=unit).degree)
                except Exception:
                    parsed.append(np.nan)
            dec_vals[sexa] = parsed
    out[present] = dec_vals
    return out


def _parse_mjd(values: pd.Series) -> np.ndarray:
    """ISO date/time strings (UTC) -> MJD, NaN where unparseable. Shape (n,)."""
    dt = pd.to_datetime(values.astype("string"), errors="coerce", format="ISO8601", utc=True)
    out = np.full(len(values), np.nan)
    ok = dt.notna().to_numpy()
    if ok.any():
        naive = dt[ok].dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")
        out[ok] = Time(naive, scale="utc").mjd
    return out


def read_tns(path: str | Path) -> TNSCatalog:
    """Read a TNS search export or bulk CSV/Parquet file into a :class:`TNSCatalog`.

    Raises ValueError naming the file when it has none of the needed columns, and
    FileNotFoundError when it does not exist. Malformed rows are not fatal.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: TNS file not found")
    df = _read_table(path).reset_index(drop=True)
    schema = _detect_schema(df, path)
    n = len(df)
    cols = _SEARCH if schema == "search" else _BULK
    empty = pd.Series([None] * n, dtype="object")

    if schema == "search":
        names = df[cols["name"]].astype("string").str.strip()
        ra = _to_float(df["ra_deg"]) if "ra_deg" in df else np.full(n, np.nan)
        dec = _to_float(df["dec_deg"]) if "dec_deg" in df else np.full(n, np.nan)
        need = np.isnan(ra) | np.isnan(dec)
        if need.any() and "RA" in df and "DEC" in df:
            ra[need] = _parse_angles(df.loc[need, "RA"], u.hourangle)
            dec[need] = _parse_angles(df.loc[need, "DEC"], u.deg)
    else:
        base = df["name"].astype("string").str.strip()
        if "fullname" in df:
            names = df["fullname"].astype("string").str.strip().fillna(
                (df["name_prefix"].astype("string") + " " + base) if "name_prefix" in df else base
            )
        elif "name_prefix" in df:
            names = (df["name_prefix"].astype("string").str.strip() + " " + base).fillna(base)
        else:
            names = base
        # bulk CSV gives decimal degrees; accept sexagesimal too
        ra = _parse_angles(df[cols["ra"]], u.hourangle)
        dec = _parse_angles(df[cols["dec"]], u.deg)

    mjd = _parse_mjd(df[cols["date"]])
    obj_type = df[cols["type"]].astype("string") if cols["type"] in df else empty
    redshift = _to_float(df[cols["redshift"]]) if cols["redshift"] in df else np.full(n, np.nan)

    reasons = np.full(n, "", dtype=object)
    names_missing = (names.isna() | (names.fillna("") == "")).to_numpy()
    checks = [
        (names_missing, "missing name"),
        (np.isnan(ra), "unparseable RA"),
        (np.isnan(dec), "unparseable Dec"),
        (~np.isnan(ra) & ((ra < 0) | (ra >= 360)), "RA outside [0, 360) deg"),
        (~np.isnan(dec) & (np.abs(dec) > 90), "Dec outside [-90, 90] deg"),
        (np.isnan(mjd), "unparseable discovery date"),
    ]
    for mask, why in checks:
        reasons[mask] = [f"{r}; {why}" if r else why for r in reasons[mask]]
    bad = reasons != ""

    objects = pd.DataFrame({
        "name": names.to_numpy(dtype=object),
        "ra_deg": ra,
        "dec_deg": dec,
        "discovery_mjd": mjd,
        "obj_type": pd.Series(obj_type).to_numpy(dtype=object),
        "redshift": redshift,
        "source_row": np.arange(n, dtype=np.int64),
    })[~bad].reset_index(drop=True)
    objects["obj_type"] = objects["obj_type"].where(objects["obj_type"].notna(), None)
    objects["name"] = objects["name"].astype(str)
    rejected = pd.DataFrame({
        "source_row": np.flatnonzero(bad).astype(np.int64),
        "reason": reasons[bad].astype(str),
    })
    return TNSCatalog(objects=objects, rejected=rejected, schema=schema, path=str(path))
