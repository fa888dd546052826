"""Small wiring helpers shared by the flows: artifacts, progress, code version."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def publish_table(key: str, rows: list[dict], description: str = "") -> None:
    try:
        create_table_artifact(table=rows, key=artifact_key(key), description=description)
    except Exception as e:  # artifacts are a view; never fail a run for one
        get_run_logger().warning("could not publish table artifact %s: %s", key, e)


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    try:
        create_markdown_artifact(markdown=markdown, key=artifact_key(key), description=description)
    except Exception as e:
        get_run_logger().warning("could not publish markdown artifact %s: %s", key, e)


def tag_run(*tags: str) -> None:
    """Add tags to the current flow run (night, dataset and model version), shown in the UI."""
    try:
        from prefect import runtime
        from prefect.client.orchestration import get_client
        rid = runtime.flow_run.id
        if not rid:
            return
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(rid).tags or []
            client.update_flow_run(rid, tags=sorted(set(current) | {t[:100] for t in tags if t}))
    except Exception as e:  # tags are a view; never fail a run for one
        get_run_logger().warning("could not tag the flow run with %s: %s", tags, e)


def png_markdown(path: Path, title: str = "") -> str:
    """A PNG embedded as a base64 data URI (renders in the Prefect UI offline)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"### {title or Path(path).name}\n\n![{Path(path).name}](data:image/png;base64,{data})\n"


