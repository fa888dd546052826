"""Write docs/results.md (and docs/experiments/*.png) from the experiment cells' JSON.

    .venv/bin/python docs/scripts/results.py [--out docs/experiments] [--md docs/results.md] [--n-boot 1000]

Reads OUT/cells/*.json, OUT/scores/*.parquet, OUT/heldout.parquet and OUT/flagging/*.json
(written by `rbflow experiments`), recomputes OUT/summary.json (paired bootstrap against
Simple-all), and writes the Markdown: what was run at which size and by which command
(OUT/runs.jsonl), the results table beside the paper's, FPR vs label noise, the flagging
study and the orderings. The hand-written reading is OUT/reading.md, included as is.
"""

from __future__ import annotations

import argparse
from collections import Counter
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tasks.experiments import BASELINE, METHODS, Noise, same_training, summarize  # noqa: E402


def f(v, fmt="{:.4f}"):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def ms(pair, fmt="{:.4f}"):
    m, s = pair if pair else (None, None)
    if m is None:
        return "–"
    return f(m, fmt) + ("" if s is None else " ± " + f(s, fmt))


def diff(row, lab, metric, fmt="{:+.4f}"):
    vb = (row.get(lab) or {}).get("vs_baseline")
    return _d(vb, metric, fmt) if vb else "–"


def _d(pair: dict, metric: str, fmt: str) -> str:
    d = pair[metric]
    lo, hi = d["diff_ci"]
    return f"{f(d['diff'], fmt)} [{f(lo, fmt)}, {f(hi, fmt)}]"


def variants(rows: list[dict]) -> list[tuple[str, str]]:
    """(method, network) pairs present, in the paper's row order, each row's own network first and a
    stand-in (``--network simple`` for a Complex row) after it."""
    have = {(r["method"], r["network"], r.get("stand_in", False)) for r in rows}
    return [(m, n) for m in METHODS for _, n in sorted((si, n) for mm, n, si in have if mm == m)]


def label(m: str, net: str) -> str:
    return m if net == METHODS[m].network else f"{m} (on {net})"


def _show(p: Path) -> str:
    """A path as the docs write it: relative to the repository where it lies inside it."""
    p = Path(p).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def find(rows: list[dict], m: str, net: str, noise: str) -> dict | None:
    return next((r for r in rows if r["method"] == m and r["network"] == net and r["noise"] == noise), None)


