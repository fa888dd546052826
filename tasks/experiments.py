"""The paper's experiment grid: cells of (training configuration, label noise, seed).

Pure logic plus the per-cell work on dataset directories; no Prefect here (the flow
``flows/experiments.py`` only wires these functions as tasks).

* **Grid** (``METHODS``, ``NOISES``, ``GRIDS``, ``grid_cells``): the rows of the paper's
  results table (shared/science.md section 6) plus a feature-based baseline (sep shape
  features + a random forest, ``tasks/baseline.py``), crossed with label-noise settings
  and seeds.
* **Label noise** (``plant_flips``): on top of the survey's own labels (which already hold
  its errors: a real transient among the detections is labelled bogus, a fake on an
  artifact is labelled real), flip a share ``rate`` of each class, either ``uniform``ly at
  random or concentrated in the score tails (``tail``): the stamps a reference model scores
  most confidently as their own label are the likeliest to be flipped, so that after the
  flip their score disagrees most with their label, where the paper found its label errors
  (the tails of the score distribution). Seeded generators only.
* **Derived datasets** (``derive_dataset``): a noisy copy of a dataset directory shares the
  original ``stamps.zarr`` (a symlink) and carries its own ``stamps.parquet`` with the
  flipped ``label``, the original one as ``survey_label`` and ``planted_flip``; the stage
  functions of ``models/stages.py`` run on it unchanged.
* **Flagging study** (``flagging_study``): precision/recall of the stage-1 flagged set
  against the planted flips and, separately, the survey's own label errors, per S/N bin,
  beside a random flag set of the same size.
* **Cells** (``run_cell``): cached by a hash of their parameters (and the inputs' content
  hashes): a cell JSON present with the same key is not rerun.
* **Summary** (``summarize``, ``paired_seed_bootstrap``): mean over seeds with paired
  cluster-bootstrap intervals of the difference against the Simple-all baseline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tasks.environment import code_version, numerics

# ------------------------------------------------------------------------------ grid


@dataclass(frozen=True)
class Method:
    """One row of the results table. ``data``: each-sensor | mixed | all | removed | unlabelled;
    ``kind``: cnn | rf. ``paper``: the paper's (AUC, FPR@TPR=0.9) for this row, if any."""

    name: str
    row: str
    network: str  # the paper's network for the row: simple | complex | rf
    data: str
    l_ce: float = 1.0
    l_ech: float = 0.0
    l_lds: float = 0.0
    kind: str = "cnn"
    paper: tuple[float, float] | None = None

    @property
    def needs_stage1(self) -> bool:
        return self.data in ("removed", "unlabelled")


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("simple-sensor", "Simple, each sensor, CE", "simple", "each-sensor", paper=(0.9916, 9.868e-3)),
    Method("simple-mixed", "Simple, mixed (same size), CE", "simple", "mixed", paper=(0.9964, 5.028e-3)),
    Method("simple-all", "Simple, all, CE", "simple", "all", paper=(0.9997, 3.323e-4)),
    Method("complex-all", "Complex, all, CE", "complex", "all", paper=(0.9993, 7.272e-4)),
    Method("complex-removed", "Complex, removed, CE", "complex", "removed", paper=(0.9993, 8.367e-4)),
    Method("complex-all-ech", "Complex, all, CE+ECH", "complex", "all", 0.3, 0.7, 0.0, paper=(0.9992, 1.306e-3)),
    Method("complex-removed-ech", "Complex, removed, CE+ECH", "complex", "removed", 0.4, 0.6, 0.0,
           paper=(0.9996, 5.083e-4)),
    Method("complex-all-vat", "Complex, all, CE+VAT", "complex", "all", 0.4, 0.0, 0.6, paper=(0.9997, 1.603e-4)),
    Method("complex-unlabelled-vat", "Complex, unlabelled, CE+VAT", "complex", "unlabelled", 0.6, 0.0, 0.4,
           paper=(0.9997, 1.838e-4)),
    Method("complex-all-ech-vat", "Complex, all, CE+ECH+VAT", "complex", "all", 0.3, 0.3, 0.4,
           paper=(0.9997, 2.541e-4)),
    Method("complex-unlabelled-ech-vat", "Complex, unlabelled, CE+ECH+VAT", "complex", "unlabelled", 0.9, 0.05,
           0.05, paper=(0.9998, 1.994e-4)),
    Method("rf-sep", "Random forest on sep features (ZTF rb-like)", "rf", "all", kind="rf"),
]}
BASELINE = "simple-all"


@dataclass(frozen=True)
class Noise:
    """Label noise on top of the survey's own labels: ``survey`` (none added), or flips of a
    share ``rate`` of each class, ``uniform`` or concentrated in the score ``tail``."""

    model: str = "survey"
    rate: float = 0.0

    def __post_init__(self):
        if self.model not in ("survey", "uniform", "tail"):
            raise ValueError(f"noise model must be survey, uniform or tail, got {self.model!r}")
        if self.model == "survey" and self.rate != 0:
            raise ValueError("noise 'survey' adds no flips (rate must be 0)")
        if self.model != "survey" and not 0 < self.rate < 0.5:
            raise ValueError(f"flip rate must be in (0, 0.5), got {self.rate}")

    @property
    def name(self) -> str:
        return "survey" if self.model == "survey" else f"{self.model}-{self.rate:.2f}"

    @classmethod
    def parse(cls, name: str) -> "Noise":
        if name == "survey":
            return cls()
        model, _, rate = name.partition("-")
        try:
            return cls(model, float(rate))
        except ValueError:
            raise ValueError(f"noise must be 'survey' or MODEL-RATE (uniform-0.01, tail-0.10), got {name!r}") from None


NOISES = ["survey"] + [f"{m}-{r:.2f}" for r in (0.01, 0.05, 0.10) for m in ("uniform", "tail")]

GRIDS: dict[str, dict] = {
    # CI: the three things the paper compares (plain, removed, unlabelled + VAT) and the baseline
    "quick": {"methods": ["simple-all", "complex-removed", "complex-unlabelled-vat", "rf-sep"],
              "noises": ["survey", "tail-0.10"], "seeds": [0, 1, 2]},
    # every row of the paper's table at every noise level (GPU-sized: 12 x 7 x 3 cells)
    "paper": {"methods": list(METHODS), "noises": NOISES, "seeds": [0, 1, 2]},
    # FPR vs label noise for the methods that matter for the ordering
    "noise": {"methods": ["simple-all", "complex-all", "complex-removed", "complex-all-vat",
                          "complex-unlabelled-vat", "rf-sep"], "noises": NOISES, "seeds": [0, 1, 2]},
}


@dataclass(frozen=True)
class Cell:
    method: str
    noise: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}__{self.noise}__s{self.seed}"


