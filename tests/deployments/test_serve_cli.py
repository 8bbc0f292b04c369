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


def _serve_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PMSYNC_", "PIPEDRIVE_", "MAILEON_"))}
    env.update(PMSYNC_WEBHOOK_PASSWORD="serve-test-password", PMSYNC_WEBHOOK_SECRET="serve-test-secret",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING", **extra)
    return env


def test_serve_receiver_only_refuses_to_start_without_the_workers_prefect_server(tmp_path: Path) -> None:
    pmsync = Path(sys.executable).parent / "pmsync"
    done = subprocess.run([str(pmsync), "serve", "--receiver-only", "--port", str(free_port())], cwd=tmp_path,
                          env=_serve_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--receiver-only needs PREFECT_API_URL" in done.stdout
    assert not (tmp_path / ".pmsync" / "prefect").exists()  # no local server was started


def test_serve_receiver_only_stores_webhooks_for_remote_workers_and_starts_no_prefect_server(tmp_path: Path) -> None:
    port, store = free_port(), tmp_path / "shared.db"
    # The workers' Prefect server is down: the receiver answers and stores anyway.
    env = _serve_env(PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api", PMSYNC_DATABASE_URL=f"sqlite:///{store}")
    pmsync = Path(sys.executable).parent / "pmsync"
    process = subprocess.Popen([str(pmsync), "serve", "--receiver-only", "--port", str(port)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("Ctrl-C" in line for line in output):
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            output.append(line)
        text = "".join(output)
        assert "Receiver only" in text and "Serving" not in text, text
        body = {"meta": {"id": "d-1", "action": "change", "entity": "person", "entity_id": "7", "version": "2.0",
                         "timestamp": "2026-11-22T10:00:00Z", "company_id": 1, "user_id": 1},
                "data": {"id": 7, "name": "A", "emails": [{"value": "a@example.org", "primary": True}]},
                "previous": None}
        r = httpx.post(f"http://127.0.0.1:{port}/webhooks/pipedrive", json=body, timeout=10,
                       auth=("pmsync", "serve-test-password"))
        assert r.status_code == 200, r.text
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["inbox_pending"] == 1
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
        assert process.returncode == 0, text + rest
        assert not (tmp_path / ".pmsync" / "prefect").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
