"""A real `prefect server start` (SQLite, loopback, its own PREFECT_HOME) for tests that need one.

Not the in-process test harness: the point is to test what a hospital engineer runs, the bundled
`prefect` CLI and server processes, event triggers and served deployments included.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

PREFECT = Path(sys.executable).with_name("prefect")


@dataclass(frozen=True)
class LiveServer:
    api_url: str
    home: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of a client process of this server (CLI, `mrifoundry serve`)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_LEVEL="INFO",
        )
        env.update(extra)
        return env

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(PREFECT), *args], env=self.env(COLUMNS="250"), capture_output=True, text=True, timeout=timeout
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group we started (server or serve and their children), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    server = LiveServer(api_url=f"http://127.0.0.1:{port}/api", home=home, log=home / "server.log")
    env = server.env(
        PREFECT_UI_ENABLED="false",
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
    )
    env.pop("PREFECT_API_URL")
    with server.log.open("w") as log:
        proc = subprocess.Popen(
            [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while not _healthy(server.api_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start (rc {proc.poll()}):\n{server.log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        stop(proc)