def grid_cells(grid: str, *, seeds: Sequence[int] | None = None, methods: Sequence[str] | None = None,
               noises: Sequence[str] | None = None) -> list[Cell]:
    """The cells of a named grid; ``methods``/``noises``/``seeds`` replace the grid's lists.
    Order: noise, seed, method (so the stage 1 of a (noise, seed) is reused at once)."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {sorted(GRIDS)}, got {grid!r}")
    g = GRIDS[grid]
    ms = list(methods) if methods else list(g["methods"])
    ns = list(noises) if noises else list(g["noises"])
    ss = list(seeds) if seeds is not None and len(seeds) else list(g["seeds"])
    bad = [m for m in ms if m not in METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; known: {sorted(METHODS)}")
    for n in ns:
        Noise.parse(n)
    return [Cell(m, n, int(s)) for n in ns for s in ss for m in ms]


def stable_hash(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


# ------------------------------------------------------------------------------ label noise


def _seed_for(seed: int, noise: Noise) -> list[int]:
    return [int(seed), {"survey": 0, "uniform": 1, "tail": 2}[noise.model], int(round(noise.rate * 1e4)), 12]


TAIL_PROFILE = "confident-v2"  # part of the keys of tail-noise cells (v1 flipped the ambiguous stamps instead)


def tail_weights(labels: np.ndarray, ref_scores: np.ndarray, sharpness: float = 10.0) -> np.ndarray:
    """Selection weights that put the flipped labels in the score tails, as the paper found its
    label errors (shared/science.md section 2): a wrong "real" label sits on a stamp the model
    scores as obvious bogus (a fake on top of an obvious bogus), a wrong "bogus" label on one it
    scores as obvious real (a transient). So the stamps most confidently of their own label are
    the likeliest to be flipped: after the flip their score disagrees most with their label.

    Within each class, stamps are ranked by the reference P(real) of their own label (P for
    label 1, 1 - P for label 0); q in [0, 1] is that rank's quantile and the weight is
    exp(sharpness * q). At sharpness 10, ~63 % of the weight sits in the top decile
    (exp(10) / exp(0) = 2.2e4 between the extremes).
    """
    labels = np.asarray(labels).astype(int)
    p = np.asarray(ref_scores, dtype=float)
    if labels.shape != p.shape:
        raise ValueError(f"labels {labels.shape} and ref_scores {p.shape} differ in shape")
    if not np.all(np.isfinite(p)):
        raise ValueError("ref_scores must be finite")
    own = np.where(labels == 1, p, 1.0 - p)  # confidence in the stamp's own (pre-flip) label
    w = np.zeros(len(p))
    for c in (0, 1):
        m = labels == c
        if m.sum() == 0:
            continue
        r = pd.Series(own[m]).rank(method="average").to_numpy()
        q = (r - 1) / max(m.sum() - 1, 1)
        w[m] = np.exp(sharpness * q)
    return w


def plant_flips(labels: np.ndarray, noise: Noise, seed: int, ref_scores: np.ndarray | None = None,
                sharpness: float = 10.0) -> np.ndarray:
    """Which stamps to flip (N,) bool: round(rate * n_c) of each class c, without replacement.

    uniform: uniformly at random; tail: weighted by ``tail_weights`` of ``ref_scores``
    (needed). The generator is ``default_rng([seed, model, rate])``: same inputs, same flips.
    """
    labels = np.asarray(labels).astype(int)
    flip = np.zeros(len(labels), bool)
    if noise.model == "survey":
        return flip
    if noise.model == "tail" and ref_scores is None:
        raise ValueError("tail-concentrated flips need reference scores (out-of-fold or a reference model)")
    rng = np.random.default_rng(_seed_for(seed, noise))
    w_all = tail_weights(labels, ref_scores, sharpness) if noise.model == "tail" else np.ones(len(labels))
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        k = int(round(noise.rate * len(idx)))
        if k == 0:
            continue
        w = w_all[idx] / w_all[idx].sum()
        pick = rng.choice(idx, size=k, replace=False, p=w)
        flip[pick] = True
    return flip


# ------------------------------------------------------------------------------ derived datasets


def _symlink(target: Path, link: Path) -> None:
    """Point ``link`` at ``target`` atomically (a new link renamed over the old one), so a run
    deriving the same set at the same time never sees it missing."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def derive_dataset(src_dir: str | Path, out_dir: str | Path, table: pd.DataFrame, tag: dict) -> Path:
    """A dataset directory sharing ``src_dir``'s stamps.zarr with another ``stamps.parquet``.

    ``table``: the source rows in store order with the changed columns. Layout as the stamp
    store writes it (``current`` -> ``versions/<hash>``, top-level links), so ``open_dataset``
    and ``StampSource`` read it; ``dataset.json``'s ``content_hash`` mixes the source's hash
    with the label column's and ``tag``. Idempotent (rewritten in place when it exists).
    """
    from storage.stampstore import open_dataset
    src = open_dataset(Path(src_dir))
    n = src.stamps().shape[0]
    if len(table) != n:
        raise ValueError(f"derived table has {len(table)} rows, the source store {n}")
    meta = dict(src.meta)
    lab_hash = hashlib.sha256(np.ascontiguousarray(table["label"].to_numpy(np.int64)).tobytes()).hexdigest()
    meta["derived_from"] = {"path": str(Path(src_dir).resolve()), "content_hash": src.meta.get("content_hash", ""),
                            **tag}
    meta["content_hash"] = hashlib.sha256(f"{src.meta.get('content_hash', '')}/{lab_hash}/"
                                          f"{json.dumps(tag, sort_keys=True)}".encode()).hexdigest()
    out = Path(out_dir)
    vdir = out / "versions" / meta["content_hash"][:12]
    vdir.mkdir(parents=True, exist_ok=True)
    tmp = vdir / f".stamps.parquet.{os.getpid()}.tmp"  # two runs may derive the same set at once
    table.to_parquet(tmp, index=False)
    os.replace(tmp, vdir / "stamps.parquet")
    (vdir / "dataset.json").write_text(json.dumps(meta, indent=1, default=str))
    _symlink(src.zarr_path.resolve(), vdir / "stamps.zarr")
    _symlink(Path("versions") / vdir.name, out / "current")
    for name in ("stamps.parquet", "stamps.zarr", "dataset.json"):
        _symlink(Path("current") / name, out / name)
    return out


def noisy_training_sets(train_dirs: Sequence[str], work: Path, noise: Noise, seed: int,
                        ref_scores: pd.Series | None = None, sharpness: float = 10.0) -> list[str]:
    """Derived copies of the training datasets with planted flips (one per source dir).

    Flips are drawn over the union of the training sets (rate per class of the union);
    ``ref_scores``: P(real) indexed by stamp_id (for tail noise).
    """
    from storage.stampstore import open_dataset
    tables = [open_dataset(Path(d)).table() for d in train_dirs]
    full = pd.concat(tables, ignore_index=True)
    lab = full["label"].to_numpy().astype(int)
    ref = None
    if noise.model == "tail":
        if ref_scores is None:
            raise ValueError("tail noise needs reference scores")
        ref = ref_scores.reindex(full["stamp_id"]).to_numpy(float)
        if np.isnan(ref).any():
            raise ValueError(f"{int(np.isnan(ref).sum())} training stamps lack a reference score")
    flip = plant_flips(lab, noise, seed, ref, sharpness)
    # The directory is keyed by the flips themselves: two contexts whose tails follow different
    # reference stage 1s (e.g. other --epochs) draw other flips at the same (noise, seed), and
    # once shared one directory, so one run rewrote the labels another was about to train on.
    flip_key = hashlib.sha256(np.packbits(flip.astype(bool)).tobytes()).hexdigest()[:10]
    out_dirs, start = [], 0
    tag = {"noise": noise.name, "seed": int(seed), "sharpness": sharpness if noise.model == "tail" else None,
           "tail_profile": TAIL_PROFILE if noise.model == "tail" else None}
    for d, t in zip(train_dirs, tables):
        f = flip[start:start + len(t)]
        start += len(t)
        t = t.copy()
        t["survey_label"] = t["label"].astype(np.int64)
        t["planted_flip"] = f
        t["label"] = np.where(f, 1 - t["survey_label"], t["survey_label"]).astype(np.int64)
        o = Path(work) / "data" / f"{noise.name}-s{seed}-{flip_key}" / Path(d).name
        out_dirs.append(str(derive_dataset(d, o, t, tag)))
    return out_dirs


# ------------------------------------------------------------------------------ flagging study


def _pr(flagged: np.ndarray, target: np.ndarray) -> tuple[float | None, float | None]:
    nf, nt = int(flagged.sum()), int(target.sum())
    tp = int((flagged & target).sum())
    return (tp / nf if nf else None), (tp / nt if nt else None)


FLAG_CUTS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
# whose out-of-fold P(real) a stage-2 cell's flags come from (ExperimentContext.flagger)
FLAGGERS = {"cnn": "stage 1's CNN folds",
            "cnn+rf": "the mean of stage 1's CNN and of the feature baseline (sep features + random forest) "
                      "on the same folds"}


def _pr_excl_own(flagged: np.ndarray, targets: dict[str, np.ndarray], m: np.ndarray):
    """(kept mask, precision, recall) against the planted flips within ``m`` once the stamps
    carrying one of the survey's own errors are left out of the flags and of ``m``."""
    keep = m & ~targets["own"]
    return (keep, *_pr(flagged & keep, targets["planted"] & keep))


