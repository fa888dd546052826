"""The stamp store under concurrency and crashes, and safety defaults (issue 13, items 2, 3, 5).

Complements tests/test_stampstore.py (atomic parts, lock, failed join, sequential reader).
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storage import stampstore as ss

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parent.parent


def _part(i: int, n: int):
    rng = np.random.default_rng(i)
    exposure, sensor = f"e{i:03d}", "00"
    rows = pd.DataFrame({"stamp_id": [ss.stamp_id("2026-01-05", exposure, sensor, d) for d in range(n)],
                         "night": "2026-01-05", "exposure": exposure, "sensor": sensor, "det_id": np.arange(n),
                         "label": rng.integers(0, 2, n)})
    return ss.part_key(exposure, sensor), rng.normal(size=(n, 3, 29, 29)).astype(np.float32), rows


def _write(d: Path, i: int, n: int) -> str:
    k, s, r = _part(i, n)
    ss.write_part(d, k, s, r)
    ss.append_ledger(d, ss.PartRecord(k, "done", n))
    return k


def _consistent(view: ss.DatasetView) -> tuple[str, int]:
    """A view is one complete version: rows = stamps = dataset.json, bytes hash as recorded."""
    table, arr = view.table(), view.stamps()
    assert len(table) == arr.shape[0] == view.meta["n_stamps"]
    assert ss.content_hash(iter([arr[:]]), table) == view.meta["content_hash"]
    return view.meta["content_hash"], len(table)


def test_a_reader_during_a_join_sees_the_old_store_then_the_new(tmp_path, monkeypatch):
    d = tmp_path / "ds"
    keys = [_write(d, 0, 700), _write(d, 1, 400)]
    old = ss.join_parts(d, keys, {"seed": 0})
    keys.append(_write(d, 2, 1500))
    early = ss.open_dataset(d)  # a reader that opened before the join started
    seen = []

    def reader(stage, dataset_dir):  # runs inside the join, at its two riskiest points
        seen.append((stage, _consistent(ss.open_dataset(dataset_dir))))

    monkeypatch.setattr(ss, "JOIN_HOOK", reader)
    new = ss.join_parts(d, keys, {"seed": 0})
    assert seen == [("written", (old.content_hash, 1100)), ("renamed", (old.content_hash, 1100))]
    assert _consistent(ss.open_dataset(d)) == (new.content_hash, 2600)
    assert _consistent(early) == (old.content_hash, 1100)  # still whole after the swap


def test_an_incomplete_part_is_never_joined(tmp_path, monkeypatch):
    d = tmp_path / "ds"
    keys = [_write(d, 0, 10), _write(d, 1, 10)]
    (d / "parts" / keys[1] / "part.json").unlink()  # as if killed before the part was complete
    assert ss.pending_keys(d, keys) == [keys[1]]
    with pytest.raises(ss.StoreError, match=rf"{keys[1]}: incomplete part cannot be joined \(part.json missing\)"):
        ss.join_parts(d, keys, {})
    assert not (d / "current").exists()
    monkeypatch.setenv("RBFLOW_FAULT_MID_PART", "1")  # a crash while writing leaves only a temp dir
    k, s, r = _part(2, 10)
    with pytest.raises(ss.InjectedFault):
        ss.write_part(d, k, s, r)
    assert ss.complete_part_keys(d / "parts") == [keys[0]]


def test_a_full_disk_while_writing_a_part_leaves_nothing_behind(tmp_path, monkeypatch):
    d = tmp_path / "ds"
    keys = [_write(d, 0, 10)]
    first = ss.join_parts(d, keys, {})
    monkeypatch.setenv("RBFLOW_FAULT_PART_ENOSPC", "1")
    k, s, r = _part(1, 10)
    with pytest.raises(ss.StoreError, match=rf"parts/{k}: could not write the part .*No space left on device"):
        ss.write_part(d, k, s, r)
    assert sorted(p.name for p in (d / "parts").iterdir()) == keys  # no temp dir, no part
    assert _consistent(ss.open_dataset(d)) == (first.content_hash, 10)


# ------------------------------------------------------------------ 5. safety
def test_servers_and_dashboards_bind_loopback_by_default():
    from flows.runner import FALLBACK_SPEC, load_cluster_spec
    for spec in (load_cluster_spec(None), FALLBACK_SPEC):
        kw = spec["cluster_kwargs"]
        assert kw["host"] == "127.0.0.1" and str(kw["dashboard_address"]).startswith("127.0.0.1:")
    from prefect.server.api.server import SubprocessASGIServer  # the ephemeral server prefect_session starts
    assert SubprocessASGIServer().address.startswith("http://127.0.0.1:")
    from prefect.settings import PREFECT_SERVER_API_HOST
    assert PREFECT_SERVER_API_HOST.value() == "127.0.0.1"
    ops = pytest.importorskip("flows.ops")  # `rbflow server start`
    assert ops.HOST == "127.0.0.1"


_UNSAFE_CALLS = {
    ("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
    ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle"),
    ("marshal", "loads"), ("shelve", "open"), ("jit", "load"),
}


def _unsafe_loads(path: Path) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        f = node.func
        owner = f.value.attr if isinstance(f.value, ast.Attribute) else getattr(f.value, "id", "")
        kw = {k.arg: k.value for k in node.keywords}
        where = f"{path.relative_to(REPO)}:{node.lineno}"
        if (owner, f.attr) in _UNSAFE_CALLS:
            bad.append(f"{where} {owner}.{f.attr}")
        elif owner == "torch" and f.attr == "load":
            w = kw.get("weights_only")
            if not (isinstance(w, ast.Constant) and w.value is True):
                bad.append(f"{where} torch.load without weights_only=True")
        elif f.attr == "load" and owner in ("np", "numpy"):
            a = kw.get("allow_pickle")
            if a is not None and not (isinstance(a, ast.Constant) and a.value is False):
                bad.append(f"{where} np.load(allow_pickle=...)")
        elif owner == "yaml" and f.attr in ("load", "load_all", "unsafe_load", "full_load"):
            bad.append(f"{where} yaml.{f.attr} (use safe_load)")
    return bad


def test_no_code_unpickles_files():
    files = [p for pkg in ("flows", "tasks", "models", "storage", "benchmarks") for p in (REPO / pkg).rglob("*.py")]
    assert len(files) > 20
    assert [b for p in files for b in _unsafe_loads(p)] == []


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.mkdir, (self.marker,))


def test_weights_with_a_code_payload_are_refused(tmp_path):
    import json

    import torch

    from models.export import load_model
    from models.networks import config_to_dict
    from models.stages import net_config_for
    marker = tmp_path / "payload-ran"
    (tmp_path / "model.json").write_text(json.dumps({"network": config_to_dict(net_config_for("simple"))}))
    torch.save({"conv.weight": _Payload(str(marker))}, tmp_path / "weights.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_model(tmp_path)
    assert not marker.exists()
