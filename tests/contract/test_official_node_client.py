"""The official Pipedrive npm client (`pipedrive`, v2 PersonsApi and DealsApi) works against the simulator.

`tests/contract/node/drive_sim.js` pages through persons and deals, creates, updates, searches and
deletes them with the SDK pointed at `<simulator>/api/v2`; this test checks what the SDK saw and what
the simulator now holds. The package (pinned in package.json / package-lock.json) is installed into
`tests/contract/node/node_modules` once and reused.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).with_name("node")
SCRIPT = NODE_DIR / "drive_sim.js"

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def node_client() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed to run the official Pipedrive JavaScript client")
    if not (NODE_DIR / "node_modules" / "pipedrive" / "package.json").is_file():
        command = "ci" if (NODE_DIR / "package-lock.json").is_file() else "install"
        done = subprocess.run([npm, command, "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, f"npm {command} failed in {NODE_DIR}:\n{done.stdout}\n{done.stderr}"
    return Path(node)


def test_the_official_node_client_lists_pages_creates_updates_and_deletes_persons_and_deals(
    pipedrive_sim, node_client
):
    sim = pipedrive_sim.sim
    sim.seed(persons=30, deals=20)
    done = subprocess.run([str(node_client), str(SCRIPT), pipedrive_sim.base_url, pipedrive_sim.secret],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, f"the node script failed:\n{done.stderr}"
    out = json.loads(done.stdout)

    live = [p.id for p in sim.persons.values() if not p.is_deleted and p.id <= 30]
    assert out["persons"]["ids"] == live
    assert out["persons"]["pages"] == math.ceil(len(live) / 7)
    by_update = sorted((sim.persons[i].update_time, i) for i in live)
    assert out["personsByUpdate"]["ids"] == [i for _, i in by_update]

    created, updated, fetched = out["created"], out["updated"], out["fetched"]
    pid = created["id"]
    assert created["marketing_status"] == "subscribed" and created["owner_id"] == 2
    assert updated["name"] == fetched["name"] == "Node Person Renamed"
    assert fetched["marketing_status"] == "unsubscribed"
    assert out["search"] == [{"id": pid, "emails": ["node.person@example.com"]}]
    assert sim.persons[pid].name == "Node Person Renamed" and sim.persons[pid].is_deleted
    assert sim.marketing_status("node.person@example.com") == "unsubscribed"
    assert out["personDeleted"] == {"id": pid}

    seeded_deals = [d.id for d in sim.deals.values() if d.id <= 20 and not d.is_deleted and not d.is_archived]
    assert out["deals"]["ids"] == seeded_deals
    deal = out["dealCreated"]
    assert deal["person_id"] == pid and deal["value"] == 1234.5 and deal["status"] == "open"
    assert out["dealUpdated"]["status"] == "won" and out["dealUpdated"]["won_time"]
    assert out["dealDeleted"] == {"id": deal["id"]}
    assert sim.deals[deal["id"]].is_deleted and sim.deals[deal["id"]].status == "won"
    assert deal["id"] in out["deletedDeals"]["ids"]

    # the SDK rejects with the error envelope itself (it exposes neither status nor headers)
    assert out["missingPerson"]["success"] is False and out["missingPerson"]["error"] == "Person not found"
    assert out["badLimit"]["success"] is False and "limit" in out["badLimit"]["error"]

    log = sim.state.requests
    assert {r["path"] for r in log} >= {
        "/api/v2/persons",
        "/api/v2/persons/search",
        "/api/v2/deals",
        f"/api/v2/persons/{pid}",
    }
    assert sim.limiter.budget_used > 0  # every SDK call authenticated with x-api-token and was charged
