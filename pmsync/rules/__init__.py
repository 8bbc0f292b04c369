"""Pure rules: no I/O, no Prefect, no httpx. Imported by tasks, connectors and simulators."""
