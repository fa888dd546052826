from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from storage.loader import StampDataset, StampSource, load_all


def make_dataset(path: Path, n: int, chunk: int, prefix: str, seed: int = 0, labels=None) -> np.ndarray:
    """Write a dataset directory; stamp i has value i + offset in pixel (0, 0, 0) to identify it."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3, 29, 29)).astype(np.float32)
    x[:, 0, 0, 0] = np.arange(n)
    arr = zarr.create_array(store=str(path / "stamps.zarr"), shape=x.shape, chunks=(chunk, 3, 29, 29),
                            dtype="float32", compressors=None)
    arr[:] = x
    lab = rng.integers(0, 2, n) if labels is None else labels
    pd.DataFrame({
        "stamp_id": [f"{prefix}/e1/s{i // chunk}/{i}" for i in range(n)],
        "label": lab.astype(np.int64), "exposure": "e1", "sensor": [f"s{i // chunk}" for i in range(n)],
        "snr": rng.uniform(5, 50, n), "flags": np.zeros(n, np.int64),
    }).to_parquet(path / "stamps.parquet")
    return x


def test_source_concat_subset_override(tmp_path):
    xa = make_dataset(tmp_path / "a", 50, 16, "a", 0)
    xb = make_dataset(tmp_path / "b", 30, 8, "b", 1)
    src = StampSource([tmp_path / "a", tmp_path / "b"])
    assert len(src) == 80 and set(src.table["dataset"]) == {0, 1}
    ids = ["b/e1/s3/29", "a/e1/s0/2", "b/e1/s0/0"]
    sub = StampSource([tmp_path / "a", tmp_path / "b"], ids, labels=[-1, 1, 0])
    arrays = load_all(sub)
    np.testing.assert_array_equal(arrays.x[0], xb[29])
    np.testing.assert_array_equal(arrays.x[1], xa[2])
    np.testing.assert_array_equal(arrays.y, [-1, 1, 0])
    with pytest.raises(ValueError, match="stamp_ids"):
        StampSource([tmp_path / "a"], ["nope"])
    with pytest.raises(ValueError, match="labels"):
        StampSource([tmp_path / "a"], ids[1:2], labels=[1, 0])
    with pytest.raises(ValueError, match="labels"):
        StampSource([tmp_path / "a"], ids[1:2], labels=[3])
    with pytest.raises(ValueError, match="repeat"):
        StampSource([tmp_path / "a", tmp_path / "a"])


def _epoch_ids(ds):
    seen, first = [], []
    for x, y, idx in ds:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 29, 29)
        assert y.dtype == torch.int64 and idx.dtype == torch.int64 and len(y) == len(idx) == len(x)
        seen.append(idx.numpy())
        first.append(x[:, 0, 0, 0].numpy())
    return np.concatenate(seen), np.concatenate(first)


def test_epoch_yields_each_selected_stamp_once(tmp_path):
    xa = make_dataset(tmp_path / "a", 100, 16, "a", 0)
    xb = make_dataset(tmp_path / "b", 70, 32, "b", 1)
    xall = np.concatenate([xa, xb])
    rng = np.random.default_rng(3)
    table = StampSource([tmp_path / "a", tmp_path / "b"]).table
    pick = rng.choice(len(table), 120, replace=False)
    ids = table["stamp_id"].to_numpy()[pick]
    override = rng.integers(-1, 2, 120)
    src = StampSource([tmp_path / "a", tmp_path / "b"], ids, override)
    ds = StampDataset(src, batch_size=17, shuffle=True, buffer_chunks=3, seed=5)
    orders = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        idx, first = _epoch_ids(ds)
        assert sorted(idx.tolist()) == list(range(120))  # each exactly once
        # the pixels belong to the stamp idx points at
        ds_k, row = src.table["dataset"].to_numpy()[idx], src.table["row"].to_numpy()[idx]
        np.testing.assert_array_equal(first, row)
        np.testing.assert_array_equal(xall[ds_k * 100 + row], np.concatenate([b.x.numpy() for b in ds]))
        orders.append(idx)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled per epoch
    ds.set_epoch(0)
    np.testing.assert_array_equal(_epoch_ids(ds)[0], orders[0])  # seeded
    # labels follow the override
    for x, y, idx in ds:
        np.testing.assert_array_equal(y.numpy(), override[idx.numpy()])
    # shuffle=False: store order (dataset, row)
    idx, _ = _epoch_ids(StampDataset(src, batch_size=17, shuffle=False))
    key = src.table["dataset"].to_numpy()[idx] * 1000 + src.table["row"].to_numpy()[idx]
    assert np.all(np.diff(key) > 0) and len(idx) == 120


def test_shuffle_mixes_chunks_and_batches_are_full(tmp_path):
    make_dataset(tmp_path / "a", 128, 16, "a")
    src = StampSource(tmp_path / "a")
    ds = StampDataset(src, batch_size=20, buffer_chunks=4, seed=0)
    sizes = [len(b.idx) for b in ds]
    assert sizes == [20] * 6 + [8]
    first = next(iter(ds)).idx.numpy()
    assert len(np.unique(first // 16)) > 1  # one batch spans several chunks


def test_dataloader_workers_cover_epoch(tmp_path):
    make_dataset(tmp_path / "a", 64, 8, "a")
    ds = StampDataset(StampSource(tmp_path / "a"), batch_size=10, buffer_chunks=2)
    # spawn: forked workers die when an earlier test left Prefect/Dask threads running
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    idx = np.concatenate([b.idx.numpy() for b in dl])
    assert sorted(idx.tolist()) == list(range(64))


def test_bad_store_shape(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    zarr.create_array(store=str(d / "stamps.zarr"), shape=(4, 3, 21, 21), chunks=(4, 3, 21, 21), dtype="float32")
    pd.DataFrame({"stamp_id": list("abcd"), "label": [0, 1, 0, 1]}).to_parquet(d / "stamps.parquet")
    with pytest.raises(ValueError, match="shape"):
        StampSource(d)
