"""The dataset write protocol: atomic parts, ledger, lock, join, hashing, readers."""

import json

import numpy as np
import pandas as pd
import pytest
import zarr

from storage import stampstore as ss


def _part(key_i: int, n: int, seed: int = 0):
    rng = np.random.default_rng([seed, key_i])
    stamps = rng.normal(size=(n, 3, 29, 29)).astype(np.float32)
    exposure, sensor = f"e{key_i // 2:03d}", f"{key_i % 2:02d}"
    rows = pd.DataFrame({
        "stamp_id": [ss.stamp_id("2026-01-05", exposure, sensor, d) for d in range(n)],
        "night": "2026-01-05", "exposure": exposure, "sensor": sensor, "det_id": np.arange(n),
        "x": rng.uniform(0, 100, n), "label": rng.integers(0, 2, n), "true_class": "noise",
    })
    return ss.part_key(exposure, sensor), stamps, rows


def _write_all(d, order, sizes=(700, 500, 900, 10)):
    keys = []
    for i in order:
        k, s, r = _part(i, sizes[i])
        ss.write_part(d, k, s, r)
        ss.append_ledger(d, ss.PartRecord(k, "done", len(s)))
        keys.append(k)
    return sorted(keys)


def test_join_is_order_independent_and_chunk_aligned(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ka = _write_all(a, [0, 1, 2, 3])
    kb = _write_all(b, [3, 1, 0, 2])
    ja = ss.join_parts(a, ka, {"seed": 1})
    jb = ss.join_parts(b, kb, {"seed": 1})
    assert ja.content_hash == jb.content_hash and ja.n_stamps == 2110
    for name in ("stamps.parquet",):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    arr = zarr.open_array(str(a / "stamps.zarr"), mode="r")
    assert arr.shape == (2110, 3, 29, 29) and arr.chunks[0] == ss.CHUNK_STAMPS
    table = pd.read_parquet(a / "stamps.parquet")
    # rows in (exposure, sensor, det_id) order, row i describes stamp i
    assert list(table["exposure"] + table["sensor"]) == sorted(table["exposure"] + table["sensor"])
    k0, s0, r0 = _part(2, 900)
    i = int(np.flatnonzero(table["stamp_id"] == r0["stamp_id"][17])[0])
    np.testing.assert_array_equal(arr[i], s0[17])
    meta = json.loads((a / "dataset.json").read_text())
    assert meta["content_hash"] == ja.content_hash and meta["n_stamps"] == 2110
    # rerun of the join with identical parts rewrites nothing
    assert ss.join_parts(a, ka, {"seed": 1}).reused


def test_damaged_part_is_pending_and_half_written_part_is_ignored(tmp_path, monkeypatch):
    keys = _write_all(tmp_path, [0, 1, 2])
    assert ss.pending_keys(tmp_path, keys) == []
    # damage one part: flip bytes in its stamps
    p = tmp_path / "parts" / keys[1] / "stamps.npy"
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    assert ss.pending_keys(tmp_path, keys) == [keys[1]]
    # a crash in the middle of a part leaves only a temporary directory
    monkeypatch.setenv("RBFLOW_FAULT_MID_PART", "1")
    k, s, r = _part(3, 10)
    with pytest.raises(ss.InjectedFault):
        ss.write_part(tmp_path, k, s, r)
    assert k not in ss.complete_part_keys(tmp_path / "parts")
    assert ss.clean_temporaries(tmp_path) == 1


def test_fault_after_k_parts_hook(tmp_path, monkeypatch):
    monkeypatch.setenv("RBFLOW_FAULT_AFTER_PARTS", "2")
    _write_all(tmp_path, [0, 1])
    k, s, r = _part(2, 5)
    with pytest.raises(ss.InjectedFault, match="after 2"):
        ss.write_part(tmp_path, k, s, r)


def test_lock_refuses_a_second_writer(tmp_path):
    with ss.dataset_lock(tmp_path, "build"):
        with pytest.raises(ss.StoreError, match="locked by another build"):
            with ss.dataset_lock(tmp_path, "build"):
                pass
    with ss.dataset_lock(tmp_path, "build"):  # released
        pass


def test_failed_join_keeps_previous_store(tmp_path, monkeypatch):
    keys = _write_all(tmp_path, [0, 1])
    first = ss.join_parts(tmp_path, keys, {})
    before = pd.read_parquet(tmp_path / "stamps.parquet")
    k, s, r = _part(2, 30)
    ss.write_part(tmp_path, k, s, r)
    monkeypatch.setenv("RBFLOW_FAULT_JOIN_WRITE", "1")
    with pytest.raises(ss.StoreError, match="No space left.*previous store is intact"):
        ss.join_parts(tmp_path, keys + [k], {})
    view = ss.open_dataset(tmp_path)
    assert view.meta["content_hash"] == first.content_hash
    pd.testing.assert_frame_equal(view.table(), before)
    assert not [p for p in (tmp_path / "versions").iterdir() if p.name.startswith(".tmp-")]


def test_reader_sees_old_or_new_version(tmp_path):
    keys = _write_all(tmp_path, [0, 1])
    ss.join_parts(tmp_path, keys, {})
    old = ss.open_dataset(tmp_path)  # a reader resolves `current` once
    k, s, r = _part(2, 30)
    ss.write_part(tmp_path, k, s, r)
    new = ss.join_parts(tmp_path, keys + [k], {})
    assert len(old.table()) == old.stamps().shape[0] == 1200  # still complete and consistent
    cur = ss.open_dataset(tmp_path)
    assert len(cur.table()) == cur.stamps().shape[0] == new.n_stamps == 1230


def test_write_part_validates_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\(n, 3, 29, 29\)"):
        ss.write_part(tmp_path, "a__b", np.zeros((2, 3, 28, 28), np.float32), pd.DataFrame({"x": [1, 2]}))
    with pytest.raises(ValueError, match="2 rows for 3 stamps"):
        ss.write_part(tmp_path, "a__b", np.zeros((3, 3, 29, 29), np.float32), pd.DataFrame({"x": [1, 2]}))
    with pytest.raises(ValueError, match="may not contain"):
        ss.part_key("a/b", "c")
