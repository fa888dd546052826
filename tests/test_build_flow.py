"""The build flow: Dask fan-out, same hash whatever the workers, resume after a crash, bad sensors."""

import json
import shutil

import pandas as pd
import pytest

from flows.options import BuildOptions
from storage.stampstore import read_ledger
from storage.survey import simulate_survey
from tasks.simulate import get_preset

NIGHT = "2026-01-05"


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    d = tmp_path_factory.mktemp("survey")
    cfg = get_preset("ci").model_copy(update={"n_sensors": 2})
    simulate_survey(cfg, NIGHT, 0, d)
    return d


def _build(survey, out, cluster="threads", workers=None, **kw):
    from flows.build import build_dataset
    from flows.runner import make_task_runner
    opts = BuildOptions(manifest=survey / "manifest.csv", night=NIGHT, out=out, cluster=cluster, workers=workers, **kw)
    return build_dataset.with_options(task_runner=make_task_runner(cluster, workers))(opts)


@pytest.fixture(scope="module")
def reference_build(survey, tmp_path_factory, prefect_harness):
    out = tmp_path_factory.mktemp("ref") / "ds"
    return out, _build(survey, out, cluster=None, workers=2)  # a real LocalCluster, 2 workers


def test_build_writes_the_contract(reference_build):
    out, summary = reference_build
    assert summary["done"] == summary["n_sensors"] == 8 and not summary["skipped"]
    table = pd.read_parquet(out / "stamps.parquet")
    import zarr
    arr = zarr.open_array(str(out / "stamps.zarr"), mode="r")
    assert arr.shape == (len(table), 3, 29, 29) and arr.dtype == "float32"
    for col in ("stamp_id", "night", "exposure", "sensor", "det_id", "x", "y", "ra", "dec", "mjd", "isdiffpos",
                "snr", "mag", "label", "true_class", "true_label", "injection_id", "host_offset", "flags"):
        assert col in table.columns, col
    assert table["stamp_id"].is_unique
    assert table["stamp_id"].str.startswith(NIGHT + "/").all()
    assert set(table["label"]) == {0, 1}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["content_hash"] == summary["content_hash"] and "EDGE" in meta["flags"]
    # the BLAS kernels the subtraction fits ran on: another kernel set gives another hash
    assert meta["environment"]["blas"] and meta["environment"]["cpu"]
    assert (out / "provenance.json").exists()


def test_the_ledger_records_each_tasks_wall_and_cpu_time(reference_build):
    """cpu_seconds (the task thread's CPU) beside seconds (its wall time): their gap is the time
    the task waited for a core, which the build benchmark reports apart from the work."""
    out, _ = reference_build
    led = read_ledger(out)
    assert len(led) == 8
    for e in led.values():
        assert e["status"] == "done"
        assert 0 < e["cpu_seconds"] <= e["seconds"] * 1.05 + 0.01, e


def test_one_worker_gives_the_same_hash_as_two(survey, reference_build, tmp_path):
    _, ref = reference_build
    one = _build(survey, tmp_path / "one", cluster=None, workers=1)
    assert one["content_hash"] == ref["content_hash"]


def test_the_build_without_prefect_and_dask_gives_the_same_hash(survey, reference_build, tmp_path):
    """The build benchmark's baseline runs the same storage.builds functions on a plain pool."""
    from tests.conftest import load_benchmark
    bench = load_benchmark("build")
    _, ref = reference_build
    plain = bench.plain_build(survey / "manifest.csv", tmp_path / "plain", NIGHT, workers=2, executor="thread")
    assert plain["content_hash"] == ref["content_hash"] and plain["done"] == 8 and not plain["skipped"]
    assert json.loads((tmp_path / "plain" / "provenance.json").read_text())["summary"]["n_stamps"] == ref["n_stamps"]


def test_the_build_on_dask_alone_gives_the_same_hash(survey, reference_build, tmp_path):
    """benchmarks/build_breakdown.py's middle case: run_sensor_job mapped on a LocalCluster."""
    from tests.conftest import load_benchmark
    bench = load_benchmark("build")
    _, ref = reference_build
    got = bench.plain_build(survey / "manifest.csv", tmp_path / "dask", NIGHT, workers=1, executor="dask")
    assert got["content_hash"] == ref["content_hash"] and got["done"] == 8 and not got["skipped"]


