"""Operations: the options of the deployment flows, and the commands that are not flows.

``rbflow server start|stop|status`` runs a real Prefect server on 127.0.0.1 with its
database under the project's data directory (``RBFLOW_HOME/server/``), ``rbflow worker``
a process worker for the pool, ``rbflow deploy`` registers ``deploy/prefect.yaml``.
No Prefect import at module level: ``rbflow --help`` stays fast.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from flows.options import BuildInputsMixin, ClusterMixin, FlowOptions, _check_night
from flows.settings import DEFAULTS, PrefectUnavailable, check_server, data_home

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT_FILE = PROJECT_DIR / "deploy" / "prefect.yaml"
DEFAULT_POOL = "rbflow-process"
DEFAULT_PORT = 4200
HOST = "127.0.0.1"


# ------------------------------------------------------------------------------ deployment flows' options
class NightlyBuildOptions(FlowOptions, ClusterMixin, BuildInputsMixin):
    """The nightly build: one dataset directory per night, ROOT/<night>/."""

    root: Path = Field(..., description="Root of the nightly datasets: night N is built into ROOT/N/.")
    preset: str | None = Field(None, description="Simulate this survey preset for the night into ROOT/N/survey/ first "
                               "(the embedded survey); give this or manifest.")
    manifest: Path | None = Field(None, description="Survey manifest.csv to build from (real or simulated); "
                                  "give this or preset.")
    night: str | None = Field(None, description="Night to build, YYYY-MM-DD; default: the date of the run's scheduled "
                              "start (UTC) plus night_offset_days (a hand-started run: today).")
    night_offset_days: int = Field(0, ge=-7, le=7, description="Days added to the run's date to get the default night "
                                   "(-1 when the schedule fires the morning after the night).")


class RetrainOptions(FlowOptions, ClusterMixin):
    """The retraining: stage 1 + flagging + stage 2 over a window of nights, then validation."""

    root: Path = Field(..., description="Root of the nightly datasets (ROOT/<night>/, as the nightly build writes them).")
    out: Path = Field(..., description="Root of the trainings: each is written to OUT/<end night>/ "
                      "(stage1/, model-<key>/, validation/, retrain.json).")
    end_night: str | None = Field(None, description="Last night of the window, YYYY-MM-DD; default: the run's date "
                                  "(UTC) plus night_offset_days.")
    night_offset_days: int = Field(-1, ge=-7, le=7, description="Days added to the run's date to get the default end night.")
    n_nights: int = Field(7, ge=1, le=366, description="Window length in nights: the injected nights in "
                          "(end_night - n_nights, end_night] that have a dataset.")
    validation: Path | None = Field(None, description="Dataset directory of a night training never saw (built without "
                                    "injection); default: the newest non-injected night under ROOT.")
    tns: Path | None = Field(None, description="TNS export for validation; default: tns.csv beside the validation "
                             "night's manifest.")
    network: Literal["simple", "complex"] = Field("simple", description="Network of both stages.")
    epochs: int = Field(8, ge=1, le=1000, description="Maximum epochs of both stages.")
    folds: int = Field(5, ge=2, le=20, description="Stage-1 folds.")
    flag_rule: Literal["p05", "confident"] = Field("p05", description="Stage-1 mislabel rule.")
    mode: Literal["all", "removed", "unlabelled"] = Field("unlabelled", description="Stage-2 treatment of flagged stamps.")
    seed: int = Field(0, ge=0, description="Training seed.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device.")
    n_boot: int = Field(300, ge=0, le=100000, description="Validation bootstrap replicates.")

    _night = field_validator("end_night")(_check_night)


def run_date_night(night: str | None, offset_days: int, scheduled: _dt.datetime | None = None) -> str:
    """``night`` if given, else the date of the scheduled start (UTC; now if none) + offset."""
    if night:
        return night
    when = scheduled or _dt.datetime.now(_dt.timezone.utc)
    if when.tzinfo is not None:
        when = when.astimezone(_dt.timezone.utc)
    return (when.date() + _dt.timedelta(days=offset_days)).isoformat()


# ------------------------------------------------------------------------------ the local server
def server_dir() -> Path:
    return data_home() / "server"


def _state_path() -> Path:
    return server_dir() / "server.json"


def read_state() -> dict | None:
    p = _state_path()
    try:
        return json.loads(p.read_text()) if p.exists() else None
    except json.JSONDecodeError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        check_server(api_url, timeout=timeout)
        return True
    except PrefectUnavailable:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_environment(port: int, home: Path | None = None) -> dict:
    """The environment of a server on 127.0.0.1:port with its database under ``home``."""
    home = Path(home or server_dir())
    api = f"http://{HOST}:{port}/api"
    env = dict(os.environ)
    env.update(DEFAULTS)
    env.update({
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_API_HOST": HOST, "PREFECT_SERVER_API_PORT": str(port),
        # --port does not reach the UI: it must be told where the API is (shared/stack.md)
        "PREFECT_API_URL": api, "PREFECT_UI_API_URL": api, "PREFECT_UI_URL": f"http://{HOST}:{port}",
    })
    env.pop("PREFECT_API_KEY", None)
    return env


def prefect_exe() -> str:
    exe = Path(sys.executable).with_name("prefect")
    return str(exe) if exe.exists() else "prefect"


def start_server(port: int = DEFAULT_PORT, timeout: float = 120.0, home: Path | None = None) -> dict:
    """Start ``prefect server start`` on 127.0.0.1:port in the background; wait until it answers."""
    home = Path(home or server_dir())
    home.mkdir(parents=True, exist_ok=True)
    state = read_state() if home == server_dir() else None
    if state and _alive(state["pid"]) and _healthy(state["api_url"]):
        return {**state, "already_running": True}
    if not _port_free(port):
        raise PrefectUnavailable(f"port {port} on {HOST} is in use: pick another with --port")
    log = home / "server.log"
    env = server_environment(port, home)
    with open(log, "ab") as lf:
        proc = subprocess.Popen([prefect_exe(), "server", "start", "--host", HOST, "--port", str(port)],
                                stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=home, start_new_session=True)
    api = env["PREFECT_API_URL"]
    state = {"pid": proc.pid, "host": HOST, "port": port, "api_url": api, "ui_url": env["PREFECT_UI_URL"],
             "database": str(home / "prefect.db"), "log": str(log),
             "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise PrefectUnavailable(f"the Prefect server on {HOST}:{port} exited with status {proc.returncode} "
                                     f"before answering; the end of {log}:\n{tail}")
        if _healthy(api, timeout=1.0):
            (home / "server.json").write_text(json.dumps(state, indent=1))
            return {**state, "seconds": round(time.monotonic() - t0, 1)}
        time.sleep(0.5)
    stop_pid(proc.pid)
    raise PrefectUnavailable(f"the Prefect server at {api} did not answer within {timeout:.0f} s (log: {log})")


def stop_pid(pid: int, timeout: float = 20.0) -> bool:
    """Stop the process group we started for the server (SIGTERM, then SIGKILL)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not _alive(pid):
                return True
            time.sleep(0.2)
    return not _alive(pid)


