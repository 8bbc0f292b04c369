"""A faithful Pipedrive simulator: API v2 persons/deals/organizations/personFields/search, the v1
webhooks/personFields/users endpoints and the person changelog, webhooks v2 delivery, Campaigns `marketing_status` rules,
burst and daily-token rate limits — served as an ASGI app (`PipedriveSim(...).app`).

Module map:

- `app.py`      PipedriveSim and the HTTP routes (auth, limits, query parsing, `/_sim` control surface)
- `service.py`  writes: strict v2 input checks, marketing_status rules, webhook events
- `store.py`    compact in-memory rows, ordered indexes for cursor paging, consent per email
- `views.py`    wire shapes: REST v2, webhooks v2 `data`, v1 objects, search items
- `fields.py`   field registry and custom-field value shapes (REST v2 / webhook / v1)
- `webhooks.py` `/v1/webhooks` registry, v2/v1 payloads, retries, ban with lost events
- `limits.py`   burst window, Search window, daily token budget, Cloudflare 403
- `costs.py`    token cost per operation, generated from the specs by `gen_costs.py`
- `seed.py`     the base account and deterministic seeded data
- `config.py`   `/_sim/config` settings, the movable clock, time formats

`PipedriveSim(token="sim-pipedrive-token", webhook_time_scale=1.0, seed=0)`: `.app` (ASGI), `.state`
(SimState: faults, request log), `.dispatcher` (WebhookDispatcher), `.reset()`, `.close()`,
`.seed(persons, deals, seed=0)` (replaces all data; returns example ids), `.configure(**config)`,
`.add_token(token, user_id)`, `.clock` (set/advance), white-box `.persons`/`.deals`/`.organizations`/
`.users` (rows by id), `.person(id)`, `.marketing_status(email)`, `.set_email_status(email, status)`,
`.ui_update_person(id, **fields)`, `.ui_create_person(**fields)`, `.wait_webhooks(timeout)`.

Control surface (besides the common `/_sim/requests`, `/_sim/reset`, `/_sim/faults`, `/_sim/webhooks`):

- `GET|POST /_sim/config` — `campaigns_enabled`, `subscriber_cap`, `burst_limit`, `search_burst_limit`,
  `daily_budget`, `once_only_rule`, `abuse_threshold`, `abuse_block_seconds`, `webhook_ban_seconds`,
  `webhook_ban_after`, `webhooks_per_user`, `deleted_persons_in_list`, `contact_sync_enabled` (partial)
- `POST /_sim/seed` `{persons, deals, seed}`; `GET|POST /_sim/clock` `{now, frozen, advance, reset}`
- `GET|POST /_sim/budget` `{used}` (daily token usage); `GET /_sim/webhooks/lost` (ban state, lost events)
- `GET|POST /_sim/emails/status` `{email, marketing_status}` — system change of an email's status
  (e.g. `bounced`), raising person change webhooks with change_source "app"
- `GET /_sim/persons/{id}` — a person with its marketing_status whatever the config
- `POST /_sim/ui/persons`, `POST|DELETE /_sim/ui/persons/{id}`, `POST /_sim/ui/deals`,
  `POST|DELETE /_sim/ui/deals/{id}`, `POST|DELETE /_sim/ui/organizations/{id}` — a salesperson's edit
  in the web app: no tokens, change_source "app", acting `user_id` (body; default the owner);
  `force_marketing_status: true` sets any status as is

Documented choices where Pipedrive's behaviour is unconfirmed:

- Soft-deleted persons are hidden from `GET /api/v2/persons` (with or without `updated_since`) and
  from search, but `GET /api/v2/persons/{id}` still returns them with `is_deleted: true` and
  `update_time` = delete time. `POST /_sim/config {"deleted_persons_in_list": true}` shows them in
  lists instead. Deleted deals are listed only with `status=deleted`, archived ones only on
  `/api/v2/deals/archived`.
- 429 body: `{"success": false, "error": "Request over limit", "errorCode": 429, "error_info": ...,
  "data": null, "additional_data": null}` with `Retry-After` (seconds) and `x-ratelimit-*` headers.
  A daily-budget 429 says so in `error` and carries `x-daily-ratelimit-token-remaining: 0` and a
  Retry-After up to midnight UTC. After `abuse_threshold` further limited requests: HTML 403.
- `once_only_rule` (on by default): for one email, each distinct (old → new) change takes effect at
  most once; a repeat is ignored like any forbidden change (see `pmsync.rules.status`).
- A write that changes nothing keeps `update_time` and raises no webhook.
- `GET /v1/persons/{id}/changelog` lists changes **newest first** (the spec example's order), one entry
  per changed field of every update through any path (API, `/_sim/ui`, `/_sim/emails/status`, and
  the status of persons sharing a primary email); creating or deleting a person records none. Values
  are v1 strings (`email`/`phone`: the values joined by ", "; custom fields by 40-hex key;
  `marketing_status` with Campaigns enabled); `change_source_user_agent` is a browser for "app", null
  for "api"; `is_bulk_update_flag` is always false. Cursor: base64 `id:<n>` like the spec example;
  `limit` 1..500, default 100. A missing or deleted person: 404.
- Fields the spec types as non-nullable are omitted when empty rather than sent as null (see
  `views.py`); only `next_cursor`, `person_id` and `org_id` are ever null where the spec says not.
"""

from simulators.pipedrive.app import PipedriveSim

__all__ = ["PipedriveSim"]
