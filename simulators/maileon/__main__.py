"""Serve the Maileon simulator: ``python -m simulators.maileon [--port N] [--key K] [--seed-contacts N]``."""

from __future__ import annotations

import argparse
import time

from simulators.common import SimServer

from .app import MaileonSim


def main() -> None:
    parser = argparse.ArgumentParser(description="Maileon REST API 1.0 simulator")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--key", default="sim-maileon-key")
    parser.add_argument("--seed-contacts", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sim = MaileonSim(api_key=args.key)
    if args.seed_contacts:
        sim.seed(args.seed_contacts, args.seed)
    server = SimServer(sim.app, port=args.port).start()
    print(f"Maileon simulator on {server.base_url}/1.0 (key {args.key!r}); control at {server.base_url}/_sim")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        sim.close()


if __name__ == "__main__":
    main()
