"""Flow: validate a model on a night training never saw, against TNS-matched reals."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.common import png_markdown, publish_markdown, publish_table, tag_run
from flows.lineage import dataset_hash, model_id, sha256_file, validation_parents, write_sidecar
from flows.settings import results_dir
from flows.options import ValidateOptions
from storage.stampstore import open_dataset
from tasks.validation import ValidationOptions
from tasks.validation_io import ValidationRun, validate_dirs


def run_validation(options: ValidateOptions) -> ValidationRun:
    """The flow's options -> tasks.validation_io.validate_dirs (the operating point file read here)."""
    fixed = None
    if options.operating_point:
        fixed = float(json.loads(Path(options.operating_point).read_text())["threshold"])
    vopts = ValidationOptions(radius_arcsec=options.radius_arcsec,
                              window_days=(-options.window_before_days, options.window_after_days),
                              n_boot=options.n_boot, seed=options.seed,
                              threshold_rule="fixed" if fixed is not None else "max_precision_at_min_tpr",
                              fixed_threshold=fixed)
    return validate_dirs(options.model, options.dataset, options.tns, options.out, vopts,
                         efficiency_dir=options.efficiency)


def validation_cache_key(context, parameters: dict) -> str:
    """Cache key of a validation: the options, the code, and the inputs' content hashes
    (not their paths: a dataset rebuilt in place gets a new key)."""
    import hashlib
    import inspect
    import sys
    o: ValidateOptions = parameters["options"]
    code = [inspect.getsource(run_validation)]
    code += [inspect.getsource(sys.modules[m]) for m in ("tasks.validation_io", "tasks.validation", "tasks.report",
                                                         "models.scoring", "models.export") if m in sys.modules]
    key = {"options": o.model_dump(mode="json"), "code": hashlib.sha256("".join(code).encode()).hexdigest(),
           "model": model_id(o.model), "dataset": dataset_hash(o.dataset), "tns": sha256_file(o.tns),
           "operating_point": sha256_file(o.operating_point),
           "efficiency": dataset_hash(o.efficiency) if o.efficiency else None}
    return "validate-" + hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


# cached by inputs and code (force a rerun: PREFECT_TASKS_REFRESH_CACHE=true)
validate_task = task(run_validation, name="validate-model", cache_key_fn=validation_cache_key,
                     persist_result=True, result_storage=results_dir())


@flow(name="validate", log_prints=True)
def validate_model(options: ValidateOptions) -> dict:
    """Validation against TNS-matched reals: AUC, FPR at TPR 0.9, curves, operating threshold, report."""
    key = validation_cache_key(None, {"options": options})
    state = validate_task(options, return_state=True)
    res = state.result()
    side = Path(options.out) / "provenance.json"
    recorded = json.loads(side.read_text()).get("cache_key") if side.exists() else None
    if state.name == "Cached" and (not (Path(options.out) / "metrics.json").exists() or recorded != key):
        # a cached result whose directory was removed or since rewritten by another validation
        res = validate_task.with_options(refresh_cache=True)(options)
    m = res.metrics
    get_run_logger().info("AUC %s (n_real %s, n_bogus %s), FPR@TPR0.9 %s, threshold %s", m.get("auc"),
                          m.get("n_real"), m.get("n_bogus"), m.get("fpr_at_tpr90"), m.get("threshold"))
    publish_table("validation-metrics", [{"metric": k, "value": json.dumps(v)} for k, v in m.items()
                                         if not isinstance(v, dict)], "validation metrics")
    report = Path(options.out) / "report.md"
    md = report.read_text() if report.exists() else ""
    for p in res.paths:
        if p.endswith(".png"):
            md += "\n" + png_markdown(Path(p))
    publish_markdown("validation-report", md, "validation report with its figures")
    write_sidecar(Path(options.out), "validation", validation_parents(
        options.model, options.dataset, options.tns, options.operating_point, options.efficiency),
        extra={"cache_key": key})
    night = (open_dataset(options.dataset).meta or {}).get("night")
    tag_run(f"model:{(model_id(options.model) or '')[:12]}", f"night:{night}" if night else "")
    return m


def run_validate(options: ValidateOptions) -> dict:
    m = validate_model(options)
    print(f"validation: AUC {m.get('auc')} (n_real {m.get('n_real')}, n_bogus {m.get('n_bogus')}), "
          f"FPR@TPR0.9 {m.get('fpr_at_tpr90')}, threshold {m.get('threshold')} -> {options.out}")
    return m
