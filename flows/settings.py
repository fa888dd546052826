"""Process-wide settings applied at the entry point (before flows run)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

DEFAULTS = {
    # no telemetry (../shared/stack.md)
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # the older UI makes no outside requests
    "PREFECT_SERVER_UI_V2_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


class PrefectUnavailable(RuntimeError):
    """The configured Prefect server does not answer."""


def data_home() -> Path:
    """Where the project keeps its Prefect database, results and server state."""
    return Path(os.environ.get("RBFLOW_HOME", Path.home() / ".rbflow"))


def results_dir() -> Path:
    """Where Prefect persists results: a pathlib.Path (a str would be read as a block name)."""
    return Path(os.environ.get("PREFECT_LOCAL_STORAGE_PATH") or data_home() / "results")


def configure_environment() -> None:
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(data_home() / "results"))
    if os.environ.get("PREFECT_API_URL", "").startswith("http://"):  # a worker's flow-run process
        os.environ["PREFECT_API_SSL_CERT_FILE"] = str(plain_http_ca_file())


def check_server(url: str, timeout: float = 5.0) -> None:
    """Raise a clear error naming the URL when a configured server does not answer."""
    import httpx
    try:
        r = httpx.get(url.rstrip("/") + "/health", timeout=timeout)
        r.raise_for_status()
    except Exception as e:
        raise PrefectUnavailable(
            f"the configured Prefect server at {url} does not answer ({type(e).__name__}: {e}). "
            "Start it (rbflow server start), fix PREFECT_API_URL, or unset it to run in ephemeral mode."
        ) from None


CA_NAME = "plain-http-unused-ca.pem"


def plain_http_ca_file() -> Path:
    """A one-certificate CA file for Prefect clients that talk plain HTTP.

    Every Prefect client builds an SSL context from ``PREFECT_API_SSL_CERT_FILE`` (default:
    certifi's ~150-certificate bundle) even for an ``http://`` API, and a Dask worker builds
    two clients per task run: 2 x 16 ms of CPU per task run here, measured with py-spy
    (``docs/operations.md``). With an http:// API no TLS connection is ever made, so the file
    is never used to verify anything; :func:`prefect_session` points the setting here only then
    (on this machine ``SSL_CERT_FILE`` names the system bundle, which Prefect reads as its
    default: the same cost).
    """
    import certifi
    path = data_home() / "tls" / CA_NAME
    if not path.exists():
        pem = Path(certifi.where()).read_text()
        end = "-----END CERTIFICATE-----"
        first = pem[pem.index("-----BEGIN CERTIFICATE-----"):pem.index(end) + len(end)] + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(first)
        os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _http_only(url: str) -> Iterator[dict]:
    """Settings for a plain-HTTP API: the small CA file (over http:// no CA file is ever used,
    so whatever was configured, ``SSL_CERT_FILE`` included, changes nothing but its cost).

    Also put in the environment for the Dask workers spawned meanwhile; restored after.
    An https:// API keeps its settings.
    """
    from prefect.settings import PREFECT_API_SSL_CERT_FILE
    if not url.startswith("http://"):
        yield {}
        return
    ca = str(plain_http_ca_file())
    before = os.environ.get("PREFECT_API_SSL_CERT_FILE")
    os.environ["PREFECT_API_SSL_CERT_FILE"] = ca
    try:
        yield {PREFECT_API_SSL_CERT_FILE: ca}
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_SSL_CERT_FILE", None)
        else:
            os.environ["PREFECT_API_SSL_CERT_FILE"] = before


@contextlib.contextmanager
def prefect_session() -> Iterator[str]:
    """The Prefect API every process of this run talks to.

    A configured server (PREFECT_API_URL) is checked first. Without one, one temporary
    local server is started for the whole run (what Prefect's ephemeral mode does), and its
    URL is put in the settings and the environment so that Dask worker processes report to
    it instead of each starting an ephemeral server of their own. SIGTERM unwinds either kind
    of run like Ctrl-C (``_unwind_on_sigterm``).
    """
    with _unwind_on_sigterm(), _session() as url:
        yield url


@contextlib.contextmanager
def _session() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings
    url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()  # the environment wins over a profile
    if url:
        check_server(url)
        with _http_only(url) as extra, temporary_settings(updates={PREFECT_API_URL: url, **extra}):
            yield url
        return
    from prefect.server.api.server import SubprocessASGIServer
    server = SubprocessASGIServer()
    try:
        server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")))
        os.environ["PREFECT_API_URL"] = server.api_url
        with _http_only(server.api_url) as extra, \
                temporary_settings(updates={PREFECT_API_URL: server.api_url, **extra}):
            try:
                yield server.api_url
            finally:
                try:  # send the last run logs while the server still answers (else Prefect's log
                    # worker sends them at exit, to a stopped server: "Error logging to API")
                    from prefect.logging.handlers import APILogWorker
                    APILogWorker.drain_all(timeout=5)
                except Exception as e:  # never fail a finished run over its last log lines
                    print(f"rbflow: could not send the last log lines to the Prefect server: {e}",
                          file=sys.stderr)
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


@contextlib.contextmanager
def _unwind_on_sigterm() -> Iterator[None]:
    """SIGTERM (``kill PID``, a batch scheduler's time limit) unwinds the run like Ctrl-C.

    Python's default SIGTERM ends the process at once, without ``finally`` blocks or exit
    handlers, so the temporary Prefect server (a uvicorn child) and the Dask workers were left
    running. Here the first SIGTERM raises ``SystemExit(143)``: the open flow run is marked
    Crashed (Prefect's own SIGTERM bridge hands the signal on to this handler), the cluster and
    the server are stopped, and the process exits with the shell's code for SIGTERM. A second
    SIGTERM during that clean-up ends the process at once, as before. Only the main thread can
    set a handler, and a handler the caller installed is left alone.
    """
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def _exit(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
