"""A real `mlflow server` on a free port of 127.0.0.1, started and stopped by the test that uses it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..conftest import free_port, place_store

MLFLOW = str(Path(sys.executable).parent / "mlflow")


class MlflowServer:
    """A real `mlflow server` on a free port of 127.0.0.1, with the gunicorn options that keep its per-call
    latency in milliseconds; its runs in ``backend_uri`` (default: a sqlite file in ``directory``, copied from
    the migrated ``template`` when given)."""

    def __init__(self, directory: Path, template: Path | None = None, backend_uri: str | None = None):
        self.directory = directory
        self.backend_uri = backend_uri or f"sqlite:///{directory / 'mlflow.db'}"
        if template is not None:  # migrated already: the server starts without running migrations
            place_store(template, directory / "mlflow.db")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                MLFLOW, "server", "--backend-store-uri", self.backend_uri,
                "--artifacts-destination", str(self.directory / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "2",
                "--gunicorn-opts", "--log-level warning",
            ],  # fmt: skip
            stdout=open(self.directory / "server.log", "ab"),  # noqa: SIM115 - the server keeps it open
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # MLflow 3's job execution (GenAI scorers, trace roll-ups) runs a huey consumer beside the server that
            # polls for work all its life; no tracking call mantik makes reaches it
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"mlflow server did not start: {(self.directory / 'server.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


@contextlib.contextmanager
def running_server(tmp_path: Path, store_template: Path):
    """A started server on a copy of the migrated store template, stopped at the end (a test's fixture body);
    fails, never skips, when `mlflow server` is not installed."""
    from ..conftest import missing

    if not Path(MLFLOW).exists() or subprocess.run([MLFLOW, "server", "--help"], capture_output=True).returncode:
        missing("the mlflow server is not installed: pip install -e '.[test]'")
    server = MlflowServer(tmp_path / "server", store_template)
    server.start()
    try:
        yield server
    finally:
        server.stop()
