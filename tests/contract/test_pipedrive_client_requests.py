"""Contract: every request the Pipedrive connector sends matches the official OpenAPI specs.

All public operations of `PipedriveClient` (including the probes behind safe creates) run against the
simulator through a recording transport; each captured request is then validated with
`tests.contract.openapi_spec.validate_request` (v2 spec for /api/v2, v1 spec for /v1).

Known, documented deviation: Pipedrive documents comma-separated lists for `status` (deals) and
`include_fields`, while the spec types them as a single enum value. Such a list is checked by
validating the request once per listed value.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

pytest.importorskip("simulators.pipedrive")

from connectors.http import RetryPolicy, default_transport
from connectors.pipedrive import PipedriveClient
from connectors.pipedrive_models import PersonPage
from pmsync.rules.status import MarketingStatus
from tests.contract.openapi_spec import SpecError, specs_available, validate_request

pytestmark = pytest.mark.skipif(not specs_available(), reason="Pipedrive OpenAPI specs not found")

LIST_PARAMS = ("status", "include_fields")


class RecordingTransport(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def exercise(client: PipedriveClient, sim: Any) -> None:
    """Call every public operation of the client at least once."""
    sim.seed(persons=30, deals=10)
    me = client.get_current_user()
    client.list_users()
    client.get_user(me.id)
    pages = list(
        client.iter_person_pages(
            updated_since="2000-01-01T00:00:00Z",
            updated_until="2100-01-01T00:00:00Z",
            limit=20,
            sort_by="update_time",
            sort_direction="desc",
            include_marketing_status=True,
        )
    )
    org_ids = [p.org_id for page in pages for p in page.items if p.org_id][:3]
    client.get_organizations(org_ids or [1])
    if org_ids:
        client.get_organization(org_ids[0])
    person = client.create_person(
        "Contract Person", emails=["contract@example.com"], phones=["+1 555"], marketing_status="no_consent"
    )
    client.get_person(person.id, include_marketing_status=True)
    client.update_person(person.id, {"name": "Contract Person 2", "emails": ["contract@example.com"]})
    client.set_marketing_status(person.id, MarketingStatus.SUBSCRIBED, read_before=True)
    assert len(list(client.iter_person_changelog(person.id, limit=1))) >= 2  # cursor paging: several pages
    client.search_persons_by_email("contract@example.com")
    client.find_person_ids_by_email("contract@example.com")
    client._newest("/api/v2/persons", PersonPage)  # the probe behind safe creates
    field = client.create_person_field("Contract field", "enum", options=["a", "b"], add_visible_flag=False)
    client.list_person_fields(page_size=50)
    client.list_person_fields_v2(limit=50)
    if field.id is not None:
        client.delete_person_field(field.id)
    deal = client.create_deal("Contract deal", person_id=person.id, value=10.5, currency="EUR")
    client.get_deal(deal.id)
    client.update_deal(deal.id, {"status": "won"})
    list(client.iter_deal_pages(status="won", limit=5, sort_by="add_time"))
    list(client.iter_deal_pages(status=["open", "lost"], limit=5, updated_since="2000-01-01T00:00:00Z"))
    list(client.iter_deal_pages(archived=True, limit=5))
    client.delete_deal(deal.id)
    hook = client.create_webhook(
        "https://receiver.example/pd",
        event_action="*",
        event_object="person",
        name="contract",
        http_auth_user="u",
        http_auth_password="p-secret-123",
    )
    client.list_webhooks()
    client.delete_webhook(hook.id)
    client.delete_person(person.id)


def _check(request: httpx.Request) -> None:
    query = dict(parse_qsl(request.url.query.decode(), keep_blank_values=True))
    body = json.loads(request.content) if request.content else None
    variants = [query]
    for name in LIST_PARAMS:
        if "," in query.get(name, ""):
            variants = [{**v, name: item} for v in variants for item in query[name].split(",")]
    for variant in variants:
        validate_request(request.method, request.url.path, variant, body)


def test_every_request_the_pipedrive_connector_sends_matches_the_spec(pipedrive_sim: Any) -> None:
    recorder = RecordingTransport(default_transport())
    client = PipedriveClient(
        pipedrive_sim.base_url, pipedrive_sim.secret, transport=recorder, retry=RetryPolicy(max_retries=2)
    )
    with client:
        exercise(client, pipedrive_sim.sim)
    operations = {(r.method, r.url.path.split("/")[1]) for r in recorder.requests}
    changelog_pages = [r for r in recorder.requests if r.url.path.endswith("/changelog")]
    assert len(changelog_pages) >= 2 and "cursor" in changelog_pages[-1].url.params
    assert len(recorder.requests) >= 30 and ("POST", "v1") in operations and ("PATCH", "api") in operations
    failures: list[str] = []
    for request in recorder.requests:
        try:
            _check(request)
        except SpecError as exc:
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures)
    # every request carried the token in the header, never in the URL
    assert all("x-api-token" in r.headers and "api_token" not in str(r.url) for r in recorder.requests)


@pytest.mark.parametrize(
    ("method", "path", "query", "body"),
    [
        ("GET", "/api/v2/persons", {"sort_by": "name"}, None),
        ("PATCH", "/api/v2/persons/1", None, {"marketing_status": "bounced"}),
        ("POST", "/v1/webhooks", None, {"subscription_url": "https://x"}),
    ],
)
def test_the_validator_catches_bad_requests(method: str, path: str, query: Any, body: Any) -> None:
    with pytest.raises(SpecError):
        validate_request(method, path, query, body)
