"""`pmsync serve` as a user runs it: no PREFECT_API_URL → a local Prefect server with SQLite under
./.pmsync/, the receiver on --port, every deployment served; SIGTERM stops all of it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deployments.local_server import free_port, port_is_free

pytestmark = pytest.mark.prefect


def test_serve_starts_a_local_prefect_server_and_the_receiver_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PMSYNC_", "PIPEDRIVE_", "MAILEON_"))}
    env.update(PMSYNC_WEBHOOK_PASSWORD="serve-test-password", PMSYNC_WEBHOOK_SECRET="serve-test-secret",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING")
    pmsync = Path(sys.executable).parent / "pmsync"
    process = subprocess.Popen([str(pmsync), "serve", "--port", str(port), "--no-schedules"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 150
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            output.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(output)
        assert "Ctrl-C" in text, text
        assert f"127.0.0.1:{port}/webhooks/pipedrive" in text and "Prefect UI: http://127.0.0.1:" in text
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
        assert health["ok"] and health["prefect"] in {"reachable", "unknown"}
        assert (tmp_path / ".pmsync" / "prefect" / "prefect.db").exists()  # SQLite under ./.pmsync/
        ui = text.split("Prefect UI: ")[1].split()[0]
        prefect_port = int(ui.rsplit(":", 1)[1])
        deployments = httpx.post(f"{ui}/api/deployments/filter", json={}, timeout=10).json()
        assert "on-webhook" in {d["name"] for d in deployments}

        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        output.append(rest)
        assert process.returncode == 0, "".join(output)
        assert "Stopped." in rest
        assert port_is_free(port) and port_is_free(prefect_port)  # receiver and Prefect server are gone
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
