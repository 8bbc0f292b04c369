"""Writes to the simulated company: input checks (v2 strictness), marketing_status rules, webhooks.

Both the API routes (`change_source="api"`) and the `/_sim/ui/...` routes that emulate a salesperson
in the web app (`change_source="app"`) go through here, so every write raises the same webhooks.

Choices where Pipedrive is silent (see the package docstring):

- a write that changes nothing (e.g. a forbidden marketing_status change, which Pipedrive ignores
  silently) keeps `update_time` and raises no webhook;
- unknown body keys are rejected with 400 (the v2 API is strict; this catches v1-style `email`);
- when a marketing_status change takes effect, every live person whose primary email is that address
  changes with it: their `update_time` moves and each gets its own `change` webhook;
- with Campaigns disabled, `marketing_status` in a body is ignored and never returned;
- every update that changes a person's fields appends one changelog entry per changed field
  (`GET /v1/persons/{id}/changelog`, see `_record_changes`); creating and deleting a person record none.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pmsync.rules.status import WRITABLE, MarketingStatus, is_valid_email, next_status
from simulators.pipedrive import views
from simulators.pipedrive.config import SimClock, SimConfig, parse_rfc3339
from simulators.pipedrive.fields import FieldRegistry
from simulators.pipedrive.store import Deal, Email, Organization, Person, Store, norm_key
from simulators.pipedrive.webhooks import Event, WebhookHub

ERROR_INFO = "Please check developers.pipedrive.com"
VISIBLE_TO = (1, 3, 5, 7)
CONTACT_SYNC_KEYS = ("notes", "im", "birthday", "job_title", "postal_address")
PERSON_KEYS = frozenset(
    {
        "name",
        "first_name",
        "last_name",
        "owner_id",
        "org_id",
        "emails",
        "phones",
        "visible_to",
        "label_ids",
        "marketing_status",
        "custom_fields",
        "add_time",
        *CONTACT_SYNC_KEYS,
    }
)
DEAL_KEYS = frozenset(
    {
        "title",
        "owner_id",
        "person_id",
        "org_id",
        "pipeline_id",
        "stage_id",
        "value",
        "currency",
        "is_deleted",
        "is_archived",
        "archive_time",
        "status",
        "probability",
        "lost_reason",
        "visible_to",
        "close_time",
        "won_time",
        "lost_time",
        "expected_close_date",
        "label_ids",
        "custom_fields",
        "add_time",
    }
)
ORG_KEYS = frozenset({"name", "owner_id", "visible_to", "label_ids", "address", "custom_fields", "add_time"})
DEAL_STATUSES = ("open", "won", "lost")
#: pipeline id -> stage ids
PIPELINES = {1: (1, 2, 3, 4, 5), 2: (6, 7, 8)}
_LABEL_INTERN: dict[str, str] = {}
#: `change_source_user_agent` of a salesperson's edit in the web app (the spec example's browser);
#: API writes record none (the simulator's writes do not see the HTTP request)
APP_USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/121.0.0.0 Safari/537.36"
)


class ApiError(Exception):
    """An error answer in Pipedrive's envelope."""

    def __init__(self, status: int, error: str, *, body: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.body = body

    def payload(self) -> dict[str, Any]:
        if self.body is not None:
            return self.body
        out: dict[str, Any] = {
            "success": False,
            "error": self.error,
            "error_info": ERROR_INFO,
            "data": None,
            "additional_data": None,
        }
        if self.status in (401, 403, 429):
            out["errorCode"] = self.status
        return out


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


# --------------------------------------------------------------------------- strict value checks


def want_int(value: Any, name: str, *, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"Validation failed: {name}: Parameter '{name}' must be an integer")
    return value


def want_number(value: Any, name: str, *, nullable: bool = False) -> float | int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"Validation failed: {name}: Parameter '{name}' must be a number")
    return value


def want_str(value: Any, name: str, *, nullable: bool = False, non_empty: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or (non_empty and not value.strip()):
        raise bad_request(
            f"Validation failed: {name}: Parameter '{name}' must be a{' non-empty' if non_empty else ''} string"
        )
    return value


def want_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"Validation failed: {name}: Parameter '{name}' must be a boolean (true/false)")
    return value


