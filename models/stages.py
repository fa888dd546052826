"""The two training stages on dataset directories (torch + storage; no Prefect).

Stage 1: folds grouped by image and stratified by label; each fold trains on the others
and predicts its own stamps, so every stamp gets an out-of-fold P(real); then flagging
writes ``unlabel.parquet``. Stage 2: one model trained on all stamps with flagged ones
kept, dropped or unlabelled, exported into an immutable model directory.

Each function takes paths and small values and returns a small record, so the flows can
run them as Prefect tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from models.losses import LossConfig
from models.networks import ComplexConfig, SimpleConfig, config_from_dict, config_to_dict, network_from_config
from models.train import TrainConfig, predict, train_model
from storage.loader import StampSource, load_all
from storage.stampstore import open_dataset, sha256_file
from tasks.flagging import flag_label_errors
from tasks.folds import fold_seed, make_folds

IN_MEMORY_BYTES = 3 << 30  # load selections smaller than this into memory for training


def net_config_for(network: str, n_logits: int = 2):
    if network == "simple":
        return SimpleConfig.paper() if n_logits == 2 else SimpleConfig()
    if network == "complex":
        return ComplexConfig()
    raise ValueError(f"network must be 'simple' or 'complex', got {network!r}")


def dataset_hashes(dirs: list[str]) -> dict[str, str]:
    return {str(Path(d).resolve()): open_dataset(Path(d)).meta.get("content_hash", "") for d in dirs}


def _train_config(opts: dict, seed: int, n: int) -> TrainConfig:
    return TrainConfig(epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"],
                       patience=opts["patience"], seed=seed, device=opts.get("device", "auto"),
                       in_memory=n * 3 * 29 * 29 * 4 < IN_MEMORY_BYTES, class_weight="balanced")


# ------------------------------------------------------------------------------ stage 1
@dataclass(frozen=True)
class FoldRecord:
    fold: int
    n_train: int
    n_test: int
    best_epoch: int
    val_auc: float | None
    seconds: float
    cached: bool
    model_id: str


def plan_folds(dataset_dirs: list[str], out_dir: str, k: int, seed: int) -> dict:
    """Write ``folds.parquet`` (stamp_id, label, fold); return a small summary."""
    src = StampSource(dataset_dirs)
    plan = make_folds(src.table, k=k, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"stamp_id": src.table["stamp_id"].to_numpy(), "label": src.labels, "fold": plan.fold})
    df.to_parquet(out / "folds.parquet", index=False)
    return {"n": int(len(df)), "k": k, "per_fold": df.groupby("fold").size().astype(int).to_dict(),
            "label_counts": df["label"].value_counts().astype(int).to_dict()}


def run_fold(dataset_dirs: list[str], out_dir: str, fold: int, options: dict) -> FoldRecord:
    """Train on every fold but ``fold``, predict ``fold``; writes ``folds/fold<k>/``.

    Resumes: a fold whose ``oof.parquet`` exists with the same options and fold split is
    not trained again.
    """
    out = Path(out_dir)
    fdir = out / "folds" / f"fold{fold}"
    folds = pd.read_parquet(out / "folds.parquet")
    key = hashlib.sha256(json.dumps({"options": options, "folds": sha256_file(out / "folds.parquet"),
                                     "fold": fold}, sort_keys=True).encode()).hexdigest()[:16]
    done = fdir / "fold.json"
    if done.exists() and json.loads(done.read_text()).get("key") == key and (fdir / "oof.parquet").exists():
        info = json.loads(done.read_text())
        return FoldRecord(fold, info["n_train"], info["n_test"], info["best_epoch"], info["val_auc"],
                          info["seconds"], True, info["model_id"])
    train_ids = folds.loc[folds["fold"] != fold, "stamp_id"].to_numpy()
    test_ids = folds.loc[folds["fold"] == fold, "stamp_id"].to_numpy()
    train_src = StampSource(dataset_dirs, train_ids)
    test_src = StampSource(dataset_dirs, test_ids)
    net_cfg = net_config_for(options["network"], options.get("n_logits", 2))
    seed = fold_seed(options["seed"], fold)
    cfg = _train_config(options, seed, len(train_src))
    res = train_model(net_cfg, train_src, None, LossConfig(l_ce=1.0), cfg)
    prob = predict(res.state_dict, net_cfg, test_src, device=options.get("device", "auto") if torch.cuda.is_available() else "cpu")
    fdir.mkdir(parents=True, exist_ok=True)
    torch.save(res.state_dict, fdir / "weights.pt")
    model_id = hashlib.sha256((fdir / "weights.pt").read_bytes()).hexdigest()[:16]
    pd.DataFrame({"stamp_id": test_ids, "oof_prob": prob.astype(np.float64), "fold": fold}).to_parquet(
        fdir / "oof.parquet", index=False)
    val_auc = max((h.get("val_auc") or float("nan") for h in res.history), default=float("nan"))
    info = {"key": key, "fold": fold, "n_train": len(train_ids), "n_test": len(test_ids),
            "best_epoch": res.best_epoch, "val_auc": None if not np.isfinite(val_auc) else float(val_auc),
            "seconds": float(res.timings.get("total_seconds", 0.0)), "model_id": model_id, "seed": seed,
            "network": config_to_dict(net_cfg), "history": list(res.history)}
    (fdir / "fold.json").write_text(json.dumps(info, indent=1, default=float))
    return FoldRecord(fold, len(train_ids), len(test_ids), res.best_epoch, info["val_auc"], info["seconds"],
                      False, model_id)


@dataclass(frozen=True)
class FlagSummary:
    n: int
    n_flagged: int
    flagged_by_label: dict
    rule: str
    unlabel: str
    gallery: str | None


UNLABEL_COLUMNS = ["stamp_id", "label", "oof_prob", "fold", "flagged", "rule", "margin"]


def write_unlabel(df: pd.DataFrame, meta: dict, path: Path) -> Path:
    """Write an unlabel manifest (``UNLABEL_COLUMNS`` of ``df``) atomically, with ``meta`` (the
    stage-1 model ids, dataset hashes, rule, thresholds) as its Parquet metadata ``rbflow.stage1``,
    which lineage reads."""
    path = Path(path)
    table = pa.Table.from_pandas(df[UNLABEL_COLUMNS], preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"rbflow.stage1": json.dumps(meta).encode()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def flag_and_write(dataset_dirs: list[str], out_dir: str, k: int, rule: str, model_ids: list[str],
                   gallery: int = 20) -> FlagSummary:
    """Gather out-of-fold scores, flag, write ``unlabel.parquet`` and a gallery PNG."""
    out = Path(out_dir)
    folds = pd.read_parquet(out / "folds.parquet")
    oof = pd.concat([pd.read_parquet(out / "folds" / f"fold{i}" / "oof.parquet") for i in range(k)])
    df = folds.drop(columns=["fold"]).merge(oof, on="stamp_id", how="left", validate="one_to_one")
    if df["oof_prob"].isna().any():
        raise RuntimeError(f"{out}: {int(df['oof_prob'].isna().sum())} stamps lack an out-of-fold prediction")
    res = flag_label_errors(df["label"].to_numpy(), df["oof_prob"].to_numpy(), rule)
    df["flagged"] = res.flagged
    df["rule"] = rule
    df["margin"] = res.margin
    write_unlabel(df, {"model_ids": model_ids, "dataset_hashes": dataset_hashes(dataset_dirs), "rule": res.rule,
                       "thresholds": res.thresholds, "k": k}, out / "unlabel.parquet")
    png = _flag_gallery(dataset_dirs, df, out / "flagged_gallery.png", gallery) if gallery else None
    by_label = {str(int(lab)): int(g["flagged"].sum()) for lab, g in df.groupby("label")}
    return FlagSummary(len(df), int(res.flagged.sum()), by_label, res.rule, str(out / "unlabel.parquet"),
                       str(png) if png else None)


def _flag_gallery(dataset_dirs, df: pd.DataFrame, path: Path, per_label: int) -> Path | None:
    import matplotlib.pyplot as plt

    from tasks.gallery import gallery_figure
    picks = []
    for lab in (1, 0):
        sub = df[(df["label"] == lab) & df["flagged"]].sort_values("margin", ascending=False).head(per_label)
        picks.append(sub)
    sel = pd.concat(picks)
    if not len(sel):
        return None
    arrays = load_all(StampSource(dataset_dirs, sel["stamp_id"].to_numpy()))
    stamps = arrays.x[np.argsort(arrays.idx)]  # selection order
    titles = [f"label {int(lab)} p={p:.2f}" for lab, p in zip(sel["label"], sel["oof_prob"])]
    fig = gallery_figure(stamps, titles, per_row=4, suptitle="most confidently flagged stamps (new | ref | sub)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ stage 2
def stage2_labels(labels: np.ndarray, flagged: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, training labels with -1 = unlabelled) for a stage-2 mode."""
    labels = np.asarray(labels).astype(np.int64)
    flagged = np.asarray(flagged).astype(bool)
    if mode == "all":
        return np.ones(len(labels), bool), labels
    if mode == "removed":
        return ~flagged, labels
    if mode == "unlabelled":
        return np.ones(len(labels), bool), np.where(flagged, -1, labels)
    raise ValueError(f"mode must be all, removed or unlabelled, got {mode!r}")


