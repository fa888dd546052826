"""Stamp galleries per true_class from a dataset directory (docs/ figures).

    .venv/bin/python docs/scripts/class_gallery.py runs/demo/dataset docs/img/gallery --per-class 20

Writes one PNG per true_class (new | ref | sub triplets, 20 each, drawn at random with a
fixed seed) and an overview PNG with injected reals beside each bogus kind.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from storage.stampstore import open_dataset
from tasks.gallery import gallery_figure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("dataset")
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    view = open_dataset(Path(a.dataset))
    table = view.table()
    arr = view.stamps()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    overview = []
    for cls, idx in sorted(table.groupby("true_class").indices.items()):
        pick = np.sort(rng.choice(idx, min(a.per_class, len(idx)), replace=False))
        stamps = np.stack([np.asarray(arr[int(i)]) for i in pick])
        titles = [f"{cls} lab={int(table.label[i])} snr={table.snr[i]:.0f}" for i in pick]
        fig = gallery_figure(stamps, titles, per_row=5, suptitle=f"true_class = {cls} ({len(idx)} in dataset)")
        fig.savefig(out / f"{cls}.png", dpi=100)
        plt.close(fig)
        overview.append((cls, stamps[:4]))
        print(f"{cls}: {len(idx)} stamps -> {out / f'{cls}.png'}")
    stamps = np.concatenate([s for _, s in overview])
    titles = [c for c, s in overview for _ in range(len(s))]
    fig = gallery_figure(stamps, titles, per_row=4, suptitle="each true_class, 4 random stamps (new | ref | sub)")
    fig.savefig(out / "overview.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
