"""Flow: build a dataset directory from a survey, one Prefect task per sensor image."""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, runtime, task
from prefect.futures import as_completed
from tqdm import tqdm

from flows.common import code_version, publish_markdown, publish_table, tag_run
from flows.lineage import sha256_file
from flows.options import DEFAULT_NIGHT, BuildOptions
from flows.runner import make_task_runner
from flows.simulate import submit_simulation
from storage.fits_io import pixel_scale_arcsec
from storage.sensor_io import jobs_from_manifest, run_sensor_job
from storage.stampstore import clean_temporaries, dataset_lock, join_parts, pending_keys, read_ledger
from tasks.types import FLAG_MEANINGS

sensor_task = task(run_sensor_job, name="build-sensor", retries=1, retry_delay_seconds=1)
join_task = task(join_parts, name="join-parts")


def sensor_config_json(config: Path | None) -> str:
    """The per-sensor settings as JSON; ``ValueError`` naming the file and every bad key."""
    from pydantic import ValidationError
    from tasks.sensor import SensorConfig
    if not config:
        return SensorConfig().model_dump_json()
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sensor config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{path}: a sensor config must be a mapping of settings, got {type(data).__name__}")
    try:
        return SensorConfig.model_validate(data or {}).model_dump_json()
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'config'}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{path}: invalid sensor config ({bad})") from None


@flow(name="build-dataset", log_prints=True)
def build_dataset(options: BuildOptions) -> dict:
    """Survey -> per-sensor PSF, injection, subtraction, detection, stamps -> dataset directory."""
    log = get_run_logger()
    out = Path(options.out)
    night = options.night or (DEFAULT_NIGHT if options.preset else None)
    cfg_json = sensor_config_json(options.config)  # a bad config is refused before any work
    allow_outside = bool(getattr(options, "allow_outside_paths", False))
    with dataset_lock(out, "build"):
        manifest = options.manifest or submit_simulation(options.preset, night, options.seed, out / "survey")
        jobs = jobs_from_manifest(manifest, out, night=night, inject=options.inject, seed=options.seed,
                                  tns=options.tns, config_json=cfg_json, max_sensors=options.max_sensors,
                                  allow_outside_paths=allow_outside)
        night = night or ",".join(sorted({j.night for j in jobs}))
        clean_temporaries(out)
        todo_keys = set(j.key for j in jobs) if options.force else set(pending_keys(out, [j.key for j in jobs]))
        todo = [j for j in jobs if j.key in todo_keys]
        log.info("%d sensor images, %d to do (%d complete parts reused)", len(jobs), len(todo), len(jobs) - len(todo))
        futures = [sensor_task.with_options(task_run_name=f"build-{j.night}-{j.exposure}-{j.sensor}").submit(j)
                   for j in todo]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="sensors", unit="img",
                        disable=not futures or os.environ.get("RBFLOW_NO_PROGRESS") == "1"):
            rec = fut.result()
            log.info("%s: %s %s", rec.key, rec.status, rec.reason or f"{rec.n_stamps} stamps in {rec.seconds:.1f} s")
        ledger = read_ledger(out)
        done = [j.key for j in jobs if ledger.get(j.key, {}).get("status") in ("done", "cached")
                and j.key not in pending_keys(out, [j.key], deep=False)]
        failed = {j.key: ledger.get(j.key, {}).get("reason", "not processed") for j in jobs if j.key not in done}
        meta = {
            "kind": "rbflow-dataset", "night": night, "inject": options.inject, "seed": options.seed,
            "config": {"build": options.model_dump(mode="json", exclude={"cluster", "workers", "out", "force"}),
                       "sensor": json.loads(cfg_json)},
            "code": code_version(), "flags": FLAG_MEANINGS,
            "parents": {"manifest": str(Path(manifest).resolve()), "manifest_sha256": sha256_file(manifest),
                        "survey_json_sha256": sha256_file(Path(manifest).parent / "survey.json"),
                        "tns_sha256": sha256_file(jobs[0].tns if jobs and jobs[0].tns else None)},
            "sensors": {"total": len(jobs), "done": len(done), "skipped": failed},
            # the models' input spec (model.json) and score-alerts' pixel-scale check read it
            "pixel_scale": pixel_scale_arcsec(jobs[0].new, jobs[0].hdu_new) if jobs else None,
        }
        joined = join_task(out, done, meta)
    summary = {"dataset": str(out), "night": night, "n_sensors": len(jobs), "done": len(done),
               "skipped": failed, "n_stamps": joined.n_stamps, "content_hash": joined.content_hash,
               "version": joined.version}
    _write_provenance(out, summary, ledger)
    tag_run(*(f"night:{n}" for n in str(night).split(",")[:7]), f"dataset:{joined.content_hash[:12]}")
    _publish_summary(out, summary)
    return summary


def _write_provenance(out: Path, summary: dict, ledger: dict) -> None:
    prov = {"flow_run_id": str(runtime.flow_run.id or ""), "flow_run_name": runtime.flow_run.name,
            "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(), "host": socket.gethostname(),
            "summary": summary, "ledger": ledger}
    tmp = out / ".provenance.json.tmp"
    tmp.write_text(json.dumps(prov, indent=1, default=str))
    os.replace(tmp, out / "provenance.json")


def _publish_summary(out: Path, summary: dict) -> None:
    meta = json.loads((out / "dataset.json").read_text())
    counts = meta.get("counts", {})
    rows = [{"what": "stamps", "value": summary["n_stamps"]},
            {"what": "sensors done", "value": summary["done"]},
            {"what": "sensors skipped", "value": len(summary["skipped"])}]
    rows += [{"what": f"label={k}", "value": v} for k, v in counts.get("label", {}).items()]
    rows += [{"what": f"true_class={k}", "value": v} for k, v in counts.get("true_class", {}).items()]
    publish_table(f"dataset-summary-{summary['night']}", rows, f"dataset {out} ({summary['content_hash'][:12]})")
    psf_rows = []
    parts = sorted(p.name for p in (out / "parts").iterdir() if not p.name.startswith(".")) \
        if (out / "parts").exists() else []
    for key in parts:
        pj = out / "parts" / key / "part.json"
        if pj.exists():
            m = json.loads(pj.read_text()).get("meta", {})
            psf_rows.append({"sensor_image": key, **(m.get("psf") or {})})
    if psf_rows:
        publish_table(f"psf-qa-{summary['night']}", psf_rows, "PSF QA per sensor image")
    if summary["skipped"]:
        publish_markdown(f"skipped-{summary['night']}",
                         "\n".join(f"- `{k}`: {v}" for k, v in summary["skipped"].items()), "skipped sensors")


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


def run_build(options: BuildOptions) -> dict:
    runner = make_task_runner(options.cluster, options.workers)
    summary = build_dataset.with_options(task_runner=runner)(options)
    print(format_summary(summary))
    return summary
