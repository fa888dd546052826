"""Score the stamps of a dataset directory with an exported model (no Prefect)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.stampstore import open_dataset


def score_dataset(model_dir: str | Path, dataset_dir: str | Path, batch_size: int = 256,
                  precision: str = "float32") -> np.ndarray:
    """P(real) (N,) for every stamp of the dataset, in store order, read chunk by chunk
    (``precision``: see :func:`models.export.score_stamps`)."""
    from models.export import load_exported, score_stamps
    program = load_exported(Path(model_dir) / "model.pt2")
    arr = open_dataset(Path(dataset_dir)).stamps()
    out = np.empty(arr.shape[0], dtype=np.float64)
    step = max(arr.chunks[0], batch_size)
    for start in range(0, arr.shape[0], step):
        block = np.asarray(arr[start:start + step])
        out[start:start + len(block)] = score_stamps(program, block, batch_size, precision)
    return out