def want_time(value: Any, name: str, *, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    text = want_str(value, name)
    assert text is not None
    try:
        return parse_rfc3339(text)
    except ValueError:
        pass
    try:  # body times are also documented as `YYYY-MM-DD HH:MM:SS` (UTC), e.g. a deal's archive_time
        return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp())
    except ValueError:
        raise bad_request(
            f"Validation failed: {name}: '{text}' is neither RFC 3339 nor YYYY-MM-DD HH:MM:SS"
        ) from None


def want_ids(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise bad_request(f"Validation failed: {name}: Parameter '{name}' must be an array of integers")
    return tuple(want_int(v, name) or 0 for v in value)


def _label(value: str) -> str:
    return _LABEL_INTERN.setdefault(value, value)


def want_items(value: Any, name: str) -> tuple[Email, ...]:
    """emails/phones: `[{value, primary?, label?}]`; at most one primary, else the first one is."""
    if not isinstance(value, list):
        raise bad_request(f"Validation failed: {name}: must be an array of objects {{value, primary, label}}")
    items: list[Email] = []
    primaries = 0
    for raw in value:
        if not isinstance(raw, dict) or set(raw) - {"value", "primary", "label"}:
            raise bad_request(f"Validation failed: {name}: items must be objects {{value, primary, label}}")
        text = want_str(raw.get("value"), f"{name}.value", non_empty=True)
        primary = want_bool(raw.get("primary", False), f"{name}.primary")
        label = want_str(raw.get("label", "work"), f"{name}.label")
        primaries += primary
        items.append((text.strip() if text else "", primary, _label(label or "work")))
    if primaries > 1:
        raise bad_request(f"Validation failed: {name}: only one item can be primary")
    if items and primaries == 0:
        v, _, lab = items[0]
        items[0] = (v, True, lab)
    return tuple(items)


def parse_custom(
    registry: FieldRegistry, value: Any, current: dict[str, Any] | None
) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        raise bad_request("Validation failed: custom_fields: must be an object keyed by field key")
    merged = dict(current or {})
    for key, raw in value.items():
        field = registry.by_key.get(key)
        if field is None or not field.edit_flag:
            raise bad_request(f"Validation failed: custom_fields: unknown custom field '{key}'")
        try:
            parsed = field.parse(raw)
        except ValueError as exc:
            raise bad_request(f"Validation failed: {exc}") from None
        if parsed is None:
            merged.pop(key, None)
        else:
            merged[key] = parsed
    return merged or None


def _reject_unknown(body: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"Validation failed: unknown {what} field(s): {', '.join(unknown)}")


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`previous` of a change webhook: only changed fields (custom_fields: only changed keys)."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        if key == "update_time":
            continue
        old = before.get(key)
        if old == value:
            continue
        if key == "custom_fields" and isinstance(old, dict) and isinstance(value, dict):
            out[key] = {k: old.get(k) for k in value if old.get(k) != value.get(k)}
        else:
            out[key] = old
    return out


class Service:
    def __init__(
        self, store: Store, clock: SimClock, config: Callable[[], SimConfig], hub: WebhookHub
    ) -> None:
        self.store = store
        self.clock = clock
        self._config = config
        self.hub = hub

    @property
    def config(self) -> SimConfig:
        return self._config()

    # ---------------------------------------------------------------- helpers

    def _now(self) -> int:
        return self.clock.now_s()

    def _user(self, value: Any, name: str = "owner_id") -> int:
        uid = want_int(value, name)
        if uid not in self.store.users:
            raise bad_request(f"Validation failed: {name}: user {uid} does not exist")
        assert uid is not None
        return uid

    def _org(self, value: Any) -> int | None:
        oid = want_int(value, "org_id", nullable=True)
        if oid is not None:
            org = self.store.orgs.rows.get(oid)
            if org is None or org.is_deleted:
                raise bad_request(f"Validation failed: org_id: organization {oid} does not exist")
        return oid

    def _person_ref(self, value: Any) -> int | None:
        pid = want_int(value, "person_id", nullable=True)
        if pid is not None:
            p = self.store.persons.rows.get(pid)
            if p is None or p.is_deleted:
                raise bad_request(f"Validation failed: person_id: person {pid} does not exist")
        return pid

    def _emit(
        self,
        entity: str,
        action: str,
        entity_id: int,
        data: dict[str, Any] | None,
        previous: dict[str, Any] | None,
        source: str,
        user_id: int,
        v1_current: Callable[[], dict[str, Any] | None] | None = None,
        v1_previous: dict[str, Any] | None = None,
    ) -> None:
        self.hub.emit(
            Event(
                entity=entity,
                action=action,
                entity_id=entity_id,
                data=data,
                previous=previous,
                change_source=source,
                user_id=user_id,
                timestamp=self.clock.now(),
                v1_current=v1_current,
                v1_previous=v1_previous,
            )
        )

    # ---------------------------------------------------------------- persons

    def _person_snap(self, p: Person) -> dict[str, Any]:
        return views.person_webhook(self.store, p, marketing=self.config.campaigns_enabled)

    def _person_v1(self, p: Person) -> dict[str, Any]:
        return views.person_v1(self.store, p, marketing=self.config.campaigns_enabled)

    def _person_state(self, p: Person) -> tuple[Any, ...]:
        status = self.store.status_of(p) if self.config.campaigns_enabled else None
        custom = tuple(sorted((p.custom or {}).items()))
        extra = tuple(sorted((k, repr(v)) for k, v in (p.extra or {}).items()))
        return (
            p.name,
            p.first_name,
            p.last_name,
            p.owner_id,
            p.org_id,
            p.emails,
            p.phones,
            p.visible_to,
            p.label_ids,
            custom,
            extra,
            status,
        )

    def _changelog_state(self, p: Person) -> dict[str, str | None]:
        """The person's field values as the v1 changelog shows them: strings keyed by v1 field key.

        `email`/`phone` are the addresses/numbers joined by ", " (one value: just that value);
        `label_ids` is "1,2"; custom fields use their 40-hex key (and `<key>_currency`, `<key>_until`,
        ... for sub-values, as on v1 objects); `marketing_status` only with Campaigns enabled.
        """
        out: dict[str, str | None] = {
            "name": p.name,
            "first_name": p.first_name,
            "last_name": p.last_name,
            "owner_id": str(p.owner_id),
            "org_id": None if p.org_id is None else str(p.org_id),
            "email": ", ".join(v for v, _, _ in p.emails) or None,
            "phone": ", ".join(v for v, _, _ in p.phones) or None,
            "visible_to": str(p.visible_to),
            "label_ids": ",".join(str(i) for i in p.label_ids) or None,
        }
        if self.config.campaigns_enabled:
            out["marketing_status"] = self.store.status_of(p).value
        extra = p.extra or {}
        for key in CONTACT_SYNC_KEYS:
            value = extra.get(key)
            out[key] = value if value is None or isinstance(value, str) else json.dumps(value, sort_keys=True)
        values = p.custom or {}
        for f in self.store.person_fields.custom():
            for key, value in f.v1_items(values.get(f.key)).items():
                out[key] = None if value is None else str(value)
        return out

    def _record_changes(
        self,
        person_id: int,
        changes: list[tuple[str, str | None, str | None]],
        *,
        source: str,
        user_id: int,
    ) -> None:
        """Append changelog entries stamped with the simulator's clock, the acting user and source."""
        if changes:
            self.store.changelog.record(
                person_id,
                changes,
                actor_user_id=user_id,
                at=self._now(),
                change_source=source,
                user_agent=APP_USER_AGENT if source == "app" else None,
            )

    @staticmethod
    def _changed_fields(
        before: dict[str, str | None], after: dict[str, str | None]
    ) -> list[tuple[str, str | None, str | None]]:
        keys = list(after) + [k for k in before if k not in after]
        return [(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]

    def _apply_person_fields(self, p: Person, body: dict[str, Any], creating: bool) -> None:
        cfg = self.config
        if "name" in body:
            p.name = want_str(body["name"], "name", non_empty=True) or p.name
            if "first_name" not in body and "last_name" not in body:
                first, _, last = p.name.strip().partition(" ")
                p.first_name, p.last_name = first or None, last.strip() or None
        if "first_name" in body or "last_name" in body:
            if "first_name" in body:
                p.first_name = want_str(body["first_name"], "first_name", nullable=True)
            if "last_name" in body:
                p.last_name = want_str(body["last_name"], "last_name", nullable=True)
            if "name" not in body:
                p.name = " ".join(x for x in (p.first_name, p.last_name) if x) or p.name
        if "owner_id" in body:
            p.owner_id = self._user(body["owner_id"])
        if "org_id" in body:
            p.org_id = self._org(body["org_id"])
        if "emails" in body:
            emails = want_items(body["emails"], "emails")
            if creating:
                p.emails = emails  # indexed by the caller once the person exists
            else:
                self.store.unindex_emails(p)
                p.emails = emails
                if not p.is_deleted:
                    self.store.index_emails(p)
        if "phones" in body:
            p.phones = want_items(body["phones"], "phones")
        if "visible_to" in body:
            vis = want_int(body["visible_to"], "visible_to")
            if vis not in VISIBLE_TO:
                raise bad_request("Validation failed: visible_to: must be one of 1, 3, 5, 7")
            p.visible_to = vis
        if "label_ids" in body:
            p.label_ids = want_ids(body["label_ids"], "label_ids")
        if "custom_fields" in body:
            p.custom = parse_custom(self.store.person_fields, body["custom_fields"], p.custom)
        sync_keys = [k for k in CONTACT_SYNC_KEYS if k in body]
        if sync_keys:
            if not cfg.contact_sync_enabled:
                raise ApiError(
                    403, f"Contact sync is not enabled for this company: {', '.join(sync_keys)} cannot be set"
                )
            extra = dict(p.extra or {})
            for key in sync_keys:
                if body[key] is None:
                    extra.pop(key, None)
                else:
                    extra[key] = body[key]
            p.extra = extra or None

    def _check_status(self, body: dict[str, Any]) -> MarketingStatus | None:
        if "marketing_status" not in body:
            return None
        raw = body["marketing_status"]
        try:
            status = MarketingStatus(raw) if isinstance(raw, str) else None
        except ValueError:
            status = None
        if status is None or status not in WRITABLE:
            allowed = ", ".join(sorted(s.value for s in WRITABLE))
            raise bad_request(f"Validation failed: marketing_status: must be one of {allowed}")
        return status if self.config.campaigns_enabled else None

    def apply_status(
        self, email: str | None, requested: MarketingStatus, *, force: bool = False, api: bool = True
    ) -> tuple[MarketingStatus, MarketingStatus] | None:
        """Apply a requested status to an email; returns (old, new) if it changed, else None.

        The status table (`pmsync.rules.status.next_status`) and the subscriber cap apply unless
        `force` (system changes such as `bounced`). The once-only rule concerns API writes: only
        they are checked against, and recorded in, the changes already made for the email.
        """
        if not email or not is_valid_email(email):
            return None  # no valid email: stays no_consent, nothing is stored
        cfg = self.config
        m = self.store.marketing
        norm = norm_key(email)
        old = m.status.get(norm, MarketingStatus.NO_CONSENT)
        if force:
            new = requested
        else:
            cap_full = cfg.subscriber_cap is not None and m.subscribed >= cfg.subscriber_cap
            new = next_status(old, requested, has_valid_email=True, cap_full=cap_full)
            if api and new != old and cfg.once_only_rule and (old, new) in m.changes_made.get(norm, ()):
                new = old
        if new == old:
            return None
        m.set(norm, new, record_change=api and not force)
        return old, new

    def _status_change(
        self,
        email: str | None,
        requested: MarketingStatus,
        *,
        exclude: int | None,
        source: str,
        user_id: int,
        force: bool = False,
    ) -> bool:
        """Change an email's status and raise `change` webhooks for every other person sharing it."""
        want_hooks = self.hub.wants("person", "change")
        sharers = [s for s in self.store.persons_with_primary(email) if s.id != exclude] if email else []
        before = {s.id: self._person_snap(s) for s in sharers} if want_hooks else {}
        before_v1 = (
            {s.id: self._person_v1(s) for s in sharers} if self.hub.wants("person", "change", "1.0") else {}
        )
        changed = self.apply_status(email, requested, force=force, api=source == "api")
        if changed is None:
            return False
        now = self._now()
        old, new = changed
        for s in sharers:
            self.store.persons.touch(s, now)
            if self.config.campaigns_enabled:
                self._record_changes(
                    s.id, [("marketing_status", old.value, new.value)], source=source, user_id=user_id
                )
            if want_hooks:
                after = self._person_snap(s)
                self._emit(
                    "person",
                    "change",
                    s.id,
                    after,
                    diff(before[s.id], after),
                    source,
                    user_id,
                    v1_current=self._v1_renderer(s),
                    v1_previous=before_v1.get(s.id),
                )
        return True

    def _v1_renderer(self, p: Person) -> Callable[[], dict[str, Any]]:
        return lambda: self._person_v1(p)

    def create_person(self, body: Any, *, user_id: int, source: str = "api") -> Person:
        if not isinstance(body, dict):
            raise bad_request("Validation failed: the body must be a JSON object")
        _reject_unknown(body, PERSON_KEYS, "person")
        if "name" not in body and not ("first_name" in body and "last_name" in body):
            raise bad_request("Validation failed: name: Parameter 'name' is required")
        status = self._check_status(body)
        store = self.store
        with store.lock:
            now = self._now()
            add_time = want_time(body["add_time"], "add_time") if "add_time" in body else now
            assert add_time is not None
            p = Person(store.persons.next_id, "", user_id, add_time)
            p.update_time = max(add_time, now) if "add_time" in body else now
            self._apply_person_fields(p, body, creating=True)
            store.persons.insert(p)
            store.index_emails(p)
            if status is not None:
                self._status_change(p.primary_email, status, exclude=p.id, source=source, user_id=user_id)
            if self.hub.wants("person", "create"):
                self._emit(
                    "person",
                    "create",
                    p.id,
                    self._person_snap(p),
                    None,
                    source,
                    user_id,
                    v1_current=lambda: self._person_v1(p),
                )
            return p

    def get_person(self, pid: int) -> Person:
        p = self.store.persons.rows.get(pid)
        if p is None:
            raise ApiError(404, "Person not found")
        return p

    def update_person(
        self, pid: int, body: Any, *, user_id: int, source: str = "api", force_status: bool = False
    ) -> Person:
        if not isinstance(body, dict):
            raise bad_request("Validation failed: the body must be a JSON object")
        _reject_unknown(body, PERSON_KEYS - {"add_time"}, "person")
        store = self.store
        with store.lock:
            p = self.get_person(pid)
            if p.is_deleted:
                raise ApiError(404, "Person not found")
            status: MarketingStatus | None = None
            if force_status and "marketing_status" in body:
                raw = body["marketing_status"]
                try:
                    status = MarketingStatus(str(raw))
                except ValueError:
                    raise bad_request(
                        f"Validation failed: marketing_status: unknown status {raw!r}"
                    ) from None
            else:
                status = self._check_status(body)
            want_hooks = self.hub.wants("person", "change")
            before = self._person_snap(p) if want_hooks else None
            before_v1 = self._person_v1(p) if self.hub.wants("person", "change", "1.0") else None
            state = self._person_state(p)
            logged = self._changelog_state(p)
            saved = (
                p.name,
                p.first_name,
                p.last_name,
                p.owner_id,
                p.org_id,
                p.emails,
                p.phones,
                p.visible_to,
                p.label_ids,
                p.custom,
                p.extra,
            )
            try:
                self._apply_person_fields(p, body, creating=False)
            except ApiError:
                store.unindex_emails(p)
                (
                    p.name,
                    p.first_name,
                    p.last_name,
                    p.owner_id,
                    p.org_id,
                    p.emails,
                    p.phones,
                    p.visible_to,
                    p.label_ids,
                    p.custom,
                    p.extra,
                ) = saved
                store.index_emails(p)
                raise
            if status is not None:
                self._status_change(
                    p.primary_email, status, exclude=p.id, source=source, user_id=user_id, force=force_status
                )
            if self._person_state(p) != state:
                store.persons.touch(p, self._now())
                changes = self._changed_fields(logged, self._changelog_state(p))
                self._record_changes(p.id, changes, source=source, user_id=user_id)
                if want_hooks and before is not None:
                    after = self._person_snap(p)
                    self._emit(
                        "person",
                        "change",
                        p.id,
                        after,
                        diff(before, after),
                        source,
                        user_id,
                        v1_current=lambda: self._person_v1(p),
                        v1_previous=before_v1,
                    )
            return p

    def delete_person(self, pid: int, *, user_id: int, source: str = "api") -> Person:
        store = self.store
        with store.lock:
            p = self.get_person(pid)
            if p.is_deleted:
                raise ApiError(404, "Person not found")
            last = self._person_snap(p) if self.hub.wants("person", "delete") else None
            last_v1 = self._person_v1(p) if self.hub.wants("person", "delete", "1.0") else None
            store.unindex_emails(p)
            p.is_deleted = True
            store.persons.touch(p, max(self._now(), p.update_time))
            if last is not None:
                self._emit("person", "delete", p.id, None, last, source, user_id, v1_previous=last_v1)
            return p

    def set_email_status(
        self, email: str, status: MarketingStatus, *, source: str = "app", user_id: int = 1
    ) -> list[int]:
        """System/UI change of an email's status (e.g. `bounced`): set as is, for every sharing person."""
        with self.store.lock:
            sharers = self.store.persons_with_primary(email)
            self._status_change(email, status, exclude=None, source=source, user_id=user_id, force=True)
            return [s.id for s in sharers]

    # ---------------------------------------------------------------- deals

    def _deal_snap(self, d: Deal) -> dict[str, Any]:
        return views.deal_webhook(self.store, d)

    def _apply_deal_fields(self, d: Deal, body: dict[str, Any], creating: bool) -> None:
        now = self._now()
        if "title" in body:
            d.title = want_str(body["title"], "title", non_empty=True) or d.title
        if "owner_id" in body:
            d.owner_id = self._user(body["owner_id"])
        if "person_id" in body:
            d.person_id = self._person_ref(body["person_id"])
            if creating and "org_id" not in body and d.person_id is not None:
                d.org_id = self.store.persons.rows[d.person_id].org_id
        if "org_id" in body:
            d.org_id = self._org(body["org_id"])
        if "pipeline_id" in body:
            pipeline = want_int(body["pipeline_id"], "pipeline_id")
            if pipeline not in PIPELINES:
                raise bad_request(f"Validation failed: pipeline_id: pipeline {pipeline} does not exist")
            if "stage_id" not in body:
                d.stage_id = PIPELINES[pipeline][0]
                d.stage_change_time = now
            d.pipeline_id = pipeline
        if "stage_id" in body:
            stage = want_int(body["stage_id"], "stage_id")
            pipeline = next((pl for pl, stages in PIPELINES.items() if stage in stages), None)
            if pipeline is None:
                raise bad_request(f"Validation failed: stage_id: stage {stage} does not exist")
            if stage != d.stage_id:
                d.stage_change_time = now
            d.stage_id, d.pipeline_id = stage or d.stage_id, pipeline
        if "value" in body:
            d.value = want_number(body["value"], "value") or 0
        if "currency" in body:
            cur = want_str(body["currency"], "currency")
            if not cur or len(cur) != 3:
                raise bad_request("Validation failed: currency: must be a 3-letter currency code")
            d.currency = cur.upper()
        if "probability" in body:
            d.probability = want_number(body["probability"], "probability", nullable=True)
        if "lost_reason" in body:
            d.lost_reason = want_str(body["lost_reason"], "lost_reason", nullable=True)
        if "visible_to" in body:
            vis = want_int(body["visible_to"], "visible_to")
            if vis not in VISIBLE_TO:
                raise bad_request("Validation failed: visible_to: must be one of 1, 3, 5, 7")
            d.visible_to = vis
        if "expected_close_date" in body:
            value = want_str(body["expected_close_date"], "expected_close_date", nullable=True)
            if value is not None and (len(value) != 10 or value[4] != "-" or value[7] != "-"):
                raise bad_request("Validation failed: expected_close_date: must be YYYY-MM-DD")
            d.expected_close_date = value
        if "label_ids" in body:
            d.label_ids = want_ids(body["label_ids"], "label_ids")
        if "custom_fields" in body:
            d.custom = parse_custom(self.store.deal_fields, body["custom_fields"], d.custom)
        if "is_deleted" in body and want_bool(body["is_deleted"], "is_deleted"):
            raise bad_request("Validation failed: is_deleted: use DELETE /api/v2/deals/{id} to delete a deal")
        if "status" in body:
            status = want_str(body["status"], "status")
            if status not in DEAL_STATUSES:
                raise bad_request("Validation failed: status: must be one of open, won, lost")
            if status != d.status:
                d.status = status
                d.won_time = now if status == "won" else None
                d.lost_time = now if status == "lost" else None
                d.close_time = now if status in ("won", "lost") else None
                if status != "lost":
                    d.lost_reason = None
        for key in ("won_time", "lost_time", "close_time"):
            if key in body:
                setattr(d, key, want_time(body[key], key, nullable=key == "close_time"))
        if "is_archived" in body:
            archived = want_bool(body["is_archived"], "is_archived")
            if archived != d.is_archived:
                d.is_archived = archived
                d.archive_time = now if archived else None
        if "archive_time" in body and d.is_archived:
            d.archive_time = want_time(body["archive_time"], "archive_time")

    def _deal_state(self, d: Deal) -> tuple[Any, ...]:
        plain = tuple(getattr(d, k) for k in Deal.__slots__ if k not in ("update_time", "custom"))
        return (*plain, tuple(sorted((d.custom or {}).items())))

    def create_deal(self, body: Any, *, user_id: int, source: str = "api") -> Deal:
        if not isinstance(body, dict):
            raise bad_request("Validation failed: the body must be a JSON object")
        _reject_unknown(body, DEAL_KEYS, "deal")
        if "title" not in body:
            raise bad_request("Validation failed: title: Parameter 'title' is required")
        store = self.store
        with store.lock:
            now = self._now()
            add_time = want_time(body["add_time"], "add_time") if "add_time" in body else now
            assert add_time is not None
            d = Deal(store.deals.next_id, "", user_id, add_time)
            d.update_time = max(add_time, now)
            d.creator_user_id = user_id
            self._apply_deal_fields(d, body, creating=True)
            store.deals.insert(d)
            if self.hub.wants("deal", "create"):
                self._emit(
                    "deal",
                    "create",
                    d.id,
                    self._deal_snap(d),
                    None,
                    source,
                    user_id,
                    v1_current=lambda: views.deal_v1(store, d),
                )
            return d

    def get_deal(self, did: int) -> Deal:
        d = self.store.deals.rows.get(did)
        if d is None:
            raise ApiError(404, "Deal not found")
        return d

    def update_deal(self, did: int, body: Any, *, user_id: int, source: str = "api") -> Deal:
        if not isinstance(body, dict):
            raise bad_request("Validation failed: the body must be a JSON object")
        _reject_unknown(body, DEAL_KEYS - {"add_time"}, "deal")
        store = self.store
        with store.lock:
            d = self.get_deal(did)
            if d.is_deleted:
                raise ApiError(404, "Deal not found")
            want_hooks = self.hub.wants("deal", "change")
            before = self._deal_snap(d) if want_hooks else None
            before_v1 = views.deal_v1(store, d) if self.hub.wants("deal", "change", "1.0") else None
            state = self._deal_state(d)
            saved = {k: getattr(d, k) for k in Deal.__slots__}
            try:
                self._apply_deal_fields(d, body, creating=False)
            except ApiError:
                for k, v in saved.items():
                    setattr(d, k, v)
                raise
            if self._deal_state(d) != state:
                store.deals.touch(d, self._now())
                if before is not None:
                    after = self._deal_snap(d)
                    self._emit(
                        "deal",
                        "change",
                        d.id,
                        after,
                        diff(before, after),
                        source,
                        user_id,
                        v1_current=lambda: views.deal_v1(store, d),
                        v1_previous=before_v1,
                    )
            return d

    def delete_deal(self, did: int, *, user_id: int, source: str = "api") -> Deal:
        store = self.store
        with store.lock:
            d = self.get_deal(did)
            if d.is_deleted:
                raise ApiError(404, "Deal not found")
            last = self._deal_snap(d) if self.hub.wants("deal", "delete") else None
            last_v1 = views.deal_v1(store, d) if self.hub.wants("deal", "delete", "1.0") else None
            d.is_deleted = True
            store.deals.touch(d, max(self._now(), d.update_time))
            if last is not None:
                self._emit("deal", "delete", d.id, None, last, source, user_id, v1_previous=last_v1)
            return d

    # ---------------------------------------------------------------- organizations

    def _apply_org_fields(self, o: Organization, body: dict[str, Any]) -> None:
        if "name" in body:
            o.name = want_str(body["name"], "name", non_empty=True) or o.name
        if "owner_id" in body:
            o.owner_id = self._user(body["owner_id"])
        if "visible_to" in body:
            vis = want_int(body["visible_to"], "visible_to")
            if vis not in VISIBLE_TO:
                raise bad_request("Validation failed: visible_to: must be one of 1, 3, 5, 7")
            o.visible_to = vis
        if "label_ids" in body:
            o.label_ids = want_ids(body["label_ids"], "label_ids")
        if "address" in body:
            addr = body["address"]
            if addr is not None and (not isinstance(addr, dict) or not isinstance(addr.get("value"), str)):
                raise bad_request("Validation failed: address: must be an object with a string `value`")
            o.address = {k: str(v) for k, v in addr.items() if v is not None} if addr else None
        if "custom_fields" in body:
            o.custom = parse_custom(self.store.org_fields, body["custom_fields"], o.custom)

    def create_org(self, body: Any, *, user_id: int, source: str = "api") -> Organization:
        if not isinstance(body, dict):
            raise bad_request("Validation failed: the body must be a JSON object")
        _reject_unknown(body, ORG_KEYS, "organization")
        if "name" not in body:
            raise bad_request("Validation failed: name: Parameter 'name' is required")
        store = self.store
        with store.lock:
            now = self._now()
            add_time = want_time(body["add_time"], "add_time") if "add_time" in body else now
            assert add_time is not None
            o = Organization(store.orgs.next_id, "", user_id, add_time)
            o.update_time = max(add_time, now)
            self._apply_org_fields(o, body)
            store.orgs.insert(o)
            if self.hub.wants("organization", "create"):
                self._emit(
                    "organization",
                    "create",
                    o.id,
                    views.org_webhook(store, o),
                    None,
                    source,
                    user_id,
                    v1_current=lambda: views.org_v1(store, o),
                )
            return o

    def get_org(self, oid: int) -> Organization:
        o = self.store.orgs.rows.get(oid)
        if o is None:
            raise ApiError(404, "Organization not found")
        return o

    def update_org(self, oid: int, body: Any, *, user_id: int, source: str = "api") -> Organization:
        if not isinstance(body, dict):
            raise bad_request("Validation failed: the body must be a JSON object")
        _reject_unknown(body, ORG_KEYS - {"add_time"}, "organization")
        store = self.store
        with store.lock:
            o = self.get_org(oid)
            if o.is_deleted:
                raise ApiError(404, "Organization not found")
            want_hooks = self.hub.wants("organization", "change")
            before = views.org_webhook(store, o) if want_hooks else None
            before_v1 = views.org_v1(store, o) if self.hub.wants("organization", "change", "1.0") else None
            saved = {k: getattr(o, k) for k in Organization.__slots__}
            try:
                self._apply_org_fields(o, body)
            except ApiError:
                for k, v in saved.items():
                    setattr(o, k, v)
                raise
            if any(getattr(o, k) != v for k, v in saved.items()):
                store.orgs.touch(o, self._now())
                if before is not None:
                    after = views.org_webhook(store, o)
                    self._emit(
                        "organization",
                        "change",
                        o.id,
                        after,
                        diff(before, after),
                        source,
                        user_id,
                        v1_current=lambda: views.org_v1(store, o),
                        v1_previous=before_v1,
                    )
            return o

    def delete_org(self, oid: int, *, user_id: int, source: str = "api") -> Organization:
        store = self.store
        with store.lock:
            o = self.get_org(oid)
            if o.is_deleted:
                raise ApiError(404, "Organization not found")
            last = views.org_webhook(store, o) if self.hub.wants("organization", "delete") else None
            o.is_deleted = True
            store.orgs.touch(o, max(self._now(), o.update_time))
            if last is not None:
                self._emit("organization", "delete", o.id, None, last, source, user_id)
            return o
