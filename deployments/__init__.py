"""How pmsync runs start: the webhook receiver (ASGI), `serve` of every deployment, the local Prefect
server bootstrap, and the demo.

- `receiver.py`     POST /webhooks/pipedrive (Basic auth) and /webhooks/maileon/{event}?token=… →
                    inbox (durable, before the 2xx) → Prefect event (id = uuid5 of the delivery id)
- `serve.py`        every deployment of `prefect.yaml`, served from Python with its schedules and
                    debounced event triggers, next to the receiver
- `local_server.py` `prefect server start` with SQLite under ./.pmsync/ when PREFECT_API_URL is unset
- `demo.py`         `pmsync demo`: simulators, local Prefect, receiver, setup, reconcile, live webhooks
"""
