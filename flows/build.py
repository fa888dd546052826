"""Flow: build a dataset directory from a survey, one Prefect task per sensor image."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, runtime, task
from prefect.futures import as_completed
from tqdm import tqdm

from flows.common import publish_markdown, publish_table, tag_run
from flows.options import DEFAULT_NIGHT, BuildOptions
from flows.runner import make_task_runner
from flows.simulate import submit_simulation
from storage.builds import build_outcome, build_summary, format_summary, plan_build, write_provenance
from storage.sensor_io import run_sensor_job
from storage.stampstore import dataset_lock, join_parts
from tasks.environment import code_version
from tasks.types import FLAG_MEANINGS

sensor_task = task(run_sensor_job, name="build-sensor", retries=1, retry_delay_seconds=1)
join_task = task(join_parts, name="join-parts")
NOT_IN_DATASET = {"cluster", "workers", "out", "force"}  # options that do not change the dataset's bytes
__all__ = ["build_dataset", "format_summary", "run_build", "sensor_config_json"]


def sensor_config_json(config: Path | None) -> str:
    """The per-sensor settings as JSON; ``ValueError`` naming the file and every bad key."""
    from pydantic import ValidationError
    from tasks.config import SensorConfig
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


def options_outcome(plan, options: BuildOptions, cfg_json: str):
    """storage.builds.build_outcome for these options (what enters dataset.json)."""
    return build_outcome(plan, build_config=options.model_dump(mode="json", exclude=NOT_IN_DATASET),
                         sensor_config=json.loads(cfg_json), code=code_version(), flags=FLAG_MEANINGS,
                         inject=options.inject, seed=options.seed)


@flow(name="build-dataset", log_prints=True)
def build_dataset(options: BuildOptions) -> dict:
    """Survey -> per-sensor PSF, injection, subtraction, detection, stamps -> dataset directory."""
    log = get_run_logger()
    out = Path(options.out)
    night = options.night or (DEFAULT_NIGHT if options.preset else None)
    cfg_json = sensor_config_json(options.config)  # a bad config is refused before any work
    with dataset_lock(out, "build"):
        manifest = options.manifest or submit_simulation(options.preset, night, options.seed, out / "survey")
        plan = plan_build(out, manifest, night=night, inject=options.inject, seed=options.seed, tns=options.tns,
                          config_json=cfg_json, max_sensors=options.max_sensors, force=options.force,
                          allow_outside_paths=bool(getattr(options, "allow_outside_paths", False)))
        log.info("%d sensor images, %d to do (%d complete parts reused)", len(plan.jobs), len(plan.todo), plan.reused)
        futures = [sensor_task.with_options(task_run_name=f"build-{j.night}-{j.exposure}-{j.sensor}").submit(j)
                   for j in plan.todo]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="sensors", unit="img",
                        disable=not futures or os.environ.get("RBFLOW_NO_PROGRESS") == "1"):
            rec = fut.result()
            log.info("%s: %s %s", rec.key, rec.status, rec.reason or f"{rec.n_stamps} stamps in {rec.seconds:.1f} s")
        outcome = options_outcome(plan, options, cfg_json)
        joined = join_task(out, list(outcome.done), outcome.meta)
    summary = build_summary(plan, outcome, joined)
    write_provenance(out, summary, outcome.ledger, str(runtime.flow_run.id or ""), runtime.flow_run.name)
    tag_run(*(f"night:{n}" for n in str(plan.night).split(",")[:7]), f"dataset:{joined.content_hash[:12]}")
    _publish_summary(out, summary)
    return summary


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


def run_build(options: BuildOptions) -> dict:
    runner = make_task_runner(options.cluster, options.workers)
    summary = build_dataset.with_options(task_runner=runner)(options)
    print(format_summary(summary))
    return summary
