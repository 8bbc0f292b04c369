"""Every response the Pipedrive simulator gives validates against Pipedrive's official OpenAPI specs.

The client used here checks each response as it arrives (`_checked_client`): documented statuses
against the spec (v2 for persons, deals, organizations, personFields v2 and search; v1 for webhooks,
personFields, users, the person changelog), error statuses the spec leaves out against the documented error envelope.
The only relaxations are the documented ones (`next_cursor`, `person_id`, `org_id` may be null).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.contract.openapi_spec import (
    SpecError,
    find_operation,
    specs_available,
    validate_error_envelope,
    validate_request,
    validate_response,
)
from tests.simulators.test_pipedrive_support import _TLS, receiver  # noqa: F401

pytestmark = pytest.mark.skipif(
    not specs_available(), reason="official Pipedrive specs not found (../shared/specs)"
)


class Checked:
    """Counts what was validated, so a test can prove it covered what it claims."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def hook(self, response: httpx.Response) -> None:
        request = response.request
        path = request.url.path
        if path.startswith("/_sim"):
            return
        response.read()
        body = response.json()
        op = find_operation(request.method, path)
        if str(response.status_code) in op.statuses:
            validate_response(request.method, path, response.status_code, body)
        else:
            assert response.status_code >= 400, (
                f"{request.method} {path}: undocumented success {response.status_code}"
            )
            validate_error_envelope(body, response.status_code)
        self.seen.append((request.method, op.template, response.status_code))

    def covered(self) -> set[tuple[str, str, int]]:
        return set(self.seen)


@pytest.fixture
def checked(pipedrive_sim) -> tuple[httpx.Client, Checked]:
    pipedrive_sim.sim.configure(burst_limit=10_000, search_burst_limit=10_000)
    tracker = Checked()
    api = httpx.Client(base_url=pipedrive_sim.base_url, headers={"x-api-token": pipedrive_sim.secret}, timeout=30,
                       verify=_TLS, event_hooks={"response": [tracker.hook]})  # fmt: skip
    yield api, tracker
    api.close()


