"""The I/O edge of validation: read a dataset directory and a TNS export, score with an
exported model, write the validation directory. The core, :func:`tasks.validation.validate`,
works in memory; ``flows/validate.py`` wraps :func:`validate_dirs` as a cached Prefect task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from models.scoring import score_dataset
from storage.stampstore import open_dataset
from storage.tns import read_tns
from tasks.report import write_report
from tasks.validation import ValidationOptions, metrics_json, validate


@dataclass(frozen=True)
class ValidationRun:
    """What a validation wrote: metrics.json's content and the files of the directory."""

    metrics: dict
    paths: tuple[str, ...]


def efficiency_table(model_dir: str | Path, dataset_dir: str | Path) -> pd.DataFrame:
    """One row per injected source of an injected night: mag, host offset, detected, score."""
    view = open_dataset(Path(dataset_dir))
    inj = pd.read_parquet(view.version_dir / "injections.parquet")
    det = view.table()
    det["score"] = score_dataset(model_dir, dataset_dir)
    det = det[det["injection_id"].notna()].sort_values("score", ascending=False).drop_duplicates("injection_id")
    out = inj.merge(det[["injection_id", "score"]], on="injection_id", how="left")
    out["detected"] = out["score"].notna()
    if "host_offset" not in out and "host_offset_arcsec" in out:
        out["host_offset"] = out["host_offset_arcsec"]
    return out


def validate_dirs(model_dir: str | Path, dataset_dir: str | Path, tns_path: str | Path, out: str | Path,
                  options: ValidationOptions, efficiency_dir: str | Path | None = None) -> ValidationRun:
    """Score the night, crossmatch with TNS, compute the metrics and write ``out``
    (metrics.json, report.md, curves, scores.parquet)."""
    view = open_dataset(Path(dataset_dir))
    table = view.table()
    scores = score_dataset(model_dir, dataset_dir)
    tns = read_tns(tns_path)
    inj = efficiency_table(model_dir, efficiency_dir) if efficiency_dir else None
    result = validate(table, scores, tns.objects, options, injections=inj)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"Inputs": (f"- model: `{model_dir}`\n- dataset: `{dataset_dir}` "
                        f"(content hash {view.meta.get('content_hash', '')[:12]}, {len(table)} detections)\n"
                        f"- TNS: `{tns_path}` ({len(tns)} objects, {len(tns.rejected)} malformed rows skipped)")}
    paths = write_report(result, out, title=f"Validation of {Path(model_dir).name} on {Path(dataset_dir).name}",
                         extra_sections=extra)
    pd.DataFrame({"stamp_id": table["stamp_id"], "score": scores}).to_parquet(out / "scores.parquet", index=False)
    return ValidationRun(metrics_json(result), tuple(str(p) for p in paths))