def run_stage2(dataset_dirs: list[str], unlabel: str, out_dir: str, options: dict) -> dict:
    """Train the stage-2 model and export it into ``out_dir`` (refused if it exists)."""
    from models.export import export_model
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"model directory {out} exists: model directories are never modified; pick a new --out")
    un = pd.read_parquet(unlabel)
    src_all = StampSource(dataset_dirs)
    merged = src_all.table[["stamp_id"]].merge(un[["stamp_id", "label", "flagged"]], on="stamp_id", how="left")
    if merged["flagged"].isna().any():
        raise ValueError(f"{unlabel}: {int(merged['flagged'].isna().sum())} stamps of the datasets are not in the manifest")
    keep, labels = stage2_labels(merged["label"].to_numpy(), merged["flagged"].to_numpy(), options["mode"])
    src = StampSource(dataset_dirs, merged.loc[keep, "stamp_id"].to_numpy(), labels[keep])
    net_cfg = net_config_for(options["network"], options.get("n_logits", 2))
    loss = LossConfig(l_ce=options["l_ce"], l_ech=options["l_ech"], l_lds=options["l_lds"],
                      ech_margin=options["ech_margin"], vat_xi=options["vat_xi"], vat_eps=options["vat_eps"],
                      vat_power_iters=options["vat_power_iters"])
    cfg = _train_config(options, options["seed"], len(src))
    res = train_model(net_cfg, src, None, loss, cfg)
    model = network_from_config(net_cfg)
    model.load_state_dict(res.state_dict)
    ds_meta = [open_dataset(Path(d)).meta for d in dataset_dirs]
    pixel_scale = next((m.get("pixel_scale") for m in ds_meta if m.get("pixel_scale")), None)
    meta = {"datasets": dataset_hashes(dataset_dirs), "unlabel": {"path": str(Path(unlabel).resolve()),
            "sha256": sha256_file(Path(unlabel))}, "mode": options["mode"], "loss": loss.model_dump(),
            "n_train": int(len(src)), "n_unlabelled": int((labels[keep] == -1).sum()),
            "n_removed": int((~keep).sum()), "best_epoch": res.best_epoch, "history": list(res.history),
            "timings": res.timings, "pixel_scale": pixel_scale, "version": options.get("code", {})}
    export_model(model, out, net_config=net_cfg, train_config=cfg.model_dump(), meta=meta)
    return {"model": str(out), "n_train": meta["n_train"], "n_unlabelled": meta["n_unlabelled"],
            "n_removed": meta["n_removed"], "best_epoch": res.best_epoch}


__all__ = ["plan_folds", "run_fold", "flag_and_write", "write_unlabel", "run_stage2", "stage2_labels", "net_config_for",
           "config_from_dict"]
