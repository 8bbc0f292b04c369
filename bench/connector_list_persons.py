"""Benchmark: how fast the Pipedrive simulator answers, and what listing 100,000 persons costs the
connector (calls, tokens, seconds). Not a test; bounded and self-stopping.

    .venv/bin/python bench/connector_list_persons.py [--persons 100000] [--seconds 3]

Phases (one in-process simulator served over real HTTP by `simulators.common.SimServer`):

1. raw simulator throughput: a tight loop of ``GET /api/v2/persons?limit=1`` (plain httpx, one
   keep-alive connection) for ``--seconds`` or ``--max-requests``, whichever comes first;
2. the connector lists every person (``iter_person_pages(limit=500)``) with the simulator's burst
   window lifted (pure connector + simulator cost). The simulator runs in the same process, so both
   share the GIL (and the garbage collector walks the simulator's 100k rows too); the connector's own
   CPU cost is therefore measured separately by re-parsing the captured pages offline;
3. the same listing under the simulator's default burst window (80 requests / 2 s per token) –
   what a real account on a mid-size plan would see; the client's header-driven limiter paces it.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.http import default_transport
from connectors.pipedrive import PipedriveClient
from connectors.pipedrive_models import PersonPage
from simulators.common import SimServer
from simulators.pipedrive import PipedriveSim

TOKEN = "bench-pipedrive-token"
LIST_TIMEOUT_SECONDS = 600.0


def raw_throughput(base_url: str, seconds: float, max_requests: int) -> tuple[int, float]:
    headers = {"x-api-token": TOKEN}
    with httpx.Client(base_url=base_url, headers=headers) as client:
        client.get("/api/v2/persons", params={"limit": 1}).raise_for_status()  # connect + warm up
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while n < max_requests and time.perf_counter() < deadline:
            client.get("/api/v2/persons", params={"limit": 1}).raise_for_status()
            n += 1
        return n, time.perf_counter() - start


class CapturingTransport(httpx.BaseTransport):
    """Keeps every response body (to measure the client's parsing cost offline afterwards)."""

    def __init__(self) -> None:
        self.inner = default_transport()
        self.bodies: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        body = response.read()
        self.bodies.append(body)
        return httpx.Response(response.status_code, headers=response.headers, content=body, request=request)

    def close(self) -> None:
        self.inner.close()


def list_all(base_url: str, expected: int) -> dict[str, Any]:
    transport = CapturingTransport()
    with PipedriveClient(base_url, TOKEN, transport=transport) as client:
        start = time.perf_counter()
        seen = 0
        for page in client.iter_person_pages(limit=500):
            seen += len(page.items)
            if time.perf_counter() - start > LIST_TIMEOUT_SECONDS:
                raise SystemExit(f"listing aborted after {LIST_TIMEOUT_SECONDS:.0f} s ({seen} persons)")
        elapsed = time.perf_counter() - start
        stats = client.stats.snapshot()
    if seen != expected:
        raise SystemExit(f"listed {seen} persons, expected {expected}")
    return {
        "persons": seen,
        "seconds": elapsed,
        "calls": stats["calls"],
        "tokens": stats["tokens"],
        "retries": stats["retries"],
        "waited": stats["waited_seconds"],
        "status": stats["by_status"],
        "bodies": transport.bodies,
    }


def client_parse_seconds(bodies: list[bytes]) -> float:
    """What the connector spends per listing on JSON decoding + pydantic validation, alone."""
    start = time.perf_counter()
    for body in bodies:
        payload = json.loads(body)
        PersonPage.model_validate(
            {"items": payload["data"] or [], "next_cursor": payload["additional_data"]["next_cursor"]}
        )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of the raw loop")
    parser.add_argument("--max-requests", type=int, default=20_000, help="request cap of the raw loop")
    parser.add_argument("--json", type=Path, help="also write the figures here as one JSON object")
    args = parser.parse_args()

    sim = PipedriveSim(token=TOKEN)
    server = SimServer(sim.app).start()
    try:
        t0 = time.perf_counter()
        sim.seed(persons=args.persons, deals=0)
        seed_s = time.perf_counter() - t0
        default_burst = sim.config.burst_limit
        sim.configure(burst_limit=1_000_000, daily_budget=100_000_000)
        print(f"simulator: {server.base_url}, seeded {args.persons:,} persons in {seed_s:.1f} s")

        n, secs = raw_throughput(server.base_url, args.seconds, args.max_requests)
        print(f"raw GET /api/v2/persons?limit=1: {n / secs:,.0f} req/s ({n} requests in {secs:.2f} s)")

        free = list_all(server.base_url, args.persons)
        print(
            f"connector, burst window lifted:   {free['persons']:,} persons in {free['seconds']:.2f} s, "
            f"{free['calls']} calls, {free['tokens']} tokens, {free['retries']} retries "
            f"({free['persons'] / free['seconds']:,.0f} persons/s)"
        )
        # The simulator's 100k rows live in this process; freeze them so the garbage collector does
        # not walk them while we time the connector's parsing (a production process has no such heap).
        gc.collect()
        gc.freeze()
        parse_s = client_parse_seconds(free["bodies"])
        gc.unfreeze()
        free["bodies"] = []
        print(
            f"  of which the connector's own JSON decoding + validation (re-measured offline): {parse_s:.2f} s "
            f"({parse_s / free['calls'] * 1000:.1f} ms per 500-person page)"
        )
        sim.configure(burst_limit=default_burst)
        sim.limiter.reset()
        paced = list_all(server.base_url, args.persons)
        print(
            f"connector, burst {default_burst}/2 s (default): {paced['persons']:,} persons in {paced['seconds']:.2f} s, "
            f"{paced['calls']} calls, {paced['tokens']} tokens, {paced['retries']} retries, "
            f"limiter waited {paced['waited']:.2f} s, statuses {paced['status']}"
        )
        paced.pop("bodies")
        if args.json:
            figures = {"persons": args.persons, "page_size": 500, "seed_seconds": round(seed_s, 2),
                       "raw_requests": n, "raw_seconds": round(secs, 3), "raw_rps": round(n / secs, 1),
                       "free": free, "parse_seconds": round(parse_s, 3), "burst_limit": default_burst,
                       "paced": paced}  # fmt: skip
            args.json.write_text(json.dumps(figures, indent=2, default=str))
    finally:
        server.stop()
        sim.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