def error_targets(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """(N,) bool masks of the label errors a flag can find: ``planted`` (the planted flips),
    ``own`` (the survey's own errors the planting left in place: survey_label != true_label,
    not flipped; ambiguous truth excluded) and ``any`` (label != true_label now)."""
    tl = pd.to_numeric(table["true_label"], errors="coerce").to_numpy(float)
    known = np.isin(tl, (0, 1))
    lab = table["label"].to_numpy().astype(int)
    surv = table["survey_label"].to_numpy().astype(int) if "survey_label" in table else lab
    planted = table["planted_flip"].to_numpy().astype(bool) if "planted_flip" in table else np.zeros(len(lab), bool)
    return {"planted": planted, "own": known & ~planted & (surv != tl), "any": known & (lab != tl)}


def flag_cut_sweep(table: pd.DataFrame, oof_prob: np.ndarray, *, cuts: Sequence[float] = FLAG_CUTS,
                   snr_min: float = 10.0) -> list[dict]:
    """Precision and recall of stricter flag sets among S/N > ``snr_min``: a stamp is flagged
    at cut c when its out-of-fold probability of the other class exceeds c (c = 0.5 is the
    paper's rule). Per cut: the flag count, and precision/recall against ``planted``,
    ``own`` and ``any`` (``error_targets``), plus ``planted_excl_own`` (own errors set aside)."""
    p = np.asarray(oof_prob, float)
    if len(p) != len(table):
        raise ValueError(f"oof_prob has {len(p)} entries, the table {len(table)} rows")
    from tasks.flagging import flag_at_cut  # the flags a stage-2 cell takes at that cut (stage2_flags)
    lab = table["label"].to_numpy().astype(int)
    t = error_targets(table)
    m = table["snr"].to_numpy(float) > snr_min
    out = []
    for c in cuts:
        f = flag_at_cut(lab, p, c).flagged & m
        row = {"cut": float(c), "n_flagged": int(f.sum())}
        for name, target in t.items():
            pr, rc = _pr(f, target & m)
            row[name] = {"precision": pr, "recall": rc}
        _, pr, rc = _pr_excl_own(f, t, m)
        row["planted_excl_own"] = {"precision": pr, "recall": rc}
        out.append(row)
    return out


def flagging_study(table: pd.DataFrame, flagged: np.ndarray, *, snr_edges: Sequence[float] = (10.0, 20.0, 40.0),
                   seed: int = 0, oof_prob: np.ndarray | None = None) -> dict:
    """Precision and recall of a flagged set per S/N bin, against three targets.

    table: one row per training stamp with ``label`` (as trained on), ``survey_label``,
    ``planted_flip`` (bool), ``true_label`` (1/0; -1 or null = ambiguous) and ``snr``.
    Targets: ``planted`` (the planted flips), ``own`` (the survey's own label errors that
    the planting left in place: survey_label != true_label, not flipped), ``any`` (label !=
    true_label now). A random flag set of the same size per bin (seeded) is the baseline;
    its expected precision is the target's share of the bin and its expected recall the
    flagged share. Rows: ``all``, ``snr>E0`` (the target's bin), then each bin. Each row also
    has ``planted_excl_own``: precision and recall against the planted flips with the stamps
    that carry one of the survey's own errors left out (of the flags and of the bin). With
    ``oof_prob`` (the out-of-fold P(real) behind the flags) the result also has ``cuts``:
    ``flag_cut_sweep`` at S/N > E0.
    """
    flagged = np.asarray(flagged, bool)
    if len(flagged) != len(table):
        raise ValueError(f"flagged has {len(flagged)} entries, the table {len(table)} rows")
    lab = table["label"].to_numpy().astype(int)
    targets = error_targets(table)
    planted = targets["planted"]
    snr = table["snr"].to_numpy(float)
    edges = list(snr_edges)
    bins = [("all", np.ones(len(lab), bool)), (f"snr>{edges[0]:g}", snr > edges[0])]
    lo = [-np.inf] + edges
    hi = edges + [np.inf]
    for a, b in zip(lo, hi):
        name = f"<{b:g}" if a == -np.inf else (f">={a:g}" if b == np.inf else f"{a:g}-{b:g}")
        bins.append((name, (snr >= a) & (snr < b)))
    rng = np.random.default_rng([seed, 31337])
    rows = []
    for name, m in bins:
        idx = np.flatnonzero(m)
        nf = int(flagged[m].sum())
        rand = np.zeros(len(lab), bool)
        if nf and len(idx):
            rand[rng.choice(idx, size=nf, replace=False)] = True
        row = {"bin": name, "n": int(m.sum()), "n_flagged": nf}
        for tname, t in targets.items():
            p, r = _pr(flagged & m, t & m)
            rp, rr = _pr(rand & m, t & m)
            nt = int((t & m).sum())
            row[tname] = {"n_target": nt, "precision": p, "recall": r, "random_precision": rp,
                          "random_recall": rr,
                          "random_expected_precision": nt / m.sum() if m.sum() else None,
                          "random_expected_recall": nf / m.sum() if m.sum() else None}
        # the planted flips among the flags that are not on the survey's own errors: whether
        # stage 1 tells a planted flip from a correct label, the own errors set aside
        keep, p, r = _pr_excl_own(flagged, targets, m)
        row["planted_excl_own"] = {"n": int(keep.sum()), "n_flagged": int((flagged & keep).sum()),
                                   "n_target": int((planted & keep).sum()), "precision": p, "recall": r,
                                   "random_expected_precision": float((planted & keep).sum() / keep.sum())
                                   if keep.sum() else None}
        rows.append(row)
    res = {"bins": rows, "n": int(len(lab)), "n_flagged": int(flagged.sum()),
           "n_planted": int(planted.sum()), "n_own_errors": int(targets["own"].sum()),
           "snr_edges": edges}
    if oof_prob is not None:
        res["cuts"] = flag_cut_sweep(table, oof_prob, snr_min=edges[0])
    return res


# ------------------------------------------------------------------------------ paired bootstrap over seeds


def paired_seed_bootstrap(y: np.ndarray, scores_a: Sequence[np.ndarray], scores_b: Sequence[np.ndarray], *,
                          groups_object=None, groups_image=None, n_boot: int = 1000, seed: int = 0,
                          ci_level: float = 0.95, target_tpr: float = 0.9) -> dict:
    """Difference (A - B) of the seed-averaged AUC and FPR@TPR=target, paired over the
    held-out detections: each replicate draws one set of cluster multiplicities (reals'
    objects and bogus images, as ``tasks.validation``'s cluster bootstrap) and evaluates every
    seed's model of both methods on it. The interval is over held-out sampling only (the
    seeds are fixed); the per-seed spread is reported beside it by ``summarize``."""
    from tasks.validation import (_check_pair, _chunk, _cluster_counts, _group_codes, _interval, _layout,
                                  _roc_from_counts)
    y = np.asarray(y)
    _check_pair(y, scores_a[0])
    obj = _group_codes(groups_object, len(y))
    img = _group_codes(groups_image, len(y))
    lays_a = [_layout(y.astype(np.int8), np.asarray(s, float), obj, img, 0.5) for s in scores_a]
    lays_b = [_layout(y.astype(np.int8), np.asarray(s, float), obj, img, 0.5) for s in scores_b]
    kw = dict(tprs=(target_tpr,), fprs=(1e-3,))
    rng = np.random.default_rng(seed)
    reps = {"auc": [], "fpr": []}
    chunk = _chunk(lays_a[0])
    for start in range(0, n_boot, chunk):
        c_obj, c_img = _cluster_counts(lays_a[0], min(chunk, n_boot - start), rng)
        vals = {}
        for tag, lays in (("a", lays_a), ("b", lays_b)):
            rs = [_roc_from_counts(lay, c_obj, c_img, **kw) for lay in lays]
            vals[tag] = (np.mean([r.auc for r in rs], 0), np.mean([r.fpr_at_tpr[target_tpr] for r in rs], 0))
        reps["auc"].append(vals["a"][0] - vals["b"][0])
        reps["fpr"].append(vals["a"][1] - vals["b"][1])
    point = {}
    for tag, lays in (("a", lays_a), ("b", lays_b)):
        rs = [_roc_from_counts(lay, np.ones((1, lay.mp.shape[0])), np.ones((1, lay.mn.shape[0])), **kw)
              for lay in lays]
        point[tag] = (float(np.mean([r.auc[0] for r in rs])), float(np.mean([r.fpr_at_tpr[target_tpr][0] for r in rs])))
    out = {}
    for i, (key, name) in enumerate((("auc", "auc"), ("fpr", "fpr_at_tpr90"))):
        d = np.concatenate(reps[key])
        d = d[np.isfinite(d)]
        out[name] = {"value_a": point["a"][i], "value_b": point["b"][i], "diff": point["a"][i] - point["b"][i],
                     "diff_ci": _interval(d, ci_level),
                     "share_le_0": float(np.mean(d <= 0)) if len(d) else None,
                     "share_ge_0": float(np.mean(d >= 0)) if len(d) else None}
    out["n_boot"] = n_boot
    out["ci_level"] = ci_level
    return out


# ------------------------------------------------------------------------------ context and cells


@dataclass(frozen=True)
class ExperimentContext:
    """Everything a cell needs besides its (method, noise, seed)."""

    train_dirs: tuple[str, ...]
    heldout_dirs: tuple[str, ...]
    tns: str
    out: str  # cell JSONs and scores (docs/experiments/)
    work: str  # derived datasets, stage-1 dirs, models (runs/experiments/)
    network: str = "simple"  # simple | complex | paper (each row's own network)
    stage1_network: str = "simple"
    folds: int = 5
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 3
    device: str = "auto"
    n_boot: int = 300
    threads: int | None = 1
    rf_trees: int = 300
    tail_sharpness: float = 10.0
    reference_seed: int = 0
    reference_epochs: int | None = None  # the reference stage 1's epochs (None: ``epochs``)
    rerun: bool = False
    flagger: str = "cnn"  # whose out-of-fold P(real) flags stage 2's stamps (FLAGGERS)
    flag_cut: float = 0.5  # flagged when that P(other class) > flag_cut (0.5: the paper's rule)
    inputs: dict = field(default_factory=dict)  # content hashes of train/held-out/tns (filled by prepare)

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.reference_epochs is not None and self.reference_epochs < 1:
            raise ValueError(f"reference_epochs must be None or >= 1, got {self.reference_epochs}")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if self.flagger not in FLAGGERS:
            raise ValueError(f"flagger must be one of {sorted(FLAGGERS)}, got {self.flagger!r}")
        if not 0.5 <= self.flag_cut < 1.0:
            raise ValueError(f"flag_cut must be in [0.5, 1), got {self.flag_cut!r}")

    @property
    def paper_flags(self) -> bool:
        """Stage 2 takes stage 1's own flags (the CNN at p = 0.5, the paper's rule)."""
        return (self.flagger, self.flag_cut) == ("cnn", 0.5)

    def flags(self) -> dict:
        return {"flagger": self.flagger, "cut": self.flag_cut}

    def network_for(self, method: Method) -> str:
        if method.kind == "rf":
            return "rf"
        return method.network if self.network == "paper" else self.network

    def reference(self) -> dict:
        """What defines the score tails beyond the inputs: the reference stage 1's seed, and its
        epochs where they differ from ``epochs`` (so that the keys of runs without
        ``reference_epochs`` stay what they were)."""
        ref = {"reference_seed": self.reference_seed}
        if self.reference_epochs not in (None, self.epochs):
            ref["reference_epochs"] = self.reference_epochs
        return ref

    def train_options(self, seed: int, network: str) -> dict:
        return {"network": network, "n_logits": 2, "epochs": self.epochs, "batch_size": self.batch_size,
                "lr": self.lr, "patience": self.patience, "seed": int(seed), "device": self.device}


def prepare_context(ctx: ExperimentContext) -> ExperimentContext:
    """Fill ``inputs`` with the content hashes of the inputs (part of every cell key)."""
    from storage.stampstore import open_dataset
    h = lambda d: open_dataset(Path(d)).meta.get("content_hash", "")  # noqa: E731
    tns_hash = hashlib.sha256(Path(ctx.tns).read_bytes()).hexdigest()
    inputs = {"train": [h(d) for d in ctx.train_dirs], "heldout": [h(d) for d in ctx.heldout_dirs],
              "tns": tns_hash}
    from dataclasses import replace
    return replace(ctx, inputs=inputs)


def heldout_table(ctx: ExperimentContext) -> pd.DataFrame:
    """The held-out detections (all held-out dirs, in store order) with their TNS labels:
    ``val_class`` (1 real, 0 bogus, -1 excluded), ``tns_name``, ``image``, ``true_label``.
    Written once to OUT/heldout.parquet (the summary reads it)."""
    from storage.stampstore import open_dataset
    from storage.tns import read_tns
    from tasks.validation import crossmatch_tns
    t = pd.concat([open_dataset(Path(d)).table() for d in ctx.heldout_dirs], ignore_index=True)
    xm = crossmatch_tns(t, read_tns(ctx.tns).objects)
    xm["image"] = xm["night"].astype(str) + "/" + xm["exposure"].astype(str) + "/" + xm["sensor"].astype(str)
    keep = ["stamp_id", "night", "exposure", "sensor", "image", "snr", "label", "true_label", "true_class",
            "injection_id", "val_class", "tns_name"]
    out = xm[[c for c in keep if c in xm]].copy()
    Path(ctx.out).mkdir(parents=True, exist_ok=True)
    out.to_parquet(Path(ctx.out) / "heldout.parquet", index=False)
    return out


def stage1_dir(ctx: ExperimentContext, noise: Noise, seed: int) -> Path:
    key = stable_hash({"inputs": ctx.inputs, "noise": noise.name, "seed": seed, "folds": ctx.folds,
                       **({"tail_profile": TAIL_PROFILE} if noise.model == "tail" else {}),
                       "opts": ctx.train_options(seed, ctx.stage1_network), "sharpness": ctx.tail_sharpness,
                       **(ctx.reference() if noise.model == "tail" else {"reference_seed": ctx.reference_seed})},
                      10)
    return Path(ctx.work) / "stage1" / f"{noise.name}-s{seed}-{key}"


def reference_scores(ctx: ExperimentContext) -> pd.Series:
    """P(real) per training stamp that defines the score tails: the out-of-fold scores of the
    stage 1 on the survey's own labels at ``reference_seed`` (run first, cached), trained for
    ``reference_epochs`` (default ``epochs``): a run with other ``epochs`` can so plant the same
    tail flips as the run it is compared with."""
    from dataclasses import replace
    ref = ctx.reference()
    if "reference_epochs" in ref:
        ctx = replace(ctx, epochs=ref["reference_epochs"])
    r = run_stage1(ctx, Noise(), ctx.reference_seed)
    un = pd.read_parquet(r["unlabel"])
    return pd.Series(un["oof_prob"].to_numpy(float), index=un["stamp_id"].to_numpy())


def training_sets(ctx: ExperimentContext, noise: Noise, seed: int) -> list[str]:
    ref = reference_scores(ctx) if noise.model == "tail" else None
    return noisy_training_sets(ctx.train_dirs, Path(ctx.work), noise, seed, ref, ctx.tail_sharpness)


def label_hashes(dirs: Sequence[str]) -> list[str]:
    """The content hashes of the (derived) training sets: they mix the source stamps' hash with
    the label column's, so they tell which flips were planted. Recorded, not keyed: a tail cell's
    flips follow the reference stage 1's scores, and a stage 1 retrained on other CPU kernels or
    threads scores a little differently (docs/experiments/reading.md)."""
    from storage.stampstore import open_dataset
    return [open_dataset(Path(d)).meta.get("content_hash", "") for d in dirs]


def run_stage1(ctx: ExperimentContext, noise: Noise, seed: int) -> dict:
    """Stage 1 (k folds + p05 flagging) on the noisy training sets of (noise, seed), cached;
    writes the flagging study to OUT/flagging/<noise>-s<seed>.json. A cached stage 1 whose
    study lacks the cuts or the cnn+rf flagger (an older version's) gets it rewritten, which
    trains the feature baseline's folds once (~25 s for 4k stamps)."""
    from models import stages
    out = stage1_dir(ctx, noise, seed)
    done = out / "stage1.json"
    fpath = Path(ctx.out) / "flagging" / f"{noise.name}-s{seed}.json"
    if done.exists() and (out / "unlabel.parquet").exists():
        rec = json.loads(done.read_text())
        # Stage 2 trains on the sets derived now, not on the paths the record kept: those were
        # shared by every draw of flips at this (noise, seed) and may hold another run's labels.
        dirs = training_sets(ctx, noise, seed)
        now = label_hashes(dirs)
        if rec.get("label_hashes") and rec["label_hashes"] != now:
            raise RuntimeError(f"{done}: this stage 1 was trained on the labels {rec['label_hashes']}, but "
                               f"{noise.name} seed {seed} now derives {now}; remove {out} to train it again")
        rec = {**rec, "datasets": dirs}
        prev = json.loads(fpath.read_text()) if fpath.exists() else {}
        if "alternatives" not in prev:  # missing, or written by an older version: the study again (cheap)
            _write_flagging(fpath, rec["datasets"], out, {"seconds": prev.get("seconds", rec.get("seconds"))},
                            rf_trees=ctx.rf_trees, noise=noise.name, seed=seed,
                            stage1_network=ctx.stage1_network, folds=ctx.folds, epochs=ctx.epochs)
        return rec
    _set_threads(ctx)  # also when called first, for the tails' reference scores
    t0 = time.perf_counter()
    dirs = training_sets(ctx, noise, seed)
    stages.plan_folds(dirs, str(out), ctx.folds, seed)
    opts = ctx.train_options(seed, ctx.stage1_network)
    recs = [stages.run_fold(dirs, str(out), k, opts) for k in range(ctx.folds)]
    summ = stages.flag_and_write(dirs, str(out), ctx.folds, "p05", [r.model_id for r in recs], gallery=0)
    env, hashes = environment(), label_hashes(dirs)
    _write_flagging(fpath, dirs, out, {"seconds": time.perf_counter() - t0, "environment": env,
                                       "label_hashes": hashes},
                    rf_trees=ctx.rf_trees,
                    noise=noise.name, seed=seed, stage1_network=ctx.stage1_network, folds=ctx.folds,
                    epochs=ctx.epochs)
    rec = {"dir": str(out), "unlabel": summ.unlabel, "datasets": dirs, "n": summ.n, "n_flagged": summ.n_flagged,
           "flagged_by_label": summ.flagged_by_label, "seconds": time.perf_counter() - t0,
           "folds": [asdict(r) for r in recs], "environment": env, "label_hashes": hashes}
    _write_json(done, rec)
    return rec


def stage2_flags(ctx: ExperimentContext, s1: dict, seed: int) -> dict:
    """The unlabel manifest a stage-2 cell trains with, under ``ctx``'s flagger and cut: stage 1's
    own (the CNN at p = 0.5), or one derived from its out-of-fold scores, written once beside it as
    ``unlabel-<flagger>-c<cut>.parquet`` (same columns; ``oof_prob`` is the flagger's P(real)).
    ``cnn+rf`` averages the CNN's with the feature baseline's on the same folds (``rf_oof``, the
    flagging study's ``cnn+rf``). Returns ``{flagger, cut, manifest, n_flagged, flagged_by_label}``."""
    if ctx.paper_flags:
        path = Path(s1["unlabel"])
    else:
        stage1 = Path(s1["dir"])
        path = stage1 / f"unlabel-{ctx.flagger}-c{ctx.flag_cut:g}.parquet"
        if not path.exists():
            import pyarrow.parquet as pq
            from models.stages import write_unlabel
            from tasks.flagging import flag_at_cut
            src = pq.read_table(s1["unlabel"])
            un = src.to_pandas()
            p = un["oof_prob"].to_numpy(float)
            if ctx.flagger == "cnn+rf":
                p = (p + rf_oof(s1["datasets"], stage1, seed, ctx.rf_trees).reindex(un["stamp_id"]).to_numpy(float)) / 2
            res = flag_at_cut(un["label"].to_numpy(), p, ctx.flag_cut)
            un = un.assign(oof_prob=p, flagged=res.flagged, rule=f"{ctx.flagger}-c{ctx.flag_cut:g}", margin=res.margin)
            # stage 1's metadata (its model ids and dataset hashes, which lineage reads), with this rule
            meta = json.loads((src.schema.metadata or {}).get(b"rbflow.stage1", b"{}"))
            write_unlabel(un, meta | {"rule": res.rule, "thresholds": res.thresholds,
                                      "flagger": f"{ctx.flagger}: {FLAGGERS[ctx.flagger]}"}, path)
    un = pd.read_parquet(path, columns=["label", "flagged"])
    return {**ctx.flags(), "manifest": str(path), "n_flagged": int(un["flagged"].sum()),
            "flagged_by_label": {str(int(k)): int(v) for k, v in un.groupby("label")["flagged"].sum().items()}}


def rf_oof(dirs: list[str], stage1: Path, seed: int, n_estimators: int = 300) -> pd.Series:
    """Out-of-fold P(real) of the feature baseline (sep shape features + random forest) on
    the stage 1's own folds (``folds.parquet``), indexed by stamp_id; cached in the stage-1
    directory as ``rf_oof.parquet``."""
    from storage.loader import StampSource, load_all
    from tasks.baseline import features, train_rf
    cache = Path(stage1) / "rf_oof.parquet"
    if cache.exists():
        c = pd.read_parquet(cache)
        return pd.Series(c["oof_prob"].to_numpy(float), index=c["stamp_id"].to_numpy())
    src = StampSource(dirs)
    folds = pd.read_parquet(Path(stage1) / "folds.parquet").set_index("stamp_id").loc[src.table["stamp_id"], "fold"]
    X = features(src.table, load_all(src).x).to_numpy()
    y, fold = src.labels, folds.to_numpy()
    p = np.full(len(y), np.nan)
    for k in np.unique(fold):
        te = fold == k
        p[te] = train_rf(X[~te], y[~te], seed=seed, n_estimators=n_estimators).predict_proba(X[te])[:, 1]
    out = pd.DataFrame({"stamp_id": src.table["stamp_id"].to_numpy(), "oof_prob": p})
    tmp = cache.with_name(".rf_oof.parquet.tmp")
    out.to_parquet(tmp, index=False)
    os.replace(tmp, cache)
    return pd.Series(p, index=out["stamp_id"].to_numpy())


def _write_flagging(path: Path, dirs: list[str], stage1: Path, extra: dict, rf_trees: int = 300, **tags) -> None:
    """The flagging study of a finished stage 1 (its unlabel manifest) to ``path``; beside it,
    under ``alternatives``, the same study for a flagger that averages the CNN's out-of-fold
    P(real) with the feature baseline's on the same folds (``cnn+rf``, p = 0.5 rule)."""
    from storage.loader import StampSource
    table = StampSource(dirs).table
    un = pd.read_parquet(stage1 / "unlabel.parquet").set_index("stamp_id").loc[table["stamp_id"]]
    cnn = un["oof_prob"].to_numpy(float)
    study = flagging_study(table, un["flagged"].to_numpy(bool), seed=tags["seed"], oof_prob=cnn)
    mean = (cnn + rf_oof(dirs, stage1, tags["seed"], rf_trees).reindex(table["stamp_id"]).to_numpy(float)) / 2
    from tasks.flagging import flag_label_errors
    flags = flag_label_errors(table["label"].to_numpy(), mean, "p05").flagged  # stage 1's own rule
    alt = flagging_study(table, flags, seed=tags["seed"], oof_prob=mean)
    study["alternatives"] = {"cnn+rf": {k: alt[k] for k in ("bins", "cuts", "n_flagged")}}
    study.update({**tags, **extra})
    _write_json(path, study)


def _write_json(path: Path, obj: dict) -> None:
    from tasks.validation import jsonable
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=1))
    os.replace(tmp, path)


