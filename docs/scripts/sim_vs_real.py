"""Simulated vs real ZTF difference stamps: stamp statistics and a sim-vs-real classifier.

    # build a small ztf-preset dataset (or pass an existing one) and compare
    DO_NOT_TRACK=1 .venv/bin/rbflow build --preset ztf --max-sensors 4 --cluster threads --out /tmp/ztf_ds
    .venv/bin/python docs/scripts/sim_vs_real.py /tmp/ztf_ds --tag after --out docs
    # or the same 4 sensor images straight through tasks.sensor (no Prefect, ~1 min)
    .venv/bin/python docs/scripts/sim_vs_real.py direct --tag after --out docs

Real: ZTF public alerts in ``../shared/data/ztf-alerts/`` with ``drb < 0.1`` (ZTF's braai
calls them bogus; no human labels exist), difference cut-outs (63x63) centre-cropped to
29x29. Simulated: the dataset's stamps with ``true_label == 0`` (sim bogus; injections and
events excluded). Statistics per sub stamp (``stamp_stats``): peak S/N, negative-pixel
fraction, second-moment FWHM, ellipticity, dipole asymmetry, kurtosis, central
concentration. A gradient-boosting classifier on the statistics tells sim from real:
5-fold stratified cross-validated ROC AUC (0.5 = indistinguishable) on balanced samples, mean and
std over 10 subsamples / splits.
Writes ``<out>/realism-<tag>.json`` and ``<out>/realism-<tag>.png``.
The real data are read in place and never copied.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
ZTF = ROOT.parent / "shared" / "data" / "ztf-alerts"
SIZE = 29
STATS = ("peak_snr", "neg_frac", "fwhm_mom", "ellip", "dipole_asym", "kurtosis", "concentration")


def _fits(b: bytes) -> np.ndarray:
    from astropy.io import fits
    with fits.open(io.BytesIO(gzip.decompress(b))) as h:
        return np.asarray(h[0].data, np.float64)


def crop(img: np.ndarray, size: int = SIZE) -> np.ndarray | None:
    """Centre crop to size x size; None if the image is smaller (edge-of-CCD alerts)."""
    ny, nx = img.shape
    if ny < size or nx < size:
        return None
    y0, x0 = (ny - size) // 2, (nx - size) // 2
    return img[y0:y0 + size, x0:x0 + size]


def load_ztf(max_drb: float | None = 0.1, which: str = "bogus") -> tuple[np.ndarray, pd.DataFrame]:
    """Real ZTF triplets (n, 3, 29, 29) (science, template, difference) and their label rows.

    which: 'bogus' (drb < max_drb), 'asteroid' (known_asteroid), 'tns' (a TNS name / class)."""
    lab = pd.read_csv(ZTF / "ztf_alert_labels.csv")
    if which == "bogus":
        sel = lab[lab["drb"] < max_drb]
    elif which == "asteroid":
        sel = lab[lab["known_asteroid"].astype(bool)]
    elif which == "tns":
        sel = lab[lab["tns_name"].notna() | lab["fink_tnsclass"].notna()]
    else:
        raise ValueError(which)
    trip = pd.read_parquet(ZTF / "ztf_alert_triplets.parquet",
                           columns=["candid", "cutoutScience", "cutoutTemplate", "cutoutDifference"])
    trip = trip[trip["candid"].isin(sel["candid"])]
    stamps, rows = [], []
    for r in trip.itertuples(index=False):
        chans = [crop(_fits(b)) for b in (r.cutoutScience, r.cutoutTemplate, r.cutoutDifference)]
        if any(c is None for c in chans):
            continue
        st = np.stack(chans)
        if not np.isfinite(st[2]).any():
            continue
        stamps.append(np.nan_to_num(st))
        rows.append(int(r.candid))
    meta = sel.set_index("candid").loc[rows].reset_index()
    return (np.stack(stamps).astype(np.float32) if stamps else np.zeros((0, 3, SIZE, SIZE), np.float32)), meta


def stamp_stats(sub: np.ndarray) -> pd.DataFrame:
    """Statistics of (n, 29, 29) difference stamps, each in units of its own robust noise."""
    sub = np.asarray(sub, np.float64)
    n = len(sub)
    out = {k: np.zeros(n) for k in STATS}
    yy, xx = np.mgrid[:SIZE, :SIZE] - SIZE // 2
    r = np.hypot(xx, yy)
    for i, s in enumerate(sub):
        edge = np.concatenate([s[:4].ravel(), s[-4:].ravel(), s[4:-4, :4].ravel(), s[4:-4, -4:].ravel()])
        med = np.median(edge)
        sig = 1.4826 * np.median(np.abs(edge - med)) or (np.std(s) or 1.0)
        z = (s - med) / sig
        core = z[r <= 3]
        sign = 1.0 if core.sum() >= 0 else -1.0  # negative detections: look at -sub
        zs = sign * z
        out["peak_snr"][i] = float(zs[r <= 3].max())
        out["neg_frac"][i] = float((z[r <= 8] < -3).mean())
        w = np.clip(zs, 0, None) * (r <= 8)
        w = np.where(w > 2, w, 0)
        tot = w.sum()
        if tot > 0:
            mx, my = (w * xx).sum() / tot, (w * yy).sum() / tot
            cxx = (w * (xx - mx) ** 2).sum() / tot
            cyy = (w * (yy - my) ** 2).sum() / tot
            cxy = (w * (xx - mx) * (yy - my)).sum() / tot
            tr, det = cxx + cyy, max(cxx * cyy - cxy**2, 0.0)
            out["fwhm_mom"][i] = float(2.355 * np.sqrt(max(tr / 2, 1e-6)))
            disc = np.sqrt(max(tr**2 / 4 - det, 0))
            l1, l2 = tr / 2 + disc, max(tr / 2 - disc, 1e-6)
            out["ellip"][i] = float(1 - np.sqrt(l2 / l1)) if l1 > 0 else 0.0
        pos = np.clip(z, 0, None)[r <= 6].sum()
        neg = np.clip(-z, 0, None)[r <= 6].sum()
        out["dipole_asym"][i] = float(min(pos, neg) / max(pos, neg, 1e-9))
        v = z[r <= 8].ravel()
        m, sd = v.mean(), v.std() or 1.0
        out["kurtosis"][i] = float(np.mean(((v - m) / sd) ** 4))
        inner, outer = np.clip(zs, 0, None)[r <= 1.5].sum(), np.clip(zs, 0, None)[r <= 5].sum()
        out["concentration"][i] = float(inner / outer) if outer > 0 else 0.0
    return pd.DataFrame(out)


def direct_sim(n_images: int = 4, preset: str = "ztf", night: str = "2026-01-05", seed: int = 0):
    """The first n_images sensor images of a preset night (field 0, visit 0, sensors 0..n-1: the
    images ``rbflow build --preset ztf --max-sensors n`` processes) through the per-sensor chain
    without Prefect and without simulating the rest of the night. Returns (stamps, table)."""
    from tasks.sensor import SensorConfig, process_sensor
    from tasks.simulate import get_preset, simulate_field_sensor
    from tasks.types import ImageMeta
    cfg = get_preset(preset)

    def meta(h, exposure, sensor):
        return ImageMeta(exposure=exposure, sensor=sensor, night=str(h.get("NIGHT", "")), mjd=float(h["MJD-OBS"]),
                         gain=float(h["GAIN"]), saturation=float(h["SATURATE"]), zeropoint=float(h["MAGZP"]),
                         read_noise=float(h["RDNOISE"]), pixel_scale=float(h["PIXSCALE"]), seeing=float(h["SEEING"]))

    stamps, tables = [], []
    for s in range(min(n_images, cfg.n_sensors)):
        sim = simulate_field_sensor(cfg, night, 0, s, seed)
        v = sim.visits[0]
        r = process_sensor(v.new, sim.ref, new_header=v.header, ref_header=sim.ref_header,
                           new_meta=meta(v.header, v.exposure, sim.sensor_id),
                           ref_meta=meta(sim.ref_header, "ref", sim.sensor_id), catalog=sim.catalog,
                           truth=dict(events=sim.events, artifacts=sim.artifacts, stars=sim.stars,
                                      galaxies=sim.galaxies),
                           config=SensorConfig(), seed=seed, inject=True, id_prefix=f"{v.exposure}/{sim.sensor_id}/")
        stamps.append(r.stamps)
        tables.append(r.table)
    return np.concatenate(stamps), pd.concat(tables, ignore_index=True)


def load_sim(dataset: Path) -> tuple[np.ndarray, pd.DataFrame]:
    from storage.stampstore import open_dataset
    view = open_dataset(Path(dataset))
    table = view.table().reset_index(drop=True)
    arr = np.asarray(view.stamps()[:])
    return arr, table


def classifier_auc(a: pd.DataFrame, b: pd.DataFrame, seed: int = 0, n_max: int = 400,
                   repeats: int = 10) -> tuple[float, float, dict]:
    """Mean and std of the 5-fold CV ROC AUC of a gradient-boosting classifier telling a from b,
    over ``repeats`` balanced subsamples / fold splits (the samples are small: one split is noisy)."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b), n_max)
    aucs, imps = [], []
    for r in range(repeats):
        aa = a.iloc[rng.choice(len(a), n, replace=False)]
        bb = b.iloc[rng.choice(len(b), n, replace=False)]
        X = np.concatenate([aa.to_numpy(), bb.to_numpy()])
        y = np.r_[np.zeros(n), np.ones(n)]
        clf = GradientBoostingClassifier(n_estimators=100, max_depth=2, random_state=seed + r)
        cv = StratifiedKFold(5, shuffle=True, random_state=seed + r)
        aucs.append(cross_val_score(clf, X, y, cv=cv, scoring="roc_auc").mean())
        imps.append(clf.fit(X, y).feature_importances_)
    imp = dict(zip(a.columns, np.round(np.mean(imps, 0), 3).tolist()))
    return float(np.mean(aucs)), float(np.std(aucs)), imp


