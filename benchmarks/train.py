"""Training and inference throughput of the networks, through the Zarr loader and from memory.

    .venv/bin/python benchmarks/train.py --n 4096 --out /tmp/bench_train.json

Writes a synthetic dataset directory (chunks of 1024, uncompressed, as the build flow
writes them) into a temporary folder, then for each network measures:
  - loader only: stamps/s of one shuffled StampDataset epoch with no model;
  - train (zarr) / train (memory): one training epoch through StampDataset vs from arrays
    already in memory (``TrainConfig.in_memory``), after a warm-up epoch, alternated
    ``--repeats`` times (medians); loader cost = 1 - zarr / memory;
  - train with VAT (l_lds > 0, one power iteration), through the loader;
  - inference: the exported ``model.pt2`` through ``score_stamps`` (``--infer-batch``), and
    eager (batch 4096 on CUDA).
CUDA rows are added when torch.cuda.is_available(). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.export import export_model, load_exported, score_stamps  # noqa: E402
from models.losses import LossConfig  # noqa: E402
from models.networks import ComplexConfig, ExportWrapper, SimpleConfig, network_from_config  # noqa: E402
from models.train import TrainConfig, train_model  # noqa: E402
from storage.loader import StampDataset, StampSource  # noqa: E402


def write_synthetic(path: Path, n: int, seed: int = 0, chunk: int = 1024) -> np.ndarray:
    """n stamps: sky + noise; half carry a Gaussian point source in new and sub."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:29, :29] - 14.0
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2)).astype(np.float32)
    x = rng.normal(0, 10, size=(n, 3, 29, 29)).astype(np.float32) + 500
    y = rng.integers(0, 2, n)
    amp = rng.uniform(30, 120, n).astype(np.float32) * y
    x[:, 0] += amp[:, None, None] * psf
    x[:, 2] += amp[:, None, None] * psf
    path.mkdir(parents=True)
    arr = zarr.create_array(store=str(path / "stamps.zarr"), shape=x.shape, chunks=(chunk, 3, 29, 29),
                            dtype="float32", compressors=None)
    arr[:] = x
    pd.DataFrame({"stamp_id": [f"bench/{i}" for i in range(n)], "label": y, "exposure": "e",
                  "sensor": [f"s{i // chunk}" for i in range(n)], "snr": 10.0, "flags": 0}
                 ).to_parquet(path / "stamps.parquet")
    return x


def train_rate(net_cfg, src, device, in_memory, loss, batch, threads) -> float:
    """Stamps/s of the second of two epochs (the first warms up)."""
    cfg = TrainConfig(epochs=2, batch_size=batch, patience=0, val_fraction=0.0, device=device,
                      in_memory=in_memory, num_threads=threads, seed=0)
    r = train_model(net_cfg, src, None, loss, cfg)
    return r.history[-1]["stamps_per_s"]


def loader_rate(src, batch) -> float:
    ds = StampDataset(src, batch, shuffle=True, buffer_chunks=4)
    t = time.perf_counter()
    n = sum(len(b.idx) for b in ds)
    return n / (time.perf_counter() - t)


def infer_rates(net_cfg, x, tmp: Path, device: str, batch: int) -> dict:
    torch.manual_seed(0)
    model = network_from_config(net_cfg).eval()
    out = {}
    if device == "cpu":
        d = export_model(model, tmp / f"model_{net_cfg.kind}", net_config=net_cfg,
                         train_config=TrainConfig(), meta={})
        prog = load_exported(d)
        score_stamps(prog, x[:batch], batch_size=batch)  # warm-up
        t = time.perf_counter()
        score_stamps(prog, x, batch_size=batch)
        out["infer_exported"] = len(x) / (time.perf_counter() - t)
    wrapper = ExportWrapper(model).to(device)
    with torch.no_grad():
        xt = torch.from_numpy(x[:batch]).to(device)
        wrapper(xt)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for b in range(0, len(x), batch):
            wrapper(torch.from_numpy(x[b : b + batch]).to(device)).cpu()
        if device == "cuda":
            torch.cuda.synchronize()
        out["infer_eager"] = len(x) / (time.perf_counter() - t)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096, help="stamps in the synthetic dataset")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--infer-batch", type=int, default=128, help="CPU inference batch (larger is slower on CPU)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--complex-widths", default="32,64,128", help="SE-ResNet stage widths")
    ap.add_argument("--repeats", type=int, default=3, help="alternating zarr/memory repeats (median)")
    ap.add_argument("--no-vat", action="store_true", help="skip the VAT rows")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    nets = {
        "simple": SimpleConfig(),
        "complex": ComplexConfig(widths=tuple(int(w) for w in a.complex_widths.split(","))),
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ce, vat = LossConfig(), LossConfig(l_ce=0.6, l_lds=0.4)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x = write_synthetic(tmp / "ds", a.n)
        src = StampSource(tmp / "ds")
        loader_only = loader_rate(src, a.batch)
        for name, cfg in nets.items():
            for dev in devices:
                row = {"network": name, "device": dev, "loader_only": loader_only}
                zr, mr = [], []
                for _ in range(a.repeats):  # alternate, so load drifts hit both alike
                    zr.append(train_rate(cfg, src, dev, False, ce, a.batch, a.threads))
                    mr.append(train_rate(cfg, src, dev, True, ce, a.batch, a.threads))
                row["train_zarr"], row["train_memory"] = float(np.median(zr)), float(np.median(mr))
                row["train_zarr_all"], row["train_memory_all"] = zr, mr
                row["loader_cost"] = 1 - row["train_zarr"] / row["train_memory"]
                if not a.no_vat:
                    row["train_vat_zarr"] = train_rate(cfg, src, dev, False, vat, a.batch, a.threads)
                row.update(infer_rates(cfg, x, tmp, dev, a.infer_batch if dev == "cpu" else 4096))
                rows.append(row)
                print(row, file=sys.stderr)
    cols = ["network", "device", "train_zarr", "train_memory", "loader_cost", "train_vat_zarr",
            "infer_exported", "infer_eager"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:+.1%}" if c == "loader_cost" else f"{v:,.0f}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")
    print(f"loader alone (no model): {loader_only:,.0f} stamps/s")
    result = {
        "n": a.n, "batch": a.batch, "infer_batch": a.infer_batch, "repeats": a.repeats, "threads": a.threads, "torch": torch.__version__,
        "machine": platform.machine(), "cpu_count": __import__("os").cpu_count(),
        "complex_widths": list(nets["complex"].widths), "rows": rows, "units": "stamps/s",
    }
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