def cell_key(cell: Cell, ctx: ExperimentContext) -> str:
    m = METHODS[cell.method]
    net = ctx.network_for(m)
    params = {"method": asdict(m), "noise": cell.noise, "seed": cell.seed, "network": net,
              "inputs": ctx.inputs, "n_boot": ctx.n_boot, "tail_sharpness": ctx.tail_sharpness,
              "reference_seed": ctx.reference_seed}
    if Noise.parse(cell.noise).model == "tail":
        params.update(tail_profile=TAIL_PROFILE, **ctx.reference())
    if m.kind == "rf":
        params["rf_trees"] = ctx.rf_trees
    else:
        params["train"] = ctx.train_options(cell.seed, net)
    if m.needs_stage1:
        params["stage1"] = {"network": ctx.stage1_network, "folds": ctx.folds}
        if not ctx.paper_flags:  # keyed only off the paper's rule: older cells keep their keys
            params["flags"] = ctx.flags()
    return stable_hash(params)


def cell_name(cell: Cell, ctx: ExperimentContext) -> str:
    """The file stem of a cell's JSON, scores and model: ``METHOD__NOISE__sSEED`` when the cell runs on
    its row's own network, with ``__on-NET`` added when another network stands in (``--network simple``
    for a *Complex* row), so that the stand-in's cells and the row's own sit side by side."""
    return _stem(cell.name, METHODS[cell.method].network, ctx.network_for(METHODS[cell.method]))


