"""Lineage: from a validation report back to the survey config, with every hash checked."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows import cli
from flows.lineage import (format_tree, lineage, model_parents, problems, sha256_file, stage1_parents,
                           validation_parents, write_sidecar)


@pytest.fixture()
def chain(tmp_path):
    """A minimal chain of outputs with the metadata the flows write."""
    survey = tmp_path / "survey"
    survey.mkdir()
    (survey / "manifest.csv").write_text("exposure,sensor,new,ref\n1,0,a.fits,b.fits\n")
    (survey / "survey.json").write_text('{"preset": "ci"}')
    (survey / "tns.csv").write_text("Name,RA,DEC\n")

    def dataset(name, h):
        d = tmp_path / name
        (d / "versions" / h[:12]).mkdir(parents=True)
        (d / "current").symlink_to(f"versions/{h[:12]}")
        meta = {"content_hash": h, "night": "2026-01-05",
                "parents": {"manifest": str(survey / "manifest.csv"),
                            "manifest_sha256": sha256_file(survey / "manifest.csv"),
                            "survey_json_sha256": sha256_file(survey / "survey.json")}}
        (d / "versions" / h[:12] / "dataset.json").write_text(json.dumps(meta))
        (d / "dataset.json").symlink_to("current/dataset.json")
        write_sidecar(d, "dataset", meta["parents"])
        return d

    ds, val = dataset("dataset", "a" * 64), dataset("valnight", "b" * 64)
    s1 = tmp_path / "stage1"
    s1.mkdir()
    parents = stage1_parents([ds])
    t = pa.Table.from_pandas(pd.DataFrame({"stamp_id": ["x"], "label": [1]}))
    t = t.replace_schema_metadata({b"rbflow.stage1": json.dumps({"dataset_hashes": parents["datasets"]}).encode()})
    pq.write_table(t, s1 / "unlabel.parquet")
    write_sidecar(s1, "unlabel", parents)
    m = tmp_path / "model"
    m.mkdir()
    (m / "weights.pt").write_bytes(b"weights")
    mp = model_parents([ds], s1 / "unlabel.parquet")
    (m / "model.json").write_text(json.dumps({"datasets": mp["datasets"], "unlabel": mp["unlabel"]}))
    write_sidecar(m, "model", mp, overwrite=False)
    r = tmp_path / "validation"
    r.mkdir()
    (r / "metrics.json").write_text('{"auc": 0.9}')
    (r / "report.md").write_text("# report\n")
    write_sidecar(r, "validation", validation_parents(m, val, survey / "tns.csv"))
    return tmp_path


def _kinds(tree, out=None):
    out = [] if out is None else out
    out.append((tree["kind"], tree.get("status")))
    for c in tree["parents"]:
        _kinds(c, out)
    return out


def test_report_traces_back_to_the_survey_config(chain):
    tree = lineage(chain / "validation" / "report.md")
    kinds = [k for k, _ in _kinds(tree)]
    assert kinds[0] == "validation"
    assert kinds.count("survey") >= 2 and "model" in kinds and "unlabel" in kinds and "tns" in kinds
    assert not problems(tree)
    assert all(st in ("-", "ok") for _, st in _kinds(tree)), _kinds(tree)
    text = format_tree(tree)
    assert "survey.json" in text and "(see above)" in text  # the training dataset appears twice


def test_a_changed_parent_is_reported(chain, capsys):
    (chain / "model" / "weights.pt").write_bytes(b"other weights")
    (chain / "stage1" / "unlabel.parquet").unlink()
    rc = cli.main(["lineage", str(chain / "validation")])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "CHANGED (recorded" in out and "MISSING" in out
    assert "model" in err and "unlabel" in err


def test_sidecars_record_the_run_and_model_sidecars_are_write_once(chain):
    side = json.loads((chain / "model" / "provenance.json").read_text())
    assert side["kind"] == "model" and "flow_run_id" in side and side["parents"]["unlabel"]["sha256"]
    assert write_sidecar(chain / "model", "model", {}, overwrite=False) is None
    assert json.loads((chain / "model" / "provenance.json").read_text()) == side


def test_not_an_output_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["lineage", str(tmp_path)]) == 2
    assert "not an rbflow output" in capsys.readouterr().err