def _plot(sim: pd.DataFrame, real: pd.DataFrame, title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.5))
    for ax, k in zip(axes.ravel(), STATS):
        lo, hi = np.nanpercentile(np.r_[sim[k], real[k]], [1, 99])
        if k == "peak_snr":
            lo, hi = 0, min(hi, 200)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
        ax.hist(np.clip(sim[k], lo, hi), bins, density=True, alpha=0.5, label=f"sim bogus ({len(sim)})")
        ax.hist(np.clip(real[k], lo, hi), bins, density=True, alpha=0.5, label=f"ZTF drb<0.1 ({len(real)})")
        ax.set_title(k, fontsize=9)
    axes.ravel()[0].legend(fontsize=7)
    axes.ravel()[-1].set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="ztf-preset dataset directory (built with --build; 'direct': simulate the "
                   "same 4 sensor images and run the per-sensor chain in this process, no Prefect)")
    p.add_argument("--build", action="store_true", help="build it first: rbflow build --preset ztf --max-sensors 4")
    p.add_argument("--tag", default="after")
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--max-drb", type=float, default=0.1)
    p.add_argument("--min-snr", type=float, default=5.0, help="sim stamps with |snr| below this are dropped")
    a = p.parse_args()
    ds = Path(a.dataset)
    if a.build:
        subprocess.run([str(ROOT / ".venv/bin/rbflow"), "build", "--preset", "ztf", "--max-sensors", "4",
                        "--cluster", "threads", "--out", str(ds)], check=True)
    arr, table = direct_sim(4) if a.dataset == "direct" else load_sim(ds)
    bog = (table["true_label"] == 0).fillna(False).to_numpy(bool) & (table["snr"].abs() >= a.min_snr).to_numpy()
    sim_stats = stamp_stats(arr[bog, 2])
    real_arr, real_meta = load_ztf(a.max_drb)
    real_stats = stamp_stats(real_arr[:, 2])
    auc, sd, imp = classifier_auc(sim_stats, real_stats)
    classes = table.loc[bog, "true_class"].astype(str).value_counts().to_dict()
    summ = {k: {"sim_median": float(np.median(sim_stats[k])), "real_median": float(np.median(real_stats[k])),
                "sim_iqr": [float(v) for v in np.percentile(sim_stats[k], [25, 75])],
                "real_iqr": [float(v) for v in np.percentile(real_stats[k], [25, 75])]} for k in STATS}
    res = {"tag": a.tag, "dataset": str(ds), "n_sim_bogus": int(bog.sum()), "n_real": int(len(real_stats)),
           "sim_classes": classes, "auc_sim_vs_real": auc, "auc_std": sd, "feature_importance": imp,
           "stats": summ}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"realism-{a.tag}.json").write_text(json.dumps(res, indent=2))
    _plot(sim_stats, real_stats, f"{a.tag}: sub-stamp statistics, sim bogus vs real ZTF low-drb "
          f"(sim-vs-real GB AUC {auc:.3f} +/- {sd:.3f})", out / f"realism-{a.tag}.png")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
