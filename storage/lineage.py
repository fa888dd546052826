"""Lineage: every output records its parents' content hashes and the flow run that wrote it.

The hashes live in the outputs' own metadata (``dataset.json`` parents, the unlabel
Parquet metadata, ``model.json`` datasets/unlabel); the flow run lives in a sidecar,
``provenance.json``, beside them (run ids and times never enter a content hash).

Identity of each kind of output (what its children record):

| kind | directory holds | identity |
|---|---|---|
| survey | ``survey.json``, ``manifest.csv`` | sha256 of ``manifest.csv`` (and of ``survey.json``, the survey config) |
| dataset | ``dataset.json`` (via ``current/``) | its ``content_hash`` |
| unlabel | ``unlabel.parquet`` | sha256 of the file |
| model | ``model.json``, ``weights.pt`` | sha256 of ``weights.pt`` |
| validation | ``metrics.json``, ``report.md`` | sha256 of ``metrics.json`` |

No Prefect here: ``flows/lineage.py`` adds the flow run to the sidecar and the
``rbflow lineage`` command. ``rbflow lineage PATH`` walks from any of them back to the survey config and checks each
recorded hash against the file as it is now.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

SIDECAR = "provenance.json"


def sha256_file(path: Path | str | None) -> str | None:
    """sha256 of a file (storage.stampstore.sha256_file), None when it is absent."""
    from storage.stampstore import sha256_file as _sha256_file
    if path is None or not Path(path).is_file():
        return None
    return _sha256_file(Path(path))


def write_sidecar_record(directory: Path, kind: str, parents: dict, run: dict, *, extra: dict | None = None,
                         overwrite: bool = True) -> Path | None:
    """Write ``directory/provenance.json`` (atomically): kind, the run (``run``: flow run id,
    name, flow, deployment), parents' hashes.

    ``overwrite=False`` is for model directories (written once, never modified): the
    sidecar is added by the run that wrote the model and never replaced.
    """
    d = Path(directory)
    path = d / SIDECAR
    if not overwrite and path.exists():
        return None
    rec = {"kind": kind, **run, "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(),
           "host": socket.gethostname(), "parents": parents, **(extra or {})}
    tmp = d / f".{SIDECAR}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(rec, indent=1, default=str))
    os.replace(tmp, path)
    return path


def model_id(model_dir: Path) -> str | None:
    """A model's identity: sha256 of its weights.pt."""
    return sha256_file(Path(model_dir) / "weights.pt")


def dataset_hash(dataset_dir: Path) -> str | None:
    meta = _dataset_meta(Path(dataset_dir))
    return meta.get("content_hash") if meta else None


def stage1_parents(dataset_dirs: list) -> dict:
    return {"datasets": {str(Path(d).resolve()): dataset_hash(Path(d)) for d in dataset_dirs}}


def model_parents(dataset_dirs: list, unlabel: Path) -> dict:
    return {"datasets": {str(Path(d).resolve()): dataset_hash(Path(d)) for d in dataset_dirs},
            "unlabel": {"path": str(Path(unlabel).resolve()), "sha256": sha256_file(unlabel)}}


def validation_parents(model: Path, dataset: Path, tns: Path, operating_point: Path | None = None,
                       efficiency: Path | None = None) -> dict:
    p = {"model": {"path": str(Path(model).resolve()), "sha256": model_id(model)},
         "dataset": {"path": str(Path(dataset).resolve()), "content_hash": dataset_hash(dataset)},
         "tns": {"path": str(Path(tns).resolve()), "sha256": sha256_file(tns)}}
    if operating_point:
        p["operating_point"] = {"path": str(Path(operating_point).resolve()), "sha256": sha256_file(operating_point)}
    if efficiency:
        p["efficiency"] = {"path": str(Path(efficiency).resolve()), "content_hash": dataset_hash(efficiency)}
    return p


# ------------------------------------------------------------------------------ reading
def _dataset_meta(d: Path) -> dict | None:
    for p in (d / "current" / "dataset.json", d / "dataset.json"):
        if p.is_file():
            return json.loads(p.read_text())
    return None


def _sidecar(d: Path) -> dict:
    p = d / SIDECAR
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _unlabel_meta(path: Path) -> dict:
    import pyarrow.parquet as pq
    md = pq.read_schema(path).metadata or {}
    raw = md.get(b"rbflow.stage1")
    return json.loads(raw) if raw else {}


def kind_of(path: Path) -> tuple[str, Path]:
    """(kind, the directory or file that identifies it) for any output path or file in it."""
    p = Path(path)
    if p.is_file():
        name = p.name
        if name == "unlabel.parquet":
            return "unlabel", p
        if name == "manifest.csv" or name == "survey.json":
            return "survey", p.parent
        if name in ("report.md", "metrics.json", "operating_point.json") or name.endswith(".png"):
            if (p.parent / "metrics.json").exists():
                return "validation", p.parent
        p = p.parent
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if (p / "metrics.json").is_file():
        return "validation", p
    if (p / "model.json").is_file():
        return "model", p
    if (p / "unlabel.parquet").is_file():
        return "unlabel", p / "unlabel.parquet"
    if _dataset_meta(p) is not None:
        return "dataset", p
    if (p / "manifest.csv").is_file():
        return "survey", p
    if (p.parent / "manifest.csv").is_file() and p.name in ("images", "truth"):
        return "survey", p.parent
    raise ValueError(f"{path}: not an rbflow output (no metrics.json, model.json, unlabel.parquet, "
                     "dataset.json or manifest.csv)")


