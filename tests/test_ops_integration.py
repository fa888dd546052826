"""A real Prefect server on 127.0.0.1, the nightly deployment registered, run through a worker."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.ops import PROJECT_DIR, free_port, start_server, stop_server

NIGHT = "2026-01-05"
pytestmark = pytest.mark.integration


@pytest.fixture()
def server(tmp_path):
    home = tmp_path / "server"
    st = start_server(free_port(), timeout=120, home=home)
    try:
        yield st
    finally:
        stop_server(home)


def _rbflow(*args):
    return [str(Path(sys.executable).with_name("rbflow")), *args]


def test_deployment_runs_through_a_worker(server, tmp_path):
    from storage.survey import simulate_survey
    from tasks.simulate import get_preset
    t0 = time.monotonic()
    simulate_survey(get_preset("ci").model_copy(update={"n_sensors": 1}), NIGHT, 0, tmp_path / "survey")
    # PREFECT_LOCAL_STORAGE_PATH: an earlier test's configure_environment() may have set it for this process
    env = {**{k: v for k, v in os.environ.items() if k != "PREFECT_LOCAL_STORAGE_PATH"},
           "PREFECT_API_URL": server["api_url"], "RBFLOW_HOME": str(tmp_path / "home"), "RBFLOW_NO_PROGRESS": "1"}
    r = subprocess.run(_rbflow("deploy", "--name", "nightly", "--no-schedules"), env=env, cwd=PROJECT_DIR,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen(_rbflow("worker"), env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter
        from prefect.settings import PREFECT_API_URL, temporary_settings
        root = tmp_path / "nightly"
        params = {"options": {"root": str(root), "manifest": str(tmp_path / "survey" / "manifest.csv"),
                              "night": NIGHT, "max_sensors": 2, "cluster": "threads"}}
        with temporary_settings(updates={PREFECT_API_URL: server["api_url"]}), get_client(sync_client=True) as c:
            dep = c.read_deployment_by_name("nightly-build/nightly")
            assert dep.parameter_openapi_schema["definitions"]["NightlyBuildOptions"]["properties"]["night"]["description"]
            assert all(not s.active for s in dep.schedules)
            run = c.create_flow_run_from_deployment(dep.id, parameters=params)
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                run = c.read_flow_run(run.id)
                if run.state and run.state.is_final():
                    break
                time.sleep(1)
            assert run.state.is_completed(), (run.state, (tmp_path / "worker.log").read_text()[-3000:])
            assert f"night:{NIGHT}" in run.tags and any(t.startswith("dataset:") for t in run.tags)
            (child,) = c.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
            assert child.state.is_completed()
            tasks = c.read_task_runs(task_run_filter=TaskRunFilter(), flow_run_filter=FlowRunFilter(id={"any_": [child.id]}))
            names = {t.name for t in tasks}
            assert sum(n.startswith(f"build-{NIGHT}-") for n in names) == 2, names
            keys = {a.key for a in c.read_artifacts() if a.key and a.flow_run_id == child.id}
            assert {f"dataset-summary-{NIGHT}", f"psf-qa-{NIGHT}"} <= keys, keys
        assert (root / NIGHT / "dataset.json").exists() and (root / NIGHT / "provenance.json").exists()
        assert any((tmp_path / "home" / "results").iterdir())  # results persisted under RBFLOW_HOME
        print(f"integration: {time.monotonic() - t0:.1f} s after the server answered")
    finally:
        for _ in range(2):  # a worker stops on the second SIGINT
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGINT)
                time.sleep(1.5)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        log.close()
