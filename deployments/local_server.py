"""A local Prefect server for `pmsync serve` and `pmsync demo` when PREFECT_API_URL is unset.

Prefect's ephemeral mode (no API URL) runs no scheduler — schedules never fire — and loses task-run
records when the process exits, so pmsync starts a real ``prefect server start`` instead: SQLite
under ``<state dir>/prefect/`` (``PREFECT_HOME``), its own process group (Ctrl-C in the terminal
reaches pmsync, which stops the runs first and the server last), output in ``server.log`` there.

::

    with LocalPrefectServer(Path(".pmsync/prefect")) as server:   # ~12 s on a fresh database
        use_api(server.api_url)                                     # this process and its children

The server's database is SQLite by default. ``database_url`` — or ``PREFECT_SERVER_DATABASE_CONNECTION_URL``
in the environment — puts it on PostgreSQL instead (``postgresql+asyncpg://user@host:5432/db``; the
database needs the ``pg_trgm`` extension), the first step when one machine is not enough (README,
"Scaling out").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

DEFAULT_PORT = 4200
#: Prefect's own variables that are the user's to choose for the server (its database) and are passed
#: through; every other PREFECT_* variable is dropped, so a client-side PREFECT_API_URL (or a test
#: harness's settings) cannot leak into the server.
PASSED_THROUGH = ("PREFECT_SERVER_DATABASE_", "PREFECT_API_DATABASE_", "PREFECT_SERVER_DEPLOYMENTS_")
#: Seconds before a run that found its deployment's concurrency slot taken asks again. Prefect's
#: default, 30 s, would hold a webhook burst that arrives while a drain runs (ENQUEUE) for half a
#: minute; the drain takes about a second.
CONCURRENCY_SLOT_WAIT_SECONDS = "1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on ``port`` (closed connections lingering in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def prefect_command() -> list[str]:
    """The `prefect` CLI of this interpreter's environment."""
    script = Path(sys.executable).parent / "prefect"
    if script.exists():
        return [str(script)]
    found = shutil.which("prefect")
    return [found] if found else [sys.executable, "-m", "prefect"]


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class LocalPrefectServer:
    """``prefect server start`` in a subprocess with SQLite under ``home`` (its PREFECT_HOME)."""

    def __init__(self, home: Path, *, host: str = "127.0.0.1", port: int | None = None, ui: bool = True,
                 database_url: str | None = None) -> None:
        self.home = Path(home).resolve()
        #: None: SQLite under ``home`` unless the environment names a database.
        self.database_url = database_url
        self.host = host
        self.port = port if port is not None else (DEFAULT_PORT if port_is_free(DEFAULT_PORT, host) else free_port(host))
        self.ui = ui
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.home / "server.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PREFECT_") or k.startswith(PASSED_THROUGH)}
        if self.database_url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
        env.setdefault("PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS", CONCURRENCY_SLOT_WAIT_SECONDS)
        env.update({
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        })
        return env

    def start(self, timeout: float = 120.0) -> LocalPrefectServer:
        if self.process is not None:
            return self
        self.home.mkdir(parents=True, exist_ok=True)
        args = [*prefect_command(), "server", "start", "--host", self.host, "--port", str(self.port)]
        if not self.ui:
            args.append("--no-ui")
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.environment(), cwd=self.home, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self.process = None
                raise RuntimeError(f"the local Prefect server exited during start-up; its log ({self.log_path}) "
                                   f"ends with:\n{tail}")
            if api_healthy(self.api_url, timeout=1.0):
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the local Prefect server did not answer within {timeout:.0f} s; see {self.log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn workers
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def restarted(self) -> LocalPrefectServer:
        """Stop this server and start one on the same home, port and database."""
        self.stop()
        return LocalPrefectServer(self.home, host=self.host, port=self.port, ui=self.ui,
                                  database_url=self.database_url).start()

    @property
    def database(self) -> str:
        """Where the server keeps its data, for messages (password hidden)."""
        return configured_database(self.database_url) or f"SQLite under {self.home}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> LocalPrefectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def configured_database(database_url: str | None = None) -> str | None:
    """The local server's database other than its SQLite default: ``database_url`` or the one the
    environment names, password hidden; None for SQLite."""
    url = database_url or next((v for k, v in os.environ.items()
                                if k.startswith(PASSED_THROUGH) and k.endswith("CONNECTION_URL")), None)
    if not url:
        return None
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def use_api(api_url: str) -> None:
    """Point this process — and every process it starts — at ``api_url``."""
    from prefect.context import refresh_global_settings_context

    os.environ["PREFECT_API_URL"] = api_url
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    refresh_global_settings_context()


def restore_api(previous: str | None) -> None:
    """Undo :func:`use_api` (``previous``: the PREFECT_API_URL before it)."""
    from prefect.context import refresh_global_settings_context

    if previous is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = previous
    refresh_global_settings_context()


def configured_api_url() -> str | None:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url
