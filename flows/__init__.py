"""Prefect flows: one module per story; orchestration only."""
