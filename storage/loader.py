"""Stamp loading for training and scoring: whole-chunk Zarr reads and a shuffle buffer.

A dataset directory D holds ``D/stamps.zarr`` (a Zarr v3 array at the store root,
float32 (N, 3, 29, 29), chunks of (1024, 3, 29, 29)) and ``D/stamps.parquet`` (row i
describes stamp i). Stores are ordered by sensor, so one chunk is roughly one image:
reading single stamps decodes a whole chunk each time (stack.md: ~2,000 stamps/s against
~400,000 for whole chunks), so ``StampDataset`` reads whole chunks and mixes several of
them (``buffer_chunks``) in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
import zarr

from tasks.types import STAMP_SIZE

_SHAPE_TAIL = (3, STAMP_SIZE, STAMP_SIZE)


class StampArrays(NamedTuple):
    """x (N, 3, 29, 29) float32, y (N,) int64 (-1 unlabelled), idx (N,) int64 into the selection."""

    x: np.ndarray
    y: np.ndarray
    idx: np.ndarray


class StampBatch(NamedTuple):
    """x (B, 3, 29, 29) float32, y (B,) int64 (-1 unlabelled), idx (B,) int64 into the selection."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor


def _open_array(d: Path):
    arr = zarr.open_array(str(d / "stamps.zarr"), mode="r")
    if arr.ndim != 4 or tuple(arr.shape[1:]) != _SHAPE_TAIL:
        raise ValueError(f"stamps.zarr must have shape (N, 3, {STAMP_SIZE}, {STAMP_SIZE}), got {arr.shape}")
    if arr.dtype != np.float32:
        raise ValueError(f"stamps.zarr must be float32, got {arr.dtype}")
    return arr