def _stem(base: str, own_network: str, network: str) -> str:
    return base if network == own_network else f"{base}__on-{network}"  # rf rows: network "rf" both


def cell_path(cell: Cell, ctx: ExperimentContext) -> Path:
    return Path(ctx.out) / "cells" / f"{cell_name(cell, ctx)}.json"


def cached_cell(cell: Cell, ctx: ExperimentContext) -> dict | None:
    p = cell_path(cell, ctx)
    if ctx.rerun or not p.exists():
        return None
    rec = json.loads(p.read_text())
    return rec if rec.get("key") == cell_key(cell, ctx) else None


def _metric_subset(m: dict | None) -> dict | None:
    if m is None:
        return None
    keys = ("auc", "auc_ci", "fpr_at_tpr90", "fpr_at_tpr90_ci", "tpr_at_fpr1e-3", "tpr_at_fpr1e-3_ci",
            "fpr_at_tpr0.983", "precision", "recall", "n_real", "n_bogus", "n_real_objects", "n_bogus_images",
            "snr_bins")
    return {k: m.get(k) for k in keys if k in m}


def _score_cnn(cell: Cell, ctx: ExperimentContext, m: Method, dirs: list[str], unlabel: str | None) -> tuple[np.ndarray, dict]:
    """Train the cell's network and score the held-out detections (store order)."""
    from models import stages
    from models.scoring import score_dataset
    net = ctx.network_for(m)
    opts = ctx.train_options(cell.seed, net)
    if m.data in ("each-sensor", "mixed"):
        return _score_subsets(cell, ctx, m, dirs, opts)
    from models.losses import LossConfig
    lc = LossConfig()
    opts |= {"mode": m.data, "l_ce": m.l_ce, "l_ech": m.l_ech, "l_lds": m.l_lds, "ech_margin": lc.ech_margin,
             "vat_xi": lc.vat_xi, "vat_eps": lc.vat_eps, "vat_power_iters": lc.vat_power_iters}
    if unlabel is None:  # mode 'all' needs no flags: an unlabel manifest that flags nothing
        unlabel = _no_flags_manifest(dirs)
    model_dir = Path(ctx.work) / "models" / f"{cell_name(cell, ctx)}-{cell_key(cell, ctx)}"
    if model_dir.exists() and not (model_dir / "model.pt2").exists():
        shutil.rmtree(model_dir)
    if (model_dir / "model.pt2").exists():
        info = {"model": str(model_dir), "reused": True}
    else:
        info = stages.run_stage2(dirs, unlabel, str(model_dir), opts)
    scores = np.concatenate([score_dataset(model_dir, d, batch_size=128) for d in ctx.heldout_dirs])
    return scores, {k: v for k, v in info.items()} | {"network": net}


