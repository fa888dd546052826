"""Test settings: no telemetry, a throwaway Prefect home and database per session."""

import os
import tempfile

_home = tempfile.mkdtemp(prefix="rbflow-test-")
os.environ.setdefault("RBFLOW_HOME", _home)
os.environ["PREFECT_HOME"] = os.path.join(_home, "prefect")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RBFLOW_NO_PROGRESS", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect server + database for tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"rbflow_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
