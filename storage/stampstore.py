"""The dataset directory: per-sensor parts, the ledger, the lock and the join.

Layout of a dataset directory ``D`` (contract: ../shared/contracts.md)::

    D/parts/<key>/            one complete part per sensor image, written atomically
        stamps.npy            (n, 3, 29, 29) float32
        rows.parquet          n rows (the per-sensor table)
        injections.parquet    injected sources of this sensor (may be empty)
        part.json             written last: sizes and sha256 of the files above
    D/ledger.jsonl            one JSON line per finished sensor task (done / failed)
    D/versions/<hash12>/      one joined, immutable version
        stamps.zarr, stamps.parquet, dataset.json, injections.parquet
    D/current -> versions/<hash12>      (symlink, swapped atomically by rename)
    D/stamps.zarr -> current/stamps.zarr, D/stamps.parquet, D/dataset.json,
    D/injections.parquet                (static symlinks through ``current``)
    D/provenance.json         run ids, times, host: what must not enter the hash
    D/.lock                   held (flock) by the one process that builds or joins

Write protocol: each sensor task writes its part under a temporary name inside
``parts/`` and renames it into place; the part is complete when ``part.json``
exists and its checksums verify. The join reads complete parts in (exposure,
sensor) order, writes a new version directory, then swaps ``current``: a reader
that resolves ``current`` once sees the previous complete store or the new one,
never a mix. Only the joiner writes Zarr, chunk by chunk in order, so no two
writers ever touch one chunk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from tasks.types import STAMP_SIZE

CHUNK_STAMPS = 1024  # stack.md: 1024-stamp chunks, no compression, read fastest
PART_FILES = ("stamps.npy", "rows.parquet", "injections.parquet")
LINKS = ("stamps.zarr", "stamps.parquet", "dataset.json", "injections.parquet")


class StoreError(RuntimeError):
    """A dataset directory problem (lock held, damaged store, failed write)."""


class InjectedFault(RuntimeError):
    """Raised by the test hooks below to simulate a crash at a precise point."""


# ---------------------------------------------------------------------------- test hooks
# Faults are injected through environment variables so that they reach Dask worker
# processes too. Never set in production.
#   RBFLOW_FAULT_AFTER_PARTS=K : writing a part fails once K parts are complete on disk
#   RBFLOW_FAULT_MID_PART=1    : a part write dies after its stamps file (leaves a temp dir)
#   RBFLOW_FAULT_JOIN_WRITE=1  : the join dies with ENOSPC while writing the new version
#   RBFLOW_FAULT_PART_ENOSPC=1 : a part write fails with ENOSPC (disk full) after its stamps file
#   RBFLOW_FAULT_KILL_WORKER=<key>:<marker> : the first attempt of sensor <key> kills its Dask
#                                worker process (storage/sensor_io.py)
#   JOIN_HOOK (a Python callable, tests only): called as JOIN_HOOK(stage, dataset_dir) with
#                                stage "written" (new version complete under its temp name) and
#                                "renamed" (in versions/, not yet current)
JOIN_HOOK = None


def _fault_hooks_before_part(parts_dir: Path) -> None:
    k = os.environ.get("RBFLOW_FAULT_AFTER_PARTS")
    if k is not None and len(complete_part_keys(parts_dir)) >= int(k):
        raise InjectedFault(f"test hook: stopping after {k} complete parts")


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class PartRecord:
    """A small record a sensor task returns instead of arrays."""

    key: str
    status: str  # "done" | "failed" | "cached"
    n_stamps: int = 0
    reason: str = ""
    path: str = ""
    seconds: float = 0.0  # wall time of the task's work
    timings: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    cpu_seconds: float = 0.0  # CPU time of the task's thread: seconds minus waiting for a core (contention)


def part_key(exposure: str, sensor: str) -> str:
    safe = f"{exposure}__{sensor}"
    if "/" in safe or safe.startswith("."):
        raise ValueError(f"exposure/sensor ids may not contain '/' or start with '.': {safe!r}")
    return safe


def write_part(
    dataset_dir: Path,
    key: str,
    stamps: np.ndarray,
    rows: pd.DataFrame,
    injections: pd.DataFrame | None = None,
    meta: dict | None = None,
) -> Path:
    """Write one sensor's part atomically (temp dir, then rename). Returns its path."""
    stamps = np.ascontiguousarray(stamps, dtype=np.float32)
    if stamps.ndim != 4 or stamps.shape[1:] != (3, STAMP_SIZE, STAMP_SIZE):
        raise ValueError(f"part {key}: stamps must be (n, 3, 29, 29), got {stamps.shape}")
    if len(rows) != len(stamps):
        raise ValueError(f"part {key}: {len(rows)} rows for {len(stamps)} stamps")
    parts = Path(dataset_dir) / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    _fault_hooks_before_part(parts)
    tmp = parts / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        np.save(tmp / "stamps.npy", stamps)
        if os.environ.get("RBFLOW_FAULT_MID_PART"):
            raise InjectedFault(f"test hook: part {key} died half-written")
        if os.environ.get("RBFLOW_FAULT_PART_ENOSPC"):
            raise OSError(errno.ENOSPC, "No space left on device (test hook)")
        rows.reset_index(drop=True).to_parquet(tmp / "rows.parquet", index=False)
        inj = injections if injections is not None else pd.DataFrame()
        inj.reset_index(drop=True).to_parquet(tmp / "injections.parquet", index=False)
        files = {name: {"size": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
                 for name in PART_FILES}
        (tmp / "part.json").write_text(json.dumps(
            {"key": key, "n_stamps": int(len(stamps)), "files": files, "meta": meta or {}},
            indent=1, sort_keys=True, default=str))
        for name in (*PART_FILES, "part.json"):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
    except OSError as e:  # disk full, read-only, quota: a store problem, not a bad sensor
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(f"{parts / key}: could not write the part ({e}); "
                         "the joined store is untouched") from e
    final = parts / key
    if final.exists():  # a damaged or stale part: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(parts)
    return final


def verify_part(part_dir: Path, deep: bool = True) -> tuple[bool, str]:
    """Is this part complete and undamaged? Returns (ok, reason)."""
    pj = part_dir / "part.json"
    if not pj.exists():
        return False, "part.json missing"
    try:
        info = json.loads(pj.read_text())
    except (OSError, ValueError) as e:
        return False, f"part.json unreadable: {e}"
    for name, spec in info.get("files", {}).items():
        p = part_dir / name
        if not p.exists():
            return False, f"{name} missing"
        if p.stat().st_size != spec["size"]:
            return False, f"{name} has the wrong size"
        if deep and sha256_file(p) != spec["sha256"]:
            return False, f"{name} checksum mismatch"
    return True, ""


def complete_part_keys(parts_dir: Path) -> list[str]:
    if not parts_dir.exists():
        return []
    return sorted(p.name for p in parts_dir.iterdir()
                  if not p.name.startswith(".") and (p / "part.json").exists())


def read_part(part_dir: Path) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    stamps = np.load(part_dir / "stamps.npy")
    rows = pd.read_parquet(part_dir / "rows.parquet")
    inj = pd.read_parquet(part_dir / "injections.parquet")
    return stamps, rows, inj


# ---------------------------------------------------------------------------- ledger
def append_ledger(dataset_dir: Path, record: PartRecord) -> None:
    """One line per finished task; O_APPEND writes of one short line are atomic on POSIX."""
    line = json.dumps({"key": record.key, "status": record.status, "n_stamps": record.n_stamps,
                       "reason": record.reason, "seconds": round(record.seconds, 3),
                       "cpu_seconds": round(record.cpu_seconds, 3)},
                      sort_keys=True) + "\n"
    Path(dataset_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(dataset_dir) / "ledger.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_ledger(dataset_dir: Path) -> dict[str, dict]:
    """The last ledger entry per key (damaged lines are skipped)."""
    out: dict[str, dict] = {}
    p = Path(dataset_dir) / "ledger.jsonl"
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            e = json.loads(line)
            out[e["key"]] = e
        except (ValueError, KeyError):
            continue
    return out


def pending_keys(dataset_dir: Path, keys: list[str], deep: bool = True) -> list[str]:
    """Keys without a complete, verified part (these are (re)done on a rerun)."""
    ledger = read_ledger(dataset_dir)
    todo = []
    for k in keys:
        ok, _ = verify_part(Path(dataset_dir) / "parts" / k, deep=deep)
        if not ok or ledger.get(k, {}).get("status") not in ("done", "cached"):
            todo.append(k)
    return todo


def clean_temporaries(dataset_dir: Path) -> int:
    """Remove half-written parts and versions left by a crash; returns how many."""
    n = 0
    for sub in ("parts", "versions"):
        d = Path(dataset_dir) / sub
        if d.exists():
            for p in d.iterdir():
                if p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True)
                    n += 1
    return n


# ---------------------------------------------------------------------------- lock
@contextlib.contextmanager
def dataset_lock(dataset_dir: Path, what: str = "build") -> Iterator[None]:
    """Exclusive, non-blocking lock on a dataset directory (flock on D/.lock)."""
    d = Path(dataset_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            raise StoreError(
                f"dataset directory {d} is locked by another {what} ({holder or 'unknown holder'}); "
                "refusing to write at the same time. Wait for it to finish or pick another --out."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}: {what}".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ---------------------------------------------------------------------------- hashing
def _hash_table(h: "hashlib._Hash", table: pd.DataFrame) -> None:
    for col in table.columns:
        s = table[col]
        h.update(f"\0col:{col}:{s.dtype}\0".encode())
        if s.dtype.kind in "biuf":
            h.update(np.ascontiguousarray(s.to_numpy()).tobytes())
        else:
            h.update("\x1f".join("\x00" if pd.isna(v) else str(v) for v in s.tolist()).encode())


def content_hash(stamps_iter: Iterator[np.ndarray], table: pd.DataFrame) -> str:
    """sha256 over the stamp bytes (in order) and the rows (column names, dtypes, values)."""
    h = hashlib.sha256()
    for block in stamps_iter:
        h.update(np.ascontiguousarray(block, dtype=np.float32).tobytes())
    _hash_table(h, table)
    return h.hexdigest()


# ---------------------------------------------------------------------------- join
@dataclass(frozen=True)
class JoinResult:
    dataset_dir: str
    version: str
    content_hash: str
    n_stamps: int
    n_parts: int
    reused: bool  # an identical version already existed: nothing rewritten


def stamp_id(night: str, exposure: str, sensor: str, det_id: int) -> str:
    return f"{night}/{exposure}/{sensor}/{int(det_id)}"


def _ordered_parts(dataset_dir: Path, keys: list[str]) -> list[Path]:
    parts = Path(dataset_dir) / "parts"
    out = []
    for k in sorted(keys):  # key = exposure__sensor: sorted keys = (exposure, sensor) order
        ok, why = verify_part(parts / k, deep=False)
        if not ok:
            raise StoreError(f"{parts / k}: incomplete part cannot be joined ({why})")
        out.append(parts / k)
    return out


def join_parts(dataset_dir: Path, keys: list[str], dataset_meta: dict,
               *, keep_versions: int = 2) -> JoinResult:
    """Join the given complete parts into a new version and swap ``current`` to it.

    Call under :func:`dataset_lock`. ``dataset_meta`` goes into ``dataset.json`` (config,
    seed, code version, flag meanings, parents' hashes); ``content_hash`` and counts are
    added here. Deterministic: same parts -> same bytes.
    """
    import zarr

    d = Path(dataset_dir)
    part_dirs = _ordered_parts(d, keys)
    rows_all, inj_all, sizes = [], [], []
    for p in part_dirs:
        rows = pd.read_parquet(p / "rows.parquet")
        rows_all.append(rows)
        sizes.append(len(rows))
        inj = pd.read_parquet(p / "injections.parquet")
        if len(inj):
            inj_all.append(inj)
    table = pd.concat(rows_all, ignore_index=True) if rows_all else pd.DataFrame()
    if len(table):
        table = table.sort_values(["exposure", "sensor", "det_id"], kind="stable").reset_index(drop=True)
        if not table["stamp_id"].is_unique:
            dup = table.loc[table["stamp_id"].duplicated(), "stamp_id"].iloc[0]
            raise StoreError(f"{d}: duplicate stamp_id {dup} across parts")
    injections = pd.concat(inj_all, ignore_index=True) if inj_all else pd.DataFrame()
    n = int(sum(sizes))

    def blocks() -> Iterator[np.ndarray]:
        for p in part_dirs:
            yield np.load(p / "stamps.npy", mmap_mode="r")

    chash = content_hash(blocks(), table)
    version = chash[:12]
    versions = d / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / version
    reused = final.exists() and (final / "dataset.json").exists()
    if not reused:
        tmp = versions / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            if os.environ.get("RBFLOW_FAULT_JOIN_WRITE"):
                raise OSError(errno.ENOSPC, "No space left on device (test hook)")
            arr = zarr.create_array(store=str(tmp / "stamps.zarr"), shape=(n, 3, STAMP_SIZE, STAMP_SIZE),
                                    chunks=(CHUNK_STAMPS, 3, STAMP_SIZE, STAMP_SIZE), dtype="float32",
                                    compressors=None, fill_value=0.0, zarr_format=3)
            _write_chunked(arr, blocks(), n)
            table.to_parquet(tmp / "stamps.parquet", index=False)
            injections.to_parquet(tmp / "injections.parquet", index=False)
            meta = dict(dataset_meta)
            meta.update(content_hash=chash, n_stamps=n, n_parts=len(part_dirs), version=version,
                        chunks=CHUNK_STAMPS, counts=dataset_counts(table))
            (tmp / "dataset.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
            if JOIN_HOOK is not None:
                JOIN_HOOK("written", d)
            os.rename(tmp, final)
            if JOIN_HOOK is not None:
                JOIN_HOOK("renamed", d)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"{d}: could not write the new version ({e}); "
                             "the previous store is intact") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _swap_current(d, f"versions/{version}")
    _prune_versions(d, keep=keep_versions, protect=version)
    return JoinResult(str(d), version, chash, n, len(part_dirs), reused)


def _write_chunked(arr, blocks: Iterator[np.ndarray], n: int) -> None:
    """Write stamps in whole chunks, in order (one writer, each chunk written once)."""
    buf = np.empty((CHUNK_STAMPS, 3, STAMP_SIZE, STAMP_SIZE), dtype=np.float32)
    fill, start = 0, 0
    for block in blocks:
        i = 0
        while i < len(block):
            take = min(CHUNK_STAMPS - fill, len(block) - i)
            buf[fill:fill + take] = block[i:i + take]
            fill += take
            i += take
            if fill == CHUNK_STAMPS:
                arr[start:start + fill] = buf
                start += fill
                fill = 0
    if fill:
        arr[start:start + fill] = buf[:fill]
        start += fill
    if start != n:
        raise StoreError(f"wrote {start} stamps, expected {n}")


def _swap_current(d: Path, target: str) -> None:
    tmp_link = d / f".current-{uuid.uuid4().hex[:8]}"
    os.symlink(target, tmp_link)
    os.replace(tmp_link, d / "current")  # atomic
    for name in LINKS:
        link = d / name
        if not link.is_symlink():
            if link.exists():
                raise StoreError(f"{link} exists and is not a link into current/: refusing to overwrite")
            os.symlink(f"current/{name}", link)
    _fsync_dir(d)


def _prune_versions(d: Path, keep: int, protect: str) -> None:
    versions = d / "versions"
    entries = sorted((p for p in versions.iterdir() if not p.name.startswith(".") and p.name != protect),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for p in entries[max(keep - 1, 0):]:
        shutil.rmtree(p, ignore_errors=True)


def dataset_counts(table: pd.DataFrame) -> dict:
    if not len(table):
        return {"label": {}, "true_class": {}}
    out = {"label": {str(k): int(v) for k, v in table["label"].value_counts().sort_index().items()}}
    if "true_class" in table and table["true_class"].notna().any():
        out["true_class"] = {str(k): int(v) for k, v in table["true_class"].value_counts().sort_index().items()}
    return out


# ---------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class DatasetView:
    """One resolved version of a dataset directory (never a mix of two)."""

    root: Path
    version_dir: Path
    meta: dict

    @property
    def zarr_path(self) -> Path:
        return self.version_dir / "stamps.zarr"

    def table(self) -> pd.DataFrame:
        return pd.read_parquet(self.version_dir / "stamps.parquet")

    def stamps(self):
        import zarr
        return zarr.open_array(str(self.zarr_path), mode="r")


def open_dataset(dataset_dir: Path) -> DatasetView:
    """Resolve ``current`` once and return that version (raises if none joined yet)."""
    d = Path(dataset_dir)
    cur = d / "current"
    if not cur.exists():
        if (d / "stamps.zarr").exists() and not (d / "stamps.zarr").is_symlink():
            vdir = d  # a plain dataset directory written by other tools
        else:
            raise StoreError(f"{d}: not a dataset directory (no joined stamps yet)")
    else:
        vdir = cur.resolve()
    meta_p = vdir / "dataset.json"
    meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
    return DatasetView(d, vdir, meta)


def write_dataset(dataset_dir: Path, stamps: np.ndarray, table: pd.DataFrame, meta: dict | None = None) -> JoinResult:
    """Write an in-memory stamp set as a dataset directory (one part per image, then join)."""
    d = Path(dataset_dir)
    keys = []
    with dataset_lock(d, "write"):
        for (exposure, sensor), idx in table.groupby(["exposure", "sensor"], sort=True).indices.items():
            key = part_key(str(exposure), str(sensor))
            write_part(d, key, stamps[idx], table.iloc[idx].reset_index(drop=True))
            append_ledger(d, PartRecord(key, "done", len(idx)))
            keys.append(key)
        return join_parts(d, keys, meta or {})
