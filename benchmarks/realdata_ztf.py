"""Transfer of a simulation-trained model to real ZTF alerts.

    .venv/bin/python benchmarks/realdata_ztf.py --model M [--out-md /tmp/ztf.md] [--n-boot 2000]

Scores ``../shared/data/ztf-alerts/ztf_alert_triplets.parquet`` with ``flows.score`` (the
``rbflow score-alerts`` code path) and computes, on the alerts ZTF's braai scored:

* known asteroids (``known_asteroid``: ZTF's own solar-system association within 5") vs
  ``drb < 0.1`` ("likely bogus" in ZTF's own opinion, not ground truth);
* TNS-matched alerts (``tns_name`` from a 1.5" match to the TNS list, or Fink's TNS
  column) vs ``drb < 0.1``;

the AUC of this model and of ZTF's random-forest ``rb`` on the same alerts, with counts
and percentile bootstrap intervals (resampling positives and negatives separately). The
``drb`` score defines the negatives, so drb itself is not compared. Writes a Markdown
section (``--out-md``) for docs/realdata.md and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("RBFLOW_SHARED_DATA") or (REPO.parent / "shared" / "data"))


def auc_boot(pos: np.ndarray, neg: np.ndarray, n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    if len(pos) == 0 or len(neg) == 0:
        return (float("nan"),) * 3
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    auc = roc_auc_score(y, np.r_[pos, neg])
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        p = rng.choice(pos, len(pos))
        q = rng.choice(neg, len(neg))
        boots.append(roc_auc_score(y, np.r_[p, q]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(auc), float(lo), float(hi)


def evaluate(model: Path, data: Path, n_boot: int = 2000) -> dict:
    from flows.options import ScoreAlertsOptions
    from flows.score import score_alerts_file
    src = data / "ztf-alerts" / "ztf_alert_triplets.parquet"
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "scores.csv"
        run = score_alerts_file(ScoreAlertsOptions(model=model, alerts=src, out=out, batch_size=512))
        scores = pd.read_csv(out, dtype={"candid": str})
    labels = pd.read_csv(data / "ztf-alerts" / "ztf_alert_labels.csv", dtype={"candid": str})
    df = labels.merge(scores, on="candid", how="left")
    df = df[df["score"].notna() & df["drb"].notna()]
    tns = df["tns_name"].notna() | df["fink_tns"].notna()
    neg = df["drb"] < 0.1
    res = {"scoring": run, "n_scored_with_drb": int(len(df))}
    for name, pos in (("known_asteroid", df["known_asteroid"].astype(bool)), ("tns_matched", tns)):
        p, q = df[pos & ~neg], df[neg & ~pos]
        row = {"n_pos": int(len(p)), "n_neg": int(len(q))}
        for col in ("score", "rb"):
            a, lo, hi = auc_boot(p[col].to_numpy(float), q[col].to_numpy(float), n_boot)
            row[col] = {"auc": a, "ci95": [lo, hi]}
        row["median_score_pos"] = float(p["score"].median()) if len(p) else float("nan")
        row["median_score_neg"] = float(q["score"].median()) if len(q) else float("nan")
        res[name] = row
    res["score_median_all"] = float(df["score"].median())
    res["frac_score_gt_0.5"] = float((df["score"] > 0.5).mean())
    return res


def markdown(res: dict, model: Path, provenance: str = "") -> str:
    def f(r, col):
        return f"{r[col]['auc']:.3f} [{r[col]['ci95'][0]:.3f}, {r[col]['ci95'][1]:.3f}]"

    a, t, s = res["known_asteroid"], res["tns_matched"], res["scoring"]
    return f"""## Real ZTF alerts scored by a model trained only on the simulated `ztf` preset

Model: `{model}` {provenance}. Scored with `rbflow score-alerts`' code path on the development
share of `ztf-alerts/` ({s['n_alerts']} alerts, {s['n_scored']} scored, errors {s['errors'] or 'none'},
{s['alerts_per_s']:.0f} alerts/s including model load); {res['n_scored_with_drb']} of them have a braai `drb`.
Cut-outs: 63x63 at 1"/px, centre 29x29 taken as is (model pixel scale {s['model_pixel_scale']}"/px).

Negatives are alerts with `drb < 0.1` (ZTF's own CNN calls them bogus; not ground truth, and
`drb` defines them, so `drb` itself is not compared). AUC with 95 % bootstrap intervals
({'positives and negatives resampled separately'}):

| positives vs `drb < 0.1` | n_pos | n_neg | this model | ZTF `rb` (random forest) |
|---|---|---|---|---|
| known asteroids (ZTF `ssdistnr` < 5") | {a['n_pos']} | {a['n_neg']} | {f(a, 'score')} | {f(a, 'rb')} |
| TNS-matched (1.5" match or Fink TNS) | {t['n_pos']} | {t['n_neg']} | {f(t, 'score')} | {f(t, 'rb')} |

Median score of the positives / negatives: asteroids {a['median_score_pos']:.3f} / {a['median_score_neg']:.3f};
TNS {t['median_score_pos']:.3f} / {t['median_score_neg']:.3f}. Over all scored alerts the median score is
{res['score_median_all']:.3f} and {100 * res['frac_score_gt_0.5']:.1f} % score above 0.5 (brokers receive mostly
real alerts: median `drb` ~0.9).

What this measures: how far a classifier trained only on this project's simulation transfers to
real ZTF pixels, with small samples (intervals are wide) and proxy labels. It is not a
measurement of real/bogus performance on ZTF: there are no human labels here.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out-md", type=Path, default=None)
    ap.add_argument("--provenance", default="")
    args = ap.parse_args(argv)
    data = args.data or shared_data_dir()
    if not (data / "ztf-alerts").is_dir():
        print(f"real data not found under {data}")
        return 1
    res = evaluate(args.model, data, args.n_boot)
    if args.out_md:
        args.out_md.write_text(markdown(res, args.model, args.provenance))
    print(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
