"""No secret in any log line or exception text: tokens, keys (and their Base64), webhook passwords."""

from __future__ import annotations

import base64
import logging
import random

import httpx
import pytest

from connectors.errors import ConnectorError, TransientError
from connectors.http import RetryPolicy
from connectors.maileon import MaileonClient
from connectors.maileon_models import MaileonWebhook, WebhookUrlParam
from connectors.pipedrive import PipedriveClient
from connectors.redact import redact, redact_headers, redact_url
from tests.connectors.conftest import FakeClock, Recorder, jresp

PD_TOKEN = "pd-very-secret-token-abcdef123456"
ML_KEY = "ml-very-secret-key-987654"
HOOK_PASSWORD = "hook-password-S3cr3t!"
WEBHOOK_TOKEN = "maileon-webhook-shared-secret"


def secrets_absent(text: str) -> bool:
    forms = [
        PD_TOKEN,
        ML_KEY,
        base64.b64encode(ML_KEY.encode()).decode(),
        HOOK_PASSWORD,
        WEBHOOK_TOKEN,
    ]
    return not any(s in text for s in forms)


def test_redact_masks_header_query_and_json_forms() -> None:
    text = (
        f"GET https://x.pipedrive.com/v1/persons?api_token={PD_TOKEN}&limit=5 "
        f"x-api-token: {PD_TOKEN} Authorization: Basic Zm9vYmFyOmJheg== "
        '{"http_auth_password": "pw-123456", "name": "token", "custom_value": "abc-secret-xyz"} '
        "https://hooks.example/cb?token=tok-9999&email=a@b.c"
    )
    out = redact(text)
    for secret in (PD_TOKEN, "Zm9vYmFyOmJheg==", "pw-123456", "abc-secret-xyz", "tok-9999"):
        assert secret not in out
    assert "limit=5" in out and "email=a@b.c" in out


def test_redact_masks_passwords_in_urls() -> None:
    out = redact("connecting to postgresql+psycopg://pmsync:db-pass-123@db.local:5432/pmsync")
    assert "db-pass-123" not in out and "postgresql+psycopg://pmsync:***@db.local:5432/pmsync" in out


def test_redact_url_and_headers() -> None:
    assert "s3cret" not in redact_url("https://h/x?api_token=s3cret&a=1")
    assert redact_headers({"x-api-token": "abc", "Accept": "json"}) == {
        "x-api-token": "***",
        "Accept": "json",
    }


def test_pipedrive_token_never_appears_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    # a server that echoes the token back in its error text, then fails for good
    echo = jresp(400, {"success": False, "error": f"token {PD_TOKEN} is not valid for field x"})
    rec = Recorder([jresp(503, {"error": f"busy, x-api-token: {PD_TOKEN}"}), echo])
    client = PipedriveClient(
        "https://pd.test",
        PD_TOKEN,
        transport=rec.transport,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(0),
    )
    with pytest.raises(ConnectorError) as err:
        client.update_person(1, {"name": "x"})
    assert rec.requests[0].headers["x-api-token"] == PD_TOKEN  # it was sent …
    assert secrets_absent(str(err.value)) and secrets_absent(repr(err.value))  # … but never shown
    assert err.value.server_message is not None and secrets_absent(err.value.server_message)
    assert secrets_absent(caplog.text)
    assert "retry" in caplog.text  # the retry was logged


def test_transport_errors_and_webhook_passwords_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()

    def router(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            raise httpx.ReadTimeout(f"timeout talking with password={HOOK_PASSWORD}")
        return jresp(200, {"success": True, "data": []})  # the probe finds nothing

    rec = Recorder(router=router)
    client = PipedriveClient(
        "https://pd.test",
        PD_TOKEN,
        transport=rec.transport,
        sleep=clock.sleep,
        clock=clock,
        retry=RetryPolicy(max_retries=1),
    )
    with pytest.raises(TransientError) as err:
        client.create_webhook(
            "https://receiver.example/pd",
            event_action="*",
            event_object="person",
            name="pmsync",
            http_auth_user="pmsync",
            http_auth_password=HOOK_PASSWORD,
        )
    assert [r.method for r in rec.requests] == ["POST", "GET", "POST", "GET"]
    assert HOOK_PASSWORD in rec.requests[0].content.decode()
    assert secrets_absent(str(err.value)) and secrets_absent(repr(err.value))
    assert secrets_absent(caplog.text)


def test_maileon_key_and_webhook_secret_never_appear(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    encoded = base64.b64encode(ML_KEY.encode()).decode()
    rec = Recorder(
        [
            httpx.Response(500, text=f"internal error for key {ML_KEY} / {encoded} / {WEBHOOK_TOKEN}"),
            httpx.Response(401, text=f"API key {ML_KEY} is not valid"),
        ]
    )
    client = MaileonClient(
        "https://ml.test/1.0",
        ML_KEY,
        transport=rec.transport,
        sleep=clock.sleep,
        clock=clock,
        retry=RetryPolicy(max_retries=1),
    )
    hook = MaileonWebhook(
        url="https://receiver.example/ml",
        event="unsubscription",
        url_params=[WebhookUrlParam(name="token", custom_value=WEBHOOK_TOKEN)],
    )
    assert WEBHOOK_TOKEN not in repr(hook)
    with pytest.raises(ConnectorError) as err:
        client.create_webhook(hook)
    assert rec.requests[0].headers["Authorization"] == f"Basic {encoded}"
    assert secrets_absent(str(err.value)) and secrets_absent(repr(err.value))
    assert secrets_absent(caplog.text)


def test_clients_do_not_print_secrets_in_repr() -> None:
    assert PD_TOKEN not in repr(PipedriveClient("https://pd.test", PD_TOKEN))
    assert ML_KEY not in repr(MaileonClient("https://ml.test/1.0", ML_KEY))
