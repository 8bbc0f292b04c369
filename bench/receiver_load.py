"""Webhook receiver under load on loopback: throughput, latency percentiles, and zero lost deliveries.

Starts the receiver (``deployments.receiver``) in a process of its own with a fresh store (SQLite in
a temporary directory by default; ``--database-url`` for PostgreSQL, in a schema of its own that is
dropped afterwards), Prefect event forwarding into an in-process stub (``--prefect stub``: counts
the events, no network) or at an unreachable address (``--prefect unreachable``), then offers
Pipedrive v2 person/deal deliveries with HTTP Basic auth at a fixed rate from a bounded number of
concurrent connections (asyncio + httpx), mixing in duplicates (a later retry of a delivery and
concurrent twins), until the count is sent or the duration is up. Then it reads the inbox back:

- lost = unique deliveries answered 2xx but absent from the inbox (must be 0);
- duplicates stored once = the inbox holds exactly one row per unique delivery answered 2xx.

    .venv/bin/python bench/receiver_load.py                                  # the report's scenario
    .venv/bin/python bench/receiver_load.py --rate 0 --concurrency 32        # closed loop, saturation
    .venv/bin/python bench/receiver_load.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/receiver_load.py --json out.json

Goal (issue 7): ≥ 500 req/s with p99 ≤ 50 ms and zero lost on a 2-core machine. The exit status is 1
when a delivery was lost or stored twice (not when a latency goal is missed: the figures say so).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile

USER = "pmsync"
RATE_GOAL = 500.0
P99_GOAL_MS = 50.0


# ----------------------------------------------------------------------------- receiver process


def serve(database_url: str, schema: str | None, prefect: str, password: str, secret: str) -> None:
    """The receiver's process: prints ``PORT <n>``, serves until stdin closes, prints ``STATS {…}``."""
    import logging

    from connectors.store import Store
    from deployments.receiver import EventForwarder, ReceiverServer, create_app
    from pmsync.settings import Settings

    logging.basicConfig(level=logging.WARNING)
    settings = Settings(_env_file=None, PMSYNC_DATABASE_URL=database_url,  # type: ignore[call-arg]
                        PMSYNC_WEBHOOK_PASSWORD=password, PMSYNC_WEBHOOK_SECRET=secret)
    store = Store.from_url(database_url, schema=schema)
    posted: list[int] = []

    def stub(request: httpx.Request) -> httpx.Response:
        posted.append(len(json.loads(request.content)))
        return httpx.Response(204)

    if prefect == "stub":
        forwarder = EventForwarder("http://prefect.stub/api", transport=httpx.MockTransport(stub))
    else:  # port 9 (discard) on loopback: connection refused, the forwarder keeps the events and retries
        forwarder = EventForwarder("http://127.0.0.1:9/api", retry_seconds=3.0)
    server = ReceiverServer(create_app(settings, store=store, forwarder=forwarder), port=0).start()
    print(f"PORT {server.port}", flush=True)
    sys.stdin.read()  # the parent closes stdin to stop us
    receiver = server.app.state.receiver
    server.stop()
    import importlib.util

    fast = [m for m in ("httptools", "uvloop") if importlib.util.find_spec(m)]
    http = f"uvicorn + {' + '.join(fast)}" if fast else "uvicorn + h11 + asyncio"
    stats = {"http": http, "counts": receiver.counts, "batches": receiver.writer.batches, "events_posted": sum(posted), "events_waiting": len(forwarder.pending)}
    store.close()
    print("STATS " + json.dumps(stats), flush=True)


@dataclass
class Backend:
    """The store the receiver writes to, created fresh for this run and removed afterwards."""

    url: str
    schema: str | None
    label: str
    tmpdir: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def create(cls, database_url: str | None) -> Backend:
        if not database_url:
            tmp = tempfile.TemporaryDirectory(prefix="pmsync-load-")
            return cls(f"sqlite:///{tmp.name}/pmsync.db", None, "sqlite (WAL, synchronous=FULL)", tmp)
        schema = f"pmsync_load_{os.getpid()}_{secrets.token_hex(3)}"
        return cls(database_url, schema, f"postgresql (schema {schema}, dropped afterwards)")

    def delivery_ids(self) -> list[str]:
        from sqlalchemy import select

        from connectors.store import Store
        from connectors.store.models import InboxEvent, table_of

        inbox = table_of(InboxEvent)
        store = Store.from_url(self.url, schema=self.schema)
        try:
            with store.engine.connect() as conn:
                rows = conn.execute(select(inbox.c.delivery_id).where(inbox.c.source == "pipedrive"))
                return [row[0] for row in rows]
        finally:
            store.close()

    def drop(self) -> None:
        if self.tmpdir is not None:
            self.tmpdir.cleanup()
            return
        from sqlalchemy import create_engine, text

        from connectors.store.engine import normalize_url

        engine = create_engine(normalize_url(self.url))
        try:
            with engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        finally:
            engine.dispose()


