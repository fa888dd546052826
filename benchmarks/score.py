"""Scoring throughput: candidates/s of the exported Simple model (model.pt2) against the eager
network, on this machine's CPU cores, measured in the same run.

    rbflow bench score --n 20000 --threads 1 2 --batch 128 1024 --out bench_score.json

The model is the Simple network (SimpleConfig.paper(), 2 logits) exported by
``models.export.export_model`` exactly as stage 2 writes it (normalisation inside,
channels-last weights), scored in float32 and in bfloat16 (CPU autocast); the
weights are untrained (throughput does not depend on them). Inputs are raw float32
(N, 3, 29, 29) stamps in memory. Goal (issue 12): 1e6 candidates per minute (16,667/s) on
2 cores with Simple. ``--zarr`` also times ``models.scoring.score_dataset`` end to end on a
dataset directory of the same stamps (Zarr read + score).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL_PER_S = 1e6 / 60


def _rate(fn, x, repeats: int) -> float:
    fn(x[:256])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="stamps scored per timing")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU threads to try")
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 256, 1024], help="batch sizes to try")
    ap.add_argument("--repeats", type=int, default=3, help="timings per setting (best kept)")
    ap.add_argument("--network", default="simple", choices=["simple", "complex"])
    ap.add_argument("--zarr", action="store_true", help="also time score_dataset on a Zarr dataset directory")
    ap.add_argument("--out", type=Path, default=Path("bench_score.json"))
    a = ap.parse_args(argv)

    import torch

    from models.export import export_model, load_exported, score_stamps
    from models.networks import network_from_config
    from models.stages import net_config_for
    cfg = net_config_for(a.network, 2)
    torch.manual_seed(0)
    model = network_from_config(cfg).eval()
    rng = np.random.default_rng(0)
    x = (rng.normal(100, 5, (a.n, 3, 29, 29))).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mdir = Path(tmp) / "model"
        export_model(model, mdir, net_config=cfg, train_config={}, meta={"pixel_scale": 1.19})
        program = load_exported(mdir / "model.pt2")

        def eager(batch):
            def f(arr):
                out = []
                with torch.inference_mode():
                    for b in range(0, len(arr), batch):
                        logits = model(torch.from_numpy(arr[b:b + batch]))
                        out.append(torch.softmax(logits, 1)[:, 1].numpy())
                return np.concatenate(out)
            return f

        threads0 = torch.get_num_threads()
        for th in a.threads:
            torch.set_num_threads(th)
            for bs in a.batch:
                r_exp = _rate(lambda arr: score_stamps(program, arr, bs), x, a.repeats)
                r_bf = _rate(lambda arr: score_stamps(program, arr, bs, "bfloat16"), x, a.repeats)
                r_eag = _rate(eager(bs), x, a.repeats)
                rows.append({"threads": th, "batch": bs, "exported_per_s": r_exp, "exported_bf16_per_s": r_bf,
                             "eager_per_s": r_eag, "exported_per_min": r_exp * 60, "exported_over_eager": r_exp / r_eag,
                             "best_per_min": max(r_exp, r_bf) * 60})
        p32 = score_stamps(program, x[:4096], 256)
        bf16_max_abs_diff = float(np.abs(score_stamps(program, x[:4096], 256, "bfloat16") - p32).max())
        zarr_row = None
        if a.zarr:
            import pandas as pd

            from models.scoring import score_dataset
            from storage.stampstore import write_dataset
            n = len(x)
            t = pd.DataFrame({"stamp_id": [f"n/e{i // 1000}/s/{i % 1000}" for i in range(n)], "night": "n",
                              "exposure": [f"e{i // 1000}" for i in range(n)], "sensor": "s",
                              "det_id": np.arange(n) % 1000, "label": 0})
            write_dataset(Path(tmp) / "ds", x, t, {})
            torch.set_num_threads(max(a.threads))
            zarr_row = {"threads": max(a.threads), "batch": 256}
            for prec in ("float32", "bfloat16"):
                score_dataset(mdir, Path(tmp) / "ds", batch_size=256, precision=prec)  # warm (page cache, oneDNN)
                t0 = time.perf_counter()
                score_dataset(mdir, Path(tmp) / "ds", batch_size=256, precision=prec)
                zarr_row[f"{prec}_per_s"] = n / (time.perf_counter() - t0)
        torch.set_num_threads(threads0)
    best = max(rows, key=lambda r: r["exported_per_s"])
    best_bf = max(rows, key=lambda r: r["exported_bf16_per_s"])
    res = {"network": a.network, "n": a.n, "rows": rows, "zarr_end_to_end": zarr_row,
           "goal_per_s": GOAL_PER_S, "best_exported_per_s": best["exported_per_s"],
           "best_exported_bf16_per_s": best_bf["exported_bf16_per_s"], "bf16_max_abs_score_diff": bf16_max_abs_diff,
           "goal_met_float32": best["exported_per_s"] >= GOAL_PER_S,
           "goal_met": max(best["exported_per_s"], best_bf["exported_bf16_per_s"]) >= GOAL_PER_S,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}
    print(f"scoring {a.network}, {a.n} stamps in memory (best of {a.repeats}); goal {GOAL_PER_S:,.0f}/s = 1e6/min")
    print(f"{'threads':>7} {'batch':>6} {'exported/s':>11} {'bf16/s':>9} {'eager/s':>9} {'exp/eager':>9} {'best/min':>11}")
    for r in rows:
        print(f"{r['threads']:>7} {r['batch']:>6} {r['exported_per_s']:>11,.0f} {r['exported_bf16_per_s']:>9,.0f} "
              f"{r['eager_per_s']:>9,.0f} {r['exported_over_eager']:>9.2f} {r['best_per_min']:>11,.0f}")
    if zarr_row:
        print(f"score_dataset from Zarr ({zarr_row['threads']} threads, batch {zarr_row['batch']}): "
              f"{zarr_row['float32_per_s']:,.0f}/s float32, {zarr_row['bfloat16_per_s']:,.0f}/s bfloat16")
    print(f"goal {'met' if res['goal_met'] else 'NOT met'}: best float32 {best['exported_per_s']:,.0f}/s, "
          f"bfloat16 {best_bf['exported_bf16_per_s']:,.0f}/s ({max(best['exported_per_s'], best_bf['exported_bf16_per_s']) * 60:,.0f}/min; "
          f"bfloat16 scores within {bf16_max_abs_diff:.1e} of float32; CPU {res['cpu_capability']})")
    a.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
