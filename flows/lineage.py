"""Lineage wiring: the sidecar gets the current Prefect flow run; ``rbflow lineage PATH``.

The hashes, the sidecar format and the walk back to the survey are in ``storage/lineage.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from storage.lineage import (SIDECAR, dataset_hash, format_tree, kind_of, lineage, model_id, model_parents, node,
                             problems, sha256_file, stage1_parents, validation_parents, write_sidecar_record)

__all__ = ["SIDECAR", "dataset_hash", "format_tree", "kind_of", "lineage", "model_id", "model_parents", "node",
           "problems", "run_info", "sha256_file", "stage1_parents", "validation_parents", "write_sidecar"]


def run_info() -> dict:
    """The current Prefect flow run (empty values outside a flow run)."""
    info = {"flow_run_id": "", "flow_run_name": "", "flow_name": "", "deployment_id": ""}
    try:
        from prefect import runtime
        info.update(flow_run_id=str(runtime.flow_run.id or ""), flow_run_name=runtime.flow_run.name or "",
                    flow_name=runtime.flow_run.flow_name or "", deployment_id=str(runtime.deployment.id or ""))
    except Exception:  # noqa: BLE001 - lineage never fails a run
        pass
    return info


def write_sidecar(directory: Path, kind: str, parents: dict, *, extra: dict | None = None,
                  overwrite: bool = True) -> Path | None:
    """``storage.lineage.write_sidecar_record`` with the current flow run."""
    return write_sidecar_record(directory, kind, parents, run_info(), extra=extra, overwrite=overwrite)


def add_command(sub) -> None:
    sp = sub.add_parser("lineage", help="Print the chain from an output (report, model, unlabel, dataset) back to the survey.",
                        description="Walk the recorded parents' hashes from PATH back to the survey config and check "
                        "each against the file as it is now. Exit status 1 when a parent is missing or changed.")
    sp.add_argument("path", help="A validation directory or report.md, model directory, stage-1 directory or "
                    "unlabel.parquet, dataset directory, or survey directory.")
    sp.add_argument("--json", action="store_true", help="Print the tree as JSON.")
    sp.set_defaults(handler=cmd_lineage)


def cmd_lineage(args: argparse.Namespace) -> int:
    tree = lineage(Path(args.path))
    if tree["kind"] == "missing":
        print(f"rbflow lineage: error: {tree.get('note')}", file=sys.stderr)
        return 2
    print(json.dumps(tree, indent=1, default=str) if args.json else format_tree(tree))
    bad = problems(tree)
    for b in bad:
        print(f"warning: {b}", file=sys.stderr)
    return 1 if bad else 0
