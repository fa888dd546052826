"""Flows: stage 1 (k-fold out-of-fold scores + mislabel flagging) and stage 2."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.common import png_markdown, publish_markdown, publish_table, tag_run
from flows.lineage import model_id, model_parents, stage1_parents, write_sidecar
from flows.options import Stage1Options, Stage2Options
from flows.runner import make_task_runner
from models import stages
from tasks.environment import code_version

plan_task = task(stages.plan_folds, name="plan-folds")
fold_task = task(stages.run_fold, name="stage1-fold")
flag_task = task(stages.flag_and_write, name="flag-label-errors")
stage2_task = task(stages.run_stage2, name="stage2-train")

_TRAIN_KEYS = ("network", "n_logits", "epochs", "batch_size", "lr", "patience", "seed", "device")


def _train_options(options) -> dict:
    return {k: getattr(options, k) for k in _TRAIN_KEYS}


@flow(name="stage1", log_prints=True)
def stage1(options: Stage1Options) -> dict:
    """k-fold training grouped by image; every stamp gets an out-of-fold P(real); flag and write unlabel.parquet."""
    log = get_run_logger()
    dirs = [str(d) for d in options.dataset]
    plan = plan_task(dirs, str(options.out), options.folds, options.seed)
    log.info("folds: %s", plan)
    opts = _train_options(options)
    named = [fold_task.with_options(task_run_name=f"stage1-fold-{k}") for k in range(options.folds)]
    if options.parallel_folds:
        records = [f.result() for f in [t.submit(dirs, str(options.out), k, opts) for k, t in enumerate(named)]]
    else:  # one after another: two cores gain nothing from parallel folds
        records = [t(dirs, str(options.out), k, opts) for k, t in enumerate(named)]
    for r in records:
        log.info("fold %d: %d train / %d held out, best epoch %d, val AUC %s%s", r.fold, r.n_train, r.n_test,
                 r.best_epoch, r.val_auc, " (cached)" if r.cached else "")
    summary = flag_task(dirs, str(options.out), options.folds, options.flag_rule, [r.model_id for r in records],
                        options.gallery)
    publish_table("stage1-folds", [r.__dict__ for r in records], "stage-1 folds")
    if summary.gallery:
        publish_markdown("stage1-flagged-gallery", png_markdown(Path(summary.gallery), "most confidently flagged"))
    result = {"stage1": str(options.out), "n": summary.n, "n_flagged": summary.n_flagged,
              "flagged_share": summary.n_flagged / max(summary.n, 1), "flagged_by_label": summary.flagged_by_label,
              "rule": summary.rule, "unlabel": summary.unlabel, "folds": [r.__dict__ for r in records]}
    (Path(options.out) / "stage1.json").write_text(json.dumps({**result, "options": options.model_dump(mode="json"),
                                                              "code": code_version()}, indent=1, default=str))
    parents = stage1_parents(options.dataset)  # lineage: the unlabel manifest's parents and this run
    write_sidecar(Path(options.out), "unlabel", parents)
    tag_run(*(f"dataset:{(h or '')[:12]}" for h in list(parents["datasets"].values())[:7]))
    return result


@flow(name="stage2", log_prints=True)
def stage2(options: Stage2Options) -> dict:
    """Semi-supervised training (CE + ECH + VAT) with flagged stamps kept, removed or unlabelled."""
    opts = _train_options(options) | {k: getattr(options, k) for k in (
        "mode", "l_ce", "l_ech", "l_lds", "ech_margin", "vat_xi", "vat_eps", "vat_power_iters")}
    opts["code"] = code_version()
    result = stage2_task.with_options(task_run_name=f"stage2-{options.mode}")(
        [str(d) for d in options.dataset], str(options.unlabel), str(options.out), opts)
    publish_table("stage2-model", [{"what": k, "value": str(v)} for k, v in result.items()], "stage-2 model")
    # lineage: added once by the run that wrote the model, never replaced
    write_sidecar(Path(options.out), "model", model_parents(options.dataset, options.unlabel), overwrite=False)
    tag_run(f"model:{(model_id(Path(options.out)) or '')[:12]}")
    return result


def run_stage1(options: Stage1Options) -> dict:
    flow_fn = stage1.with_options(task_runner=make_task_runner(options.cluster, options.workers)) \
        if options.parallel_folds else stage1
    r = flow_fn(options)
    print(f"stage 1: {r['n']} stamps, {r['n_flagged']} flagged ({100 * r['flagged_share']:.2f} %) "
          f"by label {r['flagged_by_label']} -> {r['unlabel']}")
    return r


def run_stage2(options: Stage2Options) -> dict:
    r = stage2(options)
    print(f"stage 2 ({options.mode}): trained on {r['n_train']} stamps ({r['n_unlabelled']} unlabelled, "
          f"{r['n_removed']} removed) -> {r['model']}")
    return r
