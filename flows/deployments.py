"""Deployment entry points (deploy/prefect.yaml): the nightly build and the weekly retraining.

Wiring only. Each flow takes one frozen options model (flows/ops.py), so the Prefect UI
shows typed, documented parameters; each also has one CLI command (``rbflow nightly``,
``rbflow retrain``). Results are persisted under RBFLOW_HOME/results.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

from prefect import flow, get_run_logger, runtime, tags

from flows.build import build_dataset, format_summary
from flows.common import tag_run
from flows.lineage import dataset_hash, model_id, sha256_file, write_sidecar
from flows.options import BuildOptions, Stage1Options, Stage2Options, ValidateOptions
from flows.ops import NightlyBuildOptions, RetrainOptions, run_date_night
from flows.runner import make_task_runner
from flows.settings import configure_environment, results_dir
from flows.train import stage1, stage2
from flows.validate import validate_model

configure_environment()  # a worker's flow-run process starts here: telemetry off, results path
RESULTS = results_dir()


def _scheduled() -> _dt.datetime | None:
    try:
        return runtime.flow_run.scheduled_start_time if runtime.flow_run.id else None
    except Exception:  # noqa: BLE001
        return None


def build_options(options: NightlyBuildOptions, night: str) -> BuildOptions:
    return BuildOptions(preset=options.preset, manifest=options.manifest, night=night, inject=options.inject,
                        out=Path(options.root) / night, seed=options.seed, tns=options.tns, config=options.config,
                        max_sensors=options.max_sensors, force=options.force, cluster=options.cluster,
                        workers=options.workers)


@flow(name="nightly-build", log_prints=True, persist_result=True, result_storage=RESULTS)
def nightly_build(options: NightlyBuildOptions) -> dict:
    """Build one night into ROOT/<night>/ (night: given, or the run's date); resumes an interrupted build."""
    night = run_date_night(options.night, options.night_offset_days, _scheduled())
    tag_run(f"night:{night}", "injected" if options.inject else "validation-night")
    bopts = build_options(options, night)
    with tags(f"night:{night}"):
        summary = build_dataset.with_options(task_runner=make_task_runner(options.cluster, options.workers))(bopts)
    tag_run(f"dataset:{summary['content_hash'][:12]}")
    return summary


# ------------------------------------------------------------------------------ retraining
def nightly_datasets(root: Path) -> list[tuple[str, Path, dict]]:
    """(night, directory, dataset.json) of every joined night under ROOT, oldest first."""
    out = []
    for d in sorted(Path(root).glob("????-??-??")):
        meta = d / "current" / "dataset.json"
        if meta.is_file():
            out.append((d.name, d, json.loads(meta.read_text())))
    return out


def window(root: Path, end_night: str, n_nights: int) -> list[tuple[str, Path, str]]:
    """The injected nights in (end - n, end] with a dataset: (night, dir, content_hash)."""
    end = _dt.date.fromisoformat(end_night)
    start = end - _dt.timedelta(days=n_nights)
    return [(n, d, m["content_hash"]) for n, d, m in nightly_datasets(root)
            if start < _dt.date.fromisoformat(n) <= end and m.get("inject", True)]


def default_validation(root: Path, exclude: set[str]) -> Path:
    cands = [d for n, d, m in nightly_datasets(root) if not m.get("inject", True) and n not in exclude]
    if not cands:
        raise ValueError(f"no validation night under {root} (a night built with inject=false); "
                         "build one (rbflow nightly --no-inject ...) or give --validation")
    return cands[-1]


def default_tns(dataset: Path) -> Path:
    meta = json.loads((Path(dataset) / "current" / "dataset.json").read_text())
    manifest = (meta.get("parents") or {}).get("manifest")
    tns = Path(manifest).parent / "tns.csv" if manifest else None
    if not tns or not tns.exists():
        raise ValueError(f"{dataset}: no tns.csv beside its manifest ({manifest}); give --tns")
    return tns


@flow(name="retrain", log_prints=True, persist_result=True, result_storage=RESULTS)
def retrain(options: RetrainOptions) -> dict:
    """Stage 1 + flagging + stage 2 over a window of nights, then validation on an unseen night."""
    log = get_run_logger()
    end = run_date_night(options.end_night, options.night_offset_days, _scheduled())
    nights = window(options.root, end, options.n_nights)
    if not nights:
        raise ValueError(f"no injected night with a dataset under {options.root} in the {options.n_nights} "
                         f"nights up to {end}")
    val = Path(options.validation) if options.validation else default_validation(options.root, {n for n, _, _ in nights})
    tns = Path(options.tns) if options.tns else default_tns(val)
    out = Path(options.out) / end
    dirs = [d for _, d, _ in nights]
    log.info("window %s..%s: %d nights %s; validation on %s", nights[0][0], end, len(nights),
             [n for n, _, _ in nights], val)
    tag_run(f"window:{nights[0][0]}..{end}")
    train = dict(network=options.network, epochs=options.epochs, seed=options.seed, device=options.device)
    s1 = stage1(Stage1Options(dataset=dirs, out=out / "stage1", folds=options.folds, flag_rule=options.flag_rule,
                              cluster=options.cluster, workers=options.workers, **train))
    unlabel = Path(s1["unlabel"])
    # the model directory is named by its inputs: a rerun with the same inputs reuses it,
    # new inputs write a new one (model directories are never modified)
    key = hashlib.sha256(json.dumps({"datasets": [h for _, _, h in nights], "unlabel": sha256_file(unlabel),
                                     "mode": options.mode, **train}, sort_keys=True).encode()).hexdigest()[:12]
    model_dir = out / f"model-{key}"
    if (model_dir / "model.json").is_file():
        log.info("model %s exists for these inputs: reused", model_dir)
        s2 = {"model": str(model_dir), "reused": True}
    else:
        s2 = stage2(Stage2Options(dataset=dirs, unlabel=unlabel, mode=options.mode, out=model_dir, **train))
    mid = model_id(model_dir) or ""
    tag_run(f"model:{mid[:12]}")
    metrics = validate_model(ValidateOptions(model=model_dir, dataset=val, tns=tns, out=out / "validation",
                                             n_boot=options.n_boot, seed=options.seed))
    rec = {"end_night": end, "nights": {n: {"dataset": str(d), "content_hash": h} for n, d, h in nights},
           "stage1": {k: v for k, v in s1.items() if k != "folds"}, "model": str(model_dir), "model_id": mid,
           "validation": {"dataset": str(val), "content_hash": dataset_hash(val), "dir": str(out / "validation"),
                          "auc": metrics.get("auc"), "fpr_at_tpr90": metrics.get("fpr_at_tpr90")},
           "options": options.model_dump(mode="json")}
    (out / "retrain.json").write_text(json.dumps(rec, indent=1, default=str))
    write_sidecar(out, "retrain", {"nights": rec["nights"], "model": {"path": str(model_dir), "sha256": mid}})
    return rec


# ------------------------------------------------------------------------------ CLI entry points
def run_nightly(options: NightlyBuildOptions) -> dict:
    summary = nightly_build(options)
    print(format_summary(summary))
    return summary


def run_retrain(options: RetrainOptions) -> dict:
    r = retrain(options)
    print(f"retrain up to {r['end_night']}: nights {list(r['nights'])} -> {r['model']} "
          f"(validation AUC {r['validation']['auc']}, FPR@TPR0.9 {r['validation']['fpr_at_tpr90']})")
    return r
