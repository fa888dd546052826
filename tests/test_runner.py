"""The task runner is chosen at the entry point from a YAML cluster spec."""

import pytest

from flows.runner import load_cluster_spec, make_task_runner


def test_default_spec_sets_the_workers_malloc():
    import dask
    from distributed.nanny import _get_env_variables
    spec = load_cluster_spec(None)
    assert spec["cluster_class"].endswith("LocalCluster")
    assert spec["cluster_kwargs"]["host"] == "127.0.0.1"
    # Dask's defaults in a worker thread: 3.2 s per tomoe image; with these 2.3 s (local.yaml)
    env = _get_env_variables("distributed.nanny.pre-spawn-environ")
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
