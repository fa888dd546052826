"""Tabulate docs/scripts/stage2_flags.sh: the compared rows trained on two flaggers' flags, scored
on one held-out night. ROOT holds one experiments OUT per flagger (``ROOT/<flagger>-<cut>/nNN``,
e.g. ``cnn-0.5/n06`` and ``cnn+rf-0.9/n06``) over the same held-out detections. Per noise it
writes the seed means of each (row, flagger) and the paired seed-averaged differences (A - B,
95 % cluster-bootstrap interval, ``tasks.experiments.paired_rows``) that answer: do the better
flags help removal and unlabelling; does unlabelled+VAT beat removed on either flags; does either
beat Simple-all. Writes ROOT/table_nNN.md, ROOT/pairs_nNN.json and ROOT/fpr_nNN.png.

    .venv/bin/python docs/scripts/stage2_flags_table.py --root docs/experiments/flag-scale/ci-quiet/stage2/on-val-night
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tasks.experiments import load_cells, paired_rows, row_scores  # noqa: E402

ROWS = (("simple-all", "Simple-all"), ("complex-all-vat", "all+VAT"), ("complex-removed", "removed"),
        ("complex-unlabelled-vat", "unlabelled+VAT"))
NET = "simple"  # the Complex rows on the Simple stand-in
NO_FLAGS = ("simple-all", "complex-all-vat")  # trained once, in the paper's flags' OUT


def flag_pr(rec: dict) -> tuple[float, float] | None:
    """Precision and recall (all S/N) of the flags a cell trained with against any label error of
    its training set (``error_targets``' ``any``: label != truth now), from its stage-1 directory
    in the WORK it ran with (None where that is not here, as in a fresh checkout)."""
    import numpy as np
    import pandas as pd
    from storage.loader import StampSource
    from tasks.experiments import error_targets
    s1 = rec.get("stage1") or {}
    man = Path((rec.get("flags") or {}).get("manifest") or Path(s1.get("dir", "")) / "unlabel.parquet")
    done = Path(s1.get("dir", "")) / "stage1.json"
    if not s1 or not man.is_file() or not done.is_file():
        return None
    t = StampSource(json.loads(done.read_text())["datasets"]).table
    err = error_targets(t)["any"]
    f = pd.read_parquet(man).set_index("stamp_id")["flagged"].reindex(t["stamp_id"]).to_numpy(bool)
    tp = int((f & err).sum())
    return tp / max(int(f.sum()), 1), tp / max(int(err.sum()), 1)


def plot(result: dict, png: Path) -> None:
    """Seed-mean FPR at TPR = 0.9 per row and flags, one panel per label set, noises side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    noises = list(result["noises"])
    rows = list(dict.fromkeys(r for n in noises for r in result["noises"][n]["rows"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    w = 0.8 / max(len(noises), 1)
    for ax, lab in zip(axes, ("truth", "tns")):
        for i, n in enumerate(noises):
            v = [result["noises"][n]["rows"].get(r, {}).get(f"fpr_at_tpr90_{lab}") for r in rows]
            ax.bar([k + i * w for k in range(len(rows))], [x if x is not None else 0 for x in v], w, label=n)
        ax.set_xticks([k + w * (len(noises) - 1) / 2 for k in range(len(rows))])
        ax.set_xticklabels(rows, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"FPR at TPR = 0.9 ({lab})")
        ax.set_title(f"against {'simulation truth' if lab == 'truth' else 'TNS'} (seed means)")
        ax.legend(fontsize=8)
    fig.suptitle(f"stage 2 on the paper's flags and on cnn+rf flags ({result['scale']}, {result['root']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    import numpy as np
    import pandas as pd
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--scale", default="n06", help="the nNN sub-directory of each flagger's OUT")
    ap.add_argument("--paper", default="cnn-0.5", help="the paper's flags' OUT name under ROOT")
    ap.add_argument("--better", default="cnn+rf-0.9", help="the other flagger's OUT name under ROOT")
    ap.add_argument("--n-boot", type=int, default=1000)
    a = ap.parse_args(argv)
    outs = {k: a.root / k / a.scale for k in (a.paper, a.better)}
    for k, o in outs.items():
        if not (o / "heldout.parquet").is_file():
            raise SystemExit(f"{o}: no heldout.parquet (run docs/scripts/stage2_flags.sh)")
    held = pd.read_parquet(outs[a.paper] / "heldout.parquet")
    if not held["stamp_id"].equals(pd.read_parquet(outs[a.better] / "heldout.parquet")["stamp_id"]):
        raise SystemExit(f"{outs[a.better]}: not the held-out detections of {outs[a.paper]}")
    cells = {k: load_cells(o) for k, o in outs.items()}
    noises = sorted({c["cell"]["noise"] for cs in cells.values() for c in cs})
    P, B = a.paper, a.better
    pairs = [((B, "complex-removed"), (P, "complex-removed")),
             ((B, "complex-unlabelled-vat"), (P, "complex-unlabelled-vat")),
             ((P, "complex-unlabelled-vat"), (P, "complex-removed")),
             ((B, "complex-unlabelled-vat"), (B, "complex-removed")),
             ((P, "complex-removed"), (P, "simple-all")),
             ((B, "complex-removed"), (P, "simple-all")),
             ((B, "complex-unlabelled-vat"), (P, "simple-all")),
             ((P, "complex-all-vat"), (P, "simple-all"))]
    name = dict(ROWS)

    def rname(k: str, m: str) -> str:
        return name[m] if m in NO_FLAGS else f"{name[m]} [{k}]"
    L = [f"Generated by `.venv/bin/python docs/scripts/stage2_flags_table.py --root {a.root}"
         f"{'' if a.n_boot == 1000 else f' --n-boot {a.n_boot}'}`. Rows on the Simple stand-in; flags `{P}` (the "
         f"paper's rule) and `{B}`; the all rows take no flags (trained once, in `{P}`). *flags P / R*: the "
         "flags' precision and recall against any label error of the training set, all S/N, seed means (read "
         "from the stage-1 directories in WORK). Pairs: seed-averaged A - B, 95 % cluster-bootstrap interval.", ""]
    result = {"root": str(a.root), "scale": a.scale, "n_boot": a.n_boot, "noises": {}}
    for noise in noises:
        res = {"rows": {}, "pairs": []}
        L += [f"### {noise}", "", "| row | flags | seeds | n flagged | flags P / R, any error | FPR truth | FPR TNS | AUC truth | AUC TNS |",
              "|---|---|---|---|---|---|---|---|---|"]
        sc = {}
        for k in (P, B):
            for m, label in ROWS:
                cs = [c for c in cells[k] if c["cell"]["method"] == m and c["cell"]["noise"] == noise
                      and c["network"] == NET]
                if not cs or (k == B and m in NO_FLAGS):
                    continue
                sc[k, m] = row_scores(outs[k], m, noise, NET, held, cells[k])

                def mean(key, metric):
                    v = [(c.get(key) or {}).get(metric) for c in cs]
                    v = [x for x in v if x is not None]
                    return float(np.mean(v)) if v else None
                nf = [(c.get("flags") or {}).get("n_flagged", (c.get("stage1") or {}).get("n_flagged")) for c in cs]
                nf = [x for x in nf if x is not None]
                pr = [x for x in (flag_pr(c) for c in cs) if x is not None] if m not in NO_FLAGS else []
                r = {"seeds": sorted(int(c["cell"]["seed"]) for c in cs), "n_flagged": float(np.mean(nf)) if nf else None,
                     "flags_precision": float(np.mean([x[0] for x in pr])) if pr else None,
                     "flags_recall": float(np.mean([x[1] for x in pr])) if pr else None,
                     **{f"{met}_{lab}": mean(key, met) for met in ("fpr_at_tpr90", "auc")
                        for lab, key in (("truth", "truth"), ("tns", "metrics"))}}
                res["rows"][rname(k, m)] = r
                fl = "–" if m in NO_FLAGS else k
                nfs = "–" if r["n_flagged"] is None or fl == "–" else f"{r['n_flagged']:.0f}"
                prs = "–" if r["flags_precision"] is None else f"{r['flags_precision']:.2f} / {r['flags_recall']:.2f}"
                L.append(f"| {label} | {fl} | {','.join(map(str, r['seeds']))} | {nfs} | {prs} | {r['fpr_at_tpr90_truth']:.4f} | "
                         f"{r['fpr_at_tpr90_tns']:.4f} | {r['auc_truth']:.4f} | {r['auc_tns']:.4f} |")
        L += ["", "| A | B | label | ΔFPR [95 %] | ΔAUC [95 %] | seeds |", "|---|---|---|---|---|---|"]
        for (ka, ma), (kb, mb) in pairs:
            if (ka, ma) not in sc or (kb, mb) not in sc:
                continue
            d = paired_rows(held, sc[ka, ma], sc[kb, mb], a.n_boot)
            for lab, v in d.items():
                f, u = v["fpr_at_tpr90"], v["auc"]
                res["pairs"].append({"a": rname(ka, ma), "b": rname(kb, mb), "labels": lab, **v})
                L.append(f"| {rname(ka, ma)} | {rname(kb, mb)} | {lab} | {f['diff']:+.4f} [{f['diff_ci'][0]:+.4f}, "
                         f"{f['diff_ci'][1]:+.4f}] | {u['diff']:+.4f} [{u['diff_ci'][0]:+.4f}, {u['diff_ci'][1]:+.4f}] | "
                         f"{','.join(map(str, v['seeds']))} |")
        L.append("")
        result["noises"][noise] = res
    plot(result, a.root / f"fpr_{a.scale}.png")
    (a.root / f"table_{a.scale}.md").write_text("\n".join(L) + "\n")
    (a.root / f"pairs_{a.scale}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
