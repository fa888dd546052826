"""The early-stopping ablation of docs/experiments/reading.md ("The gain grows with noise").

Plain CE on the SE-ResNet got *better* as uniform flips were added, while its best epoch fell
from 11-15 to 3-6. The guess: its early stopping watches a 10 % validation split that carries
the survey's own label errors, whose AUC keeps rising as the network memorises them, so on
the survey's labels it trains too long. The test: the same cells (complex-all, seeds 0-2, at the
survey's labels and at tail-0.01 and tail-0.10) with training capped at 5 epochs, made by
docs/scripts/ablation_early_stop.sh into docs/experiments/ablations/epochs-5/, compared here at
each noise setting the capped cells have, paired over the same held-out detections
(the cluster bootstrap of ``tasks.experiments.paired_seed_bootstrap``), with the 20-epoch cells
and the handling rows of docs/experiments/cells/. The handling rows capped the same way (removed
and unlabelled+VAT, stage 1 capped too), where the OUT has them, are paired with their 20-epoch
cells and with the capped CE. Writes docs/experiments/ablations/epochs-5/paired.json
(``noises[noise][A][B][labels]``) and prints a table.

    .venv/bin/python docs/scripts/ablation_early_stop.py [--n-boot 1000]
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tasks.experiments import load_cells, paired_rows, row_scores  # noqa: E402

MAIN = REPO / "docs" / "experiments"
ABL = MAIN / "ablations" / "epochs-5"
# name in the table -> (out dir, method); every row is on the SE-ResNet, at the capped cells' noise
CE5, RM5, UV5 = "all-CE, <= 5 epochs", "removed, <= 5 epochs", "unlabelled+VAT, <= 5 epochs"
ROWS = {CE5: (ABL, "complex-all"), RM5: (ABL, "complex-removed"), UV5: (ABL, "complex-unlabelled-vat"),
        "all-CE, <= 20 epochs": (MAIN, "complex-all"), "all+VAT": (MAIN, "complex-all-vat"),
        "removed": (MAIN, "complex-removed"), "unlabelled+VAT": (MAIN, "complex-unlabelled-vat"),
        "all+ECH": (MAIN, "complex-all-ech"), "unlabelled+ECH+VAT": (MAIN, "complex-unlabelled-ech-vat")}
# (A, B) pairs, A - B; a pair is skipped at a noise setting where either has no cells
PAIRS = ([(CE5, b) for b in ("all-CE, <= 20 epochs", "all+VAT", "removed", "unlabelled+VAT", "all+ECH",
                             "unlabelled+ECH+VAT")]
         + [(RM5, "removed"), (UV5, "unlabelled+VAT"), (CE5, RM5), (CE5, UV5)])


@functools.lru_cache(maxsize=None)
def _read(out: Path) -> tuple:
    """OUT's held-out table and cell records, read once per OUT."""
    import pandas as pd
    return pd.read_parquet(out / "heldout.parquet"), tuple(load_cells(out))


def seeds_of(out: Path, method: str, noise: str) -> dict[int, np.ndarray]:
    """seed -> held-out scores (in heldout.parquet's order) of the SE-ResNet cells at ``noise``."""
    return row_scores(out, method, noise, "complex", *_read(out))


def main(argv=None) -> int:
    import pandas as pd
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-boot", type=int, default=1000)
    a = ap.parse_args(argv)
    held = pd.read_parquet(MAIN / "heldout.parquet")
    if not held["stamp_id"].equals(pd.read_parquet(ABL / "heldout.parquet")["stamp_id"]):
        raise SystemExit(f"{ABL / 'heldout.parquet'}: not the held-out detections of {MAIN / 'heldout.parquet'}")
    result = {"n_boot": a.n_boot, "noises": {}}
    print(f"{'A - B (metric)':62s} {'noise':10s} {'label':6s} {'A':>7s} {'B':>7s} {'A - B [95 %]':>28s}")
    for noise in sorted({c["cell"]["noise"] for c in _read(ABL)[1]}, key=lambda n: (n != "survey", n)):
        scores = {name: seeds_of(out, m, noise) for name, (out, m) in ROWS.items()}
        for na, nb in PAIRS:
            for lab, d in paired_rows(held, scores[na], scores[nb], a.n_boot).items():
                result["noises"].setdefault(noise, {}).setdefault(na, {}).setdefault(nb, {})[lab] = d
                for metric in ("fpr_at_tpr90", "auc"):
                    m = d[metric]
                    print(f"{na + ' - ' + nb + ' (' + metric + ')':62s} {noise:10s} {lab:6s} {m['value_a']:7.3f} "
                          f"{m['value_b']:7.3f} {m['diff']:+8.3f} [{m['diff_ci'][0]:+.3f}, {m['diff_ci'][1]:+.3f}]")
    (ABL / "paired.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
