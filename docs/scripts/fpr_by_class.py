"""Which artifacts pass a row's threshold: per simulated artifact class, the share of the held-out
artifacts scored at or above the threshold that keeps TPR = 0.9 against truth (seed means).

    .venv/bin/python docs/scripts/fpr_by_class.py OUT [OUT ...] [--noise survey] [--methods M ...]

Reads OUT/heldout.parquet (``true_label``, ``true_class``) and OUT/scores/<method>__<noise>__s<seed>.parquet
(docs/experiments/reading.md, "The `val` night", uses it on val-night/ and rescored/val-models-on-ci-night/).
The threshold is the reals' 10 % score quantile, so the "all artifacts" row can differ a little from
the tables' FPR at TPR = 0.9 (a ROC point, ``tasks.validation``) where the reals are few (0.218
against 0.239 for all-CE on the ci night's 146 reals).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

METHODS = ("rf-sep", "simple-all", "complex-all", "complex-removed", "complex-all-vat", "complex-unlabelled-vat")


def by_class(out: Path, methods=METHODS, noise: str = "survey", seeds=(0, 1, 2)) -> pd.DataFrame:
    h = pd.read_parquet(out / "heldout.parquet")
    tl = pd.to_numeric(h["true_label"], errors="coerce").to_numpy(float)
    real, bogus = tl == 1, tl == 0
    cls = h["true_class"].astype(str).to_numpy()
    cols = {}
    for m in methods:
        per_seed = []
        for s in seeds:
            p = out / "scores" / f"{m}__{noise}__s{s}.parquet"
            if not p.exists():
                continue
            sc = pd.read_parquet(p).set_index("stamp_id")["score"].reindex(h["stamp_id"]).to_numpy(float)
            thr = np.quantile(sc[real], 0.1)  # the lowest score that keeps 90 % of the reals
            r = {c: float(np.mean(sc[bogus & (cls == c)] >= thr)) for c in np.unique(cls[bogus])}
            r["all artifacts"] = float(np.mean(sc[bogus] >= thr))
            per_seed.append(r)
        if per_seed:
            cols[m] = pd.DataFrame(per_seed).mean()
    df = pd.DataFrame(cols)
    df["n"] = pd.Series(cls[bogus]).value_counts().reindex(df.index).fillna(bogus.sum()).astype(int)
    return df


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, nargs="+")
    ap.add_argument("--noise", default="survey")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    a = ap.parse_args(argv)
    for out in a.out:
        print(f"{out} ({a.noise}): share of each artifact class at or above the TPR = 0.9 threshold")
        print(by_class(out, a.methods, a.noise).round(3).to_string(), "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
