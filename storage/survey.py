"""Writing and reading a simulated survey directory (layout: ``../shared/contracts.md``).

::

    <survey>/images/<night>/<exposure>/<sensor>_new.fits
    <survey>/refs/f<field>_s<sensor>_ref.fits          (static; identical every night)
    <survey>/catalogs/f<field>_s<sensor>.parquet
    <survey>/truth/parts/<night>/f<field>_s<sensor>_<table>.parquet
    <survey>/truth/{stars,galaxies,events,artifacts}.parquet
    <survey>/manifest.csv  tns.csv  survey.json
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from storage.fits_io import write_image_fits
from tasks.simulate import FieldSensorSimulation, SurveyConfig, make_tns_list, parse_night, simulate_field_sensor

__all__ = [
    "write_field_sensor", "write_truth_part", "finalize_survey", "read_manifest", "read_catalog",
    "read_truth", "simulate_survey", "MANIFEST_COLUMNS", "TRUTH_TABLES",
]

MANIFEST_COLUMNS = ("exposure", "sensor", "new", "ref", "catalog", "mjd", "filter", "night", "field")
REQUIRED_MANIFEST = ("exposure", "sensor", "new", "ref")
OPTIONAL_MANIFEST = ("sub", "hdu_new", "hdu_ref", "hdu_sub", "mask", "catalog", "mjd", "filter", "night", "field",
                     "weight_new", "weight_ref", "weight_sub", "hdu_weight_new", "hdu_weight_ref", "hdu_weight_sub")
MANIFEST_PATH_COLUMNS = ("new", "ref", "sub", "mask", "catalog", "weight_new", "weight_ref", "weight_sub")
HDU_COLUMNS = ("hdu_new", "hdu_ref", "hdu_sub", "hdu_weight_new", "hdu_weight_ref", "hdu_weight_sub")
USER_COLUMN_PREFIX = "x_"  # a survey's own manifest columns: kept, never interpreted
TRUTH_TABLES = ("stars", "galaxies", "events", "artifacts")
_STR = {"exposure": str, "sensor": str, "night": str, "new": str, "ref": str, "catalog": str, "filter": str}


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_field_sensor(sim: FieldSensorSimulation, out_dir) -> list[dict]:
    """Write the new images, the ref (once) and the catalogue of one simulated sensor.

    Returns one manifest row per visit (paths relative to ``out_dir``).
    """
    out = Path(out_dir)
    ref_rel = f"refs/f{sim.field:03d}_s{sim.sensor_id}_ref.fits"
    cat_rel = f"catalogs/f{sim.field:03d}_s{sim.sensor_id}.parquet"
    if not (out / ref_rel).exists():
        write_image_fits(out / ref_rel, sim.ref, sim.ref_header)
    if not (out / cat_rel).exists():
        _atomic_parquet(sim.catalog, out / cat_rel)
    rows = []
    for v in sim.visits:
        new_rel = f"images/{sim.night}/{v.exposure}/{sim.sensor_id}_new.fits"
        write_image_fits(out / new_rel, v.new, v.header)
        rows.append({"exposure": v.exposure, "sensor": sim.sensor_id, "new": new_rel, "ref": ref_rel,
                     "catalog": cat_rel, "mjd": v.mjd, "filter": str(v.header.get("FILTER", "")),
                     "night": sim.night, "field": sim.field})
    return rows


def write_truth_part(sim: FieldSensorSimulation, out_dir) -> list[Path]:
    """Write the four truth tables of one (night, field, sensor) under ``truth/parts/<night>/``."""
    base = Path(out_dir) / "truth" / "parts" / sim.night
    paths = []
    for name in TRUTH_TABLES:
        p = base / f"f{sim.field:03d}_s{sim.sensor_id}_{name}.parquet"
        _atomic_parquet(getattr(sim, name), p)
        paths.append(p)
    return paths


def _read_manifest_raw(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=_STR, keep_default_na=False, na_values={"mjd": [""], "field": [""]})


def finalize_survey(out_dir, rows: list[dict], night: str, config: SurveyConfig, seed: int) -> Path:
    """Merge manifest rows and truth parts of every night in ``out_dir``; write tns.csv and survey.json."""
    parse_night(night)
    out = Path(out_dir)
    man_path = out / "manifest.csv"
    new = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).astype(_STR)
    if man_path.exists():
        new = pd.concat([_read_manifest_raw(man_path), new], ignore_index=True)
    man = (new.drop_duplicates(subset=["exposure", "sensor"], keep="last")
           .sort_values(["exposure", "sensor"]).reset_index(drop=True))
    _atomic_write_text(man_path, man.to_csv(index=False))

    parts = out / "truth" / "parts"
    truth: dict[str, pd.DataFrame] = {}
    for name in TRUTH_TABLES:
        files = sorted(parts.glob(f"*/*_{name}.parquet")) if parts.exists() else []
        frames = [f for f in (pd.read_parquet(p) for p in files) if len(f)]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if len(df):
            df = df.sort_values(["exposure", "sensor"], kind="stable").reset_index(drop=True)
        truth[name] = df
        _atomic_parquet(df, out / "truth" / f"{name}.parquet")

    tns = make_tns_list(truth["events"], config, seed) if len(truth["events"]) else make_tns_list(
        pd.DataFrame(columns=["event_id", "kind", "mag", "ra", "dec", "mjd"]), config, seed)
    _atomic_write_text(out / "tns.csv", tns.to_csv(index=False))

    meta_path = out / "survey.json"
    nights = set(man["night"].tolist()) | {night}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old.get("seed") not in (None, seed) or (old.get("config") and old["config"] != config.model_dump(mode="json")):
            raise ValueError(f"{meta_path}: survey directory was simulated with another config or seed")
        nights |= set(old.get("nights", []))
    meta = {"config": config.model_dump(mode="json"), "seed": int(seed), "nights": sorted(n for n in nights if n)}
    _atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))
    return out


def read_manifest(path, *, allow_outside_paths: bool = False) -> pd.DataFrame:
    """Read a manifest CSV; ``ValueError`` naming missing columns, ``FileNotFoundError`` naming the file.

    Also rejected (``ValueError`` naming the file, row and column): unknown columns (a
    survey's own columns must start with ``x_``), non-numeric ``mjd``, non-integer
    ``hdu_*``, an empty ``ref`` in a row without ``sub`` (difference-only rows give ``sub``
    and may leave ``ref`` empty), a ``weight_ref`` / ``weight_sub`` without its image, and
    paths that leave the manifest's directory (absolute, or ``..`` above it)
    unless ``allow_outside_paths``. Paths are checked as written (symlinks inside the
    directory may point anywhere).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    try:
        df = _read_manifest_raw(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV manifest ({exc})") from exc
    missing = [c for c in REQUIRED_MANIFEST if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks required columns {missing}")
    def blank(c):
        return df[c].astype(str).str.strip().isin(["", "nan"]) if c in df.columns else pd.Series(True, df.index)

    # a difference-only row (docs/per_sensor.md, "Real-data ingest modes") gives sub, not ref
    empty = [c for c in REQUIRED_MANIFEST if (blank(c) & (blank("sub") if c == "ref" else True)).any()]
    if empty:
        raise ValueError(f"{path}: manifest has empty values in columns {empty}")
    known = REQUIRED_MANIFEST + OPTIONAL_MANIFEST
    unknown = [c for c in df.columns if c not in known and not str(c).startswith(USER_COLUMN_PREFIX)]
    if unknown:
        hints = {c: m[0] for c in unknown if (m := difflib.get_close_matches(str(c), known, n=1))}
        hint = "".join(f"; did you mean {m!r} for {c!r}?" for c, m in hints.items())
        raise ValueError(f"{path}: manifest has unknown columns {unknown} (known: {list(known)}; "
                         f"prefix a survey's own columns with {USER_COLUMN_PREFIX!r}){hint}")
    _check_manifest_values(path, df, allow_outside_paths)
    return df


def _check_manifest_values(path: Path, df: pd.DataFrame, allow_outside_paths: bool) -> None:
    """Numeric columns parse; every path stays inside the manifest's directory (unless allowed)."""
    def row(i: int) -> str:  # the CSV line of data row i (line 1 is the header)
        return f"line {i + 2}"

    if "mjd" in df.columns:
        mjd = pd.to_numeric(df["mjd"], errors="coerce")
        bad = mjd.isna() & df["mjd"].notna() & (df["mjd"].astype(str).str.strip() != "")
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise ValueError(f"{path}: {row(i)} column 'mjd': not a number ({df['mjd'].iloc[i]!r})")
    for col in ("weight_ref", "weight_sub"):  # a weight map needs its image
        img = col.split("_", 1)[1]
        if col in df.columns:
            given = ~df[col].astype(str).str.strip().isin(["", "nan"])
            lacks = given & (df[img].astype(str).str.strip().isin(["", "nan"]) if img in df.columns else True)
            if lacks.any():
                i = int(lacks.to_numpy().nonzero()[0][0])
                raise ValueError(f"{path}: {row(i)} column {col!r}: a weight map without its image "
                                 f"({img!r} is empty)")
    for col in HDU_COLUMNS:
        if col in df.columns:
            given = df[col].notna() & (df[col].astype(str).str.strip() != "")
            num = pd.to_numeric(df[col], errors="coerce")
            bad = given & ~(num.notna() & (num % 1 == 0) & (num >= 0))
            if bad.any():
                i = int(bad.to_numpy().nonzero()[0][0])
                raise ValueError(f"{path}: {row(i)} column {col!r}: not an HDU number ({df[col].iloc[i]!r})")
    if allow_outside_paths:
        return
    base = os.path.normpath(os.path.abspath(path.parent))
    for col in MANIFEST_PATH_COLUMNS:
        if col not in df.columns:
            continue
        for i, v in enumerate(df[col].astype(str)):
            v = v.strip()
            if v in ("", "nan"):
                continue
            if os.path.isabs(v):
                raise ValueError(f"{path}: {row(i)} column {col!r}: absolute path {v!r} is not allowed "
                                 "(paths are relative to the manifest; allow_outside_paths permits others)")
            full = os.path.normpath(os.path.join(base, v))
            if os.path.commonpath([base, full]) != base:
                raise ValueError(f"{path}: {row(i)} column {col!r}: path {v!r} leaves the manifest's "
                                 f"directory {base} (allow_outside_paths permits it)")


def read_catalog(path) -> pd.DataFrame:
    """Read a sensor catalogue Parquet file (obj_id, ra, dec, x, y, mag, extended, ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: catalogue not found")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{path}: unreadable catalogue Parquet file ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in ("ra", "dec", "mag", "extended") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: catalogue lacks columns {missing} (has {sorted(map(str, df.columns))[:12]})")
    return df


def read_truth(survey_dir, exposure: str, sensor: str) -> dict[str, pd.DataFrame]:
    """Truth rows of one exposure and sensor: {stars, galaxies, events, artifacts} (empty when absent)."""
    tdir = Path(survey_dir) / "truth"
    out = {}
    for name in TRUTH_TABLES:
        p = tdir / f"{name}.parquet"
        if p.is_file():
            df = pd.read_parquet(p)
            if len(df) and "exposure" in df.columns:
                df = df[(df["exposure"].astype(str) == str(exposure)) & (df["sensor"].astype(str) == str(sensor))]
            out[name] = df.reset_index(drop=True)
        else:
            out[name] = pd.DataFrame()
    return out


def simulate_survey(config: SurveyConfig, night: str, seed: int, out_dir) -> Path:
    """Simulate every field x sensor of one night sequentially into ``out_dir`` and finalize it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for field in range(config.n_fields):
        for sensor in range(config.n_sensors):
            sim = simulate_field_sensor(config, night, field, sensor, seed)
            rows += write_field_sensor(sim, out)
            write_truth_part(sim, out)
    return finalize_survey(out, rows, night, config, seed)