def fpr_plot(summary: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = summary["rows"]
    # only methods run at more than one noise level (single points belong to the tables)
    methods = [v for v in variants(rows) if len({r["noise"] for r in rows if (r["method"], r["network"]) == v}) > 1]
    paths = []
    if not methods:  # one noise setting (e.g. the val night's OUT): nothing to plot
        return paths
    for lab, title in (("truth", "against simulation truth"), ("tns", "against TNS-matched reals")):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, model in zip(axes, ("uniform", "tail")):
            for k, m in enumerate(methods):
                pts = []
                for r in rows:
                    if (r["method"], r["network"]) != m:
                        continue
                    n = Noise.parse(r["noise"])
                    if n.model in ("survey", model):
                        v = r[lab]["fpr_at_tpr90"]
                        if v[0] is not None:
                            pts.append((n.rate, v[0], v[1] or 0.0))
                if len(pts) < 1:
                    continue
                pts.sort()
                x, y, e = map(np.array, zip(*pts))
                jitter = (k - (len(methods) - 1) / 2) * 0.08  # side by side, so the error bars stay apart
                ax.errorbar(x * 100 + jitter, y, yerr=e, marker="o", capsize=3, label=label(*m),
                            color=f"C{k % 10}")  # one colour per method in both panels
            ax.set_xlabel(f"planted {model} flips (% of each class; 0 = the survey's own errors only)")
            ax.set_title(f"{model} flips")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(f"FPR at TPR = 0.9 ({title})")
        axes[1].legend(fontsize=7, loc="best")
        fig.suptitle(f"FPR vs label noise per method, mean ± s.d. over seeds ({title})")
        fig.tight_layout()
        p = out / f"fpr_vs_noise_{lab}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def bench_section(d: Path) -> list[str]:
    """Benchmarks whose JSON was copied under OUT/bench/ (score.json, memory.json, ...)."""
    L = []
    sc, mem = d / "score.json", d / "memory.json"
    if not (sc.exists() or mem.exists()):
        return L
    L += ["## Benchmarks (`rbflow bench NAME`)", ""]
    if sc.exists():
        b = json.loads(sc.read_text())
        met = b["goal_met"]
        L += [f"**score** (`{b.get('command', 'rbflow bench score')}`; {b['network']} network, stamps in memory, "
              f"best of the repeats): exported `model.pt2` (channels-last weights) in float32 and in bfloat16 "
              f"(`precision=\"bfloat16\"`, CPU autocast; CPU capability {b.get('cpu_capability', '?')}) against the "
              f"eager float32 network in the same run. Goal {b['goal_per_s']:,.0f}/s (1e6 candidates per minute on "
              f"2 cores): **{'met' if met else 'not met'}** here (best float32 {b['best_exported_per_s']:,.0f}/s"
              + (f", bfloat16 {b['best_exported_bf16_per_s']:,.0f}/s; bfloat16 scores within "
                 f"{b['bf16_max_abs_score_diff']:.1e} of float32" if "best_exported_bf16_per_s" in b else "") + ").",
              "", "| threads | batch | exported float32 /s | exported bfloat16 /s | eager float32 /s | "
              "exported / eager (float32) | best /min |", "|---|---|---|---|---|---|---|"]
        for r in b["rows"]:
            bf = r.get("exported_bf16_per_s")
            L.append(f"| {r['threads']} | {r['batch']} | {r['exported_per_s']:,.0f} | "
                     f"{f'{bf:,.0f}' if bf else ''} | {r['eager_per_s']:,.0f} | {r['exported_over_eager']:.2f} | "
                     f"{r.get('best_per_min', r['exported_per_min']):,.0f} |")
        if b.get("zarr_end_to_end"):
            z = b["zarr_end_to_end"]
            L.append(f"| {z['threads']} | {z['batch']} (Zarr -> score_dataset, end to end) | "
                     f"{z.get('float32_per_s', z.get('per_s', 0)):,.0f} | "
                     f"{z['bfloat16_per_s']:,.0f} | | | |" if "bfloat16_per_s" in z else
                     f"| {z['threads']} | {z['batch']} (Zarr -> score_dataset, end to end) | {z['per_s']:,.0f} | | | | |")
        L.append("")
        if b.get("note"):
            L += [b["note"], ""]
    if mem.exists():
        b = json.loads(mem.read_text())
        g = 1024 ** 3
        L += [f"**memory** (`rbflow bench memory --preset {b['preset']}`): one {b['preset']} sensor image simulated "
              "and processed (PSF, injection, subtraction, detection, cut-outs), each in a fresh process. Goal < 2 GiB "
              f"per Dask worker: **{'met' if b['goal_met'] else 'not met'}**.", "",
              "| where | RSS before | after simulation | peak RSS | peak increment | seconds |", "|---|---|---|---|---|---|"]
        for k, r in b["rows"].items():
            L.append(f"| {k} | {r['rss_before'] / g:.2f} GiB | {r['rss_after_simulate'] / g:.2f} GiB | "
                     f"{r['peak_rss'] / g:.2f} GiB | {r['peak_increment'] / g:.2f} GiB | {r['seconds']:.1f} |")
        L.append("")
        if b.get("note"):
            L += [b["note"], ""]
    L += ["Not rerun here: `rbflow bench build` (docs/per_sensor.md), `rbflow bench train` (docs/models.md: "
          "training per network, loader vs in-memory), `rbflow bench overhead` (Prefect+Dask overhead, "
          "docs/operations.md). Their tables live in those documents.", ""]
    return L


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "experiments")
    ap.add_argument("--md", type=Path, default=REPO / "docs" / "results.md")
    ap.add_argument("--n-boot", type=int, default=1000)
    a = ap.parse_args(argv)
    s = summarize(a.out, n_boot=a.n_boot)
    cells = [json.loads(p.read_text()) for p in sorted((a.out / "cells").glob("*.json"))]
    rows = s["rows"]
    pngs = fpr_plot(s, a.out) if rows else []
    here = f"--out {_show(a.out)} --md {_show(a.md)}"
    default = f"--out {_show(REPO / 'docs' / 'experiments')} --md {_show(REPO / 'docs' / 'results.md')}"
    runs = [json.loads(ln) for ln in (a.out / "runs.jsonl").read_text().splitlines()] \
        if (a.out / "runs.jsonl").exists() else []
    L = ["# Results: the paper's experiments on the simulated survey", "",
         f"Generated by `.venv/bin/python docs/scripts/results.py{'' if here == default else ' ' + here}` from "
         f"{len(cells)} cell JSONs under `{_show(a.out)}/cells/` (written by `rbflow experiments`, flow "
         "`flows/experiments.py`, logic "
         "`tasks/experiments.py`). Do not edit by hand: rerun the script.", ""]
    # --- what was run
    L += ["## What was run, at which size", ""]
    if cells:
        c0 = cells[0]
        n_train = sorted({c["n_train_stamps"] for c in cells})
        L += [f"- Training nights: {', '.join('`' + d + '`' for d in c0['train_dirs'])} "
              f"({'/'.join(map(str, n_train))} stamps in all).",
              f"- Held-out nights (never trained on, built with `--no-inject`): "
              f"{', '.join('`' + d + '`' for d in c0['heldout_dirs'])}: {s['n_heldout']} detections; against TNS "
              f"{s['n_real_tns']} reals ({s['n_real_objects_tns']} objects) and {s['n_bogus_tns']} bogus; against "
              f"truth {s['n_truth_real']} astrophysical and {s['n_truth_bogus']} artifacts.",
              "- Inputs (content hashes of the training / held-out nights, first 8 hex digits; part of every cell's "
              "key): " + "; ".join(
                  f"{'+'.join(h[:8] for h in k[0])} / {'+'.join(h[:8] for h in k[1])}: {n} cells" for k, n in sorted(
                      Counter((tuple(c["inputs"]["train"]), tuple(c["inputs"]["heldout"])) for c in cells).items(),
                      key=lambda kv: -kv[1])) + ".",
              f"- Networks: {sorted({c['network'] for c in cells})} (stage 1: "
              f"{sorted({c['stage1_network'] for c in cells if c['stage1_network']})}, "
              f"{sorted({c['folds'] for c in cells if c['folds']})} folds). Rows named *Complex* ran on the network "
              "listed here: with `--network simple` the Simple CNN stands in for the SE-ResNet (CPU budget).",
              f"- Training: epochs {sorted({c['train'].get('epochs') for c in cells if 'epochs' in c['train']})}, "
              f"patience {sorted({c['train'].get('patience') for c in cells if 'patience' in c['train']})}, "
              f"batch {sorted({c['train'].get('batch_size') for c in cells if 'batch_size' in c['train']})}; "
              f"seeds {sorted({c['seed'] for c in cells})}; cluster bootstrap over TNS objects and images.",
              f"- Time per cell on the 2-core machine (other jobs at times on the same cores): median "
              f"{np.median([c['seconds']['total'] for c in cells]):.0f} s, max "
              f"{max(c['seconds']['total'] for c in cells):.0f} s (stage 1 counted in the first cell of its "
              "(noise, seed); budget 60 min)"
              + "".join(f"; {net} cells: median {np.median(v):.0f} s, max {max(v):.0f} s" for net, v in sorted(
                  {n: [c['seconds']['total'] for c in cells if c['network'] == n]
                   for n in {c['network'] for c in cells}}.items())) + ".", ""]
    if runs:
        L += ["Commands (from `docs/experiments/runs.jsonl`; a command run again to resume is listed once):",
              "", "```bash"]
        L += list(dict.fromkeys(r["command"] for r in runs))
        L += ["```", ""]
    # --- main table
    L += ["## The paper's table beside ours (survey's own label errors, no flips added)", "",
          "AUC and FPR at TPR = 0.9: mean ± s.d. over seeds. Δ: the seed-averaged difference against "
          f"`{BASELINE}` with a paired 95 % cluster-bootstrap interval over the held-out detections "
          "(each replicate resamples TNS objects / injections and images once and scores both methods on it).", "",
          "| row | paper AUC | paper FPR | AUC (TNS) | FPR (TNS) | ΔFPR vs Simple-all (TNS) | AUC (truth) | FPR (truth) | ΔFPR vs Simple-all (truth) | ΔAUC (truth) | seeds |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, meth in METHODS.items():
        pa, pf = meth.paper if meth.paper else (None, None)
        here = [r for r in rows if r["method"] == m and r["noise"] == "survey"]
        if not here:
            L.append(f"| {meth.row} | {f(pa)} | {f(pf, '{:.2e}')} | not run | | | | | | | |")
        for r in sorted(here, key=lambda r: (r.get("stand_in", False), r["network"])):
            L.append(f"| {meth.row} ({r['network']}{' stand-in' if r.get('stand_in') else ''}) | {f(pa)} | {f(pf, '{:.2e}')} | {ms(r['tns']['auc'])} | "
                     f"{ms(r['tns']['fpr_at_tpr90'], '{:.3f}')} | {diff(r, 'tns', 'fpr_at_tpr90', '{:+.3f}')} | "
                     f"{ms(r['truth']['auc'])} | {ms(r['truth']['fpr_at_tpr90'], '{:.3f}')} | "
                     f"{diff(r, 'truth', 'fpr_at_tpr90', '{:+.3f}')} | {diff(r, 'truth', 'auc', '{:+.4f}')} | "
                     f"{len(r['seeds'])} |")
    L.append("")
    # --- noise table
    order = {"survey": 0, "uniform": 1, "tail": 2}
    noises = sorted({r["noise"] for r in rows}, key=lambda n: (order[Noise.parse(n).model], Noise.parse(n).rate))
    if noises:
        L += ["## AUC vs label noise (truth labels; TNS in brackets), mean ± s.d. over seeds", "",
              "| method | " + " | ".join(noises) + " |", "|---|" + "---|" * len(noises)]
        for m, net in variants(rows):
            cells_ = []
            for n in noises:
                r = find(rows, m, net, n)
                cells_.append("–" if r is None else f"{ms(r['truth']['auc'], '{:.3f}')} "
                              f"({f(r['tns']['auc'][0], '{:.3f}')}) n={len(r['seeds'])}")
            L.append(f"| {label(m, net)} | " + " | ".join(cells_) + " |")
        L.append("")
        L += ["## FPR at TPR = 0.9 vs label noise (truth labels; TNS in brackets)", "",
              "| method | " + " | ".join(noises) + " |", "|---|" + "---|" * len(noises)]
        for m, net in variants(rows):
            cells_ = []
            for n in noises:
                r = find(rows, m, net, n)
                cells_.append("–" if r is None else f"{ms(r['truth']['fpr_at_tpr90'], '{:.3f}')} "
                              f"({f(r['tns']['fpr_at_tpr90'][0], '{:.3f}')})")
            L.append(f"| {label(m, net)} | " + " | ".join(cells_) + " |")
        L.append("")
        L += ["Paired differences against Simple-all at the same noise (truth labels), FPR@TPR=0.9 "
              "[95 % interval]:", "", "| method | " + " | ".join(noises) + " |", "|---|" + "---|" * len(noises)]
        for m, net in variants(rows):
            if m == BASELINE:
                continue
            cells_ = []
            for n in noises:
                r = find(rows, m, net, n)
                cells_.append("–" if r is None else diff(r, "truth", "fpr_at_tpr90", "{:+.3f}"))
            L.append(f"| {label(m, net)} | " + " | ".join(cells_) + " |")
        L.append("")
    for p in pngs:
        L += [f"![{p.stem}]({os.path.relpath(p.resolve(), a.md.resolve().parent)})", ""]
    # --- orderings
    L += ["## The paper's orderings, checked on these cells", ""]

    def val(m, n, lab="truth", metric="fpr_at_tpr90", net="simple"):
        r = find(rows, m, METHODS[m].network if m == BASELINE else net, n)
        return None if r is None else r[lab][metric][0]

    L += ["Seed means; FPR at TPR = 0.9 against truth and TNS, and AUC against truth (the steadier number here: "
          "see the reading). *unlabelled* = Complex-unlabelled-CE+VAT, *removed* = Complex-removed-CE, "
          "*VAT (all)* = Complex-all-CE+VAT, *CE (all)* = Complex-all-CE; the same with +ECH in every loss where "
          "the ECH rows ran. They are checked once on the SE-ResNet (each row's own network, where run) and once "
          "on the Simple stand-in, where *CE (all)* is Simple-all-CE (the same training as Complex-all-CE on "
          "Simple).", ""]
    for net, family in (("complex", "SE-ResNet"), ("simple", "Simple stand-in")):
        for n in noises:
            for ech in ("", "-ech"):
                bits = []
                for lab, metric, better, name in (("truth", "fpr_at_tpr90", "lt", "FPR truth"),
                                                  ("tns", "fpr_at_tpr90", "lt", "FPR TNS"),
                                                  ("truth", "auc", "gt", "AUC truth")):
                    u = val(f"complex-unlabelled{ech}-vat", n, lab, metric, net)
                    rm = val(f"complex-removed{ech}", n, lab, metric, net)
                    v = val(f"complex-all{ech}-vat", n, lab, metric, net)
                    b = val(same_training(f"complex-all{ech}", net), n, lab, metric, net)
                    fm = "{:.4f}" if metric == "auc" else "{:.3f}"
                    win = (lambda x, y: x < y) if better == "lt" else (lambda x, y: x > y)
                    part = []
                    if u is not None and rm is not None:
                        part.append(f"unlabelled {f(u, fm)} vs removed {f(rm, fm)} "
                                    f"({'unlabel better' if win(u, rm) else 'unlabel NOT better'})")
                    if v is not None and b is not None:
                        part.append(f"VAT (all) {f(v, fm)} vs CE (all) {f(b, fm)} "
                                    f"({'VAT helps' if win(v, b) else 'VAT does NOT help'})")
                    if metric != "auc" and u and b is not None:
                        part.append(f"CE (all) / unlabelled = {b / u:.2f}x")
                    if part:
                        bits.append(f"{name}: " + ", ".join(part))
                if bits:
                    L.append(f"- **{n}, {family}{', every loss +ECH' if ech else ''}**: " + "; ".join(bits) + ".")
    L.append("")
    if s.get("pairs"):
        L += ["The same orderings as paired differences A - B on the same network (seed-averaged, 95 % cluster "
              "bootstrap over the held-out detections; negative ΔFPR and positive ΔAUC favour A):", "",
              "| A | B | noise | network | labels | ΔFPR@TPR=0.9 | ΔAUC | seeds |", "|---|---|---|---|---|---|---|---|"]
        for p in sorted(s["pairs"], key=lambda p: (p["a"], p["network"] != "complex", noises.index(p["noise"])
                                                   if p["noise"] in noises else 99, p["labels"] != "truth")):
            L.append(f"| {p['a']} | {p['b']} | {p['noise']} | {p['network']} | {p['labels']} | "
                     f"{_d(p, 'fpr_at_tpr90', '{:+.3f}')} | {_d(p, 'auc', '{:+.4f}')} | {len(p['seeds'])} |")
        L.append("")
    # --- flagging
    if s["flagging"]:
        L += ["## Flagging study (stage 1, p = 0.5 rule)", "",
              "Flagger *cnn*: the paper's rule, the stage-1 network's out-of-fold P(real) at p = 0.5 (what stage 2 "
              "used). *cnn+rf*: the mean of that P(real) and the feature baseline's out-of-fold P(real) on the "
              "same folds (`tasks.experiments.rf_oof`), also at p = 0.5; reported here only, no cell trained on it.",
              "",
              "Precision / recall of the flagged set against the planted flips and, separately, against the "
              "survey's own label errors left in place (a real transient among the detections labelled bogus, a "
              "fake on an artifact labelled real), seed means; *random*: a random flag set of the same size in "
              "the same S/N bin. *P planted, own set aside*: precision against the planted flips once the "
              "stamps carrying one of the survey's own errors are left out of the flags and the bin (does stage 1 "
              "tell a planted flip from a correct label?), its random baseline in brackets. "
              "Target: both >= 0.8 at 1 % flips for S/N > 10.", "",
              "| noise | flagger | S/N bin | n | flagged | planted | P planted | R planted | P random | R random | P planted, own set aside | own errors | P own | R own | P random (own) | P any error |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["flagging"]:
            if r["bin"] not in ("all", "snr>10", "<10", "10-20", "20-40", ">=40"):
                continue
            if r.get("flagger", "cnn") != "cnn" and r["bin"] not in ("all", "snr>10"):
                continue
            pl, ow = dict(r["planted"]), r["own"]
            if not pl["n_target"]:
                pl = {k: (v if k == "n_target" else None) for k, v in pl.items()}
            eo = r.get("planted_excl_own")
            ex = "–" if not eo or not pl["n_target"] else \
                f"{f(eo['precision'], '{:.2f}')} ({f(eo['random_expected_precision'], '{:.3f}')})"
            L.append(f"| {r['noise']} | {r.get('flagger', 'cnn')} | {r['bin']} | {f(r['n'], '{:.0f}')} | {f(r['n_flagged'], '{:.0f}')} | "
                     f"{f(pl['n_target'], '{:.0f}')} | {f(pl['precision'], '{:.2f}')} | {f(pl['recall'], '{:.2f}')} | "
                     f"{f(pl['random_precision'], '{:.2f}')} | {f(pl['random_recall'], '{:.2f}')} | {ex} | "
                     f"{f(ow['n_target'], '{:.0f}')} | {f(ow['precision'], '{:.2f}')} | {f(ow['recall'], '{:.2f}')} | "
                     f"{f(ow['random_precision'], '{:.2f}')} | {f(r['any']['precision'], '{:.2f}')} |")
        L.append("")
        if s.get("flag_cuts"):
            L += ["Stricter cuts (S/N > 10, seed means): a stamp is flagged when its out-of-fold probability of "
                  "the *other* class exceeds the cut (0.5 is the paper's rule above). Precision / recall against "
                  "the planted flips, against them with the survey's own errors set aside, and against any label "
                  "error (planted or own).", "",
                  "| noise | flagger | cut | flagged | P planted | R planted | P planted, own set aside | P any error | R any error |",
                  "|---|---|---|---|---|---|---|---|---|"]
            for r in s["flag_cuts"]:
                if r["noise"] == "survey":
                    pl, ex = "– | –", "–"
                else:
                    pl = f"{f(r['planted']['precision'], '{:.2f}')} | {f(r['planted']['recall'], '{:.2f}')}"
                    ex = f(r["planted_excl_own"]["precision"], "{:.2f}")
                L.append(f"| {r['noise']} | {r.get('flagger', 'cnn')} | {r['cut']:g} | {f(r['n_flagged'], '{:.0f}')} | {pl} | {ex} | "
                         f"{f(r['any']['precision'], '{:.2f}')} | {f(r['any']['recall'], '{:.2f}')} |")
            L.append("")
        hit = [r for r in s["flagging"] if r["bin"] == "snr>10" and r["noise"] in ("uniform-0.01", "tail-0.01")]
        for r in hit:
            ok = (r["planted"]["precision"] or 0) >= 0.8 and (r["planted"]["recall"] or 0) >= 0.8
            eo = r.get("planted_excl_own") or {}
            L.append(f"- Target at {r['noise']}, S/N > 10, flagger {r.get('flagger', 'cnn')}: precision "
                     f"{f(r['planted']['precision'], '{:.2f}')}, "
                     f"recall {f(r['planted']['recall'], '{:.2f}')} against the planted flips: "
                     f"{'met' if ok else 'NOT met'} (precision with the survey's own errors set aside: "
                     f"{f(eo.get('precision'), '{:.2f}')}).")
        L.append("")
    L += bench_section(a.out / "bench")
    reading = a.out / "reading.md"
    if reading.exists():
        L += [reading.read_text().rstrip(), ""]
    a.md.write_text("\n".join(L) + "\n")
    print(f"wrote {a.md} ({len(rows)} rows, {len(cells)} cells)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
