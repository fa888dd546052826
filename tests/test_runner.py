"""The task runner is chosen at the entry point from a YAML cluster spec."""

from pathlib import Path

import pytest

from flows.runner import load_cluster_spec, make_task_runner


def test_default_spec_sets_the_workers_malloc():
    from flows.runner import worker_environ
    spec = load_cluster_spec(None)
    assert spec["cluster_class"].endswith("LocalCluster")
    assert spec["cluster_kwargs"]["host"] == "127.0.0.1"
    # Dask's defaults in a worker thread: 3.2 s per tomoe image; with these 2.3 s (local.yaml)
    env = worker_environ(None)
    assert env["MALLOC_ARENA_MAX"] == "1" and env["MALLOC_MMAP_THRESHOLD_"] == str(32 * 2 ** 20)
    assert int(env["MALLOC_TRIM_THRESHOLD_"]) >= 2 ** 30


def test_spec_forms_and_errors(tmp_path):
    assert load_cluster_spec("tcp://127.0.0.1:8786") == {"address": "tcp://127.0.0.1:8786"}
    assert load_cluster_spec("threads") == {"threads": True}
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_cluster_spec(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_class: distributed.LocalCluster\nworkerz: 3\n")
    with pytest.raises(ValueError, match="unknown keys.*workerz"):
        load_cluster_spec(str(bad))
    good = tmp_path / "good.yaml"
    good.write_text("cluster_class: distributed.LocalCluster\ncluster_kwargs: {n_workers: 1}\n"
                    "dask_config: {distributed.scheduler.work-stealing: false}\n")
    runner = make_task_runner(str(good), workers=3)
    assert runner.cluster_kwargs["n_workers"] == 3
    import dask
    assert dask.config.get("distributed.scheduler.work-stealing") is False
    dask.config.set({"distributed.scheduler.work-stealing": True})


def test_plain_http_api_gets_the_small_ca_file_and_tls_is_left_alone(tmp_path, monkeypatch):
    import ssl

    from prefect.settings import PREFECT_API_SSL_CERT_FILE

    from flows.settings import _http_only, plain_http_ca_file
    monkeypatch.setenv("RBFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_SSL_CERT_FILE", raising=False)
    ca = plain_http_ca_file()
    assert ca.read_text().count("BEGIN CERTIFICATE") == 1
    ssl.create_default_context(cafile=str(ca))  # a valid CA file
    with _http_only("http://127.0.0.1:4200/api") as extra:
        assert extra == {PREFECT_API_SSL_CERT_FILE: str(ca)}
        import os
        assert os.environ["PREFECT_API_SSL_CERT_FILE"] == str(ca)  # Dask workers inherit it
    assert "PREFECT_API_SSL_CERT_FILE" not in __import__("os").environ  # removed after the session
    with _http_only("https://prefect.example.org/api") as extra:
        assert extra == {}  # TLS in play: Prefect's own CA bundle
    monkeypatch.setenv("PREFECT_API_SSL_CERT_FILE", str(tmp_path / "users-own.pem"))
    with _http_only("https://prefect.example.org/api") as extra:
        assert extra == {}
    with _http_only("http://127.0.0.1:4200/api") as extra:  # over http no CA file is used at all
        assert extra == {PREFECT_API_SSL_CERT_FILE: str(ca)}
    assert __import__("os").environ["PREFECT_API_SSL_CERT_FILE"] == str(tmp_path / "users-own.pem")  # restored


def test_shipped_settings_are_the_flows_settings_and_follow_a_change():
    import pickle

    from prefect.context import SettingsContext, hydrated_context
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, get_current_settings, temporary_settings

    from flows.dask_runner import DaskTaskRunner
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 1})
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 7}):
        current = SettingsContext.get()
        shipped = runner._stand_in(current)
        assert runner._stand_in(SettingsContext.get()) is shipped  # made once per settings context
        payload = pickle.loads(pickle.dumps(shipped.serialize()))  # what a worker receives
        prefects = SettingsContext.serialize(current)  # Prefect's own dump, rebuilt by its workers
        assert payload["profile"] == prefects["profile"]
        assert payload["settings"] == SettingsContext(**prefects).settings == current.settings
        assert shipped.serialize(include_secrets=False) == current.serialize(include_secrets=False)
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 3}):
        assert runner._stand_in(SettingsContext.get()) is not shipped  # new settings: a new stand-in
    with hydrated_context({"settings_context": payload}):
        assert get_current_settings().client.max_retries == 7
    state = pickle.loads(pickle.dumps(runner)).__dict__
    assert state["_shipped"] is None  # the contexts do not travel with the flow's runner


def _worker_view(x: int) -> dict:
    import os

    import dask
    from prefect.settings import get_current_settings
    return {"x": x, "max_retries": get_current_settings().client.max_retries,
            "profile_enabled": dask.config.get("distributed.worker.profile.enabled"),
            "arena": os.environ.get("MALLOC_ARENA_MAX")}