class ReceiverProcess:
    def __init__(self, backend: Backend, prefect: str, password: str, secret: str) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", backend.url, "--prefect", prefect]
        if backend.schema:
            command += ["--schema", backend.schema]
        env = {**os.environ, "PMSYNC_LOAD_PASSWORD": password, "PMSYNC_LOAD_SECRET": secret}
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"the receiver did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait(timeout=30)
        for line in out.splitlines():
            if line.startswith("STATS "):
                return dict(json.loads(line[6:]))
        return {}


# ------------------------------------------------------------------------------------- the load


def delivery(n: int, run: str) -> tuple[str, bytes]:
    """A realistic Pipedrive webhook v2 body (person or deal, create or change) and its ``meta.id``."""
    delivery_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run}/{n}"))
    entity = "person" if n % 3 else "deal"
    action = "create" if n % 7 == 0 else "change"
    entity_id = 10_000 + n
    if entity == "person":
        data: dict[str, Any] = {
            "id": entity_id, "name": f"Person {n}", "first_name": "Person", "last_name": str(n),
            "emails": [{"label": "work", "value": f"person{n}@example.org", "primary": True}],
            "phones": [{"label": "work", "value": f"+49 30 {n:07d}", "primary": True}],
            "owner_id": 12, "org_id": 3, "visible_to": 3, "label_ids": [],
            "add_time": "2026-01-24T15:18:35Z", "update_time": "2026-01-24T15:18:35Z",
            "custom_fields": {"a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2": 41},
        }
        previous: dict[str, Any] | None = None if action == "create" else {"custom_fields": {
            "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2": 40}}
    else:
        data = {
            "id": entity_id, "title": f"Deal {n}", "value": 1200.5, "currency": "EUR", "status": "open",
            "stage_id": 2, "pipeline_id": 1, "person_id": 10_000 + n - 1, "org_id": 3, "owner_id": 12,
            "add_time": "2026-01-24T15:18:35Z", "update_time": "2026-01-24T15:18:35Z", "custom_fields": {},
        }
        previous = None if action == "create" else {"stage_id": 1}
    body = {
        "data": data, "previous": previous,
        "meta": {"action": action, "entity": entity, "entity_id": str(entity_id), "id": delivery_id,
                 "company_id": "7", "correlation_id": str(uuid.uuid4()), "is_bulk_edit": False,
                 "timestamp": "2026-01-24T15:18:35.616Z", "type": "general", "user_id": "12",
                 "version": "2.0", "webhook_id": "42", "webhook_owner_id": "12", "change_source": "app",
                 "attempt": 1},
    }
    return delivery_id, json.dumps(body).encode()