def _no_flags_manifest(dirs: list[str]) -> str:
    """A manifest that flags nothing (the *all* rows' stage 2), written beside the derived sets."""
    from storage.loader import StampSource
    t = StampSource(dirs).table
    p = Path(dirs[0]).parent / "noflags.parquet"  # keyed by the flips, as the directory is
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    pd.DataFrame({"stamp_id": t["stamp_id"], "label": t["label"].astype(np.int64), "flagged": False}).to_parquet(
        tmp, index=False)
    os.replace(tmp, p)
    return str(p)


def _score_subsets(cell: Cell, ctx: ExperimentContext, m: Method, dirs: list[str], opts: dict) -> tuple[np.ndarray, dict]:
    """each-sensor: one model per sensor, each held-out stamp scored by its sensor's model;
    mixed: one model on a random subset of the size of a median sensor's training set."""
    from models import stages
    from models.losses import LossConfig
    from models.train import TrainConfig, predict, train_model
    from storage.loader import StampSource
    src = StampSource(dirs)
    held = StampSource(list(ctx.heldout_dirs))
    net_cfg = stages.net_config_for(opts["network"], 2)
    dev = opts["device"]
    cfg = TrainConfig(epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"], patience=opts["patience"],
                      seed=opts["seed"], device=dev, in_memory=True, class_weight="balanced")
    sensors = src.table["sensor"].astype(str).to_numpy()
    hs = held.table["sensor"].astype(str).to_numpy()
    scores = np.full(len(held), np.nan)
    ids = src.table["stamp_id"].to_numpy()
    pdev = "cuda" if dev != "cpu" and __import__("torch").cuda.is_available() else "cpu"
    if m.data == "each-sensor":
        n_models = 0
        for s in np.unique(hs):
            sel = sensors == s
            labs = src.labels[sel]
            if sel.sum() < 20 or len(np.unique(labs)) < 2:
                continue
            res = train_model(net_cfg, StampSource(dirs, ids[sel]), None, LossConfig(l_ce=1.0), cfg)
            hsel = np.flatnonzero(hs == s)
            scores[hsel] = predict(res.state_dict, net_cfg, held.subset(hsel), device=pdev)
            n_models += 1
        if np.isnan(scores).any():  # sensors without a model: the worst score (counted against it)
            scores[np.isnan(scores)] = 0.5
        return scores, {"n_models": n_models, "n_train_per_sensor": int(np.median(pd.Series(sensors).value_counts()))}
    size = int(np.median(pd.Series(sensors).value_counts()))
    rng = np.random.default_rng([cell.seed, 4242])
    pick = np.sort(rng.choice(len(ids), size=min(size, len(ids)), replace=False))
    res = train_model(net_cfg, StampSource(dirs, ids[pick]), None, LossConfig(l_ce=1.0), cfg)
    scores = predict(res.state_dict, net_cfg, held, device=pdev)
    return scores, {"n_train": int(len(pick))}


def _score_rf(cell: Cell, ctx: ExperimentContext, dirs: list[str]) -> tuple[np.ndarray, dict]:
    from storage.loader import StampSource, load_all
    from tasks.baseline import features, train_rf
    src = StampSource(dirs)
    held = StampSource(list(ctx.heldout_dirs))
    Xtr = features(src.table, load_all(src).x)
    Xte = features(held.table, load_all(held).x)
    rf = train_rf(Xtr, src.labels, seed=cell.seed, n_estimators=ctx.rf_trees)
    imp = dict(zip(Xtr.columns, rf.feature_importances_.round(4).tolist()))
    return rf.predict_proba(Xte.to_numpy())[:, 1], {"n_train": int(len(src)), "feature_importance": imp}