def _check(recorded: str | None, now: str | None) -> str:
    if now is None:
        return "MISSING"
    if not recorded:
        return "unrecorded"
    return "ok" if recorded == now else f"CHANGED (recorded {recorded[:12]}, now {now[:12]})"


def node(path: Path, recorded: str | None = None, _seen: set | None = None) -> dict:
    """The lineage tree of ``path``: {kind, path, id, run, status, parents: [...]}."""
    seen = _seen if _seen is not None else set()
    try:
        kind, p = kind_of(path)
    except (FileNotFoundError, ValueError) as e:
        return {"kind": "missing", "path": str(path), "id": None, "status": "MISSING", "note": str(e), "parents": []}
    key = str(Path(p).resolve())
    n: dict = {"kind": kind, "path": str(p), "id": None, "run": {}, "parents": []}
    parents: list[tuple[str | Path, str | None]] = []
    if kind == "survey":
        n["id"] = sha256_file(p / "manifest.csv")
        n["config"] = {"survey.json": sha256_file(p / "survey.json")}
    elif kind == "dataset":
        meta = _dataset_meta(p) or {}
        n["id"] = meta.get("content_hash")
        n["run"] = _sidecar(p)
        par = meta.get("parents", {})
        if par.get("manifest"):
            parents.append((Path(par["manifest"]), par.get("manifest_sha256")))
        n["night"] = meta.get("night")
    elif kind == "unlabel":
        n["id"] = sha256_file(p)
        n["run"] = _sidecar(p.parent)
        for d, h in (_unlabel_meta(p).get("dataset_hashes") or {}).items():
            parents.append((Path(d), h))
    elif kind == "model":
        meta = json.loads((p / "model.json").read_text())
        n["id"] = model_id(p)
        n["run"] = _sidecar(p)
        for d, h in (meta.get("datasets") or {}).items():
            parents.append((Path(d), h))
        un = meta.get("unlabel") or {}
        if un.get("path"):
            parents.append((Path(un["path"]), un.get("sha256")))
    elif kind == "validation":
        n["id"] = sha256_file(p / "metrics.json")
        side = _sidecar(p)
        n["run"] = side
        par = side.get("parents", {})
        for name in ("model", "dataset", "efficiency"):
            if par.get(name):
                parents.append((Path(par[name]["path"]), par[name].get("sha256") or par[name].get("content_hash")))
        for name in ("tns", "operating_point"):
            if par.get(name):
                f = Path(par[name]["path"])
                n["parents"].append({"kind": name, "path": str(f), "id": sha256_file(f),
                                     "status": _check(par[name].get("sha256"), sha256_file(f)), "parents": []})
        if not side:
            n["note"] = f"no {SIDECAR}: parents unknown"
    n["status"] = _check(recorded, n["id"]) if recorded is not None else "-"
    if key in seen:
        n["seen"] = True
        return n
    seen.add(key)
    n["parents"] = [node(pp, h, seen) for pp, h in parents] + n["parents"]
    return n


def lineage(path: Path) -> dict:
    return node(Path(path))


def _fmt(n: dict) -> str:
    ident = (n.get("id") or "?")[:12]
    bits = [f"{n['kind']:<10} {n['path']}", f"id {ident}"]
    if n.get("night"):
        bits.append(f"night {n['night']}")
    if n.get("config"):
        bits.append("config " + ", ".join(f"{k} {(v or '?')[:12]}" for k, v in n["config"].items()))
    run = n.get("run") or {}
    if run.get("flow_run_id"):
        name = run.get("flow_name") or run.get("flow_run_name")
        bits.append(f"run {run['flow_run_id']}" + (f" ({name})" if name else ""))
    if n.get("status") not in (None, "-"):
        bits.append(f"[{n['status']}]")
    if n.get("seen"):
        bits.append("(see above)")
    if n.get("note"):
        bits.append(f"-- {n['note']}")
    return "  ".join(bits)


def format_tree(tree: dict) -> str:
    lines = [_fmt(tree)]

    def walk(n: dict, prefix: str) -> None:
        kids = [] if n.get("seen") else n.get("parents", [])
        for i, c in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(prefix + ("└── " if last else "├── ") + _fmt(c))
            walk(c, prefix + ("    " if last else "│   "))

    walk(tree, "")
    return "\n".join(lines)


def problems(tree: dict) -> list[str]:
    out = []

    def walk(n: dict) -> None:
        st = n.get("status") or ""
        if st == "MISSING" or st.startswith("CHANGED"):
            out.append(f"{n['kind']} {n['path']}: {st}")
        for c in n.get("parents", []):
            walk(c)

    walk(tree)
    return out
