"""Flow: the paper's experiment grid (tasks/experiments.py), one task per cell.

Inputs are existing dataset directories (``--train``, ``--heldout``, ``--tns``) or a survey
preset built into WORK/data/ first. Cells are cached by a hash of their parameters: a cell
JSON under OUT/cells/ with the same key is not rerun, so an interrupted grid resumes where
it stopped (in this or a later session). The summary (OUT/summary.json) is rewritten at
the end from every cell JSON present.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.options import DEFAULT_NIGHT, BuildOptions, ExperimentsOptions, SimulateOptions
from tasks import experiments as X

heldout_task = task(X.heldout_table, name="experiments-heldout", cache_policy=NO_CACHE)
stage1_task = task(X.run_stage1, name="experiments-stage1", cache_policy=NO_CACHE)
cell_task = task(X.run_cell, name="experiments-cell", cache_policy=NO_CACHE)
summary_task = task(X.summarize, name="experiments-summary", cache_policy=NO_CACHE)
rescore_task = task(X.rescore_cell, name="experiments-rescore", cache_policy=NO_CACHE)


def _nights(n: int, start: str = DEFAULT_NIGHT) -> list[str]:
    d = _dt.date.fromisoformat(start)
    return [(d + _dt.timedelta(days=i)).isoformat() for i in range(n)]


def build_inputs(options: ExperimentsOptions) -> tuple[list[str], list[str], str]:
    """Simulate and build the preset's nights into WORK/data/ (each step skips what exists)."""
    from flows.build import build_dataset
    from flows.simulate import simulate_survey
    data = Path(options.work) / f"inputs-{options.preset}"
    survey = data / "survey"
    nights = _nights(options.train_nights + options.heldout_nights)
    have = set()
    if (survey / "manifest.csv").exists():
        import pandas as pd
        m = pd.read_csv(survey / "manifest.csv")
        have = set(m["night"].astype(str)) if "night" in m else set()
    for n in nights:
        if n not in have:
            simulate_survey(SimulateOptions(preset=options.preset, night=n, seed=options.seed, out=survey,
                                            cluster="threads"))
    train, held = [], []
    for i, n in enumerate(nights):
        inject = i < options.train_nights
        d = data / (f"train-{n}" if inject else f"held-{n}")
        if not (d / "current").exists():
            build_dataset(BuildOptions(manifest=survey / "manifest.csv", night=n, inject=inject, out=d,
                                       seed=options.seed, cluster="threads"))
        (train if inject else held).append(str(d))
    return train, held, str(survey / "tns.csv")


def context_for(options: ExperimentsOptions) -> X.ExperimentContext:
    if options.preset:
        train, held, tns = build_inputs(options)
    else:
        train, held, tns = [str(p) for p in options.train], [str(p) for p in options.heldout], str(options.tns)
    ctx = X.ExperimentContext(
        train_dirs=tuple(train), heldout_dirs=tuple(held), tns=tns, out=str(options.out), work=str(options.work),
        network=options.network, stage1_network=options.stage1_network, folds=options.folds,
        epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, patience=options.patience,
        device=options.device, n_boot=options.n_boot, threads=options.threads, rf_trees=options.rf_trees,
        reference_epochs=options.reference_epochs, rerun=options.rerun, flagger=options.flagger,
        flag_cut=options.flag_cut)
    return X.prepare_context(ctx)


