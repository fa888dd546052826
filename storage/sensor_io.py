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
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from storage.stampstore import InjectedFault, PartRecord, StoreError, append_ledger, stamp_id, write_part
from tasks.types import STAMP_COLUMNS


class SensorInputError(ValueError):
    """A problem with one input file of one sensor image: ``path`` names the file."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


def _named(path, what: str, fn, *args):
    """Call ``fn(*args)``; any failure becomes a SensorInputError naming ``path`` and ``what``."""
    try:
        return fn(*args)
    except SensorInputError:
        raise
    except Exception as e:
        msg = str(e)
        if msg.startswith(f"{path}: "):
            msg = msg[len(f"{path}: "):]
        elif msg.startswith("header: "):
            msg = msg[len("header: "):]
        raise SensorInputError(path, f"{what}: {msg}") from e


def _check_pixels(path, data: np.ndarray, what: str, saturation: float) -> None:
    """Images no step can use: every pixel NaN/inf, or every finite pixel saturated."""
    finite = np.isfinite(data)
    if not finite.any():
        raise SensorInputError(path, f"{what}: every pixel is NaN or infinite ({data.shape[1]}x{data.shape[0]} px)")
    if np.isfinite(saturation) and not (data[finite] < saturation).any():
        raise SensorInputError(path, f"{what}: every pixel is saturated (>= {saturation:g} ADU)")


def _fault_kill_worker(key: str) -> None:
    """Test hook RBFLOW_FAULT_KILL_WORKER=<key>:<marker file>: the first attempt of sensor
    ``key`` kills its Dask worker process (os._exit), as a lost worker; later attempts run.
    Outside a Dask worker it raises InjectedFault instead (never kills the caller)."""
    spec = os.environ.get("RBFLOW_FAULT_KILL_WORKER")
    if not spec:
        return
    target, _, marker = spec.partition(":")
    if target != key or not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return  # the first attempt already died: this is the retry
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        from distributed import get_worker
        get_worker()
    except (ImportError, ValueError):
        raise InjectedFault(f"test hook: sensor {key} would kill its worker (not in a Dask worker)") from None
    os._exit(17)


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
    source_new: str | None = None  # the new image's path as the manifest writes it (enters the hash)
    # real-data ingest (docs/per_sensor.md, "Real-data ingest modes"): the survey's own
    # difference image, and inverse-variance weight maps (0 = masked) of new, ref and sub
    sub: str | None = None
    hdu_sub: int = 0
    weight_new: str | None = None
    weight_ref: str | None = None
    weight_sub: str | None = None
    hdu_weight_new: int = 0
    hdu_weight_ref: int = 0
    hdu_weight_sub: int = 0

    @property
    def uses_given_sub(self) -> bool:
        """Difference-only mode: a ``sub`` and no ``ref``, or ``use_given_sub`` in the config."""
        if not self.sub:
            return False
        if not self.ref:
            return True
        return bool(json.loads(self.config_json or "{}").get("use_given_sub", False))


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


def _read_weight(path: str, hdu: int, shape) -> np.ndarray:
    """An inverse-variance weight map (ADU^-2) as a variance map (ADU^2): 1 / weight, inf where
    the weight is 0, negative or not finite (those pixels are masked)."""
    from storage.fits_io import read_image_fits
    w, _ = read_image_fits(path, hdu)
    if w.shape != tuple(shape):
        raise ValueError(f"weight map has shape {w.shape}, its image has {tuple(shape)}")
    w = w.astype(np.float64)
    ok = np.isfinite(w) & (w > 0)
    if not ok.any():
        raise ValueError("every weight is 0 (or negative / NaN): no usable pixel")
    with np.errstate(divide="ignore"):
        return np.where(ok, 1.0 / np.where(ok, w, 1.0), np.inf)


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

    from tasks.psf import PSFError
    from tasks.subtract import NoOverlapError

    config = SensorConfig.model_validate_json(job.config_json or "{}")
    keys = HeaderKeys.model_validate_json(job.header_keys_json or "{}")
    # every input is checked where it is read, so that an error names its file
    new, new_hdr = _named(job.new, "new image", read_image_fits, job.new, job.hdu_new)
    ids = dict(exposure=job.exposure, sensor=job.sensor, night=job.night)
    new_meta = dataclasses.replace(_named(job.new, "new image header", image_meta_from_header, new_hdr, keys), **ids)
    if job.mjd is not None and np.isfinite(job.mjd):
        new_meta = dataclasses.replace(new_meta, mjd=float(job.mjd))
    _named(job.new, "new image WCS", wcs_from_header, new_hdr)
    _check_pixels(job.new, new, "new image", new_meta.saturation)
    ref = ref_hdr = ref_meta = None
    if job.ref:
        ref, ref_hdr = _named(job.ref, "reference", read_image_fits, job.ref, job.hdu_ref)
        ref_meta = dataclasses.replace(_named(job.ref, "reference header", image_meta_from_header, ref_hdr, keys),
                                       **ids)
        _named(job.ref, "reference WCS", wcs_from_header, ref_hdr)
        _check_pixels(job.ref, ref, "reference", ref_meta.saturation)
    elif not job.sub:
        raise SensorInputError(job.new, "no reference and no difference image given for this row")
    var_new = (_named(job.weight_new, "new image weight map", _read_weight, job.weight_new, job.hdu_weight_new,
                      new.shape) if job.weight_new else None)
    var_ref = (_named(job.weight_ref, "reference weight map", _read_weight, job.weight_ref, job.hdu_weight_ref,
                      ref.shape) if job.weight_ref and ref is not None else None)
    catalog = _named(job.catalog, "catalogue", read_catalog, job.catalog) if job.catalog else None
    truth = read_truth(job.survey_dir, job.exposure, job.sensor) if job.survey_dir else None
    if truth is not None and all(len(v) == 0 for v in truth.values()):
        truth = None
    new_mask = _named(job.mask, "mask", _read_mask, job.mask, new.shape) if job.mask else None
    if var_new is not None:  # zero weight = masked
        new_mask = ~np.isfinite(var_new) if new_mask is None else (new_mask | ~np.isfinite(var_new))
    ref_mask = ~np.isfinite(var_ref) if var_ref is not None else None
    tns = None if job.inject else _named(job.tns, "TNS list", _tns_frame, job.tns)
    if job.uses_given_sub:
        from tasks.sensor import process_given_diff
        diff, diff_hdr = _named(job.sub, "difference image", read_image_fits, job.sub, job.hdu_sub)
        if diff.shape != new.shape:
            raise SensorInputError(job.sub, f"difference image has shape {diff.shape}, the new image "
                                            f"{job.new} has {new.shape} (it must be on the new image's grid)")
        _check_pixels(job.sub, diff, "difference image", float("inf"))
        var_sub = (_named(job.weight_sub, "difference weight map", _read_weight, job.weight_sub,
                          job.hdu_weight_sub, diff.shape) if job.weight_sub else None)
        try:
            result = process_given_diff(
                new, diff, new_header=new_hdr, new_meta=new_meta, diff_header=diff_hdr, ref=ref,
                ref_header=ref_hdr, ref_meta=ref_meta, new_mask=new_mask, ref_mask=ref_mask,
                diff_var=var_sub, catalog=catalog, truth=truth, tns=tns, config=config,
                seed=sensor_seed(job.seed, job.night, job.exposure, job.sensor), inject=job.inject,
                id_prefix=f"{job.night}/{job.exposure}/{job.sensor}/")
        except PSFError as e:
            raise SensorInputError(job.new, f"new image: no PSF ({e})") from e
        except ValueError as e:
            if "difference image" in str(e):
                raise SensorInputError(job.sub, str(e)) from e
            raise
        return _finish_tables(job, result)
    try:
        result = process_sensor(
            new, ref, new_header=new_hdr, ref_header=ref_hdr, new_meta=new_meta, ref_meta=ref_meta,
            new_mask=new_mask, ref_mask=ref_mask, catalog=catalog, truth=truth,
            tns=tns, config=config,
            seed=sensor_seed(job.seed, job.night, job.exposure, job.sensor), inject=job.inject,
            id_prefix=f"{job.night}/{job.exposure}/{job.sensor}/", new_var=var_new, ref_var=var_ref,
        )
    except NoOverlapError as e:
        raise SensorInputError(job.ref, f"reference does not overlap the new image {job.new} on the sky "
                                        f"(per their WCS): {e}") from e
    except PSFError as e:
        raise SensorInputError(job.new, f"new image: no PSF ({e})") from e
    return _finish_tables(job, result)


def _finish_tables(job: SensorJob, result):
    """(result, stamp table with ids and contract columns, injections with ids)."""
    table = result.table.copy()
    table["stamp_id"] = [stamp_id(job.night, job.exposure, job.sensor, d) for d in table["det_id"]]
    table["night"] = job.night
    table["exposure"] = str(job.exposure)
    table["sensor"] = str(job.sensor)
    for col in STAMP_COLUMNS:
        if col not in table:
            table[col] = None
    # the path as the manifest gives it: the same survey in another directory hashes the same
    table["source_new"] = str(job.source_new if job.source_new is not None else job.new)
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
    t0, c0 = time.perf_counter(), time.thread_time()
    _fault_kill_worker(job.key)
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
    except (InjectedFault, StoreError):
        raise  # a crash (test hook) or a dataset-directory problem (disk full): the build stops
    except Exception as e:  # one bad sensor is skipped and recorded; the rest goes on
        if isinstance(e, SensorInputError):  # the file at fault first, then what is wrong
            reason = f"{e.path}: exposure {job.exposure} sensor {job.sensor}: {e.problem}"
        else:
            reason = f"{job.new}: exposure {job.exposure} sensor {job.sensor}: {type(e).__name__}: {e}"
        rec = PartRecord(job.key, "failed", 0, reason, "", time.perf_counter() - t0,
                         cpu_seconds=time.thread_time() - c0)
        append_ledger(Path(job.dataset_dir), rec)
        return rec
    counts = {"label": {str(k): int(v) for k, v in table["label"].value_counts().items()}}
    rec = PartRecord(job.key, "done", int(len(table)), "", str(path), time.perf_counter() - t0,
                     timings=_jsonable(result.timings), counts=counts, cpu_seconds=time.thread_time() - c0)
    append_ledger(Path(job.dataset_dir), rec)
    return rec


def _jsonable(d) -> dict:
    return json.loads(json.dumps(d or {}, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def jobs_from_manifest(manifest: Path, dataset_dir: Path, *, night: str | None, inject: bool, seed: int,
                       tns: Path | None, config_json: str, header_keys_json: str = "{}",
                       max_sensors: int | None = None, allow_outside_paths: bool = False) -> list[SensorJob]:
    """One SensorJob per manifest row of the night (paths made absolute; paths outside the
    manifest's directory are refused unless ``allow_outside_paths``)."""
    from storage.survey import read_manifest
    from storage.stampstore import part_key
    manifest = Path(manifest).resolve()
    df = read_manifest(manifest, allow_outside_paths=allow_outside_paths)
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
        return None if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "" else v

    def path(row, col):
        v = opt(row, col)
        return str(base / str(v).strip()) if v is not None else None

    jobs = []
    for _, row in df.iterrows():
        exposure, sensor = str(row["exposure"]), str(row["sensor"])
        n = str(row["night"]) if "night" in df.columns else night
        jobs.append(SensorJob(
            dataset_dir=str(Path(dataset_dir).resolve()), key=part_key(exposure, sensor), night=n,
            exposure=exposure, sensor=sensor, new=str(base / row["new"]), ref=path(row, "ref") or "",
            hdu_new=int(opt(row, "hdu_new") or 0), hdu_ref=int(opt(row, "hdu_ref") or 0),
            sub=path(row, "sub"), hdu_sub=int(opt(row, "hdu_sub") or 0),
            weight_new=path(row, "weight_new"), weight_ref=path(row, "weight_ref"),
            weight_sub=path(row, "weight_sub"), hdu_weight_new=int(opt(row, "hdu_weight_new") or 0),
            hdu_weight_ref=int(opt(row, "hdu_weight_ref") or 0),
            hdu_weight_sub=int(opt(row, "hdu_weight_sub") or 0),
            mask=str(base / row["mask"]) if opt(row, "mask") else None,
            catalog=str(base / row["catalog"]) if opt(row, "catalog") else None,
            survey_dir=survey_dir, tns=str(tns_path) if tns_path.exists() else None, inject=inject,
            seed=seed, config_json=config_json, header_keys_json=header_keys_json,
            mjd=float(row["mjd"]) if opt(row, "mjd") is not None else None,
            source_new=str(row["new"])))
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{manifest}: duplicate (exposure, sensor) rows")
    return jobs
