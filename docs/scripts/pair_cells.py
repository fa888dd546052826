"""Pair two rows of experiment cells, from the same OUT or from two, over the same held-out
detections: the seed-averaged difference A - B in FPR at TPR = 0.9 and AUC, against TNS and
against truth, with the cluster-bootstrap interval of ``tasks.experiments.paired_seed_bootstrap``
(over the seeds both rows have). A row is ``OUT:METHOD[:NETWORK]`` (network: the row's own by
default, e.g. ``simple`` for ``simple-*``, ``complex`` for ``complex-*``). Prints a table and,
with --json, writes it. For checks that are not a row of ``docs/results.md``, e.g. Simple-all
retrained on the grid's tail flips against the each-sensor row:

    .venv/bin/python docs/scripts/pair_cells.py \\
        --a docs/experiments:simple-sensor --b docs/experiments/checks/simple-all-grid-flips:simple-all \\
        --noises tail-0.01 tail-0.05 tail-0.10 --n-boot 1000
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tasks.experiments import METHODS, load_cells, paired_rows, row_scores  # noqa: E402


def parse_row(text: str) -> tuple[Path, str, str]:
    """``OUT:METHOD[:NETWORK]`` -> (out, method, network)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise SystemExit(f"--a/--b: give OUT:METHOD or OUT:METHOD:NETWORK, got {text!r}")
    out, method = Path(parts[0]), parts[1]
    if method not in METHODS:
        raise SystemExit(f"--a/--b {text!r}: unknown method {method!r} (one of {', '.join(METHODS)})")
    if not (out / "heldout.parquet").is_file():
        raise SystemExit(f"--a/--b {text!r}: {out / 'heldout.parquet'} does not exist (not an experiments OUT)")
    return out, method, parts[2] if len(parts) == 3 else METHODS[method].network


def main(argv=None) -> int:
    import pandas as pd
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="row A: OUT:METHOD[:NETWORK]")
    ap.add_argument("--b", required=True, help="row B: OUT:METHOD[:NETWORK]")
    ap.add_argument("--noises", nargs="+", required=True, help="noise settings, e.g. survey tail-0.10")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", type=Path, help="write the result here")
    a = ap.parse_args(argv)
    rows = [parse_row(a.a), parse_row(a.b)]
    reads = {out: (pd.read_parquet(out / "heldout.parquet"), load_cells(out)) for out, _, _ in rows}
    held, other = reads[rows[0][0]][0], reads[rows[1][0]][0]
    if not held["stamp_id"].equals(other["stamp_id"]):
        raise SystemExit(f"{rows[1][0] / 'heldout.parquet'}: not the held-out detections of "
                         f"{rows[0][0] / 'heldout.parquet'}")
    result = {"a": a.a, "b": a.b, "n_boot": a.n_boot, "noises": {}}
    print(f"A = {a.a}\nB = {a.b}\n{'noise':12s} {'label':6s} {'metric':13s} {'A':>7s} {'B':>7s} "
          f"{'A - B [95 %]':>28s}  seeds")
    for noise in a.noises:
        sa, sb = (row_scores(out, m, noise, net, *reads[out]) for out, m, net in rows)
        res = paired_rows(held, sa, sb, a.n_boot)
        if not res:
            print(f"{noise:12s} no seed in both rows (A: {sorted(sa)}, B: {sorted(sb)})")
        result["noises"][noise] = res
        for lab, d in res.items():
            for metric in ("fpr_at_tpr90", "auc"):
                m = d[metric]
                print(f"{noise:12s} {lab:6s} {metric:13s} {m['value_a']:7.3f} {m['value_b']:7.3f} "
                      f"{m['diff']:+8.3f} [{m['diff_ci'][0]:+.3f}, {m['diff_ci'][1]:+.3f}]  {d['seeds']}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