@flow(name="experiments", log_prints=True)
def experiments(options: ExperimentsOptions) -> dict:
    """Run (or resume) the grid's cells one after another and write the summary."""
    log = get_run_logger()
    grid = "quick" if options.quick else options.grid
    cells = X.grid_cells(grid, seeds=options.seeds, methods=options.methods, noises=options.noises)
    ctx = context_for(options)
    heldout_task(ctx)
    log.info("grid %s: %d cells; train %s; held-out %s", grid, len(cells), ctx.train_dirs, ctx.heldout_dirs)
    if options.rescore_from is not None:  # trains nothing, the tails' reference included
        return rescore(cells, ctx, options.rescore_from)
    if any(X.Noise.parse(c.noise).model == "tail" for c in cells):  # the tails' reference scores first
        stage1_task.with_options(task_run_name=f"stage1-survey-s{ctx.reference_seed}")(ctx, X.Noise(),
                                                                                        ctx.reference_seed)
    done, ran, failed = [], 0, []
    for i, c in enumerate(cells):
        t0, name = time.perf_counter(), X.cell_name(c, ctx)
        if X.cached_cell(c, ctx) is not None:
            rec = {**X.cached_cell(c, ctx), "cached": True}
        else:
            try:
                rec = cell_task.with_options(task_run_name=name)(c, ctx)
            except Exception as e:  # a failed cell is logged, not cached; the grid goes on
                log.error("cell %s failed: %s: %s", name, type(e).__name__, e)
                failed.append({"cell": name, "error": f"{type(e).__name__}: {e}"})
                continue
            ran += 1
        m = rec.get("metrics") or {}
        t = rec.get("truth") or {}
        print(f"[{i + 1}/{len(cells)}] {name}: AUC {m.get('auc')} FPR@0.9 {m.get('fpr_at_tpr90')} | truth AUC "
              f"{t.get('auc')} FPR@0.9 {t.get('fpr_at_tpr90')} ({'cached' if rec.get('cached') else f'{time.perf_counter() - t0:.0f} s'})")
        done.append(name)
    summary = summary_task(ctx.out, n_boot=max(options.n_boot, 200))
    X.write_failures(ctx.out, failed, settled=done)
    return {"grid": grid, "cells": len(cells), "ran": ran, "cached": len(done) - ran, "failed": failed, "out": ctx.out,
            "summary": str(Path(ctx.out) / "summary.json"), "n_rows": len(summary["rows"])}


def rescore(cells: list, ctx: X.ExperimentContext, source: Path) -> dict:
    """--rescore-from: one task per source cell whose model can be scored on ctx's held-out nights
    (the others are listed as skipped, with why), then the summary of ctx.out."""
    log = get_run_logger()
    plan = X.rescore_plan(source, cells, ctx)
    for s in plan.skipped:
        log.warning("rescore: skipped %s: %s", s["cell"], s["why"])
    ran, failed, done = 0, [], []
    for i, rec in enumerate(plan.records):
        name = X.record_name(rec)
        try:
            r = rescore_task.with_options(task_run_name=f"rescore-{name}")(rec, ctx)
        except Exception as e:  # logged, not cached; the others go on
            log.error("rescore of %s failed: %s: %s", name, type(e).__name__, e)
            failed.append({"cell": name, "error": f"{type(e).__name__}: {e}"})
            continue
        ran += not r["cached"]
        done.append(name)
        print(f"[{i + 1}/{len(plan.records)}] rescored {name}: AUC {r['metrics'].get('auc')} | truth AUC "
              f"{(r.get('truth') or {}).get('auc')}{' (cached)' if r['cached'] else ''}")
    summary = summary_task(ctx.out, n_boot=max(ctx.n_boot, 200))
    X.write_failures(ctx.out, failed, settled=done)
    return {"grid": f"rescore of {source}", "cells": len(plan.records), "ran": ran, "cached": len(done) - ran,
            "failed": failed, "skipped": plan.skipped, "out": ctx.out, "summary": str(Path(ctx.out) / "summary.json"),
            "n_rows": len(summary["rows"])}


def run_experiments(options: ExperimentsOptions) -> dict:
    import json
    import shlex
    import sys
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "rbflow " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if Path(sys.argv[0]).name == "rbflow" \
        else f"rbflow experiments ({options.model_dump_json(exclude_defaults=True)})"
    with open(out / "runs.jsonl", "a") as fh:  # the command behind every number in docs/results.md
        fh.write(json.dumps({"command": cmd, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "options": options.model_dump(mode="json")}) + "\n")
    r = experiments(options)
    print(f"experiments ({r['grid']}): {r['cells']} cells, {r['ran']} run, {r['cached']} cached, "
          f"{len(r['failed'])} failed" + (f", {len(r['skipped'])} skipped" if "skipped" in r else "")
          + f" -> {r['summary']}")
    return r
