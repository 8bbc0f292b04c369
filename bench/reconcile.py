"""Benchmark: the reconcile flow at 10,000 / 100,000 persons (calls, wall time next to a bare paging
loop, peak RSS) and its peak RSS at 1,000,000 persons. Not a test; bounded and self-stopping.

    .venv/bin/python bench/reconcile.py [--sizes 10000 100000] [--rss-sizes 1000000] [--timeout 3600]

What runs where (every figure is pmsync's own, not the simulators'):

- one **simulator process** per size (this script with ``--serve``): both simulators served over HTTP
  (``simulators.common.SimServer``), seeded in-process with a consistent account: N Pipedrive persons
  (``PipedriveSim.seed``; Campaigns off, burst and daily limits lifted so the figures measure pmsync,
  not the limiter), a Newsletter field, ~70 % of the valid emails Newsletter=Subscribed with a confirmed
  Maileon contact holding exactly pmsync's mapping, ~3 % unsubscribed on both sides, plus 10 % Maileon-
  only contacts pmsync did not create. The process ends when its stdin closes or after ``--timeout``;
- one **Prefect server process** (``prefect server start``, a temporary PREFECT_HOME), shared;
- a fresh **worker process** per measurement (this script with ``--worker``), which reports its
  ``ru_maxrss``: the bare paging loop (connectors only: every person page, every contact page, the same
  fields reconcile asks for), then the reconcile **flow** (``flows.reconcile.reconcile``, a real flow run
  with its tasks) – a first full run on an empty store (maps every person, fetches organization names,
  writes the snapshot), a second full run with no changes (the call bound), an incremental run with no
  changes, and a full run after the Newsletter field was deleted (every subscribed email drifts: the
  brake holds; memory of the mass-drift path).

Bound checked on the no-change full run: Pipedrive calls ≤ ⌈N/500⌉ + constant, Maileon calls ≤
⌈M/1000⌉ + constant (M = live contacts; the constant includes the unsubscription report's pages).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import serving_process

PD_TOKEN = "bench-pipedrive-token"
ML_KEY = "bench-maileon-key"
SUBSCRIBED_SHARE = 0.70
UNSUBSCRIBED_SHARE = 0.03
NATIVE_SHARE = 0.10
ROOT = Path(__file__).resolve().parents[1]
RUNS = ("bare", "first_full", "nochange_full", "nochange_incremental", "massdrift_full")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


# ------------------------------------------------------------------------------- simulator process


def serve(persons: int, lifetime: float) -> None:
    """Seed both simulators consistently, serve them, print their addresses, wait for stdin EOF."""
    import gc
    import random

    from pmsync.rules.mapping import BUILTIN_CUSTOM_FIELDS, map_person
    from pmsync.rules.newsletter import NEWSLETTER_FIELD_NAME, NEWSLETTER_OPTIONS
    from pmsync.rules.status import is_valid_email, normalize_email
    from simulators.common import SimServer
    from simulators.maileon import MaileonSim
    from simulators.maileon.store import Contact, Unsubscription
    from simulators.pipedrive import PipedriveSim
    from simulators.pipedrive.store import Store
    from simulators.pipedrive.views import person_rest

    threading.Timer(lifetime, lambda: os._exit(3)).start()  # self-stopping whatever happens
    started = time.perf_counter()
    pd = PipedriveSim(token=PD_TOKEN)
    pd.configure(campaigns_enabled=False, burst_limit=1_000_000, daily_budget=10**12, abuse_threshold=10**6)
    pd.seed(persons=persons, deals=0, seed=0)
    ml = MaileonSim(api_key=ML_KEY)
    gc.disable()
    store = pd.store
    field = store.person_fields.add_custom(NEWSLETTER_FIELD_NAME, "enum", options=list(NEWSLETTER_OPTIONS),
                                           at=pd.clock.now_s())
    option = {o["label"]: o["id"] for o in field.options or []}
    for name, kind in BUILTIN_CUSTOM_FIELDS.items():
        ml.store.add_custom_field(name, kind)
    by_email: dict[str, list[Any]] = {}
    for p in store.persons.rows.values():
        email = p.primary_email
        if p.is_deleted or not email or not is_valid_email(normalize_email(email)):
            continue
        by_email.setdefault(normalize_email(email), []).append(p)
    rng = random.Random(1)
    now = ml.store.now()
    cid = 0
    counts = {"subscribed": 0, "unsubscribed": 0, "native": 0}
    for email, members in by_email.items():
        draw = rng.random()
        if draw < SUBSCRIBED_SHARE:
            for p in members:
                p.custom = {**(p.custom or {}), field.key: option["Subscribed"]}
            rep = min(members, key=lambda p: (-p.update_time, p.id))
            owner = store.users.get(rep.owner_id) or {}
            org = store.orgs.rows.get(rep.org_id) if rep.org_id else None
            mapped = map_person(person_rest(store, rep), email=email, company_id=Store.COMPANY_ID,
                                org_name=org.name if org else None, owner_name=owner.get("name"),
                                owner_email=owner.get("email"))
            custom = {k: ("true" if v is True else str(v)) for k, v in mapped.custom_fields.items()}
            cid += 1
            ml.store.add_seeded(Contact(cid, email, 4, mapped.external_id, now - 86400, now - 86400,
                                        dict(mapped.standard_fields), custom))
            counts["subscribed"] += 1
        elif draw < SUBSCRIBED_SHARE + UNSUBSCRIBED_SHARE:
            for p in members:
                p.custom = {**(p.custom or {}), field.key: option["Unsubscribed"]}
            cid += 1
            ml.store.add_unsubscription(Unsubscription(int((now - 3600) * 1000), cid, email, None, None, "link",
                                                       None, ml.store.next_msg_id(), ()))
            counts["unsubscribed"] += 1
    for n in range(int(persons * NATIVE_SHARE)):
        cid += 1
        ml.store.add_seeded(Contact(cid, f"native{n}@maileon-only.example", 4, None, now - 86400, now - 86400,
                                    {"FIRSTNAME": "Native"}, None))
        counts["native"] += 1
    ml.store._next_contact_id = cid + 1
    gc.collect()
    gc.freeze()  # the seeded rows are permanent: keep the collector from walking them on every request
    gc.enable()
    pd_server = SimServer(pd.app, port=0).start()
    ml_server = SimServer(ml.app, port=0).start()
    print(json.dumps({"pipedrive": pd_server.base_url, "maileon": ml_server.base_url + "/1.0",
                      "persons": persons, "contacts": counts["subscribed"] + counts["native"],
                      "unsubscriptions": counts["unsubscribed"], "seconds": round(time.perf_counter() - started, 1),
                      "rss_mb": round(rss_mb())}), flush=True)
    sys.stdin.read()  # until the parent closes the pipe
    pd_server.stop()
    ml_server.stop()
    os._exit(0)


# ----------------------------------------------------------------------------------- worker process


def settings(urls: dict[str, Any], db: str) -> Any:
    from pmsync.settings import Settings

    return Settings(_env_file=None, PIPEDRIVE_BASE_URL=urls["pipedrive"], PIPEDRIVE_API_TOKEN=PD_TOKEN,
                    MAILEON_BASE_URL=urls["maileon"], MAILEON_API_KEY=ML_KEY, PMSYNC_DATABASE_URL=f"sqlite:///{db}",
                    PMSYNC_TOKEN_BUDGET_PER_RUN=0, PMSYNC_HTTP_TIMEOUT_SECONDS=120)


def calls(stats: dict[str, Any]) -> dict[str, int]:
    return {k: v["calls"] for k, v in stats["by_endpoint"].items()}


def worker(what: str, urls: dict[str, Any], db: str, mode: str) -> None:
    import flows.reconcile  # noqa: F401  (imported before the freeze, as in a deployed run's process)
    from tasks.runtime import Runtime, freeze_startup_objects

    freeze_startup_objects()  # what a process does before its first run (tasks/runtime.py)
    rt = Runtime.from_settings(settings(urls, db))
    out: dict[str, Any] = {"what": what, "mode": mode}
    if what == "bare":
        from tasks.account import load_account, maileon_custom_field_types

        account = load_account(rt)
        base_pd, base_ml = rt.pipedrive.stats.calls, rt.maileon.stats.calls
        t0 = time.perf_counter()
        persons = sum(len(page.items) for page in rt.pipedrive.iter_person_pages(
            limit=500, custom_fields=[account.newsletter.key]))
        t1 = time.perf_counter()
        custom = list(maileon_custom_field_types(account))
        contacts = sum(len(page.items) for page in rt.maileon.iter_contact_pages(
            page_size=1000, standard_fields=["FIRSTNAME", "LASTNAME", "FULLNAME", "ORGANIZATION"], custom_fields=custom))
        t2 = time.perf_counter()
        out.update(persons=persons, contacts=contacts, pipedrive_seconds=round(t1 - t0, 2),
                   maileon_seconds=round(t2 - t1, 2), seconds=round(t2 - t0, 2),
                   pipedrive_calls=rt.pipedrive.stats.calls - base_pd, maileon_calls=rt.maileon.stats.calls - base_ml)
    else:
        from flows.reconcile import reconcile
        from tasks.runtime import use_runtime

        with use_runtime(rt):
            if what == "reconcile-after-newsletter-deleted":
                from tasks.account import load_account

                field_id = load_account(rt).newsletter.field_id
                assert field_id is not None
                rt.pipedrive.delete_person_field(field_id)  # every Newsletter value is gone: mass drift
                rt.cache.pop("account", None)
            t0 = time.perf_counter()
            report = reconcile(mode="full" if mode == "full" else "incremental", repair_threshold=0.05)
            seconds = time.perf_counter() - t0
        out.update(seconds=round(seconds, 2), status=report.status, persons_read=report.pipedrive.persons,
                   persons_mapped=report.pipedrive.mapped, contacts=report.maileon_contacts,
                   unsubscriptions=report.unsubscriptions, drift=report.drift.counts, planned=report.drift.planned,
                   tokens=report.tokens_spent, pipedrive_calls=report.pipedrive_calls,
                   maileon_calls=report.maileon_calls, pipedrive_by_endpoint=calls(rt.pipedrive.stats.snapshot()),
                   maileon_by_endpoint=calls(rt.maileon.stats.snapshot()))
    out["peak_rss_mb"] = round(rss_mb())
    rt.close()
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------- driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def prefect_server(home: Path, timeout: float) -> Any:
    import httpx

    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_API_URL": ""}
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    try:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Prefect server did not start")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()


def simulators(persons: int, timeout: float) -> Any:
    return serving_process([sys.executable, __file__, "--serve", str(persons), "--timeout", str(timeout)], ROOT)


def run_worker(what: str, urls: dict[str, Any], db: Path, mode: str, api_url: str, timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run([sys.executable, __file__, "--worker", what, "--urls", json.dumps(urls), "--db", str(db),
                           "--mode", mode], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"worker {what}/{mode} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


def measure(size: int, api_url: str, tmp: Path, timeout: float, bare: bool,
            only: set[str] | None = None) -> dict[str, Any]:
    db = tmp / f"pmsync-{size}.db"
    with simulators(size, timeout) as urls:
        print(f"\n== {size:,} persons: simulators seeded in {urls['seconds']} s (their own process, "
              f"{urls['rss_mb']} MB); {urls['contacts']:,} live Maileon contacts, {urls['unsubscriptions']:,} "
              "unsubscriptions", flush=True)
        runs: dict[str, Any] = {"sim": urls}
        if bare and (only is None or "bare" in only):
            runs["bare"] = run_worker("bare", urls, db, "-", api_url, timeout)
            show("bare paging loop", runs["bare"])
        for name, what, mode in (("first_full", "reconcile", "full"), ("nochange_full", "reconcile", "full"),
                                 ("nochange_incremental", "reconcile", "incremental"),
                                 ("massdrift_full", "reconcile-after-newsletter-deleted", "full")):
            if only is not None and name not in only:
                continue
            runs[name] = run_worker(what, urls, db, mode, api_url, timeout)
            show(f"reconcile {name}", runs[name])
        if "nochange_full" not in runs:
            return runs
        n, m = size, urls["contacts"]
        steady = runs["nochange_full"]
        pd_bound, ml_bound = math.ceil(n / 500), math.ceil(m / 1000)
        runs["bound"] = {"pipedrive_pages_bound": pd_bound, "pipedrive_constant": steady["pipedrive_calls"] - pd_bound,
                         "maileon_pages_bound": ml_bound, "maileon_constant": steady["maileon_calls"] - ml_bound}
        print(f"   call bound (no changes, full): Pipedrive {steady['pipedrive_calls']} = ⌈N/500⌉ {pd_bound} + "
              f"{steady['pipedrive_calls'] - pd_bound}; Maileon {steady['maileon_calls']} = ⌈M/1000⌉ {ml_bound} + "
              f"{steady['maileon_calls'] - ml_bound}", flush=True)
    return runs


def show(label: str, r: dict[str, Any]) -> None:
    extra = ""
    if "status" in r:
        extra = (f" status {r['status']}, planned {r['planned']}, persons read {r['persons_read']:,} "
                 f"(mapped {r['persons_mapped']:,}), tokens {r['tokens']:,}")
    else:
        extra = f" (Pipedrive {r['pipedrive_seconds']} s, Maileon {r['maileon_seconds']} s)"
    print(f"   {label:<30} {r['seconds']:>8.1f} s  calls Pipedrive {r['pipedrive_calls']:>5} Maileon "
          f"{r['maileon_calls']:>5}  peak RSS {r['peak_rss_mb']:>5} MB{extra}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--timeout", type=float, default=3600.0, help="per process, seconds")
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--runs", nargs="*", choices=RUNS, default=None,
                        help="at the --sizes, only these measurements (default: all of them)")
    parser.add_argument("--rss-runs", nargs="*", choices=RUNS, default=None,
                        help="at the --rss-sizes, only these measurements (default: all of them; a no-change run "
                             "needs first_full before it)")  # fmt: skip
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.timeout)
        return
    if args.worker:
        worker(args.worker, json.loads(args.urls), args.db, args.mode)
        return
    tmp = Path(tempfile.mkdtemp(prefix="pmsync-bench-"))
    results: dict[str, Any] = {}
    try:
        with prefect_server(tmp / "prefect", args.timeout) as api_url:
            print(f"Prefect server (own process): {api_url}", flush=True)
            for size in args.sizes:
                results[str(size)] = measure(size, api_url, tmp, args.timeout, bare=True,
                                             only=set(args.runs) if args.runs is not None else None)
            for size in args.rss_sizes:
                results[str(size)] = measure(size, api_url, tmp, args.timeout, bare=True,
                                             only=set(args.rss_runs) if args.rss_runs is not None else None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
