"""Process-wide settings applied at the entry point (before Prefect is imported)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULTS = {
    # no telemetry (../shared/stack.md)
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # the older UI makes no outside requests
    "PREFECT_SERVER_UI_V2_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
    # quieter CLI: Prefect's own progress lines stay in the logs/UI
    "PREFECT_LOGGING_LOG_PRINTS": "true",
}


def data_home() -> Path:
    """Where the project keeps its Prefect database, results and server state."""
    return Path(os.environ.get("RBFLOW_HOME", Path.home() / ".rbflow"))


def configure_environment() -> None:
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    home = data_home()
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "results"))
