"""The `pmsync` command line (cyclopts, the CLI library Prefect already brings).

Each command parses its arguments, calls a flow or a simulator, and prints what it did in plain words.
Heavy imports happen inside the commands so `pmsync --help` stays fast.
"""

from __future__ import annotations

import signal
import threading
import time

from cyclopts import App

from pmsync import __version__

app = App(
    name="pmsync",
    help="Consent-safe two-way sync between Pipedrive and Maileon, run as Prefect flows.",
    version=__version__,
)


@app.command
def simulate(
    *,
    pipedrive_port: int = 8101,
    maileon_port: int = 8102,
    seed_persons: int = 200,
    seed_deals: int = 100,
    seed_contacts: int = 0,
    pipedrive_token: str = "sim-pipedrive-token",
    maileon_key: str = "sim-maileon-key",
    duration: float = 0.0,
) -> int:
    """Serve the Pipedrive and Maileon simulators on loopback until interrupted.

    Parameters
    ----------
    pipedrive_port
        Port of the Pipedrive simulator (0 picks a free one).
    maileon_port
        Port of the Maileon simulator (0 picks a free one).
    seed_persons
        Persons to seed in Pipedrive (with organizations, owners, shared and missing emails).
    seed_deals
        Deals to seed in Pipedrive.
    seed_contacts
        Contacts to seed in Maileon (none by default: pmsync creates them).
    pipedrive_token
        API token the Pipedrive simulator accepts.
    maileon_key
        API key the Maileon simulator accepts.
    duration
        Stop after this many seconds (0 = run until Ctrl-C).
    """
    from simulators.common import SimServer
    from simulators.maileon import MaileonSim
    from simulators.pipedrive import PipedriveSim

    pipedrive = PipedriveSim(token=pipedrive_token)
    maileon = MaileonSim(api_key=maileon_key)
    started = time.monotonic()
    pipedrive.seed(persons=seed_persons, deals=seed_deals)
    if seed_contacts:
        maileon.seed(contacts=seed_contacts)
    seeded_in = time.monotonic() - started
    with SimServer(pipedrive.app, port=pipedrive_port) as pd_server, SimServer(maileon.app, port=maileon_port) as ml_server:
        print(f"Seeded {seed_persons} persons, {seed_deals} deals, {seed_contacts} contacts in {seeded_in:.1f} s.")
        print(f"Pipedrive simulator: {pd_server.base_url}   (x-api-token: {pipedrive_token})")
        print(f"Maileon simulator:   {ml_server.base_url}/1.0   (API key: {maileon_key})")
        print("Point pmsync at them with:")
        print(f"  export PIPEDRIVE_BASE_URL={pd_server.base_url} PIPEDRIVE_API_TOKEN={pipedrive_token}")
        print(f"  export MAILEON_BASE_URL={ml_server.base_url}/1.0 MAILEON_API_KEY={maileon_key}")
        print("Control surface: GET /_sim/requests, POST /_sim/reset, POST /_sim/faults on both. Ctrl-C stops.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait(timeout=duration or None)
        except KeyboardInterrupt:
            pass
    pipedrive.close()
    maileon.close()
    print("Simulators stopped.")
    return 0


@app.command
def demo(*, duration: float = 10.0) -> int:
    """Everything local: seeded simulators, served briefly, with their addresses printed.

    Parameters
    ----------
    duration
        Seconds to keep the simulators up.
    """
    return simulate(pipedrive_port=0, maileon_port=0, duration=duration)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