def test_a_dask_task_sees_the_flows_settings_and_the_specs_worker_config(prefect_harness):
    from prefect import flow, task
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    view = task(_worker_view, name="worker-view")

    @flow
    def probe() -> list[dict]:
        futures = [view.submit(i) for i in range(3)]
        return [f.result() for f in futures]

    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 7}):  # not in the worker's environment
        got = probe.with_options(task_runner=make_task_runner(None, workers=1))()
    assert [g["x"] for g in got] == [0, 1, 2]
    assert all(g["max_retries"] == 7 for g in got)  # the flow's settings reached the worker
    # local.yaml's worker settings: Dask's profiler off, glibc malloc's single arena
    assert all(g["profile_enabled"] is False and g["arena"] == "1" for g in got)


def test_fallback_spec_matches_local_yaml():
    import yaml

    from flows.runner import FALLBACK_SPEC, REPO_DEFAULT
    assert yaml.safe_load(REPO_DEFAULT.read_text())["dask_config"] == FALLBACK_SPEC["dask_config"]


def _plant_exit_probes(directory: str) -> int:
    """In a worker: an atexit handler and an object whose __del__ runs only at finalization."""
    import atexit
    import os
    import sys
    from pathlib import Path

    class _Finalized:
        def __del__(self):
            Path(directory, f"finalized-{os.getpid()}").write_text("x")

    sys.modules[__name__]._probe = _Finalized()  # alive until the interpreter tears down
    atexit.register(lambda: Path(directory, f"atexit-{os.getpid()}").write_text("x"))
    return os.getpid()


@pytest.mark.parametrize("preload", [True, False])
def test_a_closed_worker_runs_its_exit_handlers_and_skips_finalization(tmp_path, preload):
    # flows/dask_worker.py (local.yaml's preload): the cluster's close waited 0.6 s per worker
    # for Python to free Prefect's modules; exit handlers (Prefect's drains, logging) still run
    import dask
    import distributed
    load_cluster_spec(None)
    with dask.config.set({"distributed.worker.preload": ["flows.dask_worker"] if preload else []}):
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as client:
            pid = next(iter(client.run(_plant_exit_probes, str(tmp_path)).values()))
            proc = next(iter(cluster.workers.values())).process.process
    assert (tmp_path / f"atexit-{pid}").exists()  # every atexit handler ran
    assert (tmp_path / f"finalized-{pid}").exists() is not preload  # finalization skipped only with the preload
    assert proc.exitcode == 0


def test_a_cli_run_sends_its_last_log_lines_before_the_temporary_server_stops(tmp_path):
    # without a configured server, rbflow starts one temporary server for the run and stops it at
    # the end; the run's last log lines must reach it first, not fail at exit ("Error logging to API")
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_LOGGING_LEVEL="INFO", RBFLOW_NO_PROGRESS="1",
               DO_NOT_TRACK="1")  # INFO: the level the CLI runs at, with log lines left to send at the end
    r = subprocess.run([sys.executable, "-m", "flows.cli", "simulate", "--preset", "ci", "--max-sensors", "1",
                        "--out", str(tmp_path / "survey"), "--cluster", "threads"], env=env, capture_output=True,
                       text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "survey" / "manifest.csv").is_file()
    assert "Error logging to API" not in r.stdout + r.stderr
    assert "could not send the last log lines" not in r.stderr


_WAITING_FLOW = """
import time
import psutil
from prefect import flow
from flows.settings import configure_environment, prefect_session
configure_environment()

@flow
def waits():
    kids = psutil.Process().children(recursive=True)
    print("CHILDREN", *[p.pid for p in kids], flush=True)
    time.sleep(300)

with prefect_session():
    waits()
"""


def test_a_sigterm_mid_run_stops_the_temporary_server_it_started(tmp_path):
    # Python's default SIGTERM ends the process without its finally blocks, which left the run's
    # temporary Prefect server (a uvicorn child) running after `kill PID` or a scheduler's limit
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    psutil = pytest.importorskip("psutil")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), DO_NOT_TRACK="1")
    p = subprocess.Popen([sys.executable, "-c", _WAITING_FLOW], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        for line in p.stdout:
            if line.startswith("CHILDREN"):
                kids = [psutil.Process(int(x)) for x in line.split()[1:]]
                break
        else:
            pytest.fail(f"the flow never ran (exit code {p.wait(30)})")
        assert kids, "no temporary server was started"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 128 + signal.SIGTERM
        gone, alive = psutil.wait_procs(kids, timeout=15)
        assert not alive, f"left running: {[k.cmdline() for k in alive]}"
        import sqlite3  # the temporary server's database: the run is marked Crashed, not left Running
        with contextlib.closing(sqlite3.connect(tmp_path / "prefect" / "prefect.db")) as db:
            assert db.execute("select state_type from flow_run").fetchall() == [("CRASHED",)]
    finally:
        if p.poll() is None:
            p.kill()