def schedule(unique: int, duplicate_share: float, run: str) -> list[tuple[str, bytes, bool]]:
    """(delivery id, body, is-a-repeat) in sending order: every 1/share-th delivery gets a repeat,
    alternately sent right behind it (concurrent twins) or ~50 requests later (a retry)."""
    out: list[tuple[str, bytes, bool]] = []
    later: dict[int, tuple[str, bytes]] = {}
    every = max(1, round(1 / duplicate_share)) if duplicate_share > 0 else 0
    for n in range(unique):
        delivery_id, body = delivery(n, run)
        out.append((delivery_id, body, False))
        if every and n % every == 0:
            if (n // every) % 2 == 0:
                out.append((delivery_id, body, True))
            else:
                later[n + 50] = (delivery_id, body)
        if n in later:
            out.append((*later.pop(n), True))
    out += [(d, b, True) for d, b in later.values()]
    return out


class RawPool:
    """Keep-alive HTTP/1.1 connections on asyncio streams, one request at a time per connection.

    Why not httpx: on this 2-core machine an httpx request costs the sender ~2 ms of CPU, about as
    much as the receiver spends answering it, so the sender (not the receiver) would be measured.
    A pre-encoded request on a raw stream costs a tenth of that. ``--client httpx`` is kept to check
    that both give the same answers.
    """

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port = host, port
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(None)  # opened on first use

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        conn = await self._idle.get()
        try:
            if conn is None:
                conn = await asyncio.open_connection(self.host, self.port)
            reader, writer = conn
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{head}"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionResetError("connection closed by the receiver")
            status = int(status_line.split()[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            await reader.readexactly(length)
            if close:
                writer.close()
                conn = None
            return status
        except BaseException:
            if conn is not None:
                conn[1].close()
            conn = None
            raise
        finally:
            self._idle.put_nowait(conn)

    async def aclose(self) -> None:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn is not None:
                conn[1].close()


@dataclass
class Results:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    acknowledged: set[str] = field(default_factory=set)
    sent_unique: set[str] = field(default_factory=set)
    duplicates_sent: int = 0
    max_lag_ms: float = 0.0
    seconds: float = 0.0


async def fire(url: str, plan: list[tuple[str, bytes, bool]], *, rate: float, concurrency: int,
               duration: float, password: str, record: bool, results: Results, client: str = "raw") -> None:
    """Offer ``plan`` at ``rate`` req/s (0: as fast as ``concurrency`` connections allow)."""
    headers = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode(),
               "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()

    async def one(send: Any, delivery_id: str, body: bytes, repeat: bool) -> None:
        try:
            started = time.perf_counter()
            try:
                status = str(await send("/webhooks/pipedrive", body, headers))
            except (httpx.HTTPError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
                status = type(exc).__name__
            elapsed_ms = (time.perf_counter() - started) * 1000
            if record:
                results.latencies_ms.append(elapsed_ms)
                results.statuses[status] += 1
                results.duplicates_sent += repeat
            if status.startswith("2"):
                results.acknowledged.add(delivery_id)
        finally:
            slots.release()

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10.0) as http:
        async def via_httpx(path: str, body: bytes, headers: dict[str, str]) -> int:
            return (await http.post(path, content=body, headers=headers)).status_code

        parts = httpx.URL(url)
        pool = RawPool(parts.host, parts.port or 80, concurrency)
        send = via_httpx if client == "httpx" else pool.post
        began = time.perf_counter()
        for i, (delivery_id, body, repeat) in enumerate(plan):
            now = time.perf_counter()
            if now - began > duration:
                break
            if rate > 0:
                due = began + i / rate
                if due > now:
                    await asyncio.sleep(due - now)
                else:
                    results.max_lag_ms = max(results.max_lag_ms, (now - due) * 1000)
            await slots.acquire()
            results.sent_unique.add(delivery_id)
            task = asyncio.create_task(one(send, delivery_id, body, repeat))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        results.seconds = time.perf_counter() - began
        await pool.aclose()


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=12_000, help="unique deliveries to send (default 12000)")
    parser.add_argument("--duplicates", type=float, default=0.1,
                        help="share of deliveries sent twice (default 0.1)")
    parser.add_argument("--rate", type=float, default=600.0,
                        help="offered requests per second; 0 = closed loop, as fast as possible (default 600)")
    parser.add_argument("--concurrency", type=int, default=64, help="maximum requests in flight (default 64)")
    parser.add_argument("--duration", type=float, default=40.0,
                        help="stop sending after this many seconds (default 40)")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured deliveries sent first (default 300)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a fresh SQLite file)")
    parser.add_argument("--prefect", choices=["stub", "unreachable"], default="stub",
                        help="where the receiver posts its Prefect events (default: an in-process stub)")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="sender: keep-alive HTTP/1.1 on asyncio streams (default) or httpx")
    parser.add_argument("--json", type=Path, help="also write the figures to this file as JSON")
    parser.add_argument("--serve", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve:
        serve(args.serve, args.schema, args.prefect, os.environ["PMSYNC_LOAD_PASSWORD"],
              os.environ["PMSYNC_LOAD_SECRET"])
        return 0

    print("$ " + shlex.join([sys.executable, *sys.argv]), flush=True)
    password, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    backend = Backend.create(args.database_url)
    prefect_label = ("in-process stub (events counted, no network)" if args.prefect == "stub"
                     else "unreachable (127.0.0.1:9, events kept and retried)")
    print(f"backend: {backend.label}; Prefect events: {prefect_label}")
    print(f"offered: {args.requests} unique deliveries + {args.duplicates:.0%} duplicates, "
          f"{'closed loop' if args.rate <= 0 else f'{args.rate:.0f} req/s'}, "
          f"≤ {args.concurrency} in flight, ≤ {args.duration:.0f} s", flush=True)
    run = uuid.uuid4().hex
    results = Results()
    receiver = ReceiverProcess(backend, args.prefect, password, secret)
    try:
        if args.warmup:
            warm = [(d, b, False) for d, b in (delivery(n, run + "-warmup") for n in range(args.warmup))]
            asyncio.run(fire(receiver.url, warm, rate=0, concurrency=8, duration=30, password=password,
                             record=False, results=results, client=args.client))
        plan = schedule(args.requests, args.duplicates, run)
        server_cpu, client_cpu = cpu_seconds(receiver.proc.pid), cpu_seconds(os.getpid())
        asyncio.run(fire(receiver.url, plan, rate=args.rate, concurrency=args.concurrency,
                         duration=args.duration, password=password, record=True, results=results,
                         client=args.client))
        server_cpu, client_cpu = cpu_seconds(receiver.proc.pid) - server_cpu, cpu_seconds(os.getpid()) - client_cpu
    finally:
        server_stats = receiver.stop()
    try:
        stored = backend.delivery_ids()
    finally:
        backend.drop()

    rows = Counter(stored)
    lost = sorted(results.acknowledged - rows.keys())
    stored_once = all(rows[d] == 1 for d in results.acknowledged) and len(stored) == len(rows)
    lat = results.latencies_ms
    requests = len(lat)
    figures: dict[str, Any] = {
        "requests": requests,
        "seconds": round(results.seconds, 3),
        "rps": round(requests / results.seconds, 1) if results.seconds else 0.0,
        "p50_ms": round(percentile(lat, 0.50), 2),
        "p95_ms": round(percentile(lat, 0.95), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "max_ms": round(max(lat, default=float("nan")), 2),
        "lost": len(lost),
        "duplicates_stored_once": stored_once,
        "statuses": dict(sorted(results.statuses.items())),
        "backend": backend.label,
        "offered_rps": args.rate,
        "concurrency": args.concurrency,
        "duplicates_sent": results.duplicates_sent,
        "unique_acknowledged": len(results.acknowledged),
        "inbox_rows": len(stored),
        "prefect": args.prefect,
        "prefect_events_posted": server_stats.get("events_posted"),
        "receiver_counts": server_stats.get("counts"),
        "max_schedule_lag_ms": round(results.max_lag_ms, 2),
        "receiver_cpu_ms_per_request": round(server_cpu * 1000 / requests, 3) if requests else None,
        "sender_cpu_ms_per_request": round(client_cpu * 1000 / requests, 3) if requests else None,
        "receiver_http": server_stats.get("http"),
        "load_average": os.getloadavg()[0],
    }
    print(f"requests {requests} in {figures['seconds']} s = {figures['rps']} req/s "
          f"(goal ≥ {RATE_GOAL:.0f}; sender at most {figures['max_schedule_lag_ms']} ms behind schedule)")
    print(f"latency ms: p50 {figures['p50_ms']}  p95 {figures['p95_ms']}  p99 {figures['p99_ms']} "
          f"(goal ≤ {P99_GOAL_MS:.0f})  max {figures['max_ms']}")
    print(f"statuses: {figures['statuses']}; receiver: {figures['receiver_counts']}")
    print(f"CPU per request: receiver {figures['receiver_cpu_ms_per_request']} ms ({figures['receiver_http']}), "
          f"sender {figures['sender_cpu_ms_per_request']} ms; 1-min load average {figures['load_average']:.1f} "
          f"on {os.cpu_count()} CPUs (other processes share them)")
    print(f"lost: {len(lost)} (unique deliveries answered 2xx but not in the inbox); "
          f"duplicates sent: {results.duplicates_sent}, stored once: {stored_once} "
          f"({len(stored)} inbox rows for {len(results.acknowledged)} acknowledged unique deliveries "
          f"incl. {args.warmup} warm-up)")
    if args.prefect == "stub":
        print(f"Prefect events posted to the stub: {figures['prefect_events_posted']}")
    met = figures["rps"] >= RATE_GOAL and figures["p99_ms"] <= P99_GOAL_MS and not lost and stored_once
    print("goal met" if met else "goal NOT met")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if not lost and stored_once else 1


if __name__ == "__main__":
    sys.exit(main())
