"""The Pipedrive simulator's `/_sim` control surface (a contract for tests, the demo and benchmarks)."""

from __future__ import annotations

from tests.simulators.test_pipedrive_support import client, control, create_person


def test_config_reads_back_and_takes_partial_updates(pipedrive_sim):
    with control(pipedrive_sim) as c:
        defaults = c.get("/_sim/config").json()
        assert {
            "campaigns_enabled",
            "subscriber_cap",
            "burst_limit",
            "daily_budget",
            "once_only_rule",
        } <= set(defaults)
        assert defaults["campaigns_enabled"] is True and defaults["subscriber_cap"] is None
        changed = c.post("/_sim/config", json={"subscriber_cap": 10, "once_only_rule": False}).json()
        assert changed == {**defaults, "subscriber_cap": 10, "once_only_rule": False}
        assert c.post("/_sim/config", json={"burst_limit": 0}).status_code == 400
        assert c.post("/_sim/config", json={"no_such_setting": 1}).status_code == 400
        assert c.get("/_sim/config").json() == changed


def test_the_clock_can_be_set_frozen_and_advanced(pipedrive_sim):
    with control(pipedrive_sim) as c, client(pipedrive_sim) as api:
        state = c.post("/_sim/clock", json={"now": "2024-05-01T12:00:00Z", "frozen": True}).json()
        assert state == {"now": "2024-05-01T12:00:00Z", "epoch": state["epoch"], "frozen": True}
        assert create_person(api)["add_time"] == "2024-05-01T12:00:00Z"
        assert c.post("/_sim/clock", json={"advance": 90}).json()["now"] == "2024-05-01T12:01:30Z"
        c.post("/_sim/reset")
        assert c.get("/_sim/clock").json()["frozen"] is False


def test_seeding_over_http_reports_examples_of_each_situation(pipedrive_sim):
    with control(pipedrive_sim) as c, client(pipedrive_sim) as api:
        examples = c.post("/_sim/seed", json={"persons": 50, "deals": 10, "seed": 3}).json()
        assert examples["counts"]["persons"] == 50
        shared = examples["shared_email"]
        state = c.get("/_sim/emails/status", params={"email": shared}).json()
        assert len(state["person_ids"]) >= 2
        assert (
            examples["no_email"]
            and api.get(f"/api/v2/persons/{examples['no_email']}").json()["data"]["emails"] == []
        )


def test_a_person_can_be_inspected_with_its_status_whatever_the_config(pipedrive_sim):
    with control(pipedrive_sim) as c, client(pipedrive_sim) as api:
        pid = create_person(api, email="seen@example.com", marketing_status="subscribed")["id"]
        c.post("/_sim/config", json={"campaigns_enabled": False})
        assert c.get(f"/_sim/persons/{pid}").json()["data"]["marketing_status"] == "subscribed"
        assert c.get("/_sim/persons/999").status_code == 404


def test_ui_routes_create_edit_and_delete_as_a_salesperson(pipedrive_sim):
    with control(pipedrive_sim) as c, client(pipedrive_sim) as api:
        made = c.post(
            "/_sim/ui/persons", json={"name": "From The App", "emails": [{"value": "app@example.com"}]}
        ).json()
        pid = made["data"]["id"]
        assert made["data"]["owner_id"] == 2
        forced = c.post(
            f"/_sim/ui/persons/{pid}",
            json={"marketing_status": "pending_upgrade", "force_marketing_status": True},
        )
        assert forced.json()["data"]["marketing_status"] == "pending_upgrade"
        assert c.post(f"/_sim/ui/persons/{pid}", json={"owner_id": "3"}).status_code == 400
        deal = c.post("/_sim/ui/deals", json={"title": "App deal", "person_id": pid}).json()["data"]
        assert (
            c.post(f"/_sim/ui/deals/{deal['id']}", json={"status": "won"}).json()["data"]["status"] == "won"
        )
        assert c.request("DELETE", f"/_sim/ui/deals/{deal['id']}").status_code == 200
        assert c.request("DELETE", f"/_sim/ui/persons/{pid}").status_code == 200
        assert api.get(f"/api/v2/persons/{pid}").json()["data"]["is_deleted"] is True


def test_the_request_log_lists_api_calls_with_their_status(pipedrive_sim):
    with control(pipedrive_sim) as c, client(pipedrive_sim) as api:
        api.get("/api/v2/persons")
        api.get("/api/v2/persons/12345")
        log = c.get("/_sim/requests").json()
        assert [(r["method"], r["path"], r["status"]) for r in log] == [
            ("GET", "/api/v2/persons", 200),
            ("GET", "/api/v2/persons/12345", 404),
        ]
        assert c.get("/_sim/webhooks").json() == {"pending": 0, "attempts": []}


def test_deal_times_accept_the_documented_v1_style_format(pipedrive_sim):
    with client(pipedrive_sim) as api:
        deal = api.post("/api/v2/deals", json={"title": "Archived", "is_archived": True,
                                               "archive_time": "2024-02-03 04:05:06"}).json()["data"]  # fmt: skip
        assert deal["archive_time"] == "2024-02-03T04:05:06Z"
