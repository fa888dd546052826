"""The I/O sibling of ``tasks.sensor.process_sensor``: read one sensor image's FITS,
run the per-sensor steps in memory, write the part atomically, append the ledger.

The build flow submits :func:`run_sensor_job` once per sensor image and gets back a
small :class:`~storage.stampstore.PartRecord`, never arrays. A sensor that fails is
recorded with a reason naming its file and sensor; the rest of the build goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from storage.stampstore import InjectedFault, PartRecord, append_ledger, stamp_id, write_part
from tasks.types import STAMP_COLUMNS


@dataclass(frozen=True)
class SensorJob:
    """Everything one sensor task needs, as paths and small values."""

    dataset_dir: str
    key: str
    night: str
    exposure: str
    sensor: str
    new: str
    ref: str
    hdu_new: int = 0
    hdu_ref: int = 0
    mask: str | None = None
    catalog: str | None = None
    survey_dir: str | None = None  # for truth tables (simulations)
    tns: str | None = None  # TNS list for --no-inject labels
    inject: bool = True
    seed: int = 0
    config_json: str = "{}"  # tasks.sensor.SensorConfig as JSON
    header_keys_json: str = "{}"  # storage.fits_io.HeaderKeys as JSON
    mjd: float | None = None


def sensor_seed(seed: int, night: str, exposure: str, sensor: str) -> int:
    """A per-sensor seed from (seed, night, exposure, sensor): independent of run order."""
    digest = hashlib.sha256(f"{seed}/{night}/{exposure}/{sensor}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _read_mask(path: str | None, shape) -> np.ndarray | None:
    if not path:
        return None
    from storage.fits_io import read_image_fits
    m, _ = read_image_fits(path)
    if m.shape != shape:
        raise ValueError(f"mask {path} has shape {m.shape}, image has {shape}")
    return m != 0


def _tns_frame(path: str | None) -> pd.DataFrame | None:
    if not path or not Path(path).exists():
        return None
    from storage.tns import read_tns
    df = read_tns(path).objects.rename(columns={"name": "Name"})
    return df[["Name", "ra_deg", "dec_deg"]]


def process_sensor_files(job: SensorJob):
    """Read, process in memory, return (SensorResult, table with ids). No writes."""
    from storage.fits_io import HeaderKeys, image_meta_from_header, read_image_fits, wcs_from_header
    from storage.survey import read_catalog, read_truth
    from tasks.sensor import SensorConfig, process_sensor

    config = SensorConfig.model_validate_json(job.config_json or "{}")
    keys = HeaderKeys.model_validate_json(job.header_keys_json or "{}")
    new, new_hdr = read_image_fits(job.new, job.hdu_new)
    ref, ref_hdr = read_image_fits(job.ref, job.hdu_ref)
    ids = dict(exposure=job.exposure, sensor=job.sensor, night=job.night)
    new_meta = dataclasses.replace(image_meta_from_header(new_hdr, keys), **ids)
    if job.mjd is not None and np.isfinite(job.mjd):
        new_meta = dataclasses.replace(new_meta, mjd=float(job.mjd))
    ref_meta = dataclasses.replace(image_meta_from_header(ref_hdr, keys), **ids)
    catalog = read_catalog(job.catalog) if job.catalog else None
    truth = read_truth(job.survey_dir, job.exposure, job.sensor) if job.survey_dir else None
    if truth is not None and all(len(v) == 0 for v in truth.values()):
        truth = None
    result = process_sensor(
        new, ref, new_header=new_hdr, ref_header=ref_hdr, new_meta=new_meta, ref_meta=ref_meta,
        new_mask=_read_mask(job.mask, new.shape), ref_mask=None, catalog=catalog, truth=truth,
        tns=None if job.inject else _tns_frame(job.tns), config=config,
        seed=sensor_seed(job.seed, job.night, job.exposure, job.sensor), inject=job.inject,
        id_prefix=f"{job.night}/{job.exposure}/{job.sensor}/",
    )
    table = result.table.copy()
    table["stamp_id"] = [stamp_id(job.night, job.exposure, job.sensor, d) for d in table["det_id"]]
    table["night"] = job.night
    table["exposure"] = str(job.exposure)
    table["sensor"] = str(job.sensor)
    for col in STAMP_COLUMNS:
        if col not in table:
            table[col] = None
    table["source_new"] = str(job.new)
    rest = [c for c in table.columns if c not in STAMP_COLUMNS]
    table = table[list(STAMP_COLUMNS) + rest]
    inj = result.injections.copy() if result.injections is not None else pd.DataFrame()
    if len(inj):
        inj.insert(0, "night", job.night)
        inj.insert(1, "exposure", str(job.exposure))
        inj.insert(2, "sensor", str(job.sensor))
    return result, table, inj


def run_sensor_job(job: SensorJob) -> PartRecord:
    """One sensor image end to end; failures become a recorded 'failed' PartRecord."""
    t0 = time.perf_counter()
    try:
        result, table, inj = process_sensor_files(job)
        psf = result.psf
        qa = {"psf_method": getattr(psf, "method", None), "psf_fwhm_px": getattr(psf, "fwhm_px", None),
              "psf_n_stars": getattr(psf, "n_stars", None), "psf_ellipticity": getattr(psf, "ellipticity", None),
              "psf_residual_rms": getattr(psf, "residual_rms", None)}
        qa = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in qa.items()}
        path = write_part(Path(job.dataset_dir), job.key, result.stamps, table, inj,
                          meta={"psf": qa, "subtraction": _jsonable(result.subtraction_diagnostics),
                                "timings": _jsonable(result.timings)})
    except InjectedFault:
        raise
    except Exception as e:  # one bad sensor is skipped and recorded; the rest goes on
        reason = f"{job.new}: exposure {job.exposure} sensor {job.sensor}: {type(e).__name__}: {e}"
        rec = PartRecord(job.key, "failed", 0, reason, "", time.perf_counter() - t0)
        append_ledger(Path(job.dataset_dir), rec)
        return rec
    counts = {"label": {str(k): int(v) for k, v in table["label"].value_counts().items()}}
    rec = PartRecord(job.key, "done", int(len(table)), "", str(path), time.perf_counter() - t0,
                     timings=_jsonable(result.timings), counts=counts)
    append_ledger(Path(job.dataset_dir), rec)
    return rec


def _jsonable(d) -> dict:
    return json.loads(json.dumps(d or {}, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def jobs_from_manifest(manifest: Path, dataset_dir: Path, *, night: str | None, inject: bool, seed: int,
                       tns: Path | None, config_json: str, header_keys_json: str = "{}",
                       max_sensors: int | None = None) -> list[SensorJob]:
    """One SensorJob per manifest row of the night (paths made absolute)."""
    from storage.survey import read_manifest
    from storage.stampstore import part_key
    manifest = Path(manifest).resolve()
    df = read_manifest(manifest)
    base = manifest.parent
    if "night" in df.columns and night is not None:
        df = df[df["night"].astype(str) == night]
        if not len(df):
            raise ValueError(f"{manifest}: no rows for night {night}")
    elif "night" not in df.columns and night is None:
        raise ValueError(f"{manifest}: no 'night' column; give --night")
    df = df.sort_values(["exposure", "sensor"], key=lambda s: s.astype(str)).reset_index(drop=True)
    if max_sensors:
        df = df.iloc[:max_sensors]
    survey_dir = str(base) if (base / "truth").exists() else None
    tns_path = Path(tns) if tns else base / "tns.csv"

    def opt(row, col):
        v = row.get(col)
        return None if v is None or (isinstance(v, float) and np.isnan(v)) or v == "" else v

    jobs = []
    for _, row in df.iterrows():
        exposure, sensor = str(row["exposure"]), str(row["sensor"])
        n = str(row["night"]) if "night" in df.columns else night
        jobs.append(SensorJob(
            dataset_dir=str(Path(dataset_dir).resolve()), key=part_key(exposure, sensor), night=n,
            exposure=exposure, sensor=sensor, new=str(base / row["new"]), ref=str(base / row["ref"]),
            hdu_new=int(opt(row, "hdu_new") or 0), hdu_ref=int(opt(row, "hdu_ref") or 0),
            mask=str(base / row["mask"]) if opt(row, "mask") else None,
            catalog=str(base / row["catalog"]) if opt(row, "catalog") else None,
            survey_dir=survey_dir, tns=str(tns_path) if tns_path.exists() else None, inject=inject,
            seed=seed, config_json=config_json, header_keys_json=header_keys_json,
            mjd=float(row["mjd"]) if opt(row, "mjd") is not None else None))
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{manifest}: duplicate (exposure, sensor) rows")
    return jobs
