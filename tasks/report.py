"""Validation report: figures (matplotlib, Agg, no pyplot state) and the written report.

``write_report`` is the one function here that writes files (the report is the product
of this step); the figures are pure functions of arrays returning ``Figure`` objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from tasks.validation import ValidationResult, metrics_json

_FIG_SIZE = (6.0, 4.2)


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
               target_tpr: float = 0.9, title: str = "ROC") -> Figure:
    """ROC curves, FPR on a log axis. curves: label -> (y (N,), scores (N,))."""
    fig = Figure(figsize=_FIG_SIZE)
    ax = fig.add_subplot()
    for label, (y, s) in curves.items():
        y = np.asarray(y)
        if (y == 1).sum() == 0 or (y == 0).sum() == 0:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        floor = 0.5 / max((y == 0).sum(), 1)  # draw FPR = 0 at half a false positive
        ax.step(np.maximum(fpr, floor), tpr, where="post",
                label=f"{label} ({int((y == 1).sum())} real / {int((y == 0).sum())} bogus)")
    ax.axhline(target_tpr, color="grey", ls=":", lw=1, label=f"TPR = {target_tpr:g}")
    ax.set_xscale("log")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def score_histogram_figure(scores: np.ndarray, classes: np.ndarray, *,
                           threshold: float | None = None, title: str = "scores") -> Figure:
    """Histogram of P(real) per class label (e.g. 'TNS real' / 'bogus', or true_class).

    scores (N,), classes (N,) strings. Log counts, so rare classes stay visible.
    """
    fig = Figure(figsize=_FIG_SIZE)
    ax = fig.add_subplot()
    scores = np.asarray(scores, dtype=float)
    classes = np.asarray(classes, dtype=object).astype(str)
    bins = np.linspace(0, 1, 41)
    for c in sorted(set(classes)):
        m = classes == c
        ax.hist(scores[m], bins=bins, histtype="step", lw=1.5, label=f"{c} ({int(m.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_yscale("log")
    ax.set_xlabel("P(real)")
    ax.set_ylabel("detections")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def threshold_figure(y: np.ndarray, scores: np.ndarray, *, threshold: float | None = None,
                     title: str = "rates vs threshold") -> Figure:
    """TPR, FPR and precision as a function of the threshold. y, scores: (N,)."""
    y = np.asarray(y)
    s = np.asarray(scores, dtype=float)
    fig = Figure(figsize=_FIG_SIZE)
    ax = fig.add_subplot()
    if (y == 1).any() and (y == 0).any():
        grid = np.linspace(0, 1, 401)
        pos = np.sort(s[y == 1])
        neg = np.sort(s[y == 0])
        n_tp = len(pos) - np.searchsorted(pos, grid, side="left")  # scores >= grid
        n_fp = len(neg) - np.searchsorted(neg, grid, side="left")
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(n_tp + n_fp > 0, n_tp / (n_tp + n_fp), np.nan)
        ax.plot(grid, n_tp / len(pos), label=f"TPR (recall, {len(pos)} real)")
        ax.plot(grid, n_fp / len(neg), label=f"FPR ({len(neg)} bogus)")
        ax.plot(grid, prec, label="precision")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_ylim(0, 1.3)
    ax.set_xlim(0, 1)
    ax.set_xlabel("threshold on P(real)")
    ax.set_ylabel("rate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def efficiency_figure(table: pd.DataFrame, *, by: str = "mag",
                      title: str | None = None) -> Figure:
    """Recovered fraction with Wilson intervals (``tasks.validation.efficiency`` output)."""
    fig = Figure(figsize=_FIG_SIZE)
    ax = fig.add_subplot()
    t = table[table["n"] > 0]
    ax.errorbar(t["bin_mid"], t["efficiency"],
                yerr=[t["efficiency"] - t["ci_lo"], t["ci_hi"] - t["efficiency"]],
                fmt="o-", capsize=2, label="detected and above threshold")
    ax.plot(t["bin_mid"], t["detection_efficiency"], "s--", alpha=0.6, label="detected")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("magnitude" if by == "mag" else "host offset")
    ax.set_ylabel("efficiency")
    ax.set_title(title or f"efficiency vs {by}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- markdown


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}f}"
    return str(v)


def _ci(m: dict, key: str) -> str:
    ci = m.get(f"{key}_ci") or [None, None]
    if ci[0] is None:
        return "n/a"
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _metrics_table(cols: list[tuple[str, dict | None]]) -> list[str]:
    head = "| metric | " + " | ".join(f"{name} | {name} CI" for name, _ in cols) + " |"
    sep = "|---|" + "---|---|" * len(cols)
    lines = [head, sep]
    keys = [("AUC", "auc"), ("FPR at TPR = 0.9", "fpr_at_tpr90"),
            ("TPR at FPR = 1e-3", "tpr_at_fpr1e-3"), ("FPR at TPR = 0.983", "fpr_at_tpr0.983"),
            ("precision at threshold", "precision"), ("recall at threshold", "recall")]
    for label, k in keys:
        cells = []
        for _, m in cols:
            cells += [_fmt(m.get(k)), _ci(m, k)] if m else ["n/a", "n/a"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, k in (("F1 at threshold", "f1"), ("accuracy at threshold", "accuracy"),
                     ("n real (objects)", None), ("n bogus (images)", None)):
        cells = []
        for _, m in cols:
            if not m:
                cells += ["n/a", ""]
            elif k:
                cells += [_fmt(m.get(k)), ""]
            elif label.startswith("n real"):
                cells += [f"{m['n_real']} ({m['n_real_objects']})", ""]
            else:
                cells += [f"{m['n_bogus']} ({m['n_bogus_images']})", ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _confusion_lines(m: dict) -> list[str]:
    lines = ["| threshold | TP | FP | TN | FN | precision | recall | F1 | accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in [m["confusion"], *m.get("confusion_extra", [])]:
        lines.append(
            f"| {_fmt(c['threshold'])} | {c['tp']} | {c['fp']} | {c['tn']} | {c['fn']} | "
            f"{_fmt(c['precision'])} | {_fmt(c['recall'])} | {_fmt(c['f1'])} | "
            f"{_fmt(c['accuracy'])} |")
    return lines


def _snr_lines(cols: list[tuple[str, dict | None]]) -> list[str]:
    present = [(n, m) for n, m in cols if m and m.get("snr_bins")]
    if not present:
        return ["No S/N column: per-bin AUC not computed."]
    lines = ["| labels | S/N bin | n real | n bogus | AUC |", "|---|---|---|---|---|"]
    for name, m in present:
        for b in m["snr_bins"]:
            lines.append(f"| {name} | {b['bin']} | {b['n_real']} | {b['n_bogus']} | "
                         f"{_fmt(b['auc'])} |")
    return lines


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path


def write_report(result: ValidationResult, out_dir: str | Path, *, title: str,
                 extra_sections: Mapping[str, str] | None = None) -> list[Path]:
    """Write ``report.md``, its PNGs, ``metrics.json`` and ``operating_point.json``.

    Returns the paths written (report first), for the flow to publish as artifacts.
    extra_sections: heading -> markdown body, appended at the end.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    xm = result.crossmatch
    op = result.operating_point
    m, tm, c = result.metrics, result.truth_metrics, result.counts
    written: list[Path] = []
    figs: list[tuple[str, str]] = []

    vc = xm["val_class"].to_numpy()
    s = xm["score"].to_numpy(float)
    keep = vc >= 0
    curves = {"TNS": (vc[keep], s[keep])}
    truth_y = None
    if tm is not None:
        tl = pd.to_numeric(xm["true_label"], errors="coerce").to_numpy(float)
        tk = np.isin(tl, (0, 1))
        truth_y, truth_s = tl[tk].astype(int), s[tk]
        curves["truth"] = (truth_y, truth_s)
    written.append(_save(roc_figure(curves, target_tpr=result.options.target_tpr),
                         out / "roc.png"))
    figs.append(("ROC", "roc.png"))
    cls = np.where(vc == 1, "TNS real", np.where(vc == 0, "bogus (no TNS match)", "excluded"))
    written.append(_save(score_histogram_figure(s, cls, threshold=op.threshold,
                                                title="scores by TNS class"),
                         out / "scores_tns.png"))
    figs.append(("Scores by TNS class", "scores_tns.png"))
    if "true_class" in xm and xm["true_class"].notna().any():
        tc = xm["true_class"].astype("string").fillna("unknown").to_numpy(object)
        written.append(_save(score_histogram_figure(s, tc, threshold=op.threshold,
                                                    title="scores by true class"),
                             out / "scores_true_class.png"))
        figs.append(("Scores by true class (simulation)", "scores_true_class.png"))
    y_thr, s_thr = (curves["TNS"] if m is not None or truth_y is None
                    else curves["truth"])
    written.append(_save(threshold_figure(y_thr, s_thr, threshold=op.threshold),
                         out / "threshold.png"))
    figs.append(("Rates vs threshold", "threshold.png"))
    for by, table in result.efficiency.items():
        name = f"efficiency_{by}.png"
        written.append(_save(efficiency_figure(table, by=by), out / name))
        figs.append((f"Efficiency vs {by}", name))

    mj = metrics_json(result)
    (out / "metrics.json").write_text(json.dumps(mj, indent=2, allow_nan=False) + "\n")
    (out / "operating_point.json").write_text(
        json.dumps(op.to_dict(), indent=2, allow_nan=False) + "\n")

    L: list[str] = [f"# {title}", ""]
    L += ["## Labels", "",
          f"- Detections: {c['n_detections']}. TNS objects in the catalogue: "
          f"{c['n_tns_objects']}; matched by at least one real detection: "
          f"{c['n_tns_objects_detected']}.",
          f"- **Real**: detection within {result.options.radius_arcsec:g} arcsec of a TNS object "
          f"and within [{result.options.window_days[0]:g}, {result.options.window_days[1]:+g}] "
          f"days of its discovery: {c['n_real']}.",
          f"- **Bogus**: no TNS object within the radius: {c['n_bogus']}. The bogus class "
          "contains unreported real transients (TNS lists only what someone reported), so "
          "FPR and false-positive counts are upper bounds.",
          f"- **Excluded**: TNS object within the radius but outside the time window: "
          f"{c['n_excluded']} (left out of both classes).", ""]
    L += ["## Operating point", "",
          f"- Threshold **{op.threshold:.4f}**: {op.rule}.",
          f"- On the night it was chosen: TPR {_fmt(op.tpr)}, FPR {_fmt(op.fpr)}, precision "
          f"{_fmt(op.precision)} ({op.n_real} real, {op.n_bogus} bogus).", ""]
    ci_pct = f"{100 * result.options.ci_level:g} %"
    L += ["## Metrics", "",
          f"Intervals: {ci_pct} percentile intervals of a cluster bootstrap "
          f"({result.options.n_boot} replicates, seed {result.options.seed}) resampling reals' "
          "objects and bogus detections' images (exposure/sensor), not detections.", ""]
    cols = [("TNS", m)] + ([("truth", tm)] if tm is not None else [])
    L += _metrics_table(cols) + [""]
    if m is None:
        L += ["No TNS-matched reals (or no bogus) on this night: TNS-based metrics are "
              "undefined.", ""]
    for name, mm in cols:
        if mm:
            L += [f"### Confusion matrix ({name} labels)", "", *_confusion_lines(mm), ""]
            share = mm.get("fp_share_worst_images")
            L += [f"False positives at the threshold: {mm['n_fp']}; share in the "
                  f"{result.options.n_worst_images} worst images: {_fmt(share)}.", ""]
    L += ["## AUC per S/N bin", "", *_snr_lines(cols), ""]
    if result.registration is not None:
        r = result.registration
        w, wo = r.with_classifier, r.without_classifier
        L += ["## Registration", "",
              f"First detection = variable; detected again within {r.radius_arcsec:g} arcsec "
              "on a later visit = transient.", "",
              "| | candidates | variables | transients | TNS transients | TNS share |",
              "|---|---|---|---|---|---|",
              f"| without classifier | {wo.n_candidates} | {wo.n_variables} | "
              f"{wo.n_transients} | {wo.n_tns_transients} | {_fmt(wo.tns_share_transients)} |",
              f"| with classifier (>= {op.threshold:.3f}) | {w.n_candidates} | "
              f"{w.n_variables} | {w.n_transients} | {w.n_tns_transients} | "
              f"{_fmt(w.tns_share_transients)} |", "",
              "Reduction (without / with): variables "
              f"{_fmt(r.reduction['variables_without_over_with'], 1)}x, transients "
              f"{_fmt(r.reduction['transients_without_over_with'], 1)}x; TNS share gain "
              f"{_fmt(r.reduction['tns_share_gain'], 1)}x.", ""]
    for by, table in result.efficiency.items():
        L += [f"## Efficiency vs {by}", "",
              "| bin | n injected | n detected | n recovered | efficiency | 68 % Wilson |",
              "|---|---|---|---|---|---|"]
        for row in table.itertuples():
            if row.n:
                L.append(f"| {row.bin_lo:g}-{row.bin_hi:g} | {row.n} | {row.n_detected} | "
                         f"{row.n_recovered} | {_fmt(row.efficiency, 3)} | "
                         f"[{_fmt(row.ci_lo, 3)}, {_fmt(row.ci_hi, 3)}] |")
        L.append("")
    L += ["## Figures", ""]
    for cap, name in figs:
        L += [f"### {cap}", "", f"![{cap}]({name})", ""]
    for head, body in (extra_sections or {}).items():
        L += [f"## {head}", "", body, ""]
    report = out / "report.md"
    report.write_text("\n".join(L))
    return [report, *written, out / "metrics.json", out / "operating_point.json"]


__all__ = ["roc_figure", "score_histogram_figure", "threshold_figure", "efficiency_figure",
           "write_report"]
