"""Prefect tasks: small typed units over one page or one batch. They wrap connectors and rules."""