def _walk(api: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    out, cursor = [], None
    while True:
        body = api.get(path, params={**params, **({"cursor": cursor} if cursor else {})}).json()
        out += body["data"]
        cursor = body["additional_data"]["next_cursor"]
        if cursor is None:
            return out


def _custom_values(api: httpx.Client) -> dict[str, Any]:
    fields = {f["name"]: f for f in api.get("/v1/personFields").json()["data"]}
    return {
        fields["Customer type"]["key"]: fields["Customer type"]["options"][0]["id"],
        fields["Interests"]["key"]: [o["id"] for o in fields["Interests"]["options"][:2]],
        fields["Position"]["key"]: "Buyer",
        fields["Lead score"]["key"]: 42.5,
        fields["Budget"]["key"]: {"value": 2500, "currency": "EUR"},
    }


# --------------------------------------------------------------------------- v2 persons and search


def test_every_seeded_person_and_every_person_operation_validates_against_the_v2_spec(pipedrive_sim, checked):
    api, tracker = checked
    pipedrive_sim.sim.seed(persons=400, deals=0)
    persons = _walk(api, "/api/v2/persons", limit=200)  # the last page has next_cursor: null
    assert len(persons) == 400
    _walk(api, "/api/v2/persons", limit=500, include_fields="marketing_status", include_option_labels="true")
    _walk(
        api,
        "/api/v2/persons",
        sort_by="update_time",
        sort_direction="desc",
        updated_since="2024-01-01T00:00:00Z",
    )
    api.get("/api/v2/persons", params={"ids": "1,2,3", "custom_fields": next(iter(_custom_values(api)))})
    for pid in (1, 2, 3, 4, 5):
        api.get(f"/api/v2/persons/{pid}", params={"include_fields": "marketing_status"})
    created = api.post("/api/v2/persons", json={
        "name": "Contract Person", "owner_id": 2, "org_id": 1, "visible_to": 7, "label_ids": [],
        "emails": [{"value": "contract@example.com", "primary": True, "label": "work"}, {"value": "c2@example.com"}],
        "phones": [{"value": "+49 30 1234567"}], "marketing_status": "subscribed", "custom_fields": _custom_values(api),
    }).json()["data"]  # fmt: skip
    api.patch(f"/api/v2/persons/{created['id']}", json={"name": "Contract Renamed", "org_id": None,
                                                        "marketing_status": "unsubscribed"})  # fmt: skip
    api.delete(f"/api/v2/persons/{created['id']}")
    api.get(f"/api/v2/persons/{created['id']}")  # a deleted person
    api.get("/api/v2/persons/999999")  # 404
    api.patch("/api/v2/persons/1", json={"owner_id": "2"})  # 400
    assert {("GET", "/persons", 200), ("GET", "/persons/{id}", 200), ("POST", "/persons", 200),
            ("PATCH", "/persons/{id}", 200), ("DELETE", "/persons/{id}", 200), ("GET", "/persons/{id}", 404),
            ("PATCH", "/persons/{id}", 400)} <= tracker.covered()  # fmt: skip


def test_person_search_answers_validate_against_the_v2_spec(pipedrive_sim, checked):
    api, tracker = checked
    examples = pipedrive_sim.sim.seed(persons=150, deals=0)
    shared = examples["shared_email"]
    found = api.get(
        "/api/v2/persons/search", params={"term": shared, "fields": "email", "exact_match": "true"}
    ).json()
    assert len(found["data"]["items"]) >= 2
    api.get("/api/v2/persons/search", params={"term": "example", "fields": "email", "limit": 5})
    api.get(
        "/api/v2/persons/search",
        params={"term": "nobody@nowhere.example", "fields": "email", "exact_match": "true"},
    )
    api.get("/api/v2/persons/search", params={"term": "Müller"})
    api.get("/api/v2/persons/search", params={"term": "x"})  # 400
    assert ("GET", "/persons/search", 200) in tracker.covered()


# --------------------------------------------------------------------------- v2 deals and organizations


def test_every_seeded_deal_and_every_deal_operation_validates_against_the_v2_spec(pipedrive_sim, checked):
    api, tracker = checked
    pipedrive_sim.sim.seed(persons=100, deals=300)
    _walk(api, "/api/v2/deals", limit=100)
    _walk(api, "/api/v2/deals", status="deleted")
    _walk(api, "/api/v2/deals", status="open,won,lost,deleted", include_option_labels="true")
    _walk(api, "/api/v2/deals/archived")
    _walk(api, "/api/v2/deals", sort_by="update_time", updated_since="2024-06-01T00:00:00Z")
    deal = api.post("/api/v2/deals", json={"title": "Contract deal", "value": 99.5, "currency": "EUR", "person_id": 1,
                                           "expected_close_date": "2025-12-31", "probability": 50}).json()["data"]  # fmt: skip
    api.post("/api/v2/deals", json={"title": "No person"})
    api.get(f"/api/v2/deals/{deal['id']}")
    api.patch(f"/api/v2/deals/{deal['id']}", json={"status": "won"})
    api.patch(f"/api/v2/deals/{deal['id']}", json={"status": "lost", "lost_reason": "Price"})
    api.patch(f"/api/v2/deals/{deal['id']}", json={"is_archived": True})
    api.delete(f"/api/v2/deals/{deal['id']}")
    api.get(f"/api/v2/deals/{deal['id']}")
    assert {("GET", "/deals", 200), ("GET", "/deals/archived", 200), ("POST", "/deals", 200),
            ("PATCH", "/deals/{id}", 200), ("DELETE", "/deals/{id}", 200), ("GET", "/deals/{id}", 200)} <= tracker.covered()  # fmt: skip


def test_organizations_validate_against_the_v2_spec(pipedrive_sim, checked):
    api, tracker = checked
    pipedrive_sim.sim.seed(persons=300, deals=0)
    orgs = _walk(api, "/api/v2/organizations", limit=7)
    api.get("/api/v2/organizations", params={"ids": ",".join(str(o["id"]) for o in orgs[:5])})
    api.get("/api/v2/organizations/1")
    api.post(
        "/api/v2/organizations", json={"name": "Contract Org", "address": {"value": "Hauptstraße 1, Berlin"}}
    )
    api.patch("/api/v2/organizations/1", json={"name": "Renamed Org"})
    api.delete("/api/v2/organizations/2")
    assert {("GET", "/organizations", 200), ("GET", "/organizations/{id}", 200)} <= tracker.covered()


def test_person_fields_v2_validate_against_the_v2_spec(pipedrive_sim, checked):
    api, tracker = checked
    pipedrive_sim.sim.seed(persons=5, deals=0)
    _walk(api, "/api/v2/personFields", limit=4)
    created = api.post("/api/v2/personFields", json={"field_name": "Newsletter", "field_type": "enum",
                                                     "options": [{"label": "Yes"}, {"label": "No"}]}).json()["data"]  # fmt: skip
    api.post("/api/v2/personFields", json={"field_name": "Since", "field_type": "date"})
    api.get(f"/api/v2/personFields/{created['field_code']}")
    api.delete(f"/api/v2/personFields/{created['field_code']}")
    assert {("GET", "/personFields", 200), ("POST", "/personFields", 200)} <= tracker.covered()


# --------------------------------------------------------------------------- v1: personFields, users, webhooks


def test_person_fields_v1_validate_against_the_v1_spec(pipedrive_sim, checked):
    api, tracker = checked
    pipedrive_sim.sim.seed(persons=5, deals=0)
    start = 0
    while True:
        page = api.get("/v1/personFields", params={"start": start, "limit": 6}).json()
        if not page["additional_data"]["pagination"]["more_items_in_collection"]:
            break
        start = page["additional_data"]["pagination"]["next_start"]
    field = api.post("/v1/personFields", json={"name": "Newsletter", "field_type": "enum",
                                               "options": [{"label": "Yes"}, {"label": "No"}]}).json()["data"]  # fmt: skip
    api.post("/v1/personFields", json={"name": "Notes 2", "field_type": "text"})
    api.get(f"/v1/personFields/{field['id']}")
    api.delete(f"/v1/personFields/{field['id']}")
    assert {("GET", "/personFields", 200), ("POST", "/personFields", 200), ("DELETE", "/personFields/{id}", 200),
            ("GET", "/personFields/{id}", 200)} <= tracker.covered()  # fmt: skip


def test_users_validate_against_the_v1_spec(pipedrive_sim, checked):
    api, tracker = checked
    me = api.get("/v1/users/me").json()["data"]
    assert me["company_domain"]
    api.get("/v1/users")
    api.get("/v1/users/2")
    assert {
        ("GET", "/users/me", 200),
        ("GET", "/users", 200),
        ("GET", "/users/{id}", 200),
    } <= tracker.covered()


def test_webhooks_validate_against_the_v1_spec(pipedrive_sim, checked, receiver):  # noqa: F811
    api, tracker = checked
    made = api.post("/v1/webhooks", json={"subscription_url": receiver.url, "event_action": "*", "event_object": "person",
                                          "name": "contract", "http_auth_user": "u", "http_auth_password": "p"})  # fmt: skip
    assert made.status_code == 201
    api.post("/v1/webhooks", json={"subscription_url": receiver.url, "event_action": "change", "event_object": "deal",
                                   "name": "v1 hook", "version": "1.0"})  # fmt: skip
    api.get("/v1/webhooks")
    api.post("/v1/webhooks", json={"event_action": "*"})  # 400: documented
    api.delete(f"/v1/webhooks/{made.json()['data']['id']}")
    api.delete("/v1/webhooks/999")  # 404: documented
    assert {("POST", "/webhooks", 201), ("GET", "/webhooks", 200), ("DELETE", "/webhooks/{id}", 200),
            ("POST", "/webhooks", 400), ("DELETE", "/webhooks/{id}", 404)} <= tracker.covered()  # fmt: skip


def test_person_changelog_validates_against_the_v1_spec(
    pipedrive_sim: Any, checked: tuple[httpx.Client, Checked]
) -> None:
    api, tracker = checked
    pipedrive_sim.sim.seed(persons=5, deals=0)
    custom = _custom_values(api)
    person = api.post("/api/v2/persons", json={"name": "Changelog Person", "emails": [{"value": "cl@example.com"}],
                                               "marketing_status": "subscribed"}).json()["data"]  # fmt: skip
    pid = person["id"]
    api.patch(f"/api/v2/persons/{pid}", json={"marketing_status": "unsubscribed", "custom_fields": custom})
    api.patch(f"/api/v2/persons/{pid}", json={"emails": [{"value": "cl2@example.com"}], "name": "Renamed"})
    pipedrive_sim.sim.ui_update_person(
        pid, marketing_status="subscribed"
    )  # change_source "app" with an agent
    entries = _walk(api, f"/v1/persons/{pid}/changelog", limit=2)  # the last page has next_cursor: null
    assert len(entries) >= 8 and {"marketing_status", "email", "name"} <= {e["field_key"] for e in entries}
    api.get("/api/v1/persons/1/changelog")  # an empty changelog, through the /api/v1 prefix
    api.get(f"/v1/persons/{pid}/changelog", params={"limit": 0})  # 400
    api.get(f"/v1/persons/{pid}/changelog", params={"cursor": "%%%"})  # 400
    api.get("/v1/persons/999999/changelog")  # 404
    assert {("GET", "/persons/{id}/changelog", 200), ("GET", "/persons/{id}/changelog", 400),
            ("GET", "/persons/{id}/changelog", 404)} <= tracker.covered()  # fmt: skip


def test_unauthorized_answers_match_the_documented_401(pipedrive_sim):
    r = httpx.get(f"{pipedrive_sim.base_url}/v1/webhooks", verify=_TLS)
    assert r.status_code == 401
    validate_response("GET", "/v1/webhooks", 401, r.json())
    r = httpx.get(f"{pipedrive_sim.base_url}/api/v2/persons", verify=_TLS)
    validate_error_envelope(r.json(), 401)


# --------------------------------------------------------------------------- the helper itself


def test_the_helper_accepts_only_the_documented_nullable_relaxations():
    body = {
        "success": True,
        "data": [{"id": 1, "name": "x", "org_id": None}],
        "additional_data": {"next_cursor": None},
    }
    validate_response("GET", "/api/v2/persons", 200, body)
    validate_response(
        "GET", "/api/v2/deals", 200, {"success": True, "data": [{"id": 1, "person_id": None, "org_id": None}]}
    )
    with pytest.raises(SpecError, match="picture_id"):
        validate_response(
            "GET", "/api/v2/persons", 200, {"success": True, "data": [{"id": 1, "picture_id": None}]}
        )
    with pytest.raises(SpecError, match="owner_id"):
        validate_response(
            "GET", "/persons/1", 200, {"success": True, "data": {"id": 1, "owner_id": "1"}}, version="v2"
        )
    with pytest.raises(SpecError, match="not documented"):
        validate_response("GET", "/api/v2/persons", 418, {})


def test_the_helper_checks_requests_too():
    validate_request(
        "PATCH", "/api/v2/persons/7", body={"name": "x", "marketing_status": "subscribed", "org_id": None}
    )
    validate_request(
        "GET",
        "/api/v2/persons",
        query={"limit": 500, "sort_by": "update_time", "updated_since": "2025-01-01T00:00:00Z"},
    )
    with pytest.raises(SpecError):
        validate_request("PATCH", "/api/v2/persons/7", body={"marketing_status": "bounced"})
    with pytest.raises(SpecError):
        validate_request("PATCH", "/api/v2/persons/7", body={"owner_id": "1"})
    with pytest.raises(SpecError):
        validate_request("GET", "/api/v2/persons", query={"sort_by": "name"})
    with pytest.raises(SpecError):
        validate_request("POST", "/v1/webhooks", body={"subscription_url": "https://x"}, version="v1")
    validate_request("GET", "/v1/persons/7/changelog", query={"limit": 100, "cursor": "aWQ6NTQ0"})
    with pytest.raises(SpecError):
        validate_request("GET", "/v1/persons/7/changelog", query={"limit": "many"})


def test_the_helper_finds_operations_and_their_token_costs():
    assert find_operation("GET", "/api/v2/persons/search").template == "/persons/search"
    assert find_operation("GET", "https://x.pipedrive.com/api/v2/persons/12?x=1").template == "/persons/{id}"
    assert find_operation("GET", "/api/v1/users/me").version == "v1"
    assert find_operation("POST", "/v1/webhooks").token_cost == 10
    assert find_operation("GET", "/v1/persons/7/changelog").token_cost == 20
    with pytest.raises(SpecError):
        find_operation("GET", "/v1/persons")  # v1 persons are out of the current v1 spec


def test_the_helper_checks_changelog_items() -> None:
    item = {"field_key": "marketing_status", "old_value": "unsubscribed", "new_value": "subscribed",
            "actor_user_id": 3, "time": "2024-02-12 09:14:35", "change_source": "app",
            "change_source_user_agent": None, "is_bulk_update_flag": False}  # fmt: skip
    body = {"success": True, "data": [item], "additional_data": {"next_cursor": None}}
    validate_response("GET", "/v1/persons/7/changelog", 200, body)
    with pytest.raises(SpecError, match="actor_user_id"):
        validate_response(
            "GET", "/v1/persons/7/changelog", 200, {**body, "data": [{**item, "actor_user_id": "3"}]}
        )
    with pytest.raises(SpecError, match="is_bulk_update_flag"):
        validate_response(
            "GET", "/v1/persons/7/changelog", 200, {**body, "data": [{**item, "is_bulk_update_flag": None}]}
        )