def test_interrupted_build_resumes_to_the_same_hash(survey, reference_build, tmp_path, monkeypatch):
    _, ref = reference_build
    out = tmp_path / "ds"
    monkeypatch.setenv("RBFLOW_FAULT_AFTER_PARTS", "3")
    with pytest.raises(Exception, match="after 3 complete parts"):
        _build(survey, out)
    monkeypatch.delenv("RBFLOW_FAULT_AFTER_PARTS")
    first = read_ledger(out)
    assert sum(e["status"] == "done" for e in first.values()) == 3
    assert not (out / "stamps.zarr").exists()  # nothing joined from a partial build
    again = _build(survey, out)
    assert again["content_hash"] == ref["content_hash"]
    lines = [json.loads(x) for x in (out / "ledger.jsonl").read_text().splitlines()]
    per_key = pd.Series([e["key"] for e in lines if e["status"] == "done"]).value_counts()
    assert (per_key == 1).all() and len(per_key) == 8  # finished sensors were not redone


def test_a_bad_sensor_is_skipped_and_recorded(survey, tmp_path):
    bad = tmp_path / "survey"
    shutil.copytree(survey, bad)
    man = pd.read_csv(bad / "manifest.csv", dtype=str)
    victim = bad / man.loc[2, "new"]
    victim.write_bytes(victim.read_bytes()[:5000])  # truncated FITS
    summary = _build(bad, tmp_path / "ds")
    assert summary["done"] == 7 and len(summary["skipped"]) == 1
    (key, reason), = summary["skipped"].items()
    assert str(victim) in reason and f"sensor {man.loc[2, 'sensor']}" in reason
    assert pd.read_parquet(tmp_path / "ds" / "stamps.parquet")["sensor"].notna().all()


def test_the_benchmark_sets_each_flow_run_against_the_plain_runs_beside_it():
    from tests.conftest import load_benchmark
    bench = load_benchmark("build")
    runs = [{"mode": m, "wall_s": w} for m, w in
            [("plain", 100.0), ("flow", 110.0), ("plain", 120.0), ("flow", 125.0), ("plain", 130.0)]]
    shares = bench.interleaved_shares(runs)
    assert shares == pytest.approx([1 - 110 / 110, 1 - 125 / 125])  # drift alone: no overhead
    runs[3]["wall_s"] = 131.25
    assert bench.interleaved_shares(runs)[1] == pytest.approx(1 - 125 / 131.25)
    with pytest.raises(ValueError, match="alternate plain, flow"):
        bench.interleaved_shares(runs[:4])
    for r, c in zip(runs, (10.0, 15.0, 12.0, 20.0, 14.0)):  # the CPU seconds use the same neighbours
        r["cpu_total_s"] = c
    assert bench.beside(runs, "cpu_total_s") == [(15.0, 11.0), (20.0, 13.0)]


def test_the_flow_validates_sensor_settings_without_importing_the_image_libraries(tmp_path):
    """flows.build.sensor_config_json runs in the flow's process before any task: it must not
    pull in photutils / scipy.signal / sep (tasks.sensor), ~2.5 s of CPU per build; and the
    settings it gives, file or defaults, are those of tasks.sensor.SensorConfig."""
    import subprocess
    import sys
    cfg = tmp_path / "sensor.yaml"
    cfg.write_text("psf:\n  oversampling: 2\ndetect:\n  thresh: 4.0\n")
    code = ("import json, sys\nfrom flows.build import sensor_config_json\n"
            f"out = [sensor_config_json(None), sensor_config_json({str(cfg)!r})]\n"
            "heavy = [m for m in ('tasks.sensor', 'tasks.psf', 'photutils', 'scipy.signal', 'sep') if m in sys.modules]\n"
            "print(json.dumps({'heavy': heavy, 'out': out}))")
    res = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                     .stdout.strip().splitlines()[-1])
    assert res["heavy"] == []
    from tasks.sensor import SensorConfig
    assert res["out"][0] == SensorConfig().model_dump_json()
    want = SensorConfig.model_validate({"psf": {"oversampling": 2}, "detect": {"thresh": 4.0}})
    assert res["out"][1] == want.model_dump_json()
