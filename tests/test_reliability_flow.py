"""The build flow under bad input, faults and concurrency (issue 13, items 1-4), on tiny
simulated surveys (192x192 px sensors) so that each build takes seconds.

Faults come from test hooks in ``storage`` (environment variables that reach Dask worker
processes), never from sleeps or mocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from flows.options import BuildOptions
from storage.stampstore import StoreError, open_dataset, read_ledger
from tests.test_reliability_inputs import NIGHT, make_tiny_survey

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parent.parent


def _build(manifest: Path, out: Path, cluster: str | None = "threads", workers: int | None = None, **kw) -> dict:
    from flows.build import build_dataset
    from flows.runner import make_task_runner
    opts = BuildOptions(manifest=manifest, night=NIGHT, out=out, cluster=cluster, workers=workers, **kw)
    return build_dataset.with_options(task_runner=make_task_runner(cluster, workers))(opts)


def _ledger_lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "ledger.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> Path:
    """2 sensors x 2 visits = 4 sensor images."""
    return make_tiny_survey(tmp_path_factory.mktemp("rel-survey"), n_sensors=2)


@pytest.fixture(scope="module")
def reference(survey, tmp_path_factory, prefect_harness) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rel-ref") / "ds"
    return out, _build(survey / "manifest.csv", out)


# ------------------------------------------------------------------ 1. bad sensors in a build
def test_bad_sensors_are_skipped_and_listed(tmp_path, prefect_harness):
    from flows.build import format_summary
    src = make_tiny_survey(tmp_path / "good", n_sensors=4)  # 8 sensor images
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    man = pd.read_csv(bad / "manifest.csv", dtype=str)
    rows = {(r.exposure, r.sensor): r for r in man.itertuples()}
    e0, e1 = sorted(man["exposure"].unique())
    key = lambda e, s: f"{e}__{s}"  # noqa: E731
    # s00: visit 0 truncated, visit 1 all NaN; s01: its catalogue lacks a column (both visits);
    # s02 visit 1: the file the manifest names is missing. s02 visit 0 and s03 are fine.
    trunc = bad / rows[(e0, "00")].new
    trunc.write_bytes(trunc.read_bytes()[:9000])
    nan = bad / rows[(e1, "00")].new
    with fits.open(nan) as h:
        fits.PrimaryHDU(np.full(h[0].data.shape, np.nan, np.float32), h[0].header).writeto(nan, overwrite=True)
    cat = bad / rows[(e0, "01")].catalog
    pd.read_parquet(cat).drop(columns=["extended"]).to_parquet(cat)
    gone = bad / rows[(e1, "02")].new
    gone.unlink()
    expected = {
        key(e0, "00"): (trunc, "new image: truncated"),
        key(e1, "00"): (nan, "new image: every pixel is NaN or infinite"),
        key(e0, "01"): (cat, "catalogue: catalogue lacks columns ['extended']"),
        key(e1, "01"): (cat, "catalogue: catalogue lacks columns ['extended']"),
        key(e1, "02"): (gone, "new image: no such FITS file"),
    }
    out = tmp_path / "ds"
    summary = _build(bad / "manifest.csv", out)

    assert summary["n_sensors"] == 8 and summary["done"] == 3
    assert set(summary["skipped"]) == set(expected)
    for k, (path, problem) in expected.items():
        e, s = k.split("__")
        reason = summary["skipped"][k]
        assert reason.startswith(f"{path}: exposure {e} sensor {s}: {problem}"), reason
    # the rest completed: exactly the good sensors are in the dataset
    table = pd.read_parquet(out / "stamps.parquet")
    assert set(zip(table["exposure"], table["sensor"])) == {(e0, "02"), (e0, "03"), (e1, "03")}
    assert table["stamp_id"].is_unique and len(table) == summary["n_stamps"] > 0
    # ... and the skipped ones are listed in the summary, dataset.json and provenance.json
    assert json.loads((out / "dataset.json").read_text())["sensors"]["skipped"] == summary["skipped"]
    assert json.loads((out / "provenance.json").read_text())["summary"]["skipped"] == summary["skipped"]
    text = format_summary(summary)
    assert "3/8 done, 5 skipped" in text
    assert all(f"skipped {k}: {v}" in text for k, v in summary["skipped"].items())

    # repair one input and rerun: only the skipped sensors are tried again
    shutil.copy(src / rows[(e0, "00")].new, trunc)
    again = _build(bad / "manifest.csv", out)
    assert again["done"] == 4 and set(again["skipped"]) == set(expected) - {key(e0, "00")}
    done_lines = pd.Series([x["key"] for x in _ledger_lines(out) if x["status"] == "done"]).value_counts()
    assert (done_lines == 1).all() and len(done_lines) == 4  # good sensors were not redone


# ------------------------------------------------------------------ 1. config refused before work
def test_bad_options_and_config_are_refused_before_any_work(survey, tmp_path, capsys, prefect_harness):
    from flows import cli
    out = tmp_path / "ds"
    rc = cli.main(["build", "--manifest", str(survey / "manifest.csv"), "--out", str(out), "--max-sensors", "0"])
    assert rc == 2 and "--max-sensors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # an unknown option: argparse refuses it
        cli.main(["build", "--preset", "ci", "--out", str(out), "--colour", "red"])
    assert exit_.value.code == 2 and "unrecognized arguments: --colour red" in capsys.readouterr().err
    cfg = tmp_path / "sensor.yaml"
    cfg.write_text("detect:\n  thresh_sigma: 5\n  no_such_key: 1\n")
    rc = cli.main(["build", "--preset", "ci", "--config", str(cfg), "--out", str(out), "--cluster", "threads"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{cfg}: invalid sensor config (" in err and "detect.no_such_key" in err
    assert not out.exists()  # not even the survey was simulated


# ------------------------------------------------------------------ 2. faults
def test_lost_dask_worker_is_retried_and_the_build_finishes(survey, reference, tmp_path, monkeypatch):
    """RBFLOW_FAULT_KILL_WORKER: the first attempt of one sensor kills its worker process."""
    _, ref = reference
    manifest = survey / "manifest.csv"
    from storage.sensor_io import jobs_from_manifest
    victim = jobs_from_manifest(manifest, tmp_path, night=NIGHT, inject=True, seed=0, tns=None,
                                config_json="{}")[1].key
    marker = tmp_path / "killed.pid"
    monkeypatch.setenv("RBFLOW_FAULT_KILL_WORKER", f"{victim}:{marker}")
    out = tmp_path / "ds"
    summary = _build(manifest, out, cluster=None, workers=1)  # a real LocalCluster
    pid = int(marker.read_text())  # the first attempt ran in this worker process...
    assert pid != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ... which is gone
    assert summary["done"] == summary["n_sensors"] == 4 and not summary["skipped"]
    assert read_ledger(out)[victim]["status"] == "done"
    assert summary["content_hash"] == ref["content_hash"]  # nothing lost, nothing doubled


def test_disk_full_is_a_clear_error_and_the_store_stays_readable(survey, reference, tmp_path, monkeypatch):
    ref_out, ref = reference
    out = tmp_path / "ds"
    shutil.copytree(ref_out, out, symlinks=True)
    before = open_dataset(out).table()
    cases = [  # a part write fails; then the join of a changed dataset (seed 1) fails
        ("RBFLOW_FAULT_PART_ENOSPC", 0, rf"{out}/parts/\S+: could not write the part \(\[Errno 28\] No space left"),
        ("RBFLOW_FAULT_JOIN_WRITE", 1, rf"{out}: could not write the new version \(\[Errno 28\] No space left on "
                                       r"device.*\); the previous store is intact"),
    ]
    for hook, seed, message in cases:
        monkeypatch.setenv(hook, "1")
        with pytest.raises(StoreError, match=message):
            _build(survey / "manifest.csv", out, force=True, seed=seed)
        monkeypatch.delenv(hook)
        view = open_dataset(out)
        assert view.meta["content_hash"] == ref["content_hash"]
        pd.testing.assert_frame_equal(view.table(), before)
        assert view.stamps().shape[0] == len(before)
        assert not [p for d in ("parts", "versions") for p in (out / d).iterdir() if p.name.startswith(".tmp-")]
        assert all(e["status"] != "failed" for e in read_ledger(out).values())  # not blamed on sensors


def test_unanswering_prefect_server_is_a_clear_error(survey, tmp_path, monkeypatch, capsys):
    from flows import cli
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    out = tmp_path / "ds"
    rc = cli.main(["build", "--manifest", str(survey / "manifest.csv"), "--out", str(out), "--cluster", "threads"])
    err = capsys.readouterr().err
    assert rc == 1 and f"the configured Prefect server at {url} does not answer" in err
    assert not out.exists()


# ------------------------------------------------------------------ 3. concurrency
def test_second_build_into_one_directory_is_refused(survey, reference, tmp_path):
    """Another process holds the dataset lock (as a running build does): this build writes nothing."""
    _, ref = reference
    out = tmp_path / "ds"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom storage.stampstore import dataset_lock\n"
         "with dataset_lock(sys.argv[1], 'build'):\n    print('held', flush=True)\n    sys.stdin.read()\n",
         str(out)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=rf"{out} is locked by another build \(pid {holder.pid} on "):
            _build(survey / "manifest.csv", out)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing interleaved
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert _build(survey / "manifest.csv", out)["content_hash"] == ref["content_hash"]  # lock released


# ------------------------------------------------------------------ 4. determinism
def _sha(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_same_config_seed_and_night_give_the_same_hashes(reference, tmp_path):
    """A survey simulated again elsewhere and built again: same content_hash; stage 1 on CPU
    twice: the same out-of-fold probabilities (compared by hash)."""
    ref_out, ref = reference
    again = make_tiny_survey(tmp_path / "survey", n_sensors=2)
    other = _build(again / "manifest.csv", tmp_path / "ds")
    assert other["content_hash"] == ref["content_hash"]
    assert (tmp_path / "ds" / "stamps.parquet").read_bytes() == (ref_out / "stamps.parquet").read_bytes()

    from flows.options import Stage1Options
    from flows.train import stage1
    hashes = []
    for name in ("s1a", "s1b"):
        stage1(Stage1Options(dataset=[ref_out], out=tmp_path / name, folds=2, epochs=1, batch_size=32, patience=1,
                             network="simple", seed=0, device="cpu", gallery=0))
        un = pd.read_parquet(tmp_path / name / "unlabel.parquet").sort_values("stamp_id")
        hashes.append(_sha(un["stamp_id"].to_numpy(str), un["oof_prob"].to_numpy(np.float64), un["fold"].to_numpy()))
    assert hashes[0] == hashes[1]
