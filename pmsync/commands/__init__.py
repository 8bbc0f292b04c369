"""CLI command implementations, one module per story; `pmsync.cli` registers them on its app."""