def stop_server(home: Path | None = None) -> dict | None:
    home = Path(home or server_dir())
    p = home / "server.json"
    state = json.loads(p.read_text()) if p.exists() else None
    if state is None:
        return None
    stop_pid(state["pid"])
    p.unlink(missing_ok=True)
    return state


def api_url_for_ops() -> str:
    """The server the ops commands talk to: PREFECT_API_URL, else the one ``rbflow server start`` runs."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        try:
            from prefect.settings import PREFECT_API_URL
            url = PREFECT_API_URL.value()
        except Exception:  # noqa: BLE001
            url = None
    if not url:
        state = read_state()
        if state:
            url = state["api_url"]
    if not url:
        raise PrefectUnavailable("no Prefect server configured: start one with `rbflow server start` "
                                 "(or set PREFECT_API_URL)")
    check_server(url)
    return url


def ops_environment(url: str) -> dict:
    env = dict(os.environ)
    for k, v in DEFAULTS.items():
        env.setdefault(k, v)
    env["PREFECT_API_URL"] = url
    env.setdefault("RBFLOW_HOME", str(data_home()))
    env.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(data_home() / "results"))
    env["RBFLOW_PROJECT_DIR"] = str(PROJECT_DIR)
    return env


# ------------------------------------------------------------------------------ commands
def cmd_server(args: argparse.Namespace) -> int:
    if args.action == "start":
        st = start_server(args.port, timeout=args.timeout)
        how = "already running" if st.get("already_running") else f"started in {st.get('seconds')} s"
        print(f"Prefect server {how}: pid {st['pid']}\n  UI:  {st['ui_url']}\n  API: {st['api_url']}\n"
              f"  database: {st['database']}\n  log: {st['log']}\n"
              f"Point flows at it with:\n  export PREFECT_API_URL={st['api_url']}")
        return 0
    if args.action == "stop":
        st = stop_server()
        print(f"stopped the Prefect server (pid {st['pid']}, {st['api_url']})" if st else "no Prefect server started by rbflow")
        return 0
    st = read_state()
    if not st:
        print(f"no Prefect server started by rbflow (state file {_state_path()} absent)")
        return 1
    up = _alive(st["pid"]) and _healthy(st["api_url"])
    print(f"Prefect server {'running' if up else 'NOT answering'}: pid {st['pid']}, UI {st['ui_url']}, "
          f"API {st['api_url']}, database {st['database']}, since {st['started_utc']}")
    return 0 if up else 1


def ensure_pool(url: str, pool: str) -> None:
    env = ops_environment(url)
    r = subprocess.run([prefect_exe(), "work-pool", "inspect", pool], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        r = subprocess.run([prefect_exe(), "work-pool", "create", pool, "--type", "process"], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise PrefectUnavailable(f"could not create work pool {pool!r} at {url}: {r.stdout[-500:]}{r.stderr[-500:]}")


def deactivate_schedules(url: str) -> int:
    """Deactivate every schedule of every deployment (CI, hand-run servers)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    n = 0
    with temporary_settings(updates={PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            for dep in client.read_deployments():
                for s in dep.schedules or []:
                    client.update_deployment_schedule(dep.id, s.id, active=False)
                    n += 1
    return n


def cmd_deploy(args: argparse.Namespace) -> int:
    url = api_url_for_ops()
    ensure_pool(url, args.pool)
    cmd = [prefect_exe(), "--no-prompt", "deploy", "--prefect-file", str(args.prefect_file), "--pool", args.pool]
    cmd += [x for n in args.name for x in ("--name", n)] if args.name else ["--all"]
    env = ops_environment(url)
    r = subprocess.run(cmd, cwd=PROJECT_DIR, env=env)
    if r.returncode != 0:
        print(f"rbflow deploy: error: `prefect deploy` failed (status {r.returncode}) against {url}", file=sys.stderr)
        return 1
    if not args.schedules:
        print(f"deactivated {deactivate_schedules(url)} schedule(s)")
    print(f"deployments from {args.prefect_file} registered at {url}; start a worker with `rbflow worker`")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    url = api_url_for_ops()
    env = ops_environment(url)
    cmd = [prefect_exe(), "worker", "start", "--pool", args.pool, "--type", "process"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.name:
        cmd += ["--name", args.name]
    if args.run_once:
        cmd += ["--run-once"]
    print(f"worker for pool {args.pool} at {url} (stop: Ctrl-C twice)", flush=True)
    os.chdir(PROJECT_DIR)
    os.execve(cmd[0] if os.path.isabs(cmd[0]) else _which(cmd[0]), cmd, env)
    return 0  # not reached


def _which(name: str) -> str:
    import shutil
    found = shutil.which(name)
    if not found:
        raise PrefectUnavailable(f"{name!r} not found on PATH")
    return found


# ------------------------------------------------------------------------------ scale-out specs, offline
def render_slurm(spec_path: Path | str) -> str:
    """The SLURM job script of a dask-jobqueue spec, rendered without SLURM.

    Constructing the cluster starts its scheduler: here it is kept on 127.0.0.1.
    """
    from flows.runner import load_cluster_spec
    spec = load_cluster_spec(str(spec_path))
    mod, _, cls = spec["cluster_class"].rpartition(".")
    import importlib
    cluster_cls = getattr(importlib.import_module(mod), cls)
    kwargs = dict(spec.get("cluster_kwargs") or {})
    kwargs["scheduler_options"] = {**(kwargs.get("scheduler_options") or {}), "host": HOST,
                                   "dashboard_address": f"{HOST}:0"}
    kwargs.pop("interface", None)
    with cluster_cls(**kwargs) as cluster:
        return cluster.job_script()


def kubernetes_crd_schema() -> dict:
    """The DaskCluster CRD's openAPIV3Schema, as shipped with dask-kubernetes."""
    import importlib.util

    import yaml
    base = Path(importlib.util.find_spec("dask_kubernetes").origin).parent
    crd = base / "operator" / "deployment" / "helm" / "dask-kubernetes-operator" / "crds" / "daskcluster.yaml"
    doc = yaml.safe_load(crd.read_text())
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def render_kubernetes(spec_path: Path | str) -> dict:
    """The DaskCluster manifest of a dask-kubernetes spec (no Kubernetes API needed)."""
    import inspect

    from dask_kubernetes.operator import make_cluster_spec

    from flows.runner import load_cluster_spec
    spec = load_cluster_spec(str(spec_path))
    kwargs = dict(spec.get("cluster_kwargs") or {})
    allowed = set(inspect.signature(make_cluster_spec).parameters)
    manifest = make_cluster_spec(**{k: v for k, v in kwargs.items() if k in allowed})
    if kwargs.get("namespace"):
        manifest["metadata"]["namespace"] = kwargs["namespace"]
    return manifest


def validate_kubernetes(manifest: dict) -> None:
    """Raise ValueError naming every place where the manifest breaks the DaskCluster schema."""
    import re

    import jsonschema
    if manifest.get("apiVersion") != "kubernetes.dask.org/v1" or manifest.get("kind") != "DaskCluster":
        raise ValueError(f"not a kubernetes.dask.org/v1 DaskCluster: {manifest.get('apiVersion')} {manifest.get('kind')}")
    name = (manifest.get("metadata") or {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        raise ValueError(f"metadata.name {name!r} is not a DNS-1123 label")
    v = jsonschema.Draft7Validator(kubernetes_crd_schema())
    errors = sorted(v.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        raise ValueError("DaskCluster manifest invalid: " + "; ".join(
            f"{'.'.join(str(x) for x in e.absolute_path) or '(root)'}: {e.message}" for e in errors[:10]))


def cmd_cluster_spec(args: argparse.Namespace) -> int:
    import yaml

    from flows.runner import load_cluster_spec
    spec = load_cluster_spec(args.spec)
    cls = spec.get("cluster_class", "")
    if "jobqueue" in cls:
        print(render_slurm(args.spec))
    elif "kubernetes" in cls:
        manifest = render_kubernetes(args.spec)
        validate_kubernetes(manifest)
        print(yaml.safe_dump(manifest, sort_keys=False), end="")
        print("# valid against the DaskCluster CRD schema", file=sys.stderr)
    else:
        print(yaml.safe_dump(spec, sort_keys=False), end="")
    return 0


def add_commands(sub) -> None:
    sp = sub.add_parser("cluster-spec", help="Render a Dask cluster spec offline (SLURM job script, Kubernetes manifest).",
                        description="SLURM specs print their job script; Kubernetes specs print the DaskCluster "
                        "manifest, validated against the operator's CRD schema. Needs the [scale] extra.")
    sp.add_argument("spec", help="A YAML spec under deploy/dask/.")
    sp.set_defaults(handler=cmd_cluster_spec)

    sp = sub.add_parser("server", help="Start, stop or query a local Prefect server (127.0.0.1) and its UI.",
                        description="A real Prefect server on 127.0.0.1 with its database under "
                        "RBFLOW_HOME/server/ (default ~/.rbflow/server/).")
    sp.add_argument("action", choices=["start", "stop", "status"])
    sp.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"Port on 127.0.0.1 (default: {DEFAULT_PORT}).")
    sp.add_argument("--timeout", type=float, default=120.0, help="Seconds to wait for the server to answer (default: 120).")
    sp.set_defaults(handler=cmd_server)

    sp = sub.add_parser("worker", help="Start a process worker for the deployments' work pool (foreground).",
                        description="Runs `prefect worker start --type process` against PREFECT_API_URL or the "
                        "server started by `rbflow server start`.")
    sp.add_argument("--pool", default=DEFAULT_POOL, help=f"Work pool (default: {DEFAULT_POOL}; created if missing).")
    sp.add_argument("--limit", type=int, default=None, help="Maximum concurrent flow runs.")
    sp.add_argument("--name", default=None, help="Worker name.")
    sp.add_argument("--run-once", action="store_true", help="Poll once and exit.")
    sp.set_defaults(handler=cmd_worker)

    sp = sub.add_parser("deploy", help="Register the deployments of deploy/prefect.yaml with the Prefect server.",
                        description="Creates the process work pool if missing, then `prefect deploy` of every "
                        "deployment in deploy/prefect.yaml (or the ones named).")
    sp.add_argument("--name", action="append", default=[], help="Deploy only this deployment (repeatable).")
    sp.add_argument("--pool", default=DEFAULT_POOL, help=f"Work pool (default: {DEFAULT_POOL}).")
    sp.add_argument("--prefect-file", default=str(PREFECT_FILE), help="The prefect.yaml (default: deploy/prefect.yaml).")
    sp.add_argument("--schedules", action=argparse.BooleanOptionalAction, default=True,
                    help="Keep the schedules active (--no-schedules: register them inactive).")
    sp.set_defaults(handler=cmd_deploy)

    from flows.lineage import add_command
    add_command(sub)
