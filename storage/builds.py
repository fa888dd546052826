"""The parts of a dataset build that are not orchestration: plan, outcome, provenance.

``flows/build.py`` wires these around one Prefect task per sensor image; the build
benchmark (``benchmarks/build.py``) runs the very same functions around a plain process
pool, so the difference between the two is exactly what Prefect and Dask cost. No Prefect
here.

    plan = plan_build(out, manifest, night=..., ...)      # jobs, and which are still to do
    for job in plan.todo: run_sensor_job(job)              # anywhere: each writes its own part
    outcome = build_outcome(plan, build_config=..., ...)   # done / failed keys, dataset.json meta
    joined = join_parts(out, list(outcome.done), outcome.meta)
    write_provenance(out, build_summary(plan, outcome, joined), outcome.ledger)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from storage.fits_io import pixel_scale_arcsec
from storage.sensor_io import SensorJob, jobs_from_manifest
from storage.stampstore import JoinResult, clean_temporaries, pending_keys, read_ledger, sha256_file
from tasks.environment import numerics


@dataclass(frozen=True)
class BuildPlan:
    """The sensor images of one build and the ones without a complete part."""

    out: Path
    manifest: Path
    night: str  # the night(s) built, comma-separated when a manifest holds several
    jobs: tuple[SensorJob, ...]
    todo: tuple[SensorJob, ...]  # jobs whose part is missing or damaged (all of them with force)

    @property
    def reused(self) -> int:
        return len(self.jobs) - len(self.todo)


@dataclass(frozen=True)
class BuildOutcome:
    """What the sensor tasks left: complete parts, failures with reasons, the dataset meta."""

    done: tuple[str, ...]  # part keys, in job order
    failed: dict[str, str]  # part key -> reason ("not processed" when no ledger entry)
    ledger: dict[str, dict]
    meta: dict  # dataset.json without content_hash and counts (join_parts adds those)


def plan_build(out: Path, manifest: Path, *, night: str | None, inject: bool, seed: int, tns: Path | None,
               config_json: str, max_sensors: int | None = None, allow_outside_paths: bool = False,
               force: bool = False) -> BuildPlan:
    """Read the manifest into jobs, remove half-written leftovers, and find what is to do.

    Call under :func:`storage.stampstore.dataset_lock`.
    """
    out = Path(out)
    jobs = jobs_from_manifest(manifest, out, night=night, inject=inject, seed=seed, tns=tns,
                              config_json=config_json, max_sensors=max_sensors,
                              allow_outside_paths=allow_outside_paths)
    night = night or ",".join(sorted({j.night for j in jobs}))
    clean_temporaries(out)
    keys = [j.key for j in jobs]
    todo_keys = set(keys) if force else set(pending_keys(out, keys))
    return BuildPlan(out, Path(manifest), night, tuple(jobs), tuple(j for j in jobs if j.key in todo_keys))


def build_outcome(plan: BuildPlan, *, build_config: dict, sensor_config: dict, code: dict, flags: dict,
                  inject: bool, seed: int) -> BuildOutcome:
    """Done and failed sensor images from the ledger, and the dataset's meta (config, code,
    flag meanings, the parents' hashes, pixel scale)."""
    out, jobs, manifest = plan.out, plan.jobs, plan.manifest
    ledger = read_ledger(out)
    done = tuple(j.key for j in jobs if ledger.get(j.key, {}).get("status") in ("done", "cached")
                 and j.key not in pending_keys(out, [j.key], deep=False))
    failed = {j.key: ledger.get(j.key, {}).get("reason", "not processed") for j in jobs if j.key not in done}
    meta = {
        "kind": "rbflow-dataset", "night": plan.night, "inject": inject, "seed": seed,
        "config": {"build": build_config, "sensor": sensor_config},
        "code": code, "flags": flags,
        # the CPU and BLAS kernels the bits depend on (tasks/environment.py); not in content_hash
        "environment": numerics(),
        "parents": {"manifest": str(Path(manifest).resolve()), "manifest_sha256": sha256_file(manifest),
                    "survey_json_sha256": sha256_file(Path(manifest).parent / "survey.json"),
                    "tns_sha256": sha256_file(jobs[0].tns if jobs and jobs[0].tns else None)},
        "sensors": {"total": len(jobs), "done": len(done), "skipped": failed},
        # the models' input spec (model.json) and score-alerts' pixel-scale check read it
        "pixel_scale": pixel_scale_arcsec(jobs[0].new, jobs[0].hdu_new) if jobs else None,
    }
    return BuildOutcome(done, failed, ledger, meta)


def build_summary(plan: BuildPlan, outcome: BuildOutcome, joined: JoinResult) -> dict:
    """The small record a build returns (and the CLI prints)."""
    return {"dataset": str(plan.out), "night": plan.night, "n_sensors": len(plan.jobs), "done": len(outcome.done),
            "skipped": outcome.failed, "n_stamps": joined.n_stamps, "content_hash": joined.content_hash,
            "version": joined.version}


def write_provenance(out: Path, summary: dict, ledger: dict, flow_run_id: str = "", flow_run_name: str = "") -> Path:
    """``provenance.json`` (atomic): the run that built the dataset, its summary and ledger."""
    prov = {"flow_run_id": flow_run_id, "flow_run_name": flow_run_name,
            "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(), "host": socket.gethostname(),
            "summary": summary, "ledger": ledger}
    out = Path(out)
    tmp = out / ".provenance.json.tmp"
    tmp.write_text(json.dumps(prov, indent=1, default=str))
    os.replace(tmp, out / "provenance.json")
    return out / "provenance.json"


def format_summary(summary: dict) -> str:
    meta_path = Path(summary["dataset"]) / "dataset.json"
    counts = json.loads(meta_path.read_text()).get("counts", {}) if meta_path.exists() else {}
    lines = [f"dataset {summary['dataset']}  night {summary['night']}  hash {summary['content_hash'][:12]}",
             f"  sensors: {summary['done']}/{summary['n_sensors']} done, {len(summary['skipped'])} skipped",
             f"  stamps: {summary['n_stamps']}  labels: {counts.get('label', {})}"]
    if counts.get("true_class"):
        lines.append(f"  true_class: {counts['true_class']}")
    for k, v in summary["skipped"].items():
        lines.append(f"  skipped {k}: {v}")
    return "\n".join(lines)
