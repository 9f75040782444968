"""A tracking server that cannot answer: down, silent, or behind a proxy whose server is gone. plan, status
and apply stop within seconds (``MANTIK_TRACKING_TIMEOUT``, 15 s by default) with one line naming the URI,
instead of MLflow's minutes of retries; a server that answers, even with a refusal, is reachable."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from .conftest import git

pytestmark = pytest.mark.e2e

WAIT = "2"  # seconds, MANTIK_TRACKING_TIMEOUT for these tests
# MLflow's own retries behind a silent server take over a minute even at mantik's bounds (4 requests of 15 s):
# well below that, a command that stopped did so because it gave up waiting, not because MLflow did
STOPPED_WITHIN = 30


@contextmanager
def silent_server() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung server, or a firewall that swallows)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@contextmanager
def refused_port() -> Iterator[str]:
    """A port nobody listens on: the server is down."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused, and no one takes it
        yield f"http://127.0.0.1:{holder.getsockname()[1]}"


@contextmanager
def answering(status: int) -> Iterator[str]:
    """An HTTP server answering every request with ``status`` (a proxy: 503 when its server is gone)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def stops_in_one_line(project, uri: str, *args: str) -> str:
    started = time.monotonic()
    result = project.mantik(*args, check=1, env={"MLFLOW_TRACKING_URI": uri, "MANTIK_TRACKING_TIMEOUT": WAIT})
    elapsed = time.monotonic() - started
    assert elapsed < STOPPED_WITHIN, f"{' '.join(args)} took {elapsed:.0f} s"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: MLflow at {uri} unreachable: "), lines[0]
    assert f"waited {WAIT} s; MANTIK_TRACKING_TIMEOUT" in lines[0]
    return lines[0]


@pytest.mark.parametrize("verb", [("plan",), ("status",), ("apply", "--auto-approve")])
def test_a_silent_server_stops_each_verb_in_one_line(project, verb):
    with silent_server() as uri:
        assert stops_in_one_line(project, uri, *verb).endswith("no answer (waited 2 s; MANTIK_TRACKING_TIMEOUT "
                                                              "sets how long)")  # fmt: skip
    assert git(project.path, "status", "--porcelain") == ""  # nothing written


def test_a_server_that_is_down_or_behind_a_failing_proxy_stops_in_one_line(project):
    with refused_port() as uri:
        assert "Connection refused" in stops_in_one_line(project, uri, "plan")
    with answering(503) as uri:
        assert "HTTP 503" in stops_in_one_line(project, uri, "status")


def test_a_server_that_refuses_the_request_is_reached_and_its_answer_reported(project):
    """401 from a proxy that wants credentials is an answer: MLflow's own error is reported, not 'unreachable'."""
    with answering(401) as uri:
        result = project.mantik("plan", check=1, env={"MLFLOW_TRACKING_URI": uri, "MANTIK_TRACKING_TIMEOUT": WAIT})
    assert "unreachable" not in result.stderr
    assert result.stderr.startswith(f"Error: MLflow at {uri}"), result.stderr


def test_a_timeout_that_is_no_number_is_one_line(project):
    result = project.mantik(
        "plan", check=1, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MANTIK_TRACKING_TIMEOUT": "soon"}
    )
    assert result.stderr == "Error: MANTIK_TRACKING_TIMEOUT='soon': expected a positive number of seconds\n"
