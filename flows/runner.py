"""Choose the task runner at the entry point from a YAML cluster spec (never inside a flow)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO_DEFAULT = Path(__file__).resolve().parent.parent / "deploy" / "dask" / "local.yaml"
FALLBACK_SPEC = {
    "cluster_class": "distributed.LocalCluster",
    "cluster_kwargs": {"n_workers": 2, "threads_per_worker": 1, "processes": True,
                       "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    "dask_config": {"distributed.nanny.pre-spawn-environ.MALLOC_ARENA_MAX": 1,
                    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 33554432,
                    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 1073741824,
                    "distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
                    "distributed.admin.system-monitor.interval": "5s",
                    "distributed.worker.memory.monitor-interval": "1s",
                    "distributed.worker.preload": ["flows.dask_worker"]},
}


def load_cluster_spec(cluster: str | None) -> dict:
    """The spec as a dict: from a YAML file, a scheduler address, or the default.

    A spec's ``dask_config`` (dotted Dask config keys) is applied here, in the entry point's
    process, before any cluster is made: e.g. local.yaml's glibc malloc settings for the
    workers (per-sensor steps 3.2 s -> 2.3 s per tomoe image in a worker, measured).
    """
    spec = _read_spec(cluster)
    if spec.get("dask_config"):
        import dask
        dask.config.set(spec["dask_config"])
    return spec


def worker_environ(cluster: str | None = None) -> dict[str, str]:
    """The environment variables a LocalCluster's nanny sets in its workers under this spec
    (Dask's one BLAS/FFT thread each, and the spec's glibc malloc settings): benchmarks give
    their plain-process baselines the same, so that only the orchestration differs."""
    from distributed.nanny import _get_env_variables
    load_cluster_spec(cluster)
    return {k: str(v) for k, v in _get_env_variables("distributed.nanny.pre-spawn-environ").items()}


def _read_spec(cluster: str | None) -> dict:
    if cluster is None:
        if REPO_DEFAULT.exists():
            return yaml.safe_load(REPO_DEFAULT.read_text())
        return dict(FALLBACK_SPEC)
    if cluster.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        return {"address": cluster}
    if cluster == "threads":
        return {"threads": True}
    p = Path(cluster)
    if not p.exists():
        raise FileNotFoundError(f"cluster spec {cluster!r}: no such file (give a YAML spec, "
                                "a scheduler address tcp://host:port, or 'threads')")
    spec = yaml.safe_load(p.read_text()) or {}
    unknown = set(spec) - {"cluster_class", "cluster_kwargs", "adapt_kwargs", "client_kwargs", "address", "threads",
                           "dask_config"}
    if unknown:
        raise ValueError(f"cluster spec {p}: unknown keys {sorted(unknown)}")
    return spec


def make_task_runner(cluster: str | None = None, workers: int | None = None):
    """A DaskTaskRunner (``flows.dask_runner``: Prefect's, with the run's settings sent once)
    or Prefect's ThreadPoolTaskRunner for ``threads``."""
    spec = load_cluster_spec(cluster)
    if spec.get("threads"):
        from prefect.task_runners import ThreadPoolTaskRunner
        return ThreadPoolTaskRunner(max_workers=workers or 2)
    from flows.dask_runner import DaskTaskRunner
    if "address" in spec:
        return DaskTaskRunner(address=spec["address"])
    kwargs = dict(spec.get("cluster_kwargs") or {})
    if workers is not None:
        kwargs["n_workers"] = workers
    return DaskTaskRunner(cluster_class=spec.get("cluster_class", "distributed.LocalCluster"),
                          cluster_kwargs=kwargs, adapt_kwargs=spec.get("adapt_kwargs"),
                          client_kwargs=spec.get("client_kwargs"))
