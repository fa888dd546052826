"""The flagging study at scale (docs/scripts/flag_scale.sh): precision and recall of the flagged
set at S/N > 10 per number of training nights, noise and flagger, as a markdown table, and a
PNG of precision and recall against the training set's size.

    .venv/bin/python docs/scripts/flag_scale_table.py [--root docs/experiments/flag-scale]

Targets: ``planted`` = the planted flips with the survey's own errors set aside
(``planted_excl_own``), ``own`` = the survey's own label errors (at noise ``survey`` nothing is
planted, so there it is the clean figure), ``any`` = either. Flaggers: the paper's (out-of-fold
CNN P(real), p = 0.5) and ``cnn+rf`` (the CNN's and the random forest's out-of-fold P(real)
averaged) at cuts 0.5, 0.7, 0.8 and 0.9 (a stamp labelled real is flagged when P(real) < 1 - cut,
one labelled bogus when P(real) > cut).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(root: Path) -> list[dict]:
    out = []
    for f in sorted(root.glob("n*/flagging/*.json")):
        d = json.loads(f.read_text())
        k = int(f.parent.parent.name[1:])
        b = next(x for x in d["bins"] if x["bin"] == "snr>10")
        flaggers = {"cnn": d["cuts"], "cnn+rf": d["alternatives"]["cnn+rf"]["cuts"]}
        for name, cuts in flaggers.items():
            for c in cuts:
                if name == "cnn" and c["cut"] != 0.5 or c["cut"] not in (0.5, 0.7, 0.8, 0.9):
                    continue
                out.append({"nights": k, "n": b["n"], "noise": d["noise"], "seed": d["seed"], "flagger": name, "cut": c["cut"],
                            "n_flagged": c["n_flagged"], "n_planted": b["planted"]["n_target"],
                            "n_own": b["own"]["n_target"], "seconds": d.get("seconds"),
                            **{f"{t}_{m}": (c.get(key) or {}).get(m) for t, key in
                               (("planted", "planted_excl_own"), ("own", "own"), ("any", "any"))
                               for m in ("precision", "recall")}})
    return out


def fmt(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def table(rs: list[dict]) -> str:
    head = ("| nights | stamps S/N>10 | noise | seed | flagger | cut | flagged | planted P / R | own errors P / R "
            "| any error P / R |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in sorted(rs, key=lambda r: (r["noise"], r["flagger"], r["cut"], r["nights"], r["seed"])):
        pl = "–" if not r["n_planted"] else f"{fmt(r['planted_precision'])} / {fmt(r['planted_recall'])} ({r['n_planted']})"
        lines.append(f"| {r['nights']} | {r['n']} | {r['noise']} | {r['seed']} | {r['flagger']} | {r['cut']} | {r['n_flagged']} | {pl} "
                     f"| {fmt(r['own_precision'])} / {fmt(r['own_recall'])} ({r['n_own']}) "
                     f"| {fmt(r['any_precision'])} / {fmt(r['any_recall'])} |")
    return "\n".join(lines)


def plot(rs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for ax, (noise, target) in zip(axes, (("survey", "own"), ("uniform-0.01", "planted"), ("tail-0.01", "planted"))):
        for (flagger, cut), style in {("cnn", 0.5): "C0", ("cnn+rf", 0.5): "C1", ("cnn+rf", 0.8): "C2",
                                           ("cnn+rf", 0.9): "C3"}.items():
            sel = sorted((r for r in rs if r["noise"] == noise and r["flagger"] == flagger and r["cut"] == cut
                          and r["seed"] == 0),
                         key=lambda r: r["nights"])
            if not sel:
                continue
            x = [r["nights"] for r in sel]
            ax.plot(x, [r[f"{target}_precision"] for r in sel], "o-", color=style, label=f"{flagger} {cut}: precision")
            ax.plot(x, [r[f"{target}_recall"] for r in sel], "s--", color=style, label=f"{flagger} {cut}: recall")
        ax.axhline(0.8, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xticks([2, 6, 18], ["2", "6", "18"])
        ax.minorticks_off()
        ax.set_xlabel("training nights (~2k stamps each)")
        ax.set_title(f"{noise}: against the {'survey' + chr(39) + 's own errors' if target == 'own' else 'planted flips'}")
    axes[0].set_ylabel("precision (o) and recall (s), S/N > 10")
    axes[0].set_ylim(0, 1.02)
    for ax in axes[::-1]:  # the legend on the rightmost panel that has lines
        if ax.lines[1:]:
            ax.legend(fontsize=7, loc="lower right")
            break
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def false_flags(root: Path, noise: str = "survey") -> str:
    """Which correct labels (S/N > 10) each flagger at p = 0.5 flags, by true class, per scale:
    read from the stage-1 directories the cells name (under runs/, so only where they ran)."""
    import pandas as pd
    from storage.loader import StampSource
    counts = {}
    for f in sorted(root.glob(f"n*/cells/*__{noise}__s0*.json")):
        s1 = Path(json.loads(f.read_text())["stage1"]["dir"])
        if not (s1 / "rf_oof.parquet").exists():
            continue
        k = int(f.parent.parent.name[1:])
        t = StampSource(json.loads((s1 / "stage1.json").read_text())["datasets"]).table.set_index("stamp_id")
        un = pd.read_parquet(s1 / "unlabel.parquet").set_index("stamp_id").loc[t.index]
        rf = pd.read_parquet(s1 / "rf_oof.parquet").set_index("stamp_id").loc[t.index, "oof_prob"]
        tl = pd.to_numeric(t["true_label"], errors="coerce")
        ok = (t["snr"] > 10) & (tl == t["label"])
        for name, p in (("cnn", un["oof_prob"]), ("cnn+rf", (un["oof_prob"] + rf) / 2)):
            other = (1 - p).where(t["label"] == 1, p)
            fl = ok & (other > 0.5)
            amb = (t["snr"] > 10) & ~tl.isin((0, 1)) & (other > 0.5)  # e.g. an injection on an artifact
            counts[(k, name)] = (t.loc[fl, "true_class"].value_counts(), int(ok.sum()), int(amb.sum()))
    classes = sorted({c for v, _, _ in counts.values() for c in v.index},
                     key=lambda c: -sum(v.get(c, 0) for v, _, _ in counts.values()))
    head = "| nights | flagger | correct labels | flagged | " + " | ".join(classes) + " | truth ambiguous, flagged |"
    lines = [head, "|" + "---|" * (5 + len(classes))]
    for (k, name), (v, n, amb) in sorted(counts.items()):
        lines.append(f"| {k} | {name} | {n} | {int(v.sum())} ({v.sum() / n:.1%}) | "
                     + " | ".join(str(int(v.get(c, 0))) for c in classes) + f" | {amb} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("docs/experiments/flag-scale"))
    a = ap.parse_args()
    rs = rows(a.root)
    md = table(rs)
    (a.root / "table.md").write_text(md + "\n")
    (a.root / "rows.json").write_text(json.dumps(rs, indent=1) + "\n")
    plot(rs, a.root / "flag_scale.png")
    print(md)
    print(f"(PNG: seed 0 only) -> {a.root / 'table.md'}, {a.root / 'flag_scale.png'}")
    ff = false_flags(a.root)
    if ff.count("\n") > 1:
        (a.root / "false_flags.md").write_text(ff + "\n")
        print("\nCorrect labels flagged at p = 0.5 (S/N > 10, survey labels, seed 0), by true class:\n" + ff)


if __name__ == "__main__":
    main()
