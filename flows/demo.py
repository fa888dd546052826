"""Flow: the whole chain on the embedded simulated survey.

simulate (training night + validation night) -> build (injected) -> stage 1 -> flag ->
stage 2 -> build the validation night with --no-inject (and, for the efficiency curves, with
injections into OUT/effnight) -> validate.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import time
from pathlib import Path

from prefect import flow

from flows.build import build_dataset, format_summary
from flows.options import (BuildOptions, DemoOptions, SimulateOptions, Stage1Options, Stage2Options,
                           ValidateOptions)
from flows.runner import load_cluster_spec, make_task_runner
from flows.simulate import simulate_survey
from flows.train import stage1, stage2
from flows.validate import validate_model


def next_night(night: str) -> str:
    return (_dt.date.fromisoformat(night) + _dt.timedelta(days=1)).isoformat()


@flow(name="demo", log_prints=True)
def demo(options: DemoOptions) -> dict:
    """Run every step of the chain into OUT/{survey,dataset,stage1,model,valnight,validation}."""
    out = Path(options.out)
    runner = lambda: make_task_runner(options.cluster, options.workers)  # noqa: E731 (spec read at entry)
    val_night = next_night(options.night)
    for night in (options.night, val_night):
        simulate_survey.with_options(task_runner=runner())(
            SimulateOptions(preset=options.preset, night=night, seed=options.seed, out=out / "survey"))
    manifest = out / "survey" / "manifest.csv"
    train = build_dataset.with_options(task_runner=runner())(
        BuildOptions(manifest=manifest, night=options.night, out=out / "dataset", seed=options.seed))
    train_opts = dict(network=options.network, epochs=options.epochs, seed=options.seed, device=options.device)
    s1 = stage1(Stage1Options(dataset=[out / "dataset"], out=out / "stage1", **train_opts))
    model_dir = out / "model"
    if model_dir.exists():  # model directories are never modified: a rerun of the demo writes a new one
        model_dir = out / f"model-{time.strftime('%Y%m%dT%H%M%S')}"
    s2 = stage2(Stage2Options(dataset=[out / "dataset"], unlabel=out / "stage1" / "unlabel.parquet",
                              mode="unlabelled", out=model_dir, **train_opts))
    val = build_dataset.with_options(task_runner=runner())(
        BuildOptions(manifest=manifest, night=val_night, inject=False, out=out / "valnight", seed=options.seed))
    eff = None
    if options.efficiency:  # the same unseen night with injections: recovered fraction vs mag / host offset
        eff = build_dataset.with_options(task_runner=runner())(
            BuildOptions(manifest=manifest, night=val_night, out=out / "effnight", seed=options.seed + 1))
    metrics = validate_model(ValidateOptions(model=model_dir, dataset=out / "valnight",
                                             tns=out / "survey" / "tns.csv", out=out / "validation",
                                             efficiency=out / "effnight" if eff else None))
    return {"train": train, "valnight": val, "effnight": eff, "stage1": {k: v for k, v in s1.items() if k != "folds"},
            "stage2": s2, "metrics": metrics, "out": str(out)}


def format_demo(r: dict, seconds: float) -> str:
    m, s1 = r["metrics"], r["stage1"]
    lines = ["", "=" * 72, f"rbflow demo finished in {seconds:.0f} s -> {r['out']}",
             format_summary(r["train"]), format_summary(r["valnight"]),
             *([format_summary(r["effnight"])] if r.get("effnight") else []),
             f"stage 1: {s1['n']} stamps, flagged {s1['n_flagged']} ({100 * s1['flagged_share']:.2f} %), "
             f"by label {s1['flagged_by_label']} -> {s1['unlabel']}",
             f"stage 2: {r['stage2']['n_train']} stamps ({r['stage2']['n_unlabelled']} unlabelled) -> {r['stage2']['model']}",
             f"validation: AUC {m.get('auc')} CI {m.get('auc_ci')}, FPR@TPR0.9 {m.get('fpr_at_tpr90')}, "
             f"n_real {m.get('n_real')}, n_bogus {m.get('n_bogus')}, threshold {m.get('threshold')}"]
    if m.get("truth"):
        t = m["truth"]
        lines.append(f"  vs simulation truth: AUC {t.get('auc')}, FPR@TPR0.9 {t.get('fpr_at_tpr90')}, "
                     f"n_real {t.get('n_real')}, n_bogus {t.get('n_bogus')}")
    lines.append(f"report: {Path(r['out']) / 'validation' / 'report.md'}")
    return "\n".join(lines)


def run_demo(options: DemoOptions) -> dict:
    t0 = time.perf_counter()
    spec = load_cluster_spec(options.cluster)
    with contextlib.ExitStack() as stack:
        if "cluster_class" in spec and spec["cluster_class"].endswith("LocalCluster"):
            # one LocalCluster for the whole demo instead of one per fan-out (~8 s each)
            from distributed import LocalCluster
            kwargs = dict(spec.get("cluster_kwargs") or {})
            if options.workers:
                kwargs["n_workers"] = options.workers
            cluster = stack.enter_context(LocalCluster(**kwargs))
            options = options.model_copy(update={"cluster": cluster.scheduler_address, "workers": None})
        r = demo(options)
    secs = time.perf_counter() - t0
    (Path(options.out) / "demo_summary.json").write_text(json.dumps({**r, "seconds": secs}, indent=1, default=str))
    print(format_demo(r, secs))
    return r