def run_cell(cell: Cell, ctx: ExperimentContext, held: pd.DataFrame | None = None) -> dict:
    """Train, score the held-out nights, validate (TNS and truth), write the cell JSON and
    the held-out scores. A cell JSON with the same key is returned as is (``cached``)."""
    hit = cached_cell(cell, ctx)
    if hit is not None:
        return {**hit, "cached": True}
    _set_threads(ctx)
    t0 = time.perf_counter()
    m = METHODS[cell.method]
    noise = Noise.parse(cell.noise)
    s1 = run_stage1(ctx, noise, cell.seed) if m.needs_stage1 else None
    t_train0 = time.perf_counter()
    dirs = s1["datasets"] if s1 else training_sets(ctx, noise, cell.seed)
    flags = stage2_flags(ctx, s1, cell.seed) if s1 else None
    if m.kind == "rf":
        scores, info = _score_rf(cell, ctx, dirs)
    else:
        scores, info = _score_cnn(cell, ctx, m, dirs, flags["manifest"] if flags else None)
    t_train = time.perf_counter() - t_train0
    from storage.stampstore import open_dataset
    res = _validate_and_keep(ctx, cell_name(cell, ctx), scores)
    rec = {"key": cell_key(cell, ctx), "name": cell_name(cell, ctx), "cell": asdict(cell), "method": asdict(m), "noise": cell.noise,
           "seed": cell.seed, "network": ctx.network_for(m),
           "stage1_network": ctx.stage1_network if m.needs_stage1 else None,
           "train": ctx.train_options(cell.seed, ctx.network_for(m)) if m.kind == "cnn" else {"rf_trees": ctx.rf_trees},
           "folds": ctx.folds if m.needs_stage1 else None, "inputs": ctx.inputs,
           "train_dirs": list(ctx.train_dirs), "heldout_dirs": list(ctx.heldout_dirs), "tns": ctx.tns,
           "n_train_stamps": int(sum(len(open_dataset(Path(d)).table()) for d in dirs)),
           "label_hashes": label_hashes(dirs),
           "stage1": None if s1 is None else {k: s1[k] for k in ("n", "n_flagged", "flagged_by_label", "dir")},
           "flags": flags,
           "info": info, "metrics": _metric_subset(res.metrics), "truth": _metric_subset(res.truth_metrics),
           "threshold": res.operating_point.threshold, "counts": res.counts,
           "seconds": {"total": time.perf_counter() - t0, "train_and_score": t_train,
                       "stage1": None if s1 is None else s1.get("seconds")},
           "code": code_version(), "environment": environment(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_json(cell_path(cell, ctx), rec)
    return {**rec, "cached": False}


def _validate_and_keep(ctx: ExperimentContext, name: str, scores: np.ndarray):
    """Validate held-out scores (store order) against TNS and truth; write them to
    OUT/scores/<name>.parquet. Returns the ``ValidationResult``."""
    from storage.stampstore import open_dataset
    from storage.tns import read_tns
    from tasks.validation import ValidationOptions, validate
    det = pd.concat([open_dataset(Path(d)).table() for d in ctx.heldout_dirs], ignore_index=True)
    res = validate(det, scores, read_tns(ctx.tns).objects, ValidationOptions(n_boot=ctx.n_boot, seed=0))
    sdir = Path(ctx.out) / "scores"
    sdir.mkdir(parents=True, exist_ok=True)
    # zstd: a val-night cell's scores (67,646 stamps) take 510 kB against snappy's 757 kB (they are in git)
    pd.DataFrame({"stamp_id": det["stamp_id"], "score": scores.astype(np.float32)}).to_parquet(
        sdir / f"{name}.parquet", index=False, compression="zstd")
    return res


def rescore_key(rec: dict, ctx: ExperimentContext) -> str:
    """The key of a cell record rescored on ``ctx``'s held-out nights: the trained cell's key and
    the held-out inputs (the model is the cell's; only what it is scored on changes)."""
    return stable_hash({"rescored": rec["key"], "heldout": ctx.inputs["heldout"], "tns": ctx.inputs["tns"]})


def why_not_rescorable(rec: dict, ctx: ExperimentContext) -> str | None:
    """Why a cell record's model cannot be scored on ``ctx``'s held-out nights (None: it can)."""
    model = (rec.get("info") or {}).get("model")
    if rec["method"].get("kind") != "cnn" or not model:
        return "it keeps no model (the random forest and the each-sensor/mixed rows do not)"
    if not (Path(model) / "model.pt2").exists():
        return f"its model {model}/model.pt2 is not here (models live in the WORK it ran with)"
    if list(rec["inputs"]["train"]) != list(ctx.inputs["train"]):
        return "it was trained on other nights than --train"
    return None


@dataclass(frozen=True)
class RescorePlan:
    """What ``--rescore-from`` does with a source OUT: the records whose models it scores, and
    the others that the cells picked, each with why it is skipped."""

    records: list  # cell records (dicts) of the source, in its order
    skipped: list  # {"cell": name, "why": reason}


def rescore_plan(source: str | Path, cells: Sequence[Cell], ctx: ExperimentContext) -> RescorePlan:
    """The records of the source OUT that ``cells`` pick (same method, noise and seed, trained on
    the network ``ctx`` gives the method), split into those ``rescore_cell`` can score on
    ``ctx``'s held-out nights and those it cannot (``why_not_rescorable``)."""
    want = {(c.method, c.noise, c.seed) for c in cells}
    picked = [r for r in load_cells(source) if (r["cell"]["method"], r["cell"]["noise"], r["cell"]["seed"]) in want
              and r["network"] == ctx.network_for(METHODS[r["cell"]["method"]])]
    records, skipped = [], []
    for r in picked:
        why = why_not_rescorable(r, ctx)
        if why:
            skipped.append({"cell": record_name(r), "why": why})
        else:
            records.append(r)
    return RescorePlan(records=records, skipped=skipped)


def write_failures(out: str | Path, failed: list[dict], settled: list[str] | tuple = ()) -> Path | None:
    """Merge a run's failed cells (``{"cell", "error"}`` each) into OUT/failed.json, where a survey
    team looks after a grid: failed cells are not cached, so a rerun tries them again. The merge is
    per cell: a cell in ``settled`` (written or found cached by this run) leaves the list, a cell
    that failed again takes its new error, and cells this run did not pick keep their entry. The
    file is removed once nothing is left in it; the path, or None when there is no list."""
    path = Path(out) / "failed.json"
    old = json.loads(path.read_text()).get("failed", []) if path.exists() else []
    gone = set(settled) | {f["cell"] for f in failed}
    merged = [f for f in old if f["cell"] not in gone] + list(failed)
    if not merged:
        path.unlink(missing_ok=True)
        return None
    _write_json(path, {"failed": merged, "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return path


def rescore_cell(rec: dict, ctx: ExperimentContext) -> dict:
    """Score a trained cell's model (``rec`` from another OUT) on ``ctx``'s held-out nights without
    training it again, and validate it against ``ctx.tns``: the same model on another night. The
    record keeps the source's training fields, takes the new held-out metrics, names its source in
    ``rescored_from`` and is written to OUT/cells/ under the source's name, keyed by
    ``rescore_key`` (cached like ``run_cell``). ``ValueError`` when ``why_not_rescorable``."""
    why = why_not_rescorable(rec, ctx)
    if why:
        raise ValueError(f"cell {record_name(rec)}: cannot rescore: {why}")
    name, key = record_name(rec), rescore_key(rec, ctx)
    path = Path(ctx.out) / "cells" / f"{name}.json"
    if path.exists() and not ctx.rerun:
        old = json.loads(path.read_text())
        if old.get("key") == key:
            return {**old, "cached": True}
    from models.scoring import score_dataset
    _set_threads(ctx)
    t0 = time.perf_counter()
    model = rec["info"]["model"]
    scores = np.concatenate([score_dataset(model, d, batch_size=128) for d in ctx.heldout_dirs])
    res = _validate_and_keep(ctx, name, scores)
    out = {**rec, "key": key, "name": name, "inputs": {**rec["inputs"], "heldout": ctx.inputs["heldout"],
                                                       "tns": ctx.inputs["tns"]},
           "heldout_dirs": list(ctx.heldout_dirs), "tns": ctx.tns,
           "rescored_from": {"key": rec["key"], "heldout_dirs": rec["heldout_dirs"], "tns": rec["tns"],
                             "seconds": rec["seconds"], "finished": rec.get("finished")},
           "metrics": _metric_subset(res.metrics), "truth": _metric_subset(res.truth_metrics),
           "threshold": res.operating_point.threshold, "counts": res.counts,
           "seconds": {"total": time.perf_counter() - t0, "train_and_score": None, "stage1": None},
           "code": code_version(), "environment": environment(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out.pop("cached", None)
    _write_json(path, out)
    return {**out, "cached": False}


def _set_threads(ctx: ExperimentContext) -> None:
    """torch's CPU threads to ``ctx.threads`` (left as is when None). Training is bitwise
    reproducible only at the same thread count: stage 1 (survey, s0, 5 folds) flags 364
    stamps at 1 thread and 376 at 2 on the same nights, so every training sets it first."""
    if ctx.threads:
        import torch
        torch.set_num_threads(ctx.threads)


def environment() -> dict:
    """What a trained number depends on besides its key: torch threads, the CPU kernels
    torch picked, the BLAS kernels numpy picked and the library versions
    (``tasks.environment.numerics``). Recorded in every cell and stage-1 record, not keyed (a
    different thread count gives a float-different but equally valid model)."""
    import sklearn
    import torch
    return {**numerics(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "sklearn": sklearn.__version__}


# ------------------------------------------------------------------------------ summary


# the paper's orderings as (A, B): is A better than B on the same network? unlabel > remove, VAT helps
ORDERINGS = (("complex-unlabelled-vat", "complex-removed"), ("complex-all-vat", "complex-all"),
             ("complex-unlabelled-ech-vat", "complex-removed-ech"), ("complex-all-ech-vat", "complex-all-ech"))


def same_training(method: str, network: str) -> str:
    """The row whose cells train exactly what ``method`` trains on ``network``: a Complex row run
    on the Simple stand-in is the Simple row with the same data and loss weights, if there is one
    (Complex-all-CE on Simple is Simple-all-CE); otherwise ``method`` itself."""
    m = METHODS.get(method)
    if m is None or m.network == network:
        return method
    same = [o.name for o in METHODS.values() if o.network == network and
            (o.data, o.l_ce, o.l_ech, o.l_lds, o.kind) == (m.data, m.l_ce, m.l_ech, m.l_lds, m.kind)]
    return same[0] if same else method


def record_name(rec: dict) -> str:
    """The file stem of a cell JSON record (``cell_name`` of the context it ran in)."""
    c = rec["cell"]
    return rec.get("name") or _stem(Cell(c["method"], c["noise"], c["seed"]).name, rec["method"]["network"],
                                    rec["network"])


def load_cells(out: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "cells").glob("*.json"))]


def _mean_sd(v: list) -> tuple[float | None, float | None]:
    a = np.array([x for x in v if x is not None], float)
    if not len(a):
        return None, None
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else None


def cell_scores(out: str | Path, rec: dict, held: pd.DataFrame) -> np.ndarray:
    """A cell's held-out scores (OUT/scores/<name>.parquet) in the order of ``held``'s rows."""
    s = pd.read_parquet(Path(out) / "scores" / f"{record_name(rec)}.parquet").set_index("stamp_id")["score"]
    return s.reindex(held["stamp_id"]).to_numpy(float)


def heldout_label_sets(held: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """The two label sets the held-out detections (OUT/heldout.parquet) are scored against, as
    ``{"tns" | "truth": (keep mask, labels, object groups of the cluster bootstrap)}``: TNS
    (``val_class`` >= 0, grouped by TNS name) and simulation truth (``true_label`` 0/1, grouped by
    injection, else by stamp)."""
    vc = held["val_class"].to_numpy()
    tl = pd.to_numeric(held["true_label"], errors="coerce").to_numpy(float)
    return {"tns": (vc >= 0, vc, held["tns_name"].astype(str).to_numpy(object)),
            "truth": (np.isin(tl, (0, 1)), tl,
                      held["injection_id"].astype("string").fillna(held["stamp_id"]).astype(str).to_numpy(object)
                      if "injection_id" in held else None)}


def row_scores(out: str | Path, method: str, noise: str, network: str, held: pd.DataFrame,
               cells: Sequence[dict]) -> dict[int, np.ndarray]:
    """seed -> held-out scores (in ``held``'s order) of OUT's cells of one row (``method`` on
    ``network``) at ``noise``; ``cells`` are OUT's records (``load_cells``)."""
    return {int(c["cell"]["seed"]): cell_scores(Path(out), c, held) for c in cells
            if c["cell"]["method"] == method and c["cell"]["noise"] == noise and c["network"] == network}


def paired_rows(held: pd.DataFrame, a: dict[int, np.ndarray], b: dict[int, np.ndarray],
                n_boot: int = 1000, labels: Sequence[str] = ("tns", "truth"), sets: dict | None = None
                ) -> dict[str, dict]:
    """Two rows' seed-averaged difference (A - B) against TNS and against truth, over the seeds
    both have, paired over the held-out detections (``paired_seed_bootstrap``):
    ``{"tns" | "truth": {auc, fpr_at_tpr90, ..., seeds}}``. A label set is left out where no seed
    is shared, ``n_boot`` is 0 or the set lacks a class. ``sets``: ``heldout_label_sets(held)``,
    when the caller has it."""
    common = sorted(set(a) & set(b))
    if not common or not n_boot:
        return {}
    sets = heldout_label_sets(held) if sets is None else sets
    image = held["image"].to_numpy(object)
    res = {}
    for lab in labels:
        keep, y, obj = sets[lab]
        if not keep.sum() or len(np.unique(y[keep])) != 2:
            continue
        d = paired_seed_bootstrap(y[keep].astype(int), [a[s][keep] for s in common], [b[s][keep] for s in common],
                                  groups_object=None if obj is None else obj[keep], groups_image=image[keep],
                                  n_boot=n_boot)
        res[lab] = {**d, "seeds": common}
    return res


def summarize(out: str | Path, *, n_boot: int = 1000, baseline: str = BASELINE) -> dict:
    """Aggregate the cell JSONs of OUT: per (method, noise) the seed mean and s.d. of AUC and
    FPR@TPR=0.9 against TNS and against truth, and paired seed-averaged bootstrap differences
    against ``baseline`` at the same noise (over the seeds both have); the flagging study per
    noise (seed means). Writes OUT/summary.json and returns it."""
    out = Path(out)
    cells = load_cells(out)
    held = pd.read_parquet(out / "heldout.parquet")
    scores: dict[str, np.ndarray] = {}

    def sc(c: dict) -> np.ndarray:
        name = record_name(c)
        if name not in scores:
            scores[name] = cell_scores(out, c, held)
        return scores[name]

    by: dict[tuple[str, str, str], dict[int, dict]] = {}  # (method, noise, network) -> seed -> cell
    for c in cells:
        by.setdefault((c["cell"]["method"], c["cell"]["noise"], c["network"]), {})[int(c["cell"]["seed"])] = c
    label_sets = heldout_label_sets(held)
    vc, tl = label_sets["tns"][1], label_sets["truth"][1]

    def paired(seeds_a: dict, seeds_b: dict, lab: str) -> dict | None:
        """Paired seed-averaged bootstrap difference A - B over the seeds both have."""
        common = set(seeds_a) & set(seeds_b)
        return paired_rows(held, {s: sc(seeds_a[s]) for s in common}, {s: sc(seeds_b[s]) for s in common},
                           n_boot, labels=(lab,), sets=label_sets).get(lab)

    rows = []
    own = {m: mm.network for m, mm in METHODS.items()}  # each row's own network
    for (method, noise, network), seeds in sorted(by.items()):
        row = {"method": method, "noise": noise, "seeds": sorted(seeds), "row": METHODS[method].row
               if method in METHODS else method, "network": network, "stand_in": network != own.get(method, network),
               "seconds_mean": _mean_sd([c["seconds"]["total"] for c in seeds.values()])[0]}
        for lab in ("tns", "truth"):
            key = "metrics" if lab == "tns" else "truth"
            ms = [c.get(key) or {} for c in seeds.values()]
            row[lab] = {"auc": _mean_sd([m.get("auc") for m in ms]),
                        "fpr_at_tpr90": _mean_sd([m.get("fpr_at_tpr90") for m in ms]),
                        "per_seed": {str(s): {"auc": (c.get(key) or {}).get("auc"),
                                              "fpr_at_tpr90": (c.get(key) or {}).get("fpr_at_tpr90"),
                                              "auc_ci": (c.get(key) or {}).get("auc_ci"),
                                              "fpr_at_tpr90_ci": (c.get(key) or {}).get("fpr_at_tpr90_ci")}
                                     for s, c in seeds.items()}}
            if method != baseline:
                vb = paired(seeds, by.get((baseline, noise, own[baseline]), {}), lab)
                if vb:
                    row[lab]["vs_baseline"] = vb
        rows.append(row)
    pairs = []  # the paper's orderings, paired on the same network: unlabel vs remove, VAT vs CE
    for a, b in ORDERINGS:
        for (method, noise, network), seeds in sorted(by.items()):
            if method != a:
                continue
            bb = same_training(b, network)
            other = by.get((bb, noise, network), {})
            for lab in ("tns", "truth"):
                d = paired(seeds, other, lab) if other else None
                if d:
                    pairs.append({"a": a, "b": bb, "noise": noise, "network": network, "labels": lab, **d})
    flag: dict[tuple[str, str], list[dict]] = {}  # (noise, flagger) -> one study per seed
    for p in sorted((out / "flagging").glob("*.json")):
        f = json.loads(p.read_text())
        flag.setdefault((f["noise"], "cnn"), []).append(f)
        for name, alt in f.get("alternatives", {}).items():  # the alternative flaggers beside the paper's
            flag.setdefault((f["noise"], name), []).append({**alt, "seed": f["seed"]})
    flag_rows = []
    for (noise, flagger), fs in sorted(flag.items()):
        for i, b in enumerate(fs[0]["bins"]):
            r = {"noise": noise, "flagger": flagger, "bin": b["bin"], "seeds": [f["seed"] for f in fs],
                 "n": _mean_sd([f["bins"][i]["n"] for f in fs])[0],
                 "n_flagged": _mean_sd([f["bins"][i]["n_flagged"] for f in fs])[0]}
            for t in ("planted", "own", "any"):
                r[t] = {k: _mean_sd([f["bins"][i][t][k] for f in fs])[0]
                        for k in ("n_target", "precision", "recall", "random_precision", "random_recall")}
            if all("planted_excl_own" in f["bins"][i] for f in fs):
                r["planted_excl_own"] = {k: _mean_sd([f["bins"][i]["planted_excl_own"][k] for f in fs])[0]
                                         for k in ("n_flagged", "n_target", "precision", "recall",
                                                   "random_expected_precision")}
            flag_rows.append(r)
    cut_rows = []  # the stricter cuts (S/N > 10), seed means
    for (noise, flagger), fs in sorted(flag.items()):
        fs = [f for f in fs if "cuts" in f]
        for i, c in enumerate(fs[0]["cuts"] if fs else []):
            r = {"noise": noise, "flagger": flagger, "cut": c["cut"], "seeds": [f["seed"] for f in fs],
                 "n_flagged": _mean_sd([f["cuts"][i]["n_flagged"] for f in fs])[0]}
            for t in ("planted", "own", "any", "planted_excl_own"):
                r[t] = {k: _mean_sd([f["cuts"][i][t][k] for f in fs])[0] for k in ("precision", "recall")}
            cut_rows.append(r)
    summary = {"rows": rows, "pairs": pairs, "flagging": flag_rows, "flag_cuts": cut_rows, "n_cells": len(cells), "baseline": baseline,
               "n_heldout": int(len(held)), "n_real_tns": int((vc == 1).sum()), "n_bogus_tns": int((vc == 0).sum()),
               "n_real_objects_tns": int(held.loc[vc == 1, "tns_name"].nunique()),
               "n_truth_real": int((tl == 1).sum()), "n_truth_bogus": int((tl == 0).sum())}
    _write_json(out / "summary.json", summary)
    return summary


__all__ = ["METHODS", "NOISES", "GRIDS", "BASELINE", "Method", "Noise", "Cell", "grid_cells", "plant_flips",
           "tail_weights", "derive_dataset", "noisy_training_sets", "flagging_study", "flag_cut_sweep",
           "FLAGGERS", "stage2_flags",
           "error_targets", "rf_oof", "paired_seed_bootstrap",
           "ExperimentContext", "prepare_context", "heldout_table", "label_hashes", "run_stage1", "run_cell",
           "rescore_cell", "rescore_key", "why_not_rescorable",
           "cell_key", "cell_name", "record_name", "same_training", "environment", "ORDERINGS", "summarize",
           "load_cells"]
