"""Operations without a server: deployment spec, nights, windows, clear errors, scale-out specs."""

import datetime as dt
import importlib
import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from flows import cli
from flows.ops import PREFECT_FILE, PROJECT_DIR, NightlyBuildOptions, RetrainOptions, free_port, run_date_night


def test_night_defaults_to_the_runs_date():
    sched = dt.datetime(2026, 3, 4, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-3)))  # 02:30 UTC on the 5th
    assert run_date_night(None, 0, sched) == "2026-03-05"
    assert run_date_night(None, -1, sched) == "2026-03-04"
    assert run_date_night("2026-01-01", -1, sched) == "2026-01-01"
    assert run_date_night(None, 0) == dt.datetime.now(dt.timezone.utc).date().isoformat()


def test_deployment_options_validate(tmp_path):
    with pytest.raises(ValidationError, match="exactly one of preset or manifest"):
        NightlyBuildOptions(root=tmp_path)
    with pytest.raises(ValidationError, match="night must be YYYY-MM-DD"):
        NightlyBuildOptions(root=tmp_path, preset="ci", night="5 Jan")
    with pytest.raises(ValidationError, match="Extra inputs"):
        RetrainOptions(root=tmp_path, out=tmp_path, nights=3)
    args = cli.build_parser().parse_args(["nightly", "--root", "r", "--preset", "ci", "--no-inject"])
    o = NightlyBuildOptions(**{k: v for k, v in vars(args).items() if k != "command"})
    assert o.inject is False and o.night is None


def test_prefect_yaml_deployments_take_the_options_models():
    doc = yaml.safe_load(PREFECT_FILE.read_text())
    assert doc["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $RBFLOW_PROJECT_DIR }}"}}]
    names = {d["name"]: d for d in doc["deployments"]}
    assert {"nightly", "weekly", "ad-hoc", "chain"} <= set(names)
    from prefect.flows import Flow
    for d in doc["deployments"]:
        path, fn = d["entrypoint"].split(":")
        assert (PROJECT_DIR / path).is_file(), d["entrypoint"]
        mod = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        f = getattr(mod, fn)
        assert isinstance(f, Flow)
        (param,) = f.parameters.properties  # one parameter: the options model
        model = f.fn.__annotations__[param]
        model = getattr(mod, model) if isinstance(model, str) else model
        assert issubclass(model, BaseModel) and model.model_config["frozen"], d["name"]
        assert all(fi.description for fi in model.model_fields.values()), d["name"]
        if d.get("parameters"):
            model(**d["parameters"]["options"])  # the deployment's parameters are complete and valid
        assert d["work_pool"]["name"] == "rbflow-process"
    from prefect.client.schemas.schedules import CronSchedule
    for name, cron in (("nightly", "0 12 * * *"), ("weekly", "0 14 * * 1")):
        (sched,) = names[name]["schedules"]
        assert sched.pop("active") is True
        assert CronSchedule(**sched).cron == cron


def test_window_and_validation_night(tmp_path):
    from flows.deployments import default_validation, window

    def night(n, inject=True):
        d = tmp_path / n / "current"
        d.mkdir(parents=True)
        (d / "dataset.json").write_text(json.dumps({"content_hash": f"h{n}", "inject": inject, "night": n}))

    for n in ("2026-01-01", "2026-01-03", "2026-01-05", "2026-01-08"):
        night(n)
    night("2026-01-06", inject=False)
    w = window(tmp_path, "2026-01-07", 5)
    assert [n for n, _, _ in w] == ["2026-01-03", "2026-01-05"] and w[0][2] == "h2026-01-03"
    assert default_validation(tmp_path, {n for n, _, _ in w}).name == "2026-01-06"
    with pytest.raises(ValueError, match="no validation night"):
        default_validation(tmp_path / "2026-01-01", set())


def test_unreachable_server_is_a_clear_error(monkeypatch, capsys, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    rc = cli.main(["nightly", "--root", str(tmp_path / "n"), "--preset", "ci", "--night", "2026-01-05"])
    err = capsys.readouterr().err
    assert rc == 1 and url in err and "does not answer" in err
    assert not (tmp_path / "n").exists()
    assert cli.main(["worker"]) == 1 and url in capsys.readouterr().err


def test_server_refuses_a_busy_port(tmp_path):
    import socket

    from flows.ops import start_server
    from flows.settings import PrefectUnavailable
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(PrefectUnavailable, match=f"port {s.getsockname()[1]} on 127.0.0.1 is in use"):
            start_server(s.getsockname()[1], home=tmp_path)


def test_local_cluster_spec_binds_loopback():
    spec = yaml.safe_load((PROJECT_DIR / "deploy/dask/local.yaml").read_text())
    assert spec["cluster_kwargs"]["host"] == "127.0.0.1"
    assert spec["cluster_kwargs"]["dashboard_address"].startswith("127.0.0.1:")


def test_slurm_job_script_renders_without_slurm():
    pytest.importorskip("dask_jobqueue")
    from flows.ops import render_slurm
    script = render_slurm(PROJECT_DIR / "deploy/dask/slurm.yaml")
    for line in ("#SBATCH -J rbflow-dask", "#SBATCH -p normal", "#SBATCH --cpus-per-task=8", "#SBATCH -t 04:00:00",
                 ".venv/bin/activate", "DO_NOT_TRACK=1", "--nworkers 8", "--nthreads 1", "tcp://127.0.0.1:"):
        assert line in script, line


def test_kubernetes_spec_renders_and_validates():
    pytest.importorskip("dask_kubernetes")
    pytest.importorskip("jsonschema")
    from flows.ops import render_kubernetes, validate_kubernetes
    m = render_kubernetes(PROJECT_DIR / "deploy/dask/kubernetes.yaml")
    validate_kubernetes(m)
    assert m["kind"] == "DaskCluster" and m["metadata"] == {"name": "rbflow", "namespace": "rbflow"}
    assert m["spec"]["worker"]["replicas"] == 4
    worker = m["spec"]["worker"]["spec"]["containers"][0]
    assert worker["image"] == "registry.example.org/rbflow:0.1.0"
    assert {"name": "DO_NOT_TRACK", "value": "1"} in worker["env"]
    bad = json.loads(json.dumps(m))
    bad["spec"]["worker"]["replicas"] = "four"
    with pytest.raises(ValueError, match="spec.worker.replicas"):
        validate_kubernetes(bad)
    bad = json.loads(json.dumps(m))
    del bad["spec"]["scheduler"]
    with pytest.raises(ValueError, match="scheduler"):
        validate_kubernetes(bad)


def test_cli_keeps_one_command_per_flow():
    entries = [e for _, e, _ in cli.COMMANDS.values()]
    assert len(entries) == len(set(entries))
    assert {"nightly", "retrain"} <= set(cli.COMMANDS)
    p = cli.build_parser()
    for argv in (["server", "start", "--port", "4300"], ["worker", "--pool", "p"], ["deploy", "--no-schedules"],
                 ["lineage", "x"], ["cluster-spec", "deploy/dask/slurm.yaml"]):
        assert p.parse_args(argv).handler
    assert Path(PREFECT_FILE).parent.name == "deploy"