class StampSource:
    """A selection of stamps over one or more dataset directories.

    ``table``: the selected Parquet rows in selection order, with two added columns,
    ``dataset`` (index into ``dirs``) and ``row`` (row in that directory's store).
    ``labels``: int64 (n,), the ``label`` column or the override (-1 = unlabelled).

    dirs: dataset directories (their rows are concatenated in this order).
    stamp_ids: optional subset (any order; becomes the selection order); all must exist.
    labels: optional label override aligned with the selection, values in {-1, 0, 1}.
    """

    def __init__(
        self,
        dirs: str | Path | Sequence[str | Path],
        stamp_ids: Sequence[str] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
    ):
        if isinstance(dirs, (str, Path)):
            dirs = [dirs]
        self.dirs = tuple(Path(d) for d in dirs)
        if not self.dirs:
            raise ValueError("dirs must name at least one dataset directory")
        tables = []
        for k, d in enumerate(self.dirs):
            t = pd.read_parquet(d / "stamps.parquet")
            for col in ("stamp_id", "label"):
                if col not in t.columns:
                    raise ValueError(f"stamps.parquet lacks column {col!r} in {d}")
            n = _open_array(d).shape[0]
            if n != len(t):
                raise ValueError(f"stamps.zarr has {n} stamps but stamps.parquet {len(t)} rows in {d}")
            t = t.reset_index(drop=True)
            t["dataset"] = k
            t["row"] = np.arange(len(t), dtype=np.int64)
            tables.append(t)
        full = pd.concat(tables, ignore_index=True)
        if full["stamp_id"].duplicated().any():
            dup = full.loc[full["stamp_id"].duplicated(), "stamp_id"].iloc[:3].tolist()
            raise ValueError(f"stamp_id values repeat across the datasets, e.g. {dup}")
        if stamp_ids is not None:
            ids = pd.Index(full["stamp_id"])
            want = np.asarray(stamp_ids, dtype=object)
            pos = ids.get_indexer(want)
            if (pos < 0).any():
                missing = want[pos < 0][:3].tolist()
                raise ValueError(f"stamp_ids: {(pos < 0).sum()} not found in the datasets, e.g. {missing}")
            if len(np.unique(pos)) != len(pos):
                raise ValueError("stamp_ids contains duplicates")
            full = full.iloc[pos].reset_index(drop=True)
        self.table = full
        if labels is None:
            lab = full["label"].to_numpy()
            lab = np.where(pd.isna(lab), -1, lab).astype(np.int64)
        else:
            lab = np.asarray(labels)
            if lab.shape != (len(full),):
                raise ValueError(f"labels must have shape ({len(full)},) like the selection, got {lab.shape}")
            lab = lab.astype(np.int64)
        if not np.isin(lab, (-1, 0, 1)).all():
            raise ValueError("labels must be -1 (unlabelled), 0 (bogus) or 1 (real)")
        self.labels = lab
        self._arrays: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.table)

    def __getstate__(self):  # zarr handles are reopened in DataLoader workers
        s = dict(self.__dict__)
        s["_arrays"] = {}
        return s

    def array(self, k: int):
        """The Zarr array of dataset k (opened on first use)."""
        if k not in self._arrays:
            self._arrays[k] = _open_array(self.dirs[k])
        return self._arrays[k]

    def subset(self, positions: np.ndarray) -> "StampSource":
        """A new source with selection positions ``positions`` (labels carried over)."""
        positions = np.asarray(positions, dtype=np.int64)
        return StampSource(self.dirs, self.table["stamp_id"].to_numpy()[positions], self.labels[positions])

    def chunk_units(self) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
        """Work units in store order: (dataset, chunk_start, store_rows, selection_idx)
        for every Zarr chunk that holds a selected stamp; rows ascending within a chunk."""
        ds = self.table["dataset"].to_numpy()
        rows = self.table["row"].to_numpy()
        sel = np.arange(len(rows), dtype=np.int64)
        units = []
        for k in np.unique(ds):
            m = ds == k
            r, s = rows[m], sel[m]
            order = np.argsort(r, kind="stable")
            r, s = r[order], s[order]
            csize = self.array(int(k)).chunks[0]
            cid = r // csize
            cuts = np.flatnonzero(np.diff(cid)) + 1
            for rr, ss in zip(np.split(r, cuts), np.split(s, cuts)):
                units.append((int(k), int(rr[0] // csize * csize), rr, ss))
        return units

    def read_unit(self, k: int, start: int, rows: np.ndarray) -> np.ndarray:
        """Read the whole chunk [start, start + chunk) of dataset k and return rows (n, 3, 29, 29)."""
        arr = self.array(k)
        stop = min(start + arr.chunks[0], arr.shape[0])
        block = np.asarray(arr[start:stop])
        return block[rows - start]


class StampDataset(torch.utils.data.IterableDataset):
    """Batches ``StampBatch(x, y, idx)`` over a ``StampSource``; one pass = one epoch.

    Each epoch yields every selected stamp exactly once. With ``shuffle`` the chunk order
    is permuted and stamps are mixed inside groups of ``buffer_chunks`` chunks (memory:
    about buffer_chunks chunks + one batch); the permutation comes from
    ``default_rng([seed, epoch])`` (call ``set_epoch``). ``shuffle=False`` yields in store
    order (dataset, row). Under a multi-worker DataLoader (``batch_size=None``) chunks are
    dealt round-robin to the workers.
    """

    def __init__(
        self, source: StampSource, batch_size: int = 128, shuffle: bool = True,
        buffer_chunks: int = 4, seed: int = 0, drop_last: bool = False,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if buffer_chunks < 1:
            raise ValueError(f"buffer_chunks must be >= 1, got {buffer_chunks}")
        self.source = source
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.buffer_chunks = int(buffer_chunks)
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.source)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _emit(self, x, idx) -> StampBatch:
        y = self.source.labels[idx]
        return StampBatch(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(idx))

    def __iter__(self) -> Iterator[StampBatch]:
        units = self.source.chunk_units()
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.shuffle:
            units = [units[i] for i in rng.permutation(len(units))]
        info = torch.utils.data.get_worker_info()
        if info is not None:
            units = units[info.id :: info.num_workers]
        B = self.batch_size
        carry_x = np.empty((0, *_SHAPE_TAIL), np.float32)
        carry_i = np.empty(0, np.int64)
        group = self.buffer_chunks if self.shuffle else 1
        for g in range(0, len(units), group):
            xs, ids = [carry_x], [carry_i]
            for k, start, rows, sel in units[g : g + group]:
                xs.append(self.source.read_unit(k, start, rows))
                ids.append(sel)
            x, idx = np.concatenate(xs), np.concatenate(ids)
            if self.shuffle:
                p = rng.permutation(len(idx))
                x, idx = x[p], idx[p]
            n_full = len(idx) // B * B
            for b in range(0, n_full, B):
                yield self._emit(x[b : b + B], idx[b : b + B])
            carry_x, carry_i = x[n_full:], idx[n_full:]
        if len(carry_i) and not self.drop_last:
            yield self._emit(np.ascontiguousarray(carry_x), carry_i)


def load_all(source: StampSource) -> StampArrays:
    """All selected stamps in memory, in selection order (for small sets)."""
    x = np.empty((len(source), *_SHAPE_TAIL), np.float32)
    for k, start, rows, sel in source.chunk_units():
        x[sel] = source.read_unit(k, start, rows)
    return StampArrays(x, source.labels.copy(), np.arange(len(source), dtype=np.int64))
