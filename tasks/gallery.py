"""Stamp galleries: rows of new/ref/sub triplets (matplotlib, Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _scale(img: np.ndarray) -> tuple[float, float]:
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def gallery_figure(stamps: np.ndarray, titles: list[str] | None = None, *, per_row: int = 4,
                   suptitle: str = ""):
    """Triplets (new, ref, sub) side by side; ``per_row`` triplets per row. stamps: (n, 3, 29, 29)."""
    n = len(stamps)
    rows = max(1, int(np.ceil(n / per_row)))
    fig, axes = plt.subplots(rows, 3 * per_row, figsize=(1.1 * 3 * per_row, 1.25 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i in range(n):
        r, c = divmod(i, per_row)
        for ch in range(3):
            ax = axes[r, 3 * c + ch]
            lo, hi = _scale(stamps[i, ch])
            ax.imshow(stamps[i, ch], origin="lower", cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if titles:
            axes[r, 3 * c].set_title(titles[i], fontsize=6, loc="left")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout(pad=0.2)
    return fig
